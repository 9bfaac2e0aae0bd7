package fleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/server"
)

// Calling a device and telling the failures apart.
func Example() {
	// A throwaway platform; in real use, the URL and token of `outpost serve`.
	dir, _ := os.MkdirTemp("", "fleet-example")
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := server.Open(ctx, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	f, err := fleet.Dial(ctx, s.HTTPURL(), s.AdminToken())
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()

	lamp, _ := f.CreateDevice(ctx, "lamp")
	idle, _ := f.CreateDevice(ctx, "idle") // never connects

	dev, _ := device.New(lamp.URL)
	dev.Handle("toggle", func(ctx context.Context, _ json.RawMessage) (any, error) { return map[string]bool{"on": true}, nil })
	dev.Handle("overheat", func(ctx context.Context, _ json.RawMessage) (any, error) { return nil, errors.New("bulb too hot") })
	if err := dev.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	defer dev.Close()

	online := true
	devs, _ := f.Devices(ctx, fleet.DeviceFilter{Online: &online})
	for _, d := range devs {
		fmt.Println("online:", d.Name)
	}

	res, err := f.Call(ctx, lamp.ID, "toggle", nil)
	fmt.Println(string(res), err)

	_, err = f.Call(ctx, lamp.ID, "overheat", nil)
	var remote *fleet.RemoteError
	fmt.Println(errors.As(err, &remote), remote.Message)

	_, err = f.Call(ctx, lamp.ID, "dance", nil)
	fmt.Println(errors.Is(err, fleet.ErrUnknownMethod))

	_, err = f.Call(ctx, idle.ID, "toggle", nil)
	fmt.Println(errors.Is(err, fleet.ErrOffline))

	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	dev.Handle("slow", func(ctx context.Context, _ json.RawMessage) (any, error) { <-ctx.Done(); return nil, ctx.Err() })
	_, err = f.Call(short, lamp.ID, "slow", nil)
	fmt.Println(errors.Is(err, fleet.ErrTimeout))

	_, err = f.Device(ctx, "d-missing")
	fmt.Println(errors.Is(err, fleet.ErrNotFound))
	// Output:
	// online: lamp
	// {"on":true} <nil>
	// true bulb too hot
	// true
	// true
	// true
	// true
}

// startPlatform runs a throwaway platform; in real use, the URL and token
// of `outpost serve`.
func startPlatform() (s *server.Server, stop func()) {
	dir, err := os.MkdirTemp("", "fleet-example")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err = server.Open(ctx, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	return s, func() { s.Close(); os.RemoveAll(dir) }
}

// startDevice connects a device that answers "read" with value.
func startDevice(ctx context.Context, url string, value float64) *device.Client {
	dev, err := device.New(url)
	if err != nil {
		log.Fatal(err)
	}
	dev.Handle("read", func(context.Context, json.RawMessage) (any, error) { return value, nil })
	if err := dev.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	return dev
}

// Asking every sensor at once and handling each answer as it comes, with
// the sensor's name as the callback's parameter.
func ExampleClient_CallAsync() {
	s, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Four workers: one slow callback does not hold up the others.
	f, err := fleet.Dial(ctx, s.HTTPURL(), s.AdminToken(), fleet.WithWorkers(4))
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()

	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got = map[string]string{}
	)
	record := func(res json.RawMessage, err error, param any) {
		defer wg.Done()
		mu.Lock()
		defer mu.Unlock()
		switch {
		case errors.Is(err, fleet.ErrOffline):
			got[param.(string)] = "offline"
		case err != nil:
			got[param.(string)] = err.Error()
		default:
			got[param.(string)] = string(res)
		}
	}
	for i, name := range []string{"north", "south", "east", "west"} {
		d, err := f.CreateDevice(ctx, name)
		if err != nil {
			log.Fatal(err)
		}
		if name != "west" { // west never connects
			defer startDevice(ctx, d.URL, 18.5+float64(i)).Close()
		}
		wg.Add(1)
		if err := f.CallAsync(ctx, d.ID, "read", nil, record, name); err != nil {
			wg.Done()
			log.Fatal(err)
		}
	}
	wg.Wait()
	for _, name := range slices.Sorted(maps.Keys(got)) {
		fmt.Println(name, got[name])
	}
	// Output:
	// east 20.5
	// north 18.5
	// south 19.5
	// west offline
}

// Calling one method on every online device and collecting the results.
func ExampleClient_Broadcast() {
	s, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f, err := fleet.Dial(ctx, s.HTTPURL(), s.AdminToken())
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	for i, name := range []string{"pump-1", "pump-2", "pump-3"} {
		d, err := f.CreateDevice(ctx, name)
		if err != nil {
			log.Fatal(err)
		}
		defer startDevice(ctx, d.URL, float64(i*10)).Close()
	}

	online, err := f.Devices(ctx, fleet.DeviceFilter{Online: new(true)})
	if err != nil {
		log.Fatal(err)
	}
	ids := make([]string, len(online))
	for i, d := range online {
		ids[i] = d.ID
	}
	ids = append(ids, "d-unknown")
	for i, r := range f.Broadcast(ctx, ids, "read", nil) {
		name := "d-unknown"
		if i < len(online) {
			name = online[i].Name
		}
		if r.Err != nil {
			fmt.Println(name, "failed:", errors.Is(r.Err, fleet.ErrNotFound))
			continue
		}
		fmt.Println(name, string(r.Result))
	}
	// Output:
	// pump-1 0
	// pump-2 10
	// pump-3 20
	// d-unknown failed: true
}

// Watching one device come online and send telemetry.
func ExampleClient_Subscribe() {
	s, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f, err := fleet.Dial(ctx, s.HTTPURL(), s.AdminToken())
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	d, err := f.CreateDevice(ctx, "thermometer")
	if err != nil {
		log.Fatal(err)
	}

	events := make(chan fleet.Event, 10)
	sub, err := f.Subscribe(ctx, fleet.StreamFilter{
		DeviceIDs: []string{d.ID},
		Kinds:     []string{fleet.KindPresence, fleet.KindTelemetry},
	}, func(e fleet.Event) { events <- e })
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	dev := startDevice(ctx, d.URL, 0)
	defer dev.Close()
	dev.AddAt("temperature", 21.5, time.UnixMilli(1_750_000_000_000))
	if err := dev.Publish(ctx); err != nil {
		log.Fatal(err)
	}

	for range 2 {
		e := <-events
		switch e.Kind {
		case fleet.KindPresence:
			p, _ := e.Presence()
			fmt.Println("presence: online", p.Online)
		case fleet.KindTelemetry:
			t, _ := e.Telemetry()
			for _, r := range t.Readings {
				fmt.Println("telemetry:", r.Feed, string(r.Value), r.Time().UTC().Format(time.RFC3339))
			}
		case fleet.KindGap:
			g, _ := e.Gap()
			fmt.Println("lost events:", g.Missed)
		}
	}
	// Output:
	// presence: online true
	// telemetry: temperature 21.5 2025-06-15T15:06:40Z
}
