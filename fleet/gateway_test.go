package fleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

// simGateway is a gateway built on device.Gateway that records the send
// requests it gets.
type simGateway struct {
	id   string
	g    *device.Gateway
	mu   sync.Mutex
	sent []protocol.SendRequest
	hold chan struct{} // when set, sends wait for it (no answer in time)
}

func (s *simGateway) sends() []protocol.SendRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]protocol.SendRequest(nil), s.sent...)
}

func startSimGateway(t *testing.T, p *outposttest.Platform, f *fleet.Client, name string, sinks map[string]json.RawMessage, nodes map[string]string) *simGateway {
	t.Helper()
	ctx := testCtx(t)
	d, err := f.CreateDevice(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.SetGateway(ctx, d.ID, "auto"); err != nil {
		t.Fatal(err)
	}
	c, err := device.New(d.URL, device.WithMemoryOutbox(), device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &simGateway{id: d.ID}
	if s.g, err = device.NewGateway(c); err != nil {
		t.Fatal(err)
	}
	s.g.HandleChild("ping", func(_ context.Context, addr string, args json.RawMessage) (any, error) {
		return map[string]any{"node": addr, "args": args}, nil
	})
	s.g.HandleSinkConfig(func(_ context.Context, sink string, change json.RawMessage) (json.RawMessage, string, error) {
		if strings.Contains(string(change), "99") {
			return nil, protocol.ResultInvalidConfig, errors.New("channel 99 is out of range")
		}
		// The whole configuration after the change: the sink's, merged.
		var cur, ch map[string]any
		json.Unmarshal(sinks[sink], &cur)
		json.Unmarshal(change, &ch)
		for k, v := range ch {
			cur[k] = v
		}
		raw, _ := json.Marshal(cur)
		return raw, protocol.ResultOK, nil
	})
	s.g.HandleSend(func(ctx context.Context, req protocol.SendRequest) (string, error) {
		s.mu.Lock()
		s.sent = append(s.sent, req)
		hold := s.hold
		s.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-ctx.Done():
			}
		}
		if req.Dest != protocol.BroadcastAddress && nodes[req.Dest] == "" {
			return protocol.ResultInvalidDest, nil
		}
		return protocol.ResultOK, nil
	})
	if err := s.g.SetSinks(ctx, sinks); err != nil {
		t.Fatal(err)
	}
	if err := s.g.Join(ctx, nodes); err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	outposttest.Eventually(t, 10*time.Second, "sinks declared", func() bool {
		ss, _ := f.Sinks(ctx, d.ID)
		return len(ss) == len(sinks)
	})
	return s
}

