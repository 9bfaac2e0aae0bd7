// Command fleet-console watches a fleet live and calls an RPC on every
// online device, from one fleet.Client: the device list at start, then
// presence changes, telemetry and every other platform event as they
// happen, and every --every the chosen method on all devices online at
// that moment, each answer printed as it arrives.
//
//	OUTPOST_SERVER=http://127.0.0.1:8080 OUTPOST_TOKEN=… go run ./examples/fleet-console
//	go run ./examples/fleet-console --method set_interval --args '{"seconds":5}' --once
//
// The default method, rpc_list, is built into every device made with the
// device SDK, so it works on any fleet.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-iot/outpost/fleet"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "fleet-console:", err)
		}
		os.Exit(1)
	}
}

// config is the command line.
type config struct {
	server, token string
	method        string
	args          json.RawMessage
	every         time.Duration
	timeout       time.Duration
	workers       int
	once          bool
}

func parse(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("fleet-console", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{}
	server := os.Getenv("OUTPOST_SERVER")
	if server == "" {
		server = "http://127.0.0.1:8080"
	}
	fs.StringVar(&c.server, "server", server, "platform URL (env OUTPOST_SERVER)")
	fs.StringVar(&c.token, "token", os.Getenv("OUTPOST_TOKEN"), "API token (env OUTPOST_TOKEN)")
	fs.StringVar(&c.method, "method", "rpc_list", "RPC method to call on every online device")
	rawArgs := fs.String("args", "", "JSON arguments of the method")
	fs.DurationVar(&c.every, "every", 30*time.Second, "call the method on all online devices this often (0: only at start)")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "how long each device has to answer")
	fs.IntVar(&c.workers, "workers", 4, "goroutines that print answers")
	fs.BoolVar(&c.once, "once", false, "list the devices, call the method once and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.token == "" {
		return nil, errors.New("no API token: set OUTPOST_TOKEN or pass --token (outpost serve prints it on first start)")
	}
	if *rawArgs != "" {
		if !json.Valid([]byte(*rawArgs)) {
			return nil, fmt.Errorf("--args must be JSON, got %q", *rawArgs)
		}
		c.args = json.RawMessage(*rawArgs)
	}
	if c.every < 0 || c.timeout <= 0 {
		return nil, errors.New("--every must not be negative and --timeout must be positive")
	}
	return c, nil
}

// console prints lines from several goroutines (stream handler, callback
// workers) without mixing them, and remembers device names.
type console struct {
	f     *fleet.Client
	mu    sync.Mutex
	out   io.Writer
	names map[string]string
}

func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.out, time.Now().Format("15:04:05")+" "+format+"\n", args...)
}

func (c *console) name(ctx context.Context, id string) string {
	if id == "" {
		return "-"
	}
	c.mu.Lock()
	n, ok := c.names[id]
	c.mu.Unlock()
	if ok {
		return n
	}
	if d, err := c.f.Device(ctx, id); err == nil {
		n = d.Name
	} else {
		n = id
	}
	c.mu.Lock()
	c.names[id] = n
	c.mu.Unlock()
	return n
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parse(args, stderr)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	f, err := fleet.Dial(dctx, cfg.server, cfg.token, fleet.WithWorkers(cfg.workers), fleet.WithCallTimeout(cfg.timeout))
	if err != nil {
		return err
	}
	defer f.Close()
	con := &console{f: f, out: stdout, names: map[string]string{}}

	devs, err := f.Devices(ctx, fleet.DeviceFilter{})
	if err != nil {
		return err
	}
	online := 0
	for _, d := range devs {
		con.names[d.ID] = d.Name
		if d.Online {
			online++
		}
	}
	con.printf("fleet: %d devices, %d online", len(devs), online)

	if !cfg.once {
		sub, err := f.Subscribe(ctx, fleet.StreamFilter{}, func(e fleet.Event) { con.event(ctx, e) })
		if err != nil {
			return err
		}
		defer sub.Close()
		con.printf("watching live events (Ctrl-C to stop)")
	}
	if err := con.callAll(ctx, cfg); err != nil || cfg.once {
		return err
	}
	var tick <-chan time.Time
	if cfg.every > 0 {
		t := time.NewTicker(cfg.every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
			if err := con.callAll(ctx, cfg); err != nil {
				return err
			}
		}
	}
}

