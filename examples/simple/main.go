// Command simple is the smallest useful Outpost device: it sends a
// temperature reading every few seconds and answers one custom RPC,
// "set_interval", that changes how often it measures.
//
//	OUTPOST_DEVICE_URL=mqtt://ID:PASSWORD@127.0.0.1:1883 go run ./examples/simple
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/outpost-iot/outpost/device"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("simple device stopped", "error", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	url := os.Getenv("OUTPOST_DEVICE_URL")
	if url == "" {
		return errors.New("set OUTPOST_DEVICE_URL to mqtt://ID:PASSWORD@HOST:PORT (from `outpost device create`)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	c, err := device.New(url, device.WithLogger(log))
	if err != nil {
		return err
	}
	defer c.Close() // also when Connect fails: the outbox stays on disk
	var interval atomic.Int64
	interval.Store(int64(2 * time.Second))
	err = c.Handle("set_interval", func(ctx context.Context, args json.RawMessage) (any, error) {
		var in struct {
			Seconds float64 `json:"seconds"`
		}
		if err := json.Unmarshal(args, &in); err != nil || in.Seconds < 0.1 || in.Seconds > 3600 {
			return nil, errors.New(`want {"seconds": N} with 0.1 <= N <= 3600`)
		}
		interval.Store(int64(in.Seconds * float64(time.Second)))
		return map[string]float64{"seconds": in.Seconds}, nil
	})
	if err != nil {
		return err
	}

	// Connect fails with the cause of the last attempt (connection
	// refused, bad credentials, not an Outpost platform…) when the
	// platform cannot be reached within 30 s; every failed attempt is
	// logged on the way.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.Connect(cctx)
	cancel()
	if err != nil {
		return err
	}
	log.Info("connected; sending temperature readings", "device_id", c.ID())

	start := time.Now()
	for {
		t := time.Since(start).Seconds()
		temp := 21 + 2*math.Sin(t/60) + rand.Float64()*0.2
		temp = math.Round(temp*100) / 100
		if err := c.Add("temperature", temp); err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := c.Publish(pctx); err != nil {
			// The readings stay queued and go out with the next Publish.
			log.Warn("publish failed; will retry", "error", err, "pending", c.Pending())
		} else {
			fmt.Printf("temperature %.2f sent\n", temp)
		}
		cancel()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(interval.Load())):
		}
	}
}
