// Command full is an Outpost device that uses every capability of the
// device SDK at once:
//
//   - RPC: a custom "status" method and the built-in reset;
//
//   - feeds: registers a temperature (IN, CELSIUS), a relay (IN_OUT), a
//     position (location) and a radio address (hex), and sends readings;
//
//   - feed commands: switches the relay when an application sets it
//     (`outpost feed set ID relay true`) and reports the new state;
//
//   - attributes: model and firmware version;
//
//   - parameters: takes its reporting interval from the "interval"
//     parameter (`outpost params set ID interval=5`) and reports it back;
//
//   - time: asks the platform for its time and prints the clock offset;
//
//   - events and notifications: a "relay_changed" event on every switch, a
//     notification when it starts;
//
//   - raw publish: a debug line under up/raw/debug every round;
//
//   - heartbeat: prints the keep-alive the platform dictated.
//
//     OUTPOST_DEVICE_URL=mqtt://ID:PASSWORD@127.0.0.1:1883 go run ./examples/full [-rounds N]
//     outpost stream --device ID
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
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/outpost-iot/outpost/device"
)

func main() {
	rounds := flag.Int("rounds", 0, "stop after this many reporting rounds (0: run until interrupted)")
	flag.Parse()
	url := os.Getenv("OUTPOST_DEVICE_URL")
	if url == "" {
		fmt.Fprintln(os.Stderr, "full: set OUTPOST_DEVICE_URL to mqtt://ID:PASSWORD@HOST:PORT (from `outpost device create`)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := run(ctx, url, *rounds, os.Stdout, log); err != nil {
		fmt.Fprintln(os.Stderr, "full:", err)
		os.Exit(1)
	}
}

// lockedWriter serialises output from the handlers and the main loop.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format+"\n", args...)
}

func run(ctx context.Context, url string, rounds int, w io.Writer, log *slog.Logger) error {
	out := &lockedWriter{w: w}
	c, err := device.New(url, device.WithLogger(log),
		device.WithReset(func(context.Context) error {
			out.printf("reset requested (a real device would reboot now)")
			return nil
		}))
	if err != nil {
		return err
	}
	defer c.Close()

	var relay atomic.Bool
	var interval atomic.Int64
	interval.Store(int64(2 * time.Second))

	// RPC.
	err = c.Handle("status", func(context.Context, json.RawMessage) (any, error) {
		return map[string]any{"relay": relay.Load(), "interval_s": time.Duration(interval.Load()).Seconds()}, nil
	})
	if err != nil {
		return err
	}
	// Feed commands for the IN_OUT relay feed.
	err = c.HandleFeed("relay", func(ctx context.Context, cmd device.FeedCommand) error {
		var on bool
		if err := json.Unmarshal(cmd.Value, &on); err != nil {
			return err
		}
		relay.Store(on)
		out.printf("relay set to %v (issued %s ago)", on, time.Since(cmd.IssuedAt).Round(time.Millisecond))
		c.Add("relay", on)
		if err := c.Publish(ctx); err != nil {
			return err
		}
		return c.SendEvent(ctx, "relay_changed", map[string]bool{"on": on})
	})
	if err != nil {
		return err
	}
	// Parameters: the platform's "interval" (seconds) sets the reporting
	// interval. The SDK pulls the full set on every connection.
	err = c.HandleParameters(func(ctx context.Context, u device.ParametersUpdate) {
		raw, ok := u.Values["interval"]
		if !ok {
			return
		}
		var s float64
		if json.Unmarshal(raw, &s) != nil || s < 0.05 || s > 3600 {
			out.printf("ignoring interval parameter %s", raw)
			return
		}
		interval.Store(int64(s * float64(time.Second)))
		out.printf("interval parameter: %gs (version %d)", s, u.Version)
		if err := c.ReportParameters(ctx, map[string]any{"interval": s}); err != nil {
			log.Warn("report parameters", "error", err)
		}
	})
	if err != nil {
		return err
	}

	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Connect(cctx); err != nil {
		return err
	}
	out.printf("connected as %s; platform keep-alive %s", c.ID(), c.KeepAlive())

	// Device model.
	err = c.RegisterFeeds(cctx,
		device.Feed{Ref: "temperature", Name: "Temperature", DataType: device.Number, Unit: "CELSIUS"},
		device.Feed{Ref: "relay", Name: "Relay", Type: device.FeedInOut, DataType: device.Bool},
		device.Feed{Ref: "position", Name: "Position", DataType: device.Location},
		device.Feed{Ref: "radio", Name: "Radio address", DataType: device.Hex},
	)
	if err != nil {
		return fmt.Errorf("register feeds: %w", err)
	}
	for name, v := range map[string]string{"model": "FULL-1", "firmware": "1.4.2"} {
		if err := c.SetAttribute(cctx, name, device.String, v); err != nil {
			return fmt.Errorf("attribute %s: %w", name, err)
		}
	}
	if _, err := c.PlatformTime(cctx); err != nil {
		return fmt.Errorf("platform time: %w", err)
	}
	out.printf("platform clock is %s ahead of ours", c.ClockOffset().Round(time.Millisecond))
	if err := c.SendNotification(cctx, "Device started", "full example "+c.ID()+" is up"); err != nil {
		return err
	}
	c.Add("radio", "00a4f7")
	c.Add("relay", false)

	start := time.Now()
	for round := 1; rounds == 0 || round <= rounds; round++ {
		t := time.Since(start).Seconds()
		temp := math.Round((21+2*math.Sin(t/60))*100) / 100
		c.Add("temperature", temp)
		c.Add("position", device.LocationValue{Lat: 45.815 + t/1e5, Lon: 15.982})
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.Publish(pctx)
		if err == nil {
			err = c.PublishRaw(pctx, "debug", []byte(fmt.Sprintf("round %d temp %.2f", round, temp)))
		}
		pcancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("publish failed; readings stay queued", "error", err)
		} else {
			out.printf("round %d: temperature %.2f sent", round, temp)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(interval.Load())):
		}
	}
	if c.Pending() > 0 {
		return errors.New("readings left unsent")
	}
	return nil
}
