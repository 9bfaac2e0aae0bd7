package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/outpost-iot/outpost/fleet"
)

// modelCommands are the device-model commands, dispatched from run.
var modelCommands = map[string]func(ctx context.Context, args []string, stdout, stderr io.Writer) error{
	"feed":       cmdFeed,
	"feeds":      cmdFeed,
	"attributes": cmdAttributes,
	"params":     cmdParams,
	"parameters": cmdParams,
	"events":     cmdEvents,
	"model":      cmdModel,
	"stream":     cmdStream,
}

const modelUsage = `  outpost model DEVICE                          feeds, attributes and parameters as JSON
  outpost feed list DEVICE
  outpost feed set DEVICE REF VALUE             set an IN_OUT feed (VALUE is JSON; bare words are strings)
  outpost attributes DEVICE
  outpost params DEVICE                         desired and reported parameters
  outpost params set DEVICE KEY=VALUE…          change parameters (VALUE is JSON; bare words are strings)
  outpost params unset DEVICE KEY…              remove parameters
  outpost events DEVICE [--kind event|notification] [--limit N]
  outpost stream [--device ID]… [--kind KIND]…  print live events as JSON lines until interrupted
`

// modelFlags parses a model command's flags and dials the platform.
func modelFlags(name string, args []string, stderr io.Writer, extra func(fs *flag.FlagSet)) (*clientFlags, []string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	if extra != nil {
		extra(fs)
	}
	pos, err := parseInterleaved(fs, args)
	return &cf, pos, err
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

func withDevice(ctx context.Context, cf *clientFlags, ref string, fn func(f *fleet.Client, id string) error) error {
	f, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	id, err := resolve(ctx, f, ref)
	if err != nil {
		return err
	}
	return fn(f, id)
}

func cmdModel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf, pos, err := modelFlags("model", args, stderr, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"model: want DEVICE"}
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		m, err := f.Model(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, m)
	})
}

func cmdFeed(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"feed: want list or set"}
	}
	sub := args[0]
	cf, pos, err := modelFlags("feed "+sub, args[1:], stderr, nil)
	if err != nil {
		return err
	}
	switch sub {
	case "list", "ls":
		if len(pos) != 1 {
			return usageError{"feed list: want DEVICE"}
		}
		return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
			m, err := f.Model(ctx, id)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REF\tNAME\tTYPE\tDATA TYPE\tUNIT\tREMOVED")
			for _, fd := range m.Feeds {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", fd.Ref, fd.Name, fd.Type, fd.DataType, fd.Unit, fd.Removed)
			}
			return tw.Flush()
		})
	case "set":
		if len(pos) != 3 {
			return usageError{"feed set: want DEVICE REF VALUE"}
		}
		return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
			res, err := f.SetFeedValue(ctx, id, pos[1], jsonArg(pos[2]))
			if err != nil {
				return err
			}
			return printJSON(stdout, res)
		})
	}
	return usageError{fmt.Sprintf("feed: unknown subcommand %q (want list or set)", sub)}
}

func cmdAttributes(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf, pos, err := modelFlags("attributes", args, stderr, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"attributes: want DEVICE"}
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		m, err := f.Model(ctx, id)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tDATA TYPE\tVALUE")
		for _, a := range m.Attributes {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", a.Name, a.DataType, a.Value)
		}
		return tw.Flush()
	})
}

func cmdParams(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub := "show"
	if len(args) > 0 && (args[0] == "set" || args[0] == "unset" || args[0] == "show") {
		sub, args = args[0], args[1:]
	}
	cf, pos, err := modelFlags("params "+sub, args, stderr, nil)
	if err != nil {
		return err
	}
	if len(pos) < 1 || (sub == "show" && len(pos) != 1) || (sub != "show" && len(pos) < 2) {
		return usageError{"params: want DEVICE, set DEVICE KEY=VALUE… or unset DEVICE KEY…"}
	}
	changes := map[string]any{}
	for _, kv := range pos[1:] {
		if sub == "unset" {
			changes[kv] = nil
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageError{fmt.Sprintf("params set: %q is not KEY=VALUE", kv)}
		}
		changes[k] = jsonArg(v)
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		var p *fleet.Parameters
		var err error
		if sub == "show" {
			p, err = f.Parameters(ctx, id)
		} else {
			p, err = f.UpdateParameters(ctx, id, changes)
		}
		if err != nil {
			return err
		}
		return printJSON(stdout, p)
	})
}

func cmdEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var kind string
	var limit int
	cf, pos, err := modelFlags("events", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&kind, "kind", "", "event or notification (default both)")
		fs.IntVar(&limit, "limit", 100, "maximum number (the most recent)")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"events: want DEVICE"}
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		evs, err := f.Events(ctx, id, fleet.EventQuery{Kind: kind, Limit: limit})
		if err != nil {
			return err
		}
		if evs == nil {
			evs = []fleet.DeviceEvent{}
		}
		return printJSON(stdout, map[string]any{"device_id": id, "events": evs})
	})
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func cmdStream(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var devices, kinds listFlag
	var count int
	cf, pos, err := modelFlags("stream", args, stderr, func(fs *flag.FlagSet) {
		fs.Var(&devices, "device", "only this device id (repeatable)")
		fs.Var(&kinds, "kind", "only this kind: telemetry, presence, event, notification, raw (repeatable)")
		fs.IntVar(&count, "n", 0, "stop after this many events (0: run until interrupted)")
	})
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{"stream: takes no arguments"}
	}
	f, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	enc := json.NewEncoder(stdout)
	seen := 0
	sub, err := f.Subscribe(ctx, fleet.StreamFilter{DeviceIDs: devices, Kinds: kinds}, func(e fleet.Event) {
		_ = enc.Encode(map[string]any{"id": e.ID, "kind": e.Kind, "device_id": e.DeviceID, "data": e.Data})
		if seen++; count > 0 && seen >= count {
			cancel()
		}
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	sub.Close()
	return nil
}

// fullUsage is the usage text with the device-model commands.
func fullUsage() string {
	return strings.Replace(usage, "  outpost version\n", modelUsage+"  outpost version\n", 1)
}
