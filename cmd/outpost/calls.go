package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/fleet"
)

var callGroup = group{
	name: "call",
	about: `Follow and cancel queued calls (see 'outpost rpc -h' on --queue).
'outpost call DEVICE METHOD [JSON-ARGS]' is the same as 'outpost rpc'.`,
	subs: []subcommand{
		{name: "show", aliases: []string{"get"}, usage: "ID", summary: "show a queued call: its state and, once finished, its result", run: cmdCallShow},
		{name: "cancel", usage: "ID", summary: "cancel a call that is still queued", run: cmdCallCancel},
		{name: "list", aliases: []string{"ls"}, usage: "DEVICE", summary: "list a device's calls, newest first", run: cmdCallList},
	},
}

// cmdCall shows, cancels and lists queued calls; "call DEVICE METHOD" is
// rpc.
func cmdCall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") && args[0] != "help" {
		isSub := false
		for _, s := range callGroup.subs {
			isSub = isSub || args[0] == s.name || contains(s.aliases, args[0])
		}
		if !isSub {
			return rpcAs("call", ctx, args, stdout)
		}
	}
	return callGroup.dispatch(ctx, args, stdout, stderr)
}

func cmdCallShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "call show", args: "ID", min: 1, max: 1, about: "Show a queued call: its state (queued, sent, delivered, succeeded, failed, expired, timed_out, cancelled) and, once finished, its result or error."}
	var out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) { out = outputFlag(fs, outJSON) })
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		c, err := f.GetCall(ctx, pos[0])
		if err != nil {
			return err
		}
		return printCall(stdout, *out, c)
	})
}

func cmdCallCancel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "call cancel", args: "ID", min: 1, max: 1, about: "Cancel a queued call while it is still queued (once sent, it can no longer be cancelled) and print it."}
	cf, pos, err := clientCmd(sp, args, stdout, nil)
	if err != nil {
		return err
	}
	return withClient(ctx, cf, func(f *fleet.Client) error {
		c, err := f.CancelCall(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, c)
	})
}

func printCall(w io.Writer, out string, c *fleet.Call) error {
	if out == outJSON {
		return printJSON(w, c)
	}
	tw := newTable(w)
	fmt.Fprintf(tw, "ID\t%s\nDEVICE\t%s\nMETHOD\t%s\nSTATE\t%s\nCREATED\t%s\nEXPIRES\t%s\n", c.ID, c.DeviceID, c.Method, c.State, stamp(c.CreatedAt), stamp(c.ExpiresAt))
	if len(c.Args) > 0 {
		fmt.Fprintf(tw, "ARGS\t%s\n", compactJSON(c.Args))
	}
	if len(c.Result) > 0 {
		fmt.Fprintf(tw, "RESULT\t%s\n", compactJSON(c.Result))
	}
	if c.Error != nil {
		b, _ := json.Marshal(c.Error)
		fmt.Fprintf(tw, "ERROR\t%s\n", b)
	}
	return tw.Flush()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

func cmdCallList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "call list", args: "DEVICE", min: 1, max: 1, about: "List a device's calls (by id or name), newest first."}
	var state, out *string
	cf, pos, err := clientCmd(sp, args, stdout, func(fs *flag.FlagSet) {
		state = fs.String("state", "", "only calls in this `STATE`: queued, sent, delivered, succeeded, failed, expired, timed_out or cancelled")
		out = outputFlag(fs, outTable)
	})
	if err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	switch *state {
	case "", fleet.CallQueued, fleet.CallSent, fleet.CallDelivered, fleet.CallSucceeded, fleet.CallFailed, fleet.CallExpired, fleet.CallTimedOut, fleet.CallCancelled:
	default:
		return usagef("--state %q: want queued, sent, delivered, succeeded, failed, expired, timed_out or cancelled", *state)
	}
	return withDevice(ctx, cf, pos[0], func(f *fleet.Client, id string) error {
		var states []string
		if *state != "" {
			states = append(states, *state)
		}
		cs, err := f.Calls(ctx, id, states...)
		if err != nil {
			return err
		}
		if *out == outJSON {
			if cs == nil {
				cs = []fleet.Call{}
			}
			return printJSON(stdout, map[string]any{"device_id": id, "calls": cs})
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "ID\tMETHOD\tSTATE\tCREATED\tFINISHED")
		for _, c := range cs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.ID, c.Method, c.State, stamp(c.CreatedAt), stamp(c.FinishedAt))
		}
		return tw.Flush()
	})
}
