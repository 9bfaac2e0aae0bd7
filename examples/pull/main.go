// Command pull is an Outpost PULL device: a battery-powered sensor that
// wakes up now and then, connects, exchanges everything with the platform
// in one go and disconnects again.
//
// Each cycle it
//
//  1. takes a few temperature readings into its durable outbox (they are
//     on disk before they are sent, so they survive the process being
//     killed and the platform being unreachable for a while);
//  2. connects in PULL mode (device.WithPullMode), so the platform keeps
//     what it queued for the device until the device asks for it;
//  3. calls Pull: the outbox is uploaded, then the queued calls and feed
//     commands arrive and are answered before Pull returns;
//  4. disconnects and sleeps for the interval.
//
// While it sleeps, queue work for it; it runs on the next wake-up:
//
//	outpost rpc ID set_interval '{"seconds": 60}' --queue --ttl 1h
//	outpost feed set ID valve true
//	outpost call list ID
//
// Run it with the device's URL (from `outpost device create`):
//
//	OUTPOST_DEVICE_URL=mqtt://ID:PASSWORD@127.0.0.1:1883 go run ./examples/pull [-interval 30s] [-once] [-outbox DIR]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-iot/outpost/device"
)

func main() {
	interval := flag.Duration("interval", 30*time.Second, "sleep between wake-ups (the set_interval call changes it)")
	once := flag.Bool("once", false, "do one cycle and exit")
	readings := flag.Int("readings", 3, "temperature readings taken per cycle")
	outbox := flag.String("outbox", "", "directory of the durable outbox (default: $OUTPOST_OUTBOX_DIR/ID, else the user cache directory's outpost/outbox/ID)")
	flag.Parse()
	u := os.Getenv("OUTPOST_DEVICE_URL")
	if u == "" {
		fmt.Fprintln(os.Stderr, "pull: set OUTPOST_DEVICE_URL to mqtt://ID:PASSWORD@HOST:PORT (from `outpost device create`)")
		os.Exit(2)
	}
	cfg := config{URL: u, Outbox: *outbox, Interval: *interval, Readings: *readings}
	if *once {
		cfg.Cycles = 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := run(ctx, cfg, os.Stdout, log); err != nil {
		fmt.Fprintln(os.Stderr, "pull:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	URL      string
	Outbox   string        // "" for the SDK's default location
	Interval time.Duration // sleep between cycles
	Cycles   int           // 0: until ctx ends
	Readings int           // readings per cycle
}

// sensor is the device's state across cycles; the handlers change it.
type sensor struct {
	mu       sync.Mutex
	w        io.Writer
	interval time.Duration
}

func (s *sensor) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, format+"\n", args...)
}

func (s *sensor) getInterval() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.interval
}

func run(ctx context.Context, cfg config, w io.Writer, log *slog.Logger) error {
	dir, err := outboxDir(cfg)
	if err != nil {
		return err
	}
	s := &sensor{w: w, interval: cfg.Interval}
	s.printf("outbox: %s", dir)
	for n := 1; cfg.Cycles == 0 || n <= cfg.Cycles; n++ {
		err := cycle(ctx, cfg, dir, n, s, log)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, device.ErrAuth):
			return err // retrying will not help
		case err != nil && n == cfg.Cycles:
			return err
		case err != nil:
			// The readings stay in the outbox for the next cycle.
			log.Warn("cycle failed; will try again", "cycle", n, "error", err)
			s.printf("cycle %d failed: %v", n, err)
		}
		if n == cfg.Cycles {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.getInterval()):
		}
	}
	return nil
}

// cycle is one wake-up: readings into the outbox, connect, pull, close.
// A client lives for one cycle; the next one reopens the same outbox.
func cycle(ctx context.Context, cfg config, dir string, n int, s *sensor, log *slog.Logger) error {
	c, err := device.New(cfg.URL, device.WithPullMode(), device.WithOutbox(dir), device.WithLogger(log))
	if err != nil {
		return err
	}
	defer c.Close() // waits for the handlers; unsent readings stay on disk

	// Take readings, spread over the last interval as if sampled while
	// asleep, before connecting: they are on disk as soon as Add returns,
	// whether or not the platform can be reached.
	now, step := time.Now(), s.getInterval()/time.Duration(max(cfg.Readings, 1))
	for i := range cfg.Readings {
		ts := now.Add(-time.Duration(cfg.Readings-1-i) * step).Truncate(time.Millisecond)
		temp := math.Round((18+3*math.Sin(float64(ts.Unix())/600))*100) / 100
		if err := c.AddAt("temperature", temp, ts); err != nil {
			return fmt.Errorf("add reading: %w", err)
		}
	}

	err = c.Handle("set_interval", func(_ context.Context, args json.RawMessage) (any, error) {
		var a struct {
			Seconds float64 `json:"seconds"`
		}
		if err := json.Unmarshal(args, &a); err != nil || a.Seconds < 0.01 || a.Seconds > 86400 {
			return nil, errors.New(`args must be {"seconds": N} with 0.01 <= N <= 86400`)
		}
		d := time.Duration(a.Seconds * float64(time.Second))
		s.mu.Lock()
		old := s.interval
		s.interval = d
		s.mu.Unlock()
		s.printf("interval set to %s", d)
		return map[string]float64{"previous_seconds": old.Seconds()}, nil
	})
	if err != nil {
		return err
	}
	// Feed commands for the IN_OUT valve feed wait in the queue too. The
	// new state is reported as a reading, sent on the next cycle.
	err = c.HandleFeed("valve", func(_ context.Context, cmd device.FeedCommand) error {
		var on bool
		if err := json.Unmarshal(cmd.Value, &on); err != nil {
			return err
		}
		s.printf("valve set to %v (issued %s ago)", on, time.Since(cmd.IssuedAt).Round(time.Second))
		return c.Add("valve", on)
	})
	if err != nil {
		return err
	}

	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Connect(cctx); err != nil {
		return err
	}
	err = c.RegisterFeeds(cctx,
		device.Feed{Ref: "temperature", Name: "Temperature", DataType: device.Number, Unit: "CELSIUS"},
		device.Feed{Ref: "valve", Name: "Valve", Type: device.FeedInOut, DataType: device.Bool},
	)
	if err != nil {
		return fmt.Errorf("register feeds: %w", err)
	}
	pending := c.Pending()
	res, err := c.Pull(cctx)
	if err != nil {
		return err
	}
	s.printf("cycle %d: sent %d readings, received %d messages, %d expired unseen", n, pending, res.Delivered, res.Expired)
	return nil
}

// outboxDir is cfg.Outbox or, when empty, the SDK's default location for
// the device: $OUTPOST_OUTBOX_DIR/ID, else the user cache directory's
// outpost/outbox/ID.
func outboxDir(cfg config) (string, error) {
	if cfg.Outbox != "" {
		return cfg.Outbox, nil
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.User == nil || u.User.Username() == "" {
		return "", errors.New("OUTPOST_DEVICE_URL must be mqtt://ID:PASSWORD@HOST:PORT")
	}
	base := os.Getenv("OUTPOST_OUTBOX_DIR")
	if base == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("no outbox directory (use -outbox): %w", err)
		}
		base = filepath.Join(cache, "outpost", "outbox")
	}
	return filepath.Join(base, u.User.Username()), nil
}