func TestGateways(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p)
	ctx := testCtx(t)
	g1 := startSimGateway(t, p, f, "gw1", map[string]json.RawMessage{
		"s1": json.RawMessage(`{"network_address":1234,"channel":5}`),
		"s2": json.RawMessage(`{"network_address":1234,"channel":7}`)}, map[string]string{"1001": "s1", "1002": "s2"})
	g2 := startSimGateway(t, p, f, "gw2", map[string]json.RawMessage{
		"s1": json.RawMessage(`{"network_address":99,"channel":5}`)}, map[string]string{"2001": "s1"})

	gws, err := f.Gateways(ctx)
	if err != nil || len(gws) != 2 || gws[0].ID != g1.id || gws[0].Policy != "auto" {
		t.Fatalf("Gateways = %+v, %v", gws, err)
	}
	all, err := f.Sinks(ctx, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("all sinks = %+v, %v", all, err)
	}
	cfg, err := f.SinkConfig(ctx, g1.id, "s2")
	if err != nil || !strings.Contains(string(cfg), `"channel":7`) {
		t.Fatalf("SinkConfig = %s, %v", cfg, err)
	}
	if _, err := f.SinkConfig(ctx, g1.id, "nope"); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("unknown sink: %v", err)
	}

	// Sink configuration: a change, and a refusal (a result, not an error).
	if res, err := f.SetSinkConfig(ctx, g1.id, "s1", map[string]any{"channel": 9}, fleet.MessageOptions{}); err != nil || res != fleet.ResultOK {
		t.Fatalf("SetSinkConfig = %s, %v", res, err)
	}
	if cfg, _ := f.SinkConfig(ctx, g1.id, "s1"); !strings.Contains(string(cfg), `"channel":9`) {
		t.Fatalf("config after the change: %s", cfg)
	}
	if res, err := f.SetSinkConfig(ctx, g1.id, "s1", map[string]any{"channel": 99}, fleet.MessageOptions{}); err != nil || res != fleet.ResultInvalidConfig {
		t.Fatalf("refused SetSinkConfig = %s, %v", res, err)
	}

	// Synchronous sends.
	if res, err := f.SendMessage(ctx, g1.id, "s1", "1001", 1, 2, []byte("hi"), fleet.MessageOptions{}); err != nil || res != fleet.ResultOK {
		t.Fatalf("SendMessage = %s, %v", res, err)
	}
	if got := g1.sends(); len(got) != 1 || got[0].Dest != "1001" || got[0].SrcEP != 1 || got[0].DstEP != 2 || string(got[0].Payload) != "hi" {
		t.Fatalf("sent %+v", got)
	}
	if res, err := f.SendMessage(ctx, g1.id, "s1", "4040", 1, 1, nil, fleet.MessageOptions{}); err != nil || res != fleet.ResultInvalidDest {
		t.Fatalf("SendMessage to an unknown node = %s, %v", res, err)
	}

	// Asynchronous sends: every callback once, with its param.
	type outcome struct {
		res   fleet.ResultCode
		err   error
		param any
	}
	got := make(chan outcome, 10)
	for i := range 5 {
		if err := f.SendMessageAsync(ctx, g1.id, "s2", "1002", 1, 1, []byte{byte(i)}, fleet.MessageOptions{}, func(res fleet.ResultCode, err error, param any) {
			got <- outcome{res, err, param}
		}, i); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[any]bool{}
	for range 5 {
		o := <-got
		if o.err != nil || o.res != fleet.ResultOK || seen[o.param] {
			t.Fatalf("async outcome %+v", o)
		}
		seen[o.param] = true
	}

	// A gateway that does not answer in time: ErrTimeout, ResultTimeout.
	g2.mu.Lock()
	g2.hold = make(chan struct{})
	g2.mu.Unlock()
	if _, err := f.SendMessage(ctx, g2.id, "s1", "2001", 1, 1, nil, fleet.MessageOptions{Timeout: 200 * time.Millisecond}); !errors.Is(err, fleet.ErrTimeout) {
		t.Fatalf("unanswered SendMessage: %v", err)
	}
	f.SendMessageAsync(ctx, g2.id, "s1", "2001", 1, 1, nil, fleet.MessageOptions{Timeout: 200 * time.Millisecond}, func(res fleet.ResultCode, err error, param any) {
		got <- outcome{res, err, param}
	}, "late")
	if o := <-got; o.res != fleet.ResultTimeout || !errors.Is(o.err, fleet.ErrTimeout) || o.param != "late" {
		t.Fatalf("unanswered async send: %+v", o)
	}
	g2.mu.Lock()
	close(g2.hold)
	g2.hold = nil
	g2.sent = nil
	g2.mu.Unlock()

	// Broadcast from every sink of network 1234: gw1's two, not gw2's.
	before := len(g1.sends())
	rs, err := f.BroadcastMessage(ctx, 1234, 1, 1, []byte("all"), fleet.MessageOptions{})
	if err != nil || len(rs) != 2 {
		t.Fatalf("BroadcastMessage = %+v, %v", rs, err)
	}
	for _, r := range rs {
		if r.GatewayID != g1.id || r.Result != fleet.ResultOK || r.Err != nil {
			t.Fatalf("broadcast result %+v", r)
		}
	}
	if n := len(g1.sends()) - before; n != 2 || len(g2.sends()) != 0 {
		t.Fatalf("broadcast reached %d sinks of gw1 and %d of gw2", n, len(g2.sends()))
	}
	if last := g1.sends()[len(g1.sends())-1]; last.Dest != protocol.BroadcastAddress {
		t.Fatalf("broadcast destination %q", last.Dest)
	}

	// Node data by network and endpoint.
	data := make(chan fleet.NodeData, 10)
	ep := 5
	sub, err := f.SubscribeNodeData(ctx, fleet.NodeDataFilter{Network: 1234, DstEP: &ep}, func(d fleet.NodeData) { data <- d })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for _, s := range []struct {
		g     *simGateway
		dstEP int
		body  string
	}{{g2, 5, "other network"}, {g1, 6, "other endpoint"}, {g1, 5, "wanted"}} {
		if err := s.g.g.SendNodeData(ctx, protocol.NodeMessage{Sink: "s1", Source: "1001", SrcEP: 1, DstEP: s.dstEP, Payload: []byte(s.body)}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case d := <-data:
		if string(d.Payload) != "wanted" || d.GatewayID != g1.id || string(d.Network) != "1234" || d.DeviceID == "" {
			t.Fatalf("node data %+v", d)
		}
	case <-ctx.Done():
		t.Fatal("no node data")
	}

	// Children are devices: call one through its gateway.
	cs, err := f.Children(ctx, g1.id)
	if err != nil || len(cs) != 2 {
		t.Fatalf("Children = %+v, %v", cs, err)
	}
	if dev, err := f.Device(ctx, cs[0].DeviceID); err != nil || dev.Gateway == nil || dev.Gateway.ID != g1.id || dev.Gateway.Address != "1001" || !dev.Online {
		t.Fatalf("child device = %+v, %v", dev, err)
	}
	if dev, err := f.Device(ctx, g1.id); err != nil || dev.Gateway != nil {
		t.Fatalf("gateway device = %+v, %v", dev, err)
	}
	res, err := f.Call(ctx, cs[0].DeviceID, "ping", 1)
	if err != nil || string(res) != `{"args":1,"node":"1001"}` {
		t.Fatalf("child call = %s, %v", res, err)
	}
	ch, err := f.AddChild(ctx, g2.id, "2002", "")
	if err != nil || ch.DeviceID == "" {
		t.Fatalf("AddChild = %+v, %v", ch, err)
	}
	if _, err := f.AddChild(ctx, g2.id, "2003", cs[0].DeviceID); !errors.Is(err, fleet.ErrConflict) {
		t.Fatalf("AddChild of gw1's child to gw2: %v", err)
	}
	if err := f.RemoveChild(ctx, g2.id, "2002"); err != nil {
		t.Fatal(err)
	}
	if err := f.RemoveChild(ctx, g2.id, "2002"); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("RemoveChild twice: %v", err)
	}
	select {
	case d := <-data:
		t.Fatalf("unwanted node data %+v", d)
	default:
	}
}
