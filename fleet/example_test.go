package fleet_test

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
