package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outpost-iot/outpost/fleet"
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	server, token string
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	def := os.Getenv("OUTPOST_SERVER")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	fs.StringVar(&c.server, "server", def, "platform URL (env OUTPOST_SERVER)")
	fs.StringVar(&c.token, "token", os.Getenv("OUTPOST_TOKEN"), "API token (env OUTPOST_TOKEN)")
}

func (c *clientFlags) dial(ctx context.Context) (*fleet.Client, error) {
	token := c.token
	if token == "" {
		// Convenience on the platform's own machine: the admin token of a
		// platform started from this directory with default flags.
		if b, err := os.ReadFile(filepath.Join("outpost-data", "admin-token")); err == nil {
			token = strings.TrimSpace(string(b))
		}
	}
	if token == "" {
		return nil, errors.New("no API token: set OUTPOST_TOKEN or pass --token (outpost serve printed it on first start and saved it in DATA/admin-token)")
	}
	f, err := fleet.Dial(ctx, c.server, token)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdDevice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"device: want create, list, show, delete or rotate-secret"}
	}
	sub := args[0]
	fs := flag.NewFlagSet("device "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	online := fs.String("online", "", "list: only devices online (true) or offline (false)")
	name := fs.String("name", "", "list: only the device with this name")
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	need := func(n int, what string) error {
		if len(pos) != n {
			return usageError{fmt.Sprintf("device %s: want %s", sub, what)}
		}
		return nil
	}
	switch sub {
	case "create", "list", "show", "get", "delete", "rm", "rotate-secret":
	default:
		return usageError{fmt.Sprintf("device: unknown subcommand %q", sub)}
	}
	f, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	switch sub {
	case "create":
		if err := need(1, "NAME"); err != nil {
			return err
		}
		d, err := f.CreateDevice(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	case "list":
		if err := need(0, "no arguments"); err != nil {
			return err
		}
		filter := fleet.DeviceFilter{Name: *name}
		if *online != "" {
			b, err := strconv.ParseBool(*online)
			if err != nil {
				return usageError{"--online must be true or false"}
			}
			filter.Online = &b
		}
		ds, err := f.Devices(ctx, filter)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tONLINE\tLAST SEEN")
		for _, d := range ds {
			seen := "never"
			if !d.LastSeen.IsZero() {
				seen = d.LastSeen.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", d.ID, d.Name, d.Online, seen)
		}
		return tw.Flush()
	case "show", "get":
		if err := need(1, "DEVICE"); err != nil {
			return err
		}
		id, err := resolve(ctx, f, pos[0])
		if err != nil {
			return err
		}
		d, err := f.Device(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	case "delete", "rm":
		if err := need(1, "DEVICE"); err != nil {
			return err
		}
		id, err := resolve(ctx, f, pos[0])
		if err != nil {
			return err
		}
		if err := f.DeleteDevice(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted %s\n", id)
		return nil
	default: // rotate-secret
		if err := need(1, "DEVICE"); err != nil {
			return err
		}
		id, err := resolve(ctx, f, pos[0])
		if err != nil {
			return err
		}
		d, err := f.RotateSecret(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	}
}

// resolve accepts a device id or a device name.
func resolve(ctx context.Context, f *fleet.Client, ref string) (string, error) {
	if _, err := f.Device(ctx, ref); err == nil {
		return ref, nil
	} else if !errors.Is(err, fleet.ErrNotFound) {
		return "", err
	}
	ds, err := f.Devices(ctx, fleet.DeviceFilter{Name: ref})
	if err != nil {
		return "", err
	}
	if len(ds) == 1 {
		return ds[0].ID, nil
	}
	return "", fmt.Errorf("no device with id or name %q", ref)
}

func cmdRPC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rpc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	timeout := fs.Duration("timeout", fleet.DefaultCallTimeout, "how long the device has to answer")
	qf := registerQueueFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 || len(pos) > 3 {
		return usageError{"rpc: want DEVICE METHOD [JSON-ARGS]"}
	}
	var callArgs any
	if len(pos) == 3 {
		if !json.Valid([]byte(pos[2])) {
			return usageError{fmt.Sprintf("rpc: arguments %q are not valid JSON (quote strings: '\"text\"')", pos[2])}
		}
		callArgs = json.RawMessage(pos[2])
	}
	if *timeout <= 0 {
		return usageError{"--timeout must be positive"}
	}
	f, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	id, err := resolve(ctx, f, pos[0])
	if err != nil {
		return err
	}
	if qf.queue {
		return queueCall(ctx, f, fs, qf, id, pos[1], callArgs, *timeout, stdout)
	}
	cctx, cancel := context.WithTimeout(ctx, *timeout+50*time.Millisecond)
	defer cancel()
	res, err := f.Call(cctx, id, pos[1], callArgs)
	if err != nil {
		return err
	}
	return printJSON(stdout, res)
}

func cmdTelemetry(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("telemetry", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	feed := fs.String("feed", "", "feed reference (default: every feed)")
	limit := fs.Int("limit", 100, "maximum number of readings (the most recent)")
	since := fs.String("since", "", "only readings at or after this time (RFC 3339 or a duration ago, e.g. 1h)")
	until := fs.String("until", "", "only readings before this time (RFC 3339 or a duration ago)")
	out := fs.String("o", "json", "output: json or table")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"telemetry: want DEVICE"}
	}
	q := fleet.TelemetryQuery{Feed: *feed, Limit: *limit}
	if q.Since, err = parseWhen(*since); err != nil {
		return usageError{"--since: " + err.Error()}
	}
	if q.Until, err = parseWhen(*until); err != nil {
		return usageError{"--until: " + err.Error()}
	}
	f, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	id, err := resolve(ctx, f, pos[0])
	if err != nil {
		return err
	}
	rs, err := f.Telemetry(ctx, id, q)
	if err != nil {
		return err
	}
	if *out == "table" {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tFEED\tVALUE")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Time().Local().Format("2006-01-02 15:04:05.000"), r.Feed, r.Value)
		}
		return tw.Flush()
	}
	if rs == nil {
		rs = []fleet.Reading{}
	}
	return printJSON(stdout, map[string]any{"device_id": id, "readings": rs})
}

// parseWhen accepts RFC 3339 or a duration meaning "that long ago".
func parseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	return time.Parse(time.RFC3339, s)
}
