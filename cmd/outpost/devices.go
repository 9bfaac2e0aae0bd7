package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/fleet"
)

var deviceGroup = group{
	name:  "device",
	about: "Register and manage devices.",
	subs: []subcommand{
		{name: "create", usage: "NAME…", summary: "register devices and print their credentials as JSON", run: cmdDeviceCreate},
		{name: "list", aliases: []string{"ls"}, summary: "list devices with their presence", run: cmdDeviceList},
		{name: "show", aliases: []string{"get"}, usage: "DEVICE", summary: "show one device", run: cmdDeviceShow},
		{name: "delete", aliases: []string{"rm"}, usage: "DEVICE", summary: "delete a device and its data, disconnect it", run: cmdDeviceDelete},
		{name: "rotate-secret", usage: "DEVICE", summary: "give a device a new password; the old one stops working", run: cmdDeviceRotate},
	},
}

func cmdDevice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return deviceGroup.dispatch(ctx, args, stdout, stderr)
}

func cmdDeviceCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "device create", args: "NAME…", min: 0, max: -1, about: `Register a device and print it as JSON: its id (the MQTT username), its
password (shown only now) and url, the ready-made endpoint
mqtt://ID:PASSWORD@HOST:PORT that devices and the examples read from
OUTPOST_DEVICE_URL.

With several names (arguments, or one per line of --names-from), the
devices are registered in bulk, 5,000 per request, each request all or
nothing, and printed as {"devices": [...]} in the order of the names.`}
	var from *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		from = fs.String("names-from", "", "read more names from `FILE`, one per line (- for standard input)")
	})
	if err != nil {
		return err
	}
	names := pos
	if *from != "" {
		more, err := readNames(*from)
		if err != nil {
			return err
		}
		names = append(names, more...)
	}
	if len(names) == 0 {
		return usagef("device create: give at least one NAME (or --names-from)")
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		if len(names) == 1 && *from == "" {
			d, err := f.CreateDevice(ctx, names[0])
			if err != nil {
				return err
			}
			return printJSON(stdout, d)
		}
		ds, err := f.CreateDevices(ctx, names)
		if err != nil {
			if len(ds) > 0 {
				// Print what was registered: their passwords are shown only
				// now.
				_ = printJSON(stdout, map[string]any{"devices": ds})
				return fmt.Errorf("%w (the %d devices above were registered)", err, len(ds))
			}
			return err
		}
		return printJSON(stdout, map[string]any{"devices": ds})
	})
}

// readNames reads device names, one per line (blank lines skipped), from
// path or, for "-", standard input.
func readNames(path string) ([]string, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("--names-from: %w", err)
		}
		defer f.Close()
		r = f
	}
	var names []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if n := strings.TrimSpace(sc.Text()); n != "" {
			names = append(names, n)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--names-from: %w", err)
	}
	return names, nil
}

func cmdDeviceList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "device list", about: "List devices, in the order they were created, with their presence."}
	var online, name, out *string
	var limit *int
	cf, _, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		online = fs.String("online", "", "only devices online (`true`) or offline (false)")
		name = fs.String("name", "", "only the device with this `NAME`")
		limit = fs.Int("limit", 0, "at most `N` devices (0: all)")
		out = outputFlag(fs, outTable)
	})
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	if *limit < 0 {
		return usagef("--limit %d: must be 0 (all) or more", *limit)
	}
	filter := fleet.DeviceFilter{Name: *name, Limit: *limit}
	if *online != "" {
		b, err := strconv.ParseBool(*online)
		if err != nil {
			return usagef("--online %q: want true or false", *online)
		}
		filter.Online = &b
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		ds, err := f.Devices(ctx, filter)
		if err != nil {
			return err
		}
		if *out == outJSON {
			if ds == nil {
				ds = []fleet.Device{}
			}
			return printJSON(stdout, map[string]any{"devices": ds})
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "ID\tNAME\tONLINE\tLAST SEEN")
		for _, d := range ds {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", d.ID, d.Name, d.Online, seen(d.LastSeen))
		}
		return tw.Flush()
	})
}

func seen(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Local().Format(time.DateTime)
}

func cmdDeviceShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "device show", args: "DEVICE", min: 1, max: 1, about: "Show one device (by id or name): presence, attributes and what the platform rejected from it."}
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outJSON) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		d, err := f.Device(ctx, id)
		if err != nil {
			return err
		}
		if *out == outJSON {
			return printJSON(stdout, d)
		}
		tw := newTable(stdout)
		fmt.Fprintf(tw, "ID\t%s\nNAME\t%s\nONLINE\t%v\nLAST SEEN\t%s\nCREATED\t%s\n", d.ID, d.Name, d.Online, seen(d.LastSeen), d.CreatedAt.Local().Format(time.DateTime))
		for _, a := range d.Attributes {
			fmt.Fprintf(tw, "ATTRIBUTE %s\t%s\n", a.Name, a.Value)
		}
		for k, n := range d.Rejected {
			fmt.Fprintf(tw, "REJECTED %s\t%d\n", k, n)
		}
		return tw.Flush()
	})
}

