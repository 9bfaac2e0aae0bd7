package device_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"sort"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
)

// A gateway that speaks for three nodes behind one sink: their readings
// travel in one message through the durable outbox, and a call to a node
// is routed through the gateway to its handler.
func ExampleNewGateway() {
	f, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	gw, _ := f.CreateDevice(ctx, "mesh-gateway")
	f.SetGateway(ctx, gw.ID, "auto") // its nodes become devices as it announces them

	c, err := device.New(gw.URL, device.WithMemoryOutbox())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	g, _ := device.NewGateway(c)
	g.HandleChild("blink", func(_ context.Context, node string, args json.RawMessage) (any, error) {
		return "node " + node + " blinked " + string(args) + " times", nil
	})
	g.SetSinks(ctx, map[string]json.RawMessage{"sink1": json.RawMessage(`{"network_address":1234}`)})
	g.Join(ctx, map[string]string{"1001": "sink1", "1002": "sink1", "1003": "sink1"})
	if err := c.Connect(ctx); err != nil {
		log.Fatal(err)
	}

	now := time.Now()
	var rs []device.ChildReading
	for i, node := range []string{"1001", "1002", "1003"} {
		rs = append(rs, device.ChildReading{Child: node, Reading: device.Reading{Feed: "temperature", Value: 20 + i, Time: now}})
	}
	g.AddReadings(rs...)
	if err := c.Publish(ctx); err != nil { // the PUBACK means every node's readings are stored
		log.Fatal(err)
	}

	children, _ := f.Children(ctx, gw.ID)
	sort.Slice(children, func(i, j int) bool { return children[i].Address < children[j].Address })
	for _, ch := range children {
		rs, _ := f.Telemetry(ctx, ch.DeviceID, fleet.TelemetryQuery{Feed: "temperature"})
		fmt.Println(ch.Address, string(rs[0].Value))
	}
	res, err := f.Call(ctx, children[1].DeviceID, "blink", 3)
	fmt.Println(string(res), err)
	// Output:
	// 1001 20
	// 1002 21
	// 1003 22
	// "node 1002 blinked 3 times" <nil>
}
