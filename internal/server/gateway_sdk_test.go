package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
	"github.com/outpost-iot/outpost/protocol"
)

// TestGatewaySDKRestartBuffered: a gateway built on device.Gateway queues
// its children's readings while it cannot reach the platform, is
// restarted, and delivers every reading, each child's in order, once.
func TestGatewaySDKRestartBuffered(t *testing.T) {
	p := outposttest.Start(t)
	gwd := p.CreateDevice(t, "sdk-gw")
	if st := p.Do(t, "PUT", "/api/v1/gateways/"+gwd.ID, map[string]string{"policy": "auto"}, nil); st != http.StatusOK {
		t.Fatalf("declare gateway: %d", st)
	}
	dir := t.TempDir()
	const nChildren, rounds = 50, 4
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

	// First life: never connected, readings buffered on disk.
	c1, err := device.New(gwd.URL, device.WithOutbox(dir), device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	g1, err := device.NewGateway(c1)
	if err != nil {
		t.Fatal(err)
	}
	for r := 0; r < rounds; r++ {
		var rs []device.ChildReading
		for i := 0; i < nChildren; i++ {
			rs = append(rs, device.ChildReading{Child: fmt.Sprintf("node-%d", i), Reading: device.Reading{Feed: "seq", Value: r, Time: base.Add(time.Duration(r) * time.Second)}})
		}
		if err := g1.AddReadings(rs...); err != nil {
			t.Fatal(err)
		}
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}

	// Second life: connects, announces, delivers.
	c2 := connect(t, gwd.URL, device.WithOutbox(dir))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c2.Publish(ctx); err != nil {
		t.Fatalf("publish: %v", err)
	}
	cs := children(t, p, gwd.ID)
	if len(cs) != nChildren {
		t.Fatalf("%d children, want %d", len(cs), nChildren)
	}
	for i := 0; i < nChildren; i++ {
		if got := readingsOf(t, p, cs[fmt.Sprintf("node-%d", i)], "seq"); strings.Join(got, ",") != "0,1,2,3" {
			t.Fatalf("node-%d readings = %v", i, got)
		}
	}
}

// TestGatewaySDKCallsAndConfig: calls for children, sink configuration and
// sends answered by device.Gateway handlers.
func TestGatewaySDKCallsAndConfig(t *testing.T) {
	p := outposttest.Start(t)
	gwd := p.CreateDevice(t, "sdk-gw")
	p.Do(t, "PUT", "/api/v1/gateways/"+gwd.ID, map[string]string{"policy": "auto"}, nil)
	c, err := device.New(gwd.URL, device.WithMemoryOutbox(), device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	g, err := device.NewGateway(c)
	if err != nil {
		t.Fatal(err)
	}
	g.HandleChild("temp", func(_ context.Context, addr string, _ json.RawMessage) (any, error) { return "t@" + addr, nil })
	g.HandleSinkConfig(func(_ context.Context, sink string, change json.RawMessage) (json.RawMessage, string, error) {
		if strings.Contains(string(change), "99") {
			return nil, protocol.ResultInvalidConfig, fmt.Errorf("channel 99 is out of range")
		}
		return json.RawMessage(`{"network_address":7,"channel":9}`), protocol.ResultOK, nil
	})
	g.HandleSend(func(_ context.Context, req protocol.SendRequest) (string, error) {
		if req.Dest == "404" {
			return protocol.ResultInvalidDest, nil
		}
		return protocol.ResultOK, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := g.SetSinks(ctx, map[string]json.RawMessage{"s1": json.RawMessage(`{"network_address":7,"channel":5}`)}); err != nil {
		t.Fatal(err)
	}
	if err := g.Join(ctx, map[string]string{"a1": "s1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	var a1 string
	outposttest.Eventually(t, 10*time.Second, "child announced on connect", func() bool {
		a1 = children(t, p, gwd.ID)["a1"]
		return a1 != "" && online(t, p, a1)
	})
	var res struct {
		Result json.RawMessage `json:"result"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+a1+"/rpc/temp", nil, &res); st != 200 || string(res.Result) != `"t@a1"` {
		t.Fatalf("child call: %d %s", st, res.Result)
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+a1+"/rpc/nope", nil, nil); st != 501 {
		t.Fatalf("unknown child method: %d", st)
	}
	var cres struct {
		Result  string `json:"result"`
		Message string `json:"message"`
	}
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/s1/config", `{"config":{"channel":9}}`, &cres); st != 200 || cres.Result != "ok" {
		t.Fatalf("config: %d %+v", st, cres)
	}
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/s1/config", `{"config":{"channel":99}}`, &cres); st != 200 || cres.Result != "invalid_config" || !strings.Contains(cres.Message, "99") {
		t.Fatalf("rejected config: %d %+v", st, cres)
	}
	// A queued feed command for a child reaches the handler and is
	// confirmed.
	got := make(chan string, 1)
	g.HandleChildMessage(func(_ context.Context, addr, kind string, msg json.RawMessage) error {
		got <- addr + " " + kind + " " + string(msg)
		return nil
	})
	if err := g.SendChild(ctx, "a1", "feeds", map[string]any{"register": []map[string]string{{"ref": "valve", "type": "IN_OUT", "data_type": "bool"}}}); err != nil {
		t.Fatal(err)
	}
	if err := g.SendChildEvent(ctx, "a1", "opened", map[string]int{"door": 1}); err != nil {
		t.Fatal(err)
	}
	events := openStream(t, p, "?kind=queue&device="+a1)
	var cmd struct {
		ID string `json:"id"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+a1+"/feeds/valve/value", map[string]any{"value": true}, &cmd); st != http.StatusAccepted {
		t.Fatalf("feed command: %d", st)
	}
	if m := <-got; !strings.HasPrefix(m, "a1 feed ") || !strings.Contains(m, cmd.ID) {
		t.Fatalf("child message %s", m)
	}
	for {
		var m struct{ ID, State string }
		json.Unmarshal(next(t, events).data, &m)
		if m.ID == cmd.ID && m.State == "delivered" {
			break
		}
	}
	var evs struct {
		Events []struct {
			Name string `json:"name"`
		} `json:"events"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+a1+"/events", nil, &evs)
	if len(evs.Events) != 1 || evs.Events[0].Name != "opened" {
		t.Fatalf("child events %+v", evs)
	}

	var sres struct {
		Result string `json:"result"`
	}
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/s1/send", `{"dst":"404","src_ep":1,"dst_ep":1,"payload":""}`, &sres); st != 200 || sres.Result != "invalid_destination" {
		t.Fatalf("send: %d %+v", st, sres)
	}
}

// TestGatewayRateLimit: the per-device rate limit holds for a gateway's
// readings, whatever children they are for; refused batches are resent
// and nothing is lost.
func TestGatewayRateLimit(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.DeviceRate, c.DeviceBurst = 400, 100 })
	gwd := p.CreateDevice(t, "chatty-gw")
	p.Do(t, "PUT", "/api/v1/gateways/"+gwd.ID, map[string]string{"policy": "auto"}, nil)
	c, err := device.New(gwd.URL, device.WithMemoryOutbox(), device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g, err := device.NewGateway(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	const n, kids = 600, 10
	base := time.UnixMilli(1_700_000_000_000)
	for i := 0; i < n; i += 50 {
		var rs []device.ChildReading
		for j := i; j < i+50; j++ {
			rs = append(rs, device.ChildReading{Child: fmt.Sprintf("k%d", j%kids), Reading: device.Reading{Feed: "n", Value: j, Time: base.Add(time.Duration(j) * time.Millisecond)}})
		}
		if err := g.AddReadings(rs...); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	cs := children(t, p, gwd.ID)
	for k := 0; k < kids; k++ {
		got := readingsOf(t, p, cs[fmt.Sprintf("k%d", k)], "n")
		if len(got) != n/kids {
			t.Fatalf("child k%d has %d readings, want %d", k, len(got), n/kids)
		}
		for i, v := range got {
			if v != fmt.Sprint(k+i*kids) {
				t.Fatalf("child k%d reading %d = %s, want %d (in order, once)", k, i, v, k+i*kids)
			}
		}
	}
	if got := metric(t, p, "outpost_telemetry_rate_limited_total"); got < 1 {
		t.Fatalf("outpost_telemetry_rate_limited_total = %v, want refusals counted", got)
	}
}