func cmdDeviceDelete(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "device delete", args: "DEVICE", min: 1, max: 1, about: "Delete a device (by id or name) and everything stored for it, and disconnect it."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		if err := f.DeleteDevice(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted %s\n", id)
		return nil
	})
}

func cmdDeviceRotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "device rotate-secret", args: "DEVICE", min: 1, max: 1, about: "Give a device a new password and print it as JSON; the old password stops working and the device is disconnected."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		d, err := f.RotateSecret(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	})
}

// Limits of the platform that the CLI checks before asking.
const (
	maxRPCTimeout    = 5 * time.Minute     // a call waited for
	maxQueuedTimeout = time.Hour           // a queued call, once sent
	maxTTL           = 30 * 24 * time.Hour // a queued call or command
	maxReadings      = 100_000             // one telemetry query
	maxEvents        = 10_000              // one events query
)

func cmdRPC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return rpcAs("rpc", ctx, args, stdout)
}

func rpcAs(name string, ctx context.Context, args []string, stdout io.Writer) error {
	sp := spec{name: name, args: "DEVICE METHOD [JSON-ARGS]", min: 2, max: 3, about: `Call METHOD on a device (by id or name) and print its JSON result. The
arguments are JSON: quote strings ('"text"'). Without --queue the device
must be online and answer within --timeout (at most 5m).

With --queue the call is stored and delivered when the device connects (or
pulls); the command prints the queued call (follow it with 'outpost call
show ID'). --ttl bounds the wait (at most 30 days) and --timeout is then
the device's time to answer once the call is sent (at most 1h; default 30s).`}
	var timeout, ttl *time.Duration
	var queue *bool
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		timeout = fs.Duration("timeout", fleet.DefaultCallTimeout, "how long the device has to answer")
		queue = fs.Bool("queue", false, "queue the call for an offline or PULL device and print it instead of waiting for the answer")
		ttl = fs.Duration("ttl", time.Hour, "with --queue: how long the call may wait for the device")
	})
	if err != nil {
		return err
	}
	var callArgs any
	if len(pos) == 3 {
		if !json.Valid([]byte(pos[2])) {
			return usagef("%s: arguments %q are not valid JSON (quote strings: '\"text\"')", name, pos[2])
		}
		callArgs = json.RawMessage(pos[2])
	}
	timeoutGiven := cf.given("timeout")
	if *queue {
		if err := checkDuration("ttl", *ttl, maxTTL); err != nil {
			return err
		}
		if timeoutGiven {
			if err := checkDuration("timeout", *timeout, maxQueuedTimeout); err != nil {
				return err
			}
		}
	} else {
		if cf.given("ttl") {
			return usagef("--ttl: only with --queue")
		}
		if err := checkDuration("timeout", *timeout, maxRPCTimeout); err != nil {
			return err
		}
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		if *queue {
			o := fleet.QueueOptions{TTL: *ttl}
			if timeoutGiven {
				o.Timeout = *timeout
			}
			c, err := f.CallQueued(ctx, id, pos[1], callArgs, o)
			if err != nil {
				return err
			}
			return printJSON(stdout, c)
		}
		cctx, cancel := context.WithTimeout(ctx, *timeout+50*time.Millisecond)
		defer cancel()
		res, err := f.Call(cctx, id, pos[1], callArgs)
		if err != nil {
			return err
		}
		return printJSON(stdout, res)
	})
}

func cmdTelemetry(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "telemetry", args: "DEVICE", min: 1, max: 1, about: `Print a device's stored readings, oldest first: the most recent --limit
of them, of one feed or of all. --since and --until take ` + timeForms + `.`}
	var feed, since, until, out *string
	var limit *int
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		feed = fs.String("feed", "", "feed reference `REF` (default: every feed)")
		limit = limitFlag(fs, 100, "readings")
		since = fs.String("since", "", "only readings at or after this `TIME`")
		until = fs.String("until", "", "only readings before this `TIME`")
		out = outputFlag(fs, outTable)
	})
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	if err := checkLimit(*limit, maxReadings); err != nil {
		return err
	}
	q := fleet.TelemetryQuery{Feed: *feed, Limit: *limit}
	now := time.Now()
	if q.Since, err = parseWhen("since", *since, now); err != nil {
		return err
	}
	if q.Until, err = parseWhen("until", *until, now); err != nil {
		return err
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		rs, err := f.Telemetry(ctx, id, q)
		if err != nil {
			return err
		}
		if *out == outJSON {
			if rs == nil {
				rs = []fleet.Reading{}
			}
			return printJSON(stdout, map[string]any{"device_id": id, "readings": rs})
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "TIME\tFEED\tVALUE")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Time().Local().Format("2006-01-02 15:04:05.000"), r.Feed, r.Value)
		}
		return tw.Flush()
	})
}

// jsonArg reads a command-line value as JSON, or as a string when it is
// not JSON (so "on" need not be quoted twice).
func jsonArg(s string) json.RawMessage {
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	b, _ := json.Marshal(s)
	return b
}

// compactJSON renders a JSON value on one line for a table cell.
func compactJSON(v json.RawMessage) string {
	return strings.Join(strings.Fields(string(v)), " ")
}