// callAll calls the method on every device online now, asynchronously,
// printing each answer as it arrives, and returns when all have answered
// or failed.
func (c *console) callAll(ctx context.Context, cfg *config) error {
	devs, err := c.f.Devices(ctx, fleet.DeviceFilter{Online: new(true)})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	c.printf("%s on %d online devices", cfg.method, len(devs))
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		ok, fail int
	)
	type call struct {
		dev   fleet.Device
		start time.Time
	}
	done := func(res json.RawMessage, err error, param any) {
		defer wg.Done()
		p := param.(call)
		took := time.Since(p.start).Round(100 * time.Microsecond)
		mu.Lock()
		if err != nil {
			fail++
		} else {
			ok++
		}
		mu.Unlock()
		if err != nil {
			c.printf("  %-16s error %8s  %s", p.dev.Name, took, describe(err))
			return
		}
		c.printf("  %-16s ok    %8s  %s", p.dev.Name, took, res)
	}
	for _, d := range devs {
		c.mu.Lock()
		c.names[d.ID] = d.Name
		c.mu.Unlock()
		wg.Add(1)
		if err := c.f.CallAsync(ctx, d.ID, cfg.method, cfg.args, done, call{d, time.Now()}); err != nil {
			wg.Done()
			if ctx.Err() != nil {
				break
			}
			return err
		}
	}
	wg.Wait()
	c.printf("%s: %d ok, %d failed", cfg.method, ok, fail)
	return nil
}

// describe turns a call error into a short reason.
func describe(err error) string {
	var remote *fleet.RemoteError
	switch {
	case errors.Is(err, fleet.ErrTimeout):
		return "did not answer in time"
	case errors.Is(err, fleet.ErrOffline):
		return "went offline"
	case errors.Is(err, fleet.ErrUnknownMethod):
		return "has no such method"
	case errors.As(err, &remote):
		return "handler failed: " + remote.Message
	}
	return err.Error()
}

// event prints one live event.
func (c *console) event(ctx context.Context, e fleet.Event) {
	switch e.Kind {
	case fleet.KindPresence:
		p, err := e.Presence()
		if err != nil {
			break
		}
		state := "online"
		if !p.Online {
			state = "offline"
			if p.Reason != "" {
				state += " (" + p.Reason + ")"
			}
		}
		c.printf("%-12s %-16s %s", e.Kind, c.name(ctx, e.DeviceID), state)
		return
	case fleet.KindTelemetry:
		t, err := e.Telemetry()
		if err != nil {
			break
		}
		// The last value of each feed in the batch.
		last := map[string]string{}
		for _, r := range t.Readings {
			last[r.Feed] = string(r.Value)
		}
		feeds := make([]string, 0, len(last))
		for feed, v := range last {
			feeds = append(feeds, feed+"="+v)
		}
		sort.Strings(feeds)
		unit := "readings"
		if len(t.Readings) == 1 {
			unit = "reading"
		}
		c.printf("%-12s %-16s %s (%d %s)", e.Kind, c.name(ctx, e.DeviceID), strings.Join(feeds, " "), len(t.Readings), unit)
		return
	case fleet.KindGap:
		g, err := e.Gap()
		if err != nil {
			break
		}
		if g.Unknown {
			c.printf("%-12s the platform restarted: events may have been lost", e.Kind)
		} else {
			c.printf("%-12s %d events lost", e.Kind, g.Missed)
		}
		return
	}
	c.printf("%-12s %-16s %s", e.Kind, c.name(ctx, e.DeviceID), e.Data)
}
