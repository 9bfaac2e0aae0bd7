package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/outpost-iot/outpost/fleet"
)

// queueFlags are rpc's flags for queued calls.
type queueFlags struct {
	queue bool
	ttl   time.Duration
}

func registerQueueFlags(fs *flag.FlagSet) *queueFlags {
	var q queueFlags
	fs.BoolVar(&q.queue, "queue", false, "queue the call for an offline or PULL device and print it (state, id) instead of waiting for the answer")
	fs.DurationVar(&q.ttl, "ttl", time.Hour, "with --queue: how long the call may wait for the device")
	return &q
}

// queueCall queues a call and prints it. --timeout is the device's time to
// answer once the call is sent; when not given, the platform's default.
func queueCall(ctx context.Context, f *fleet.Client, fs *flag.FlagSet, q *queueFlags, id, method string, args any, timeout time.Duration, stdout io.Writer) error {
	o := fleet.QueueOptions{TTL: q.ttl}
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "timeout" {
			o.Timeout = timeout
		}
	})
	c, err := f.CallQueued(ctx, id, method, args, o)
	if err != nil {
		return err
	}
	return printJSON(stdout, c)
}

func isCallSubcommand(args []string) bool {
	if len(args) == 0 {
		return false
	}
	switch args[0] {
	case "show", "get", "cancel", "list":
		return true
	}
	return false
}

// cmdCall shows, cancels and lists queued calls.
func cmdCall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub := args[0]
	fs := flag.NewFlagSet("call "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	state := fs.String("state", "", "list: only calls in this state (queued, sent, delivered, succeeded, failed, expired, timed_out, cancelled)")
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		what := "ID"
		if sub == "list" {
			what = "DEVICE"
		}
		return usageError{fmt.Sprintf("call %s: want %s", sub, what)}
	}
	f, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer f.Close()
	switch sub {
	case "show", "get":
		c, err := f.GetCall(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, c)
	case "cancel":
		c, err := f.CancelCall(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, c)
	default: // list
		id, err := resolve(ctx, f, pos[0])
		if err != nil {
			return err
		}
		cs, err := f.Calls(ctx, id, *state)
		if err != nil {
			return err
		}
		if cs == nil {
			cs = []fleet.Call{}
		}
		return printJSON(stdout, map[string]any{"device_id": id, "calls": cs})
	}
}
