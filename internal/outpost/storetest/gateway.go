package storetest

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// GatewayStore is what an engine implements for gateways and their
// children.
type GatewayStore interface {
	outpost.DeviceStore
	outpost.TelemetryStore
	outpost.GatewayStore
}

// RunGateway runs the suite of the gateway store. open must return a
// new, empty store for each call and close it when t ends.
func RunGateway(t *testing.T, open func(t *testing.T) GatewayStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s GatewayStore)
	}{
		{"Gateways", testGateways},
		{"Children", testChildren},
		{"ChildConflicts", testChildConflicts},
		{"CreateChildren", testCreateChildren},
		{"ChildIsADevice", testChildIsADevice},
		{"Sinks", testSinks},
		{"GatewayDeleted", testGatewayDeleted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

// MustGateway makes a new device a gateway with policy.
func MustGateway(tb testing.TB, s GatewayStore, name, policy string) *outpost.Gateway {
	tb.Helper()
	d := MustCreateDevice(tb, s, name)
	g := &outpost.Gateway{ID: d.ID, Policy: policy, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := s.SetGateway(context.Background(), g); err != nil {
		tb.Fatalf("set gateway %s: %v", name, err)
	}
	return g
}

func newChild(gw, addr string) (*outpost.Child, *outpost.Device) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return &outpost.Child{GatewayID: gw, Address: addr, CreatedAt: now},
		&outpost.Device{ID: outpost.NewDeviceID(), Name: gw + "." + addr, CreatedAt: now}
}

func testGateways(t *testing.T, s GatewayStore) {
	ctx := context.Background()
	if _, err := s.Gateway(ctx, "d-nope"); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("unknown gateway: %v", err)
	}
	wantCode(t, "set gateway of unknown device", s.SetGateway(ctx, &outpost.Gateway{ID: "d-nope", Policy: "auto", CreatedAt: time.Now()}), outpost.ENOTFOUND)
	plain := MustCreateDevice(t, s, "plain")
	if _, err := s.Gateway(ctx, plain.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("plain device as gateway: %v", err)
	}
	g1 := MustGateway(t, s, "gw1", "auto")
	g2 := MustGateway(t, s, "gw2", "provisioned")
	got, err := s.Gateway(ctx, g1.ID)
	if err != nil || got.Policy != "auto" || !got.CreatedAt.Equal(g1.CreatedAt) {
		t.Fatalf("gateway = %+v, %v; want %+v", got, err, g1)
	}
	// Changing the policy keeps the rest.
	if err := s.SetGateway(ctx, &outpost.Gateway{ID: g1.ID, Policy: "provisioned", CreatedAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Gateway(ctx, g1.ID)
	if got.Policy != "provisioned" || !got.CreatedAt.Equal(g1.CreatedAt) {
		t.Fatalf("after policy change: %+v", got)
	}
	all, err := s.Gateways(ctx)
	if err != nil || len(all) != 2 || all[0].ID != g1.ID || all[1].ID != g2.ID {
		t.Fatalf("gateways = %v, %v", all, err)
	}
}

func testChildren(t *testing.T, s GatewayStore) {
	ctx := context.Background()
	g := MustGateway(t, s, "gw", "auto")
	if cs, err := s.Children(ctx, g.ID); err != nil || len(cs) != 0 {
		t.Fatalf("children of a new gateway = %v, %v", cs, err)
	}
	var ids []string
	for _, a := range []string{"1002", "1001", "1003"} {
		c, d := newChild(g.ID, a)
		c.Sink = "sink1"
		if err := s.CreateChild(ctx, c, d, outpost.HashSecret("x")); err != nil {
			t.Fatalf("create child %s: %v", a, err)
		}
		if c.DeviceID != d.ID {
			t.Fatalf("child device id %q, want %q", c.DeviceID, d.ID)
		}
		ids = append(ids, d.ID)
	}
	// A device with credentials of its own, attached by the operator.
	own := MustCreateDevice(t, s, "own")
	if err := s.AttachChild(ctx, &outpost.Child{GatewayID: g.ID, Address: "2000", DeviceID: own.ID, CreatedAt: time.Now()}); err != nil {
		t.Fatalf("attach: %v", err)
	}
	cs, err := s.Children(ctx, g.ID)
	if err != nil || len(cs) != 4 {
		t.Fatalf("children = %v, %v", cs, err)
	}
	for i, want := range []string{"1001", "1002", "1003", "2000"} {
		if cs[i].Address != want || cs[i].GatewayID != g.ID {
			t.Fatalf("child %d = %+v, want address %s", i, cs[i], want)
		}
	}
	if cs[0].DeviceID != ids[1] || cs[0].Sink != "sink1" || cs[3].DeviceID != own.ID {
		t.Fatalf("children = %+v", cs)
	}
	c, err := s.ChildOf(ctx, ids[0])
	if err != nil || c.GatewayID != g.ID || c.Address != "1002" {
		t.Fatalf("child of = %+v, %v", c, err)
	}
	if _, err := s.ChildOf(ctx, g.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("child of a gateway: %v", err)
	}
	// Detaching keeps the device.
	if err := s.DetachChild(ctx, g.ID, "2000"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "detach again", s.DetachChild(ctx, g.ID, "2000"), outpost.ENOTFOUND)
	if _, err := s.Device(ctx, own.ID); err != nil {
		t.Fatalf("detached device: %v", err)
	}
	if _, err := s.ChildOf(ctx, own.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("detached child of: %v", err)
	}
	if _, err := s.Children(ctx, "d-nope"); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("children of unknown gateway: %v", err)
	}
}

func testChildConflicts(t *testing.T, s GatewayStore) {
	ctx := context.Background()
	a := MustGateway(t, s, "gwa", "auto")
	b := MustGateway(t, s, "gwb", "auto")
	c, d := newChild(a.ID, "1")
	if err := s.CreateChild(ctx, c, d, outpost.HashSecret("x")); err != nil {
		t.Fatal(err)
	}
	// The address is taken: nothing is created.
	c2, d2 := newChild(a.ID, "1")
	d2.Name = "other"
	wantCode(t, "address taken", s.CreateChild(ctx, c2, d2, outpost.HashSecret("x")), outpost.ECONFLICT)
	if _, err := s.Device(ctx, d2.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("device of a refused child exists: %v", err)
	}
	// A child belongs to one gateway.
	wantCode(t, "child of two gateways", s.AttachChild(ctx, &outpost.Child{GatewayID: b.ID, Address: "1", DeviceID: d.ID, CreatedAt: time.Now()}), outpost.ECONFLICT)
	wantCode(t, "child twice", s.AttachChild(ctx, &outpost.Child{GatewayID: a.ID, Address: "9", DeviceID: d.ID, CreatedAt: time.Now()}), outpost.ECONFLICT)
	// Gateways are no children, children no gateways.
	wantCode(t, "gateway as child", s.AttachChild(ctx, &outpost.Child{GatewayID: a.ID, Address: "2", DeviceID: b.ID, CreatedAt: time.Now()}), outpost.ECONFLICT)
	wantCode(t, "child as gateway", s.SetGateway(ctx, &outpost.Gateway{ID: d.ID, Policy: "auto", CreatedAt: time.Now()}), outpost.ECONFLICT)
	// Unknown parties.
	c3, d3 := newChild("d-nope", "1")
	wantCode(t, "create under unknown gateway", s.CreateChild(ctx, c3, d3, outpost.HashSecret("x")), outpost.ENOTFOUND)
	plain := MustCreateDevice(t, s, "plain")
	c4, d4 := newChild(plain.ID, "1")
	wantCode(t, "create under a plain device", s.CreateChild(ctx, c4, d4, outpost.HashSecret("x")), outpost.ENOTFOUND)
	wantCode(t, "attach unknown device", s.AttachChild(ctx, &outpost.Child{GatewayID: a.ID, Address: "3", DeviceID: "d-nope", CreatedAt: time.Now()}), outpost.ENOTFOUND)
	// The same address under another gateway is another child.
	c5, d5 := newChild(b.ID, "1")
	if err := s.CreateChild(ctx, c5, d5, outpost.HashSecret("x")); err != nil {
		t.Fatalf("same address, other gateway: %v", err)
	}
}

func testChildIsADevice(t *testing.T, s GatewayStore) {
	ctx := context.Background()
	g := MustGateway(t, s, "gw", "auto")
	c, d := newChild(g.ID, "7")
	if err := s.CreateChild(ctx, c, d, outpost.HashSecret("x")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Device(ctx, d.ID); err != nil || got.Name != d.Name {
		t.Fatalf("child device = %+v, %v", got, err)
	}
	res, err := s.AppendBatches(ctx, []*outpost.Batch{{DeviceID: d.ID, ID: "g1", Readings: []outpost.Reading{{Feed: "t", TS: 1000, Value: json.RawMessage("1")}}}})
	if err != nil || res[0] != outpost.AppendStored {
		t.Fatalf("append for child: %v, %v", res, err)
	}
	rs, err := s.Readings(ctx, outpost.ReadingFilter{DeviceID: d.ID})
	if err != nil || len(rs) != 1 {
		t.Fatalf("child readings = %v, %v", rs, err)
	}
	if err := s.SetPresences(ctx, []outpost.Presence{{ID: d.ID, Online: true, LastSeen: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Device(ctx, d.ID); !got.Online {
		t.Fatalf("child presence not stored: %+v", got)
	}
	// Deleting the child deletes its binding.
	if err := s.DeleteDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if cs, err := s.Children(ctx, g.ID); err != nil || len(cs) != 0 {
		t.Fatalf("children after the child's deletion = %v, %v", cs, err)
	}
}

func testSinks(t *testing.T, s GatewayStore) {
	ctx := context.Background()
	g := MustGateway(t, s, "gw", "auto")
	now := time.Now().UTC().Truncate(time.Millisecond)
	cfg := json.RawMessage(`{"network_address":1234,"channel":5,"role":"sink","x":1.50}`)
	if err := s.SetSinks(ctx, g.ID, []*outpost.Sink{{Name: "sink2", Config: json.RawMessage(`{}`), UpdatedAt: now}, {Name: "sink1", Config: cfg, UpdatedAt: now}}); err != nil {
		t.Fatal(err)
	}
	ss, err := s.Sinks(ctx, g.ID)
	if err != nil || len(ss) != 2 || ss[0].Name != "sink1" || string(ss[0].Config) != string(cfg) || ss[1].Name != "sink2" ||
		ss[0].GatewayID != g.ID || !ss[0].UpdatedAt.Equal(now) {
		t.Fatalf("sinks = %+v, %v", ss, err)
	}
	// The list replaces the previous one.
	if err := s.SetSinks(ctx, g.ID, []*outpost.Sink{{Name: "sink3", Config: json.RawMessage(`{"a":true}`), UpdatedAt: now}}); err != nil {
		t.Fatal(err)
	}
	if ss, _ := s.Sinks(ctx, g.ID); len(ss) != 1 || ss[0].Name != "sink3" {
		t.Fatalf("sinks after replace = %+v", ss)
	}
	if err := s.SetSinks(ctx, g.ID, nil); err != nil {
		t.Fatal(err)
	}
	if ss, err := s.Sinks(ctx, g.ID); err != nil || len(ss) != 0 {
		t.Fatalf("sinks after clear = %+v, %v", ss, err)
	}
	wantCode(t, "sinks of unknown gateway", s.SetSinks(ctx, "d-nope", nil), outpost.ENOTFOUND)
	if _, err := s.Sinks(ctx, "d-nope"); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("sinks of unknown gateway: %v", err)
	}
}

func testGatewayDeleted(t *testing.T, s GatewayStore) {
	ctx := context.Background()
	g := MustGateway(t, s, "gw", "auto")
	c, d := newChild(g.ID, "7")
	if err := s.CreateChild(ctx, c, d, outpost.HashSecret("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSinks(ctx, g.ID, []*outpost.Sink{{Name: "s", Config: json.RawMessage(`{}`), UpdatedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Gateway(ctx, g.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("deleted gateway: %v", err)
	}
	// The child stays a device, free to be bound again.
	if _, err := s.Device(ctx, d.ID); err != nil {
		t.Fatalf("child of a deleted gateway: %v", err)
	}
	if _, err := s.ChildOf(ctx, d.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("binding of a deleted gateway: %v", err)
	}
	g2 := MustGateway(t, s, "gw2", "auto")
	if err := s.AttachChild(ctx, &outpost.Child{GatewayID: g2.ID, Address: "7", DeviceID: d.ID, CreatedAt: time.Now()}); err != nil {
		t.Fatalf("bind again: %v", err)
	}
}

func testCreateChildren(t *testing.T, s GatewayStore) {
	ctx := context.Background()
	g := MustGateway(t, s, "gw", "auto")
	var cs []*outpost.Child
	var ds []*outpost.Device
	var hs [][]byte
	for i := range 300 {
		c, d := newChild(g.ID, "n"+strconv.Itoa(i))
		cs, ds, hs = append(cs, c), append(ds, d), append(hs, outpost.HashSecret("x"))
	}
	if err := s.CreateChildren(ctx, cs, ds, hs); err != nil {
		t.Fatal(err)
	}
	got, err := s.Children(ctx, g.ID)
	if err != nil || len(got) != 300 {
		t.Fatalf("%d children, %v", len(got), err)
	}
	for i, c := range cs {
		if c.DeviceID != ds[i].ID {
			t.Fatalf("child %d device id %q, want %q", i, c.DeviceID, ds[i].ID)
		}
	}
	// All or none: one taken address refuses the lot.
	c1, d1 := newChild(g.ID, "fresh")
	c2, d2 := newChild(g.ID, "n7")
	d2.Name = "other"
	wantCode(t, "a taken address among new children", s.CreateChildren(ctx, []*outpost.Child{c1, c2}, []*outpost.Device{d1, d2}, [][]byte{hs[0], hs[1]}), outpost.ECONFLICT)
	if _, err := s.Device(ctx, d1.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("a child of a refused lot exists: %v", err)
	}
	if err := s.CreateChildren(ctx, nil, nil, nil); err != nil {
		t.Fatalf("no children: %v", err)
	}
}
