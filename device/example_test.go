package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/server"
)

// startPlatform runs a throwaway platform for the examples and returns a
// fleet client for it and a function that stops it. Real devices connect to
// an `outpost serve` instead.
func startPlatform() (*fleet.Client, func()) {
	dir, err := os.MkdirTemp("", "outpost-example")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	s, err := server.Open(ctx, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	f, err := fleet.Dial(ctx, s.HTTPURL(), s.AdminToken())
	if err != nil {
		log.Fatal(err)
	}
	return f, func() { f.Close(); s.Close(); os.RemoveAll(dir) }
}

// A device that sends readings and answers a remote call.
func Example() {
	f, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created, _ := f.CreateDevice(ctx, "pump-7")

	// On the device: connect with the URL the platform gave.
	c, err := device.New(created.URL)
	if err != nil {
		log.Fatal(err)
	}
	c.Handle("set_speed", func(ctx context.Context, args json.RawMessage) (any, error) {
		var in struct{ RPM int }
		if err := json.Unmarshal(args, &in); err != nil {
			return nil, err
		}
		if in.RPM > 3000 {
			return nil, errors.New("rpm above 3000 is unsafe")
		}
		return map[string]int{"rpm": in.RPM}, nil
	})
	if err := c.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	c.AddAt("pressure", 2.5, t0)
	c.AddAt("running", true, t0.Add(time.Second))
	if err := c.Publish(ctx); err != nil { // returns once stored
		log.Fatal(err)
	}

	// In the application: read the data, call the device.
	rs, _ := f.Telemetry(ctx, created.ID, fleet.TelemetryQuery{})
	for _, r := range rs {
		fmt.Println(r.Feed, string(r.Value), r.Time().UTC().Format(time.TimeOnly))
	}
	res, _ := f.Call(ctx, created.ID, "set_speed", map[string]int{"rpm": 1200})
	fmt.Println(string(res))
	_, err = f.Call(ctx, created.ID, "set_speed", map[string]int{"rpm": 9000})
	var remote *fleet.RemoteError
	if errors.As(err, &remote) {
		fmt.Println("device refused:", remote.Message)
	}
	// Output:
	// pressure 2.5 00:00:00
	// running true 00:00:01
	// {"rpm":1200}
	// device refused: rpm above 3000 is unsafe
}

// The built-in reset method calls the function given to WithReset, after
// answering the caller.
func ExampleWithReset() {
	f, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created, _ := f.CreateDevice(ctx, "gateway")

	reset := make(chan struct{})
	c, _ := device.New(created.URL, device.WithReset(func(context.Context) error {
		close(reset) // a real device would restart itself here
		return nil
	}))
	if err := c.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	res, err := f.Call(ctx, created.ID, "reset", nil)
	fmt.Println(string(res), err)
	<-reset
	fmt.Println("reset done")
	// Output:
	// "resetting" <nil>
	// reset done
}
