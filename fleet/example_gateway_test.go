package fleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"sort"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/protocol"
)

// Controlling a mesh network through its gateway, Wirepas style: list the
// sinks, send to a node synchronously, broadcast from every sink of the
// network, and send asynchronously with a callback and a parameter.
func ExampleClient_SendMessage() {
	s, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f, err := fleet.Dial(ctx, s.HTTPURL(), s.AdminToken())
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()

	// The gateway: a device the operator declares a gateway, running
	// device.Gateway with two sinks on network 1234.
	gw, _ := f.CreateDevice(ctx, "mesh-gateway")
	if _, err := f.SetGateway(ctx, gw.ID, "auto"); err != nil {
		log.Fatal(err)
	}
	dev, _ := device.New(gw.URL, device.WithMemoryOutbox())
	defer dev.Close()
	g, _ := device.NewGateway(dev)
	g.HandleSend(func(_ context.Context, req protocol.SendRequest) (string, error) {
		if req.Dest != protocol.BroadcastAddress && req.Dest != "1001" {
			return protocol.ResultInvalidDest, nil
		}
		return protocol.ResultOK, nil
	})
	g.SetSinks(ctx, map[string]json.RawMessage{
		"sink1": json.RawMessage(`{"network_address":1234,"channel":5}`),
		"sink2": json.RawMessage(`{"network_address":1234,"channel":7}`),
	})
	g.Join(ctx, map[string]string{"1001": "sink1"})
	if err := dev.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	// The gateway declares its sinks once connected: wait for them.
	for ctx.Err() == nil {
		if ss, _ := f.Sinks(ctx, ""); len(ss) == 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	sinks, _ := f.Sinks(ctx, "")
	for _, k := range sinks {
		fmt.Printf("[%s] network %s\n", k.Name, k.Network())
	}

	res, err := f.SendMessage(ctx, gw.ID, "sink1", "1001", 1, 1, []byte("hello"), fleet.MessageOptions{Timeout: 2 * time.Second})
	fmt.Println(res, err)
	res, _ = f.SendMessage(ctx, gw.ID, "sink1", "4242", 1, 1, []byte("hello"), fleet.MessageOptions{})
	fmt.Println(res)

	results, _ := f.BroadcastMessage(ctx, 1234, 1, 1, []byte("to all"), fleet.MessageOptions{})
	for _, r := range results {
		fmt.Println("broadcast from", r.Sink, r.Result)
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	var done []string
	for _, node := range []string{"1001", "4242"} {
		wg.Add(1)
		f.SendMessageAsync(ctx, gw.ID, "sink1", node, 1, 1, []byte("ping"), fleet.MessageOptions{},
			func(res fleet.ResultCode, err error, param any) {
				defer wg.Done()
				mu.Lock()
				done = append(done, fmt.Sprintf("%v: %s", param, res))
				mu.Unlock()
			}, node)
	}
	wg.Wait()
	sort.Strings(done)
	fmt.Println(done)
	// Output:
	// [sink1] network 1234
	// [sink2] network 1234
	// ok <nil>
	// invalid_destination
	// broadcast from sink1 ok
	// broadcast from sink2 ok
	// [1001: ok 4242: invalid_destination]
}
