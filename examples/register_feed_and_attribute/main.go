// Command register_feed_and_attribute tells the platform what a device is
// and what it measures: it registers two feeds (a temperature in CELSIUS
// and a relay that applications may switch), sets two attributes, sends
// one reading of each feed, and exits.
//
//	OUTPOST_DEVICE_URL=mqtt://ID:PASSWORD@127.0.0.1:1883 go run ./examples/register_feed_and_attribute
//	outpost model ID
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/protocol"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := run(log); err != nil {
		fmt.Fprintln(os.Stderr, "register_feed_and_attribute:", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	url := os.Getenv("OUTPOST_DEVICE_URL")
	if url == "" {
		return errors.New("set OUTPOST_DEVICE_URL to mqtt://ID:PASSWORD@HOST:PORT (from `outpost device create`)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Error replies from the platform (a rejected feed or reading) are
	// collected so the program can report them.
	rejected := make(chan protocol.ErrorReply, 10)
	c, err := device.New(url, device.WithLogger(log), device.WithErrorHandler(func(e protocol.ErrorReply) { rejected <- e }))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Connect(ctx); err != nil {
		return err
	}

	err = c.RegisterFeeds(ctx,
		device.Feed{Ref: "temperature", Name: "Temperature", Type: device.FeedIn, DataType: device.Number, Unit: "CELSIUS"},
		device.Feed{Ref: "relay", Name: "Relay", Type: device.FeedInOut, DataType: device.Bool},
	)
	if err != nil {
		return fmt.Errorf("register feeds: %w", err)
	}
	fmt.Println("registered feeds temperature (IN, number, CELSIUS) and relay (IN_OUT, bool)")

	for _, a := range []struct {
		name, dataType string
		value          any
	}{
		{"model", device.String, "TH-100"},
		{"serial", device.Hex, "00a4f7"},
	} {
		if err := c.SetAttribute(ctx, a.name, a.dataType, a.value); err != nil {
			return fmt.Errorf("attribute %s: %w", a.name, err)
		}
		fmt.Printf("attribute %s = %v\n", a.name, a.value)
	}

	c.Add("temperature", 21.5)
	c.Add("relay", false)
	if err := c.Publish(ctx); err != nil {
		return err
	}
	fmt.Println("sent temperature 21.5 and relay false")

	select {
	case e := <-rejected:
		return fmt.Errorf("platform rejected a %s message: %s (%s)", e.Kind, e.Message, e.Code)
	default:
	}
	return nil
}
