package gateway_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/gateway"
	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/presence"
	"github.com/outpost-iot/outpost/internal/sqlite"
	"github.com/outpost-iot/outpost/protocol"
)

// heldSubmitter keeps the batches it is given and their done functions,
// so that a test decides when each part commits; failAt makes the
// Submit of that index (0-based) fail.
type heldSubmitter struct {
	mu      sync.Mutex
	batches []*outpost.Batch
	dones   []ingest.Done
	failAt  int
}

func (h *heldSubmitter) Submit(_ context.Context, b *outpost.Batch, done ingest.Done) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.batches) == h.failAt {
		h.failAt = -1
		return ingest.ErrQueueFull
	}
	h.batches = append(h.batches, b)
	h.dones = append(h.dones, done)
	return nil
}

// recordingSender keeps what is sent down.
type recordingSender struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recordingSender) PublishToDevice(deviceID, kind string, payload []byte) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, deviceID+" "+kind+" "+string(payload))
	r.mu.Unlock()
	return nil
}

type fixture struct {
	svc   *gateway.Service
	db    *sqlite.DB
	sub   *heldSubmitter
	send  *recordingSender
	pres  *presence.Tracker
	gw    string
	mu    sync.Mutex
	moves []presence.Change
}

func newFixture(t *testing.T, policy string) *fixture {
	t.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "o.db"), sqlite.Options{CacheMiB: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &fixture{db: db, sub: &heldSubmitter{failAt: -1}, send: &recordingSender{}}
	f.pres = presence.NewTracker(db, func(c presence.Change) { f.mu.Lock(); f.moves = append(f.moves, c); f.mu.Unlock() }, nil)
	t.Cleanup(func() { f.pres.Close() })
	f.gw = storetest.MustGateway(t, db, "gw", policy).ID
	f.svc = gateway.New(gateway.Options{Store: db, Sender: f.send, Submitter: f.sub, Presence: f.pres})
	t.Cleanup(func() { f.svc.Close() })
	return f
}

func TestSplitKeepsEachChildsOrderAndFinishesOnce(t *testing.T) {
	f := newFixture(t, "auto")
	payload := `{"id":"b1","r":[{"c":"a","f":"x","v":1,"t":1000},{"c":"b","f":"x","v":2,"t":1000},{"c":"a","f":"x","v":3,"t":900},{"c":"c","f":"x","v":4}]}`
	var calls []error
	async, err := f.svc.Start(context.Background(), context.Background(), f.gw, []byte(payload), func(err error) { calls = append(calls, err) })
	if !async || err != nil {
		t.Fatalf("Start = %v, %v", async, err)
	}
	if len(f.sub.batches) != 3 {
		t.Fatalf("%d parts, want 3", len(f.sub.batches))
	}
	cs, _ := f.db.Children(context.Background(), f.gw)
	ids := map[string]string{}
	for _, c := range cs {
		ids[c.DeviceID] = c.Address
	}
	var order []string
	for _, b := range f.sub.batches {
		order = append(order, ids[b.DeviceID])
		if b.ID != "gw:b1" {
			t.Fatalf("part id %q", b.ID)
		}
	}
	if order[0] != "a" || order[1] != "b" || order[2] != "c" {
		t.Fatalf("parts in order %v", order)
	}
	a := f.sub.batches[0].Readings
	if len(a) != 2 || string(a[0].Value) != "1" || string(a[1].Value) != "3" {
		t.Fatalf("child a's readings %+v", a)
	}
	if f.sub.batches[2].Readings[0].TS == 0 {
		t.Fatal("a reading without t was not stamped")
	}
	// done waits for every part, and reports the first failure once.
	f.sub.dones[0](outpost.AppendStored, nil)
	f.sub.dones[2](outpost.AppendStored, errors.New("disk full"))
	if len(calls) != 0 {
		t.Fatalf("done called before every part committed: %v", calls)
	}
	f.sub.dones[1](outpost.AppendDuplicate, nil)
	if len(calls) != 1 || calls[0] == nil || calls[0].Error() != "disk full" {
		t.Fatalf("done calls %v", calls)
	}
}

func TestSubmitFailing(t *testing.T) {
	f := newFixture(t, "auto")
	payload := []byte(`{"id":"b1","r":[{"c":"a","f":"x","v":1},{"c":"b","f":"x","v":2}]}`)
	// Nothing submitted: the message is not acknowledged.
	f.sub.failAt = 0
	async, err := f.svc.Start(context.Background(), context.Background(), f.gw, payload, func(error) { t.Error("done called") })
	if async || !errors.Is(err, ingest.ErrQueueFull) {
		t.Fatalf("Start = %v, %v", async, err)
	}
	// Half submitted: done reports the failure once the first half is in.
	f.sub.failAt = 1
	var got []error
	async, err = f.svc.Start(context.Background(), context.Background(), f.gw, payload, func(err error) { got = append(got, err) })
	if !async || err != nil {
		t.Fatalf("Start = %v, %v", async, err)
	}
	if len(got) != 0 {
		t.Fatal("done before the submitted part committed")
	}
	f.sub.dones[len(f.sub.dones)-1](outpost.AppendStored, nil)
	if len(got) != 1 || !errors.Is(got[0], ingest.ErrQueueFull) {
		t.Fatalf("done calls %v", got)
	}
}

func TestPresenceFollowsTheGateway(t *testing.T) {
	f := newFixture(t, "auto")
	ctx := context.Background()
	f.pres.Connected(f.gw, 1)
	if err := f.svc.Handle(ctx, f.gw, protocol.KindGatewayChildren, []byte(`{"join":[{"c":"a"},{"c":"b"},{"c":"c"}]}`)); err != nil {
		t.Fatal(err)
	}
	cs, _ := f.db.Children(ctx, f.gw)
	for _, c := range cs {
		if !f.pres.Online(c.DeviceID) {
			t.Fatalf("child %s offline after join", c.Address)
		}
	}
	if err := f.svc.Handle(ctx, f.gw, protocol.KindGatewayChildren, []byte(`{"leave":["c"]}`)); err != nil {
		t.Fatal(err)
	}
	f.svc.GatewayOffline(ctx, f.gw)
	reasons := map[string]string{}
	f.mu.Lock()
	for _, m := range f.moves {
		if !m.Online {
			reasons[m.DeviceID] = m.Reason
		}
	}
	f.mu.Unlock()
	for _, c := range cs {
		want := gateway.ReasonGatewayOffline
		if c.Address == "c" {
			want = gateway.ReasonLeft
		}
		if reasons[c.DeviceID] != want || f.pres.Online(c.DeviceID) {
			t.Fatalf("child %s: reason %q, want %q", c.Address, reasons[c.DeviceID], want)
		}
	}
	// Back: children come online as announced again.
	f.svc.GatewayOnline(ctx, f.gw)
	if _, _, ok := f.svc.Route(cs[0].DeviceID); ok {
		t.Fatal("a child is routed before its gateway announced it again")
	}
	f.svc.Handle(ctx, f.gw, protocol.KindGatewayChildren, []byte(`{"join":[{"c":"a"}]}`))
	if gw, addr, ok := f.svc.Route(cs[0].DeviceID); !ok || gw != f.gw || addr != "a" {
		t.Fatalf("route = %s %s %v", gw, addr, ok)
	}
}

// directPublisher records what the RPC relay would publish.
type directPublisher struct{ got []string }

func (d *directPublisher) PublishUntil(deviceID, kind string, payload []byte, _ time.Time) error {
	d.got = append(d.got, deviceID+" "+kind+" "+string(payload))
	return nil
}

func TestRoutePublisher(t *testing.T) {
	f := newFixture(t, "provisioned")
	ctx := context.Background()
	own := storetest.MustCreateDevice(t, f.db, "own")
	if _, err := f.svc.AddChild(ctx, f.gw, "o1", own.ID); err != nil {
		t.Fatal(err)
	}
	next := &directPublisher{}
	pub := f.svc.RoutePublisher(next)
	req := `{"id":"r1","method":"m","deadline":5}`
	pub.PublishUntil(own.ID, protocol.KindRPC, []byte(req), time.Now())
	f.svc.Handle(ctx, f.gw, protocol.KindGatewayChildren, []byte(`{"join":[{"c":"o1"}]}`))
	pub.PublishUntil(own.ID, protocol.KindRPC, []byte(req), time.Now())
	pub.PublishUntil(own.ID, "feed", []byte(`{}`), time.Now())
	want := []string{
		own.ID + " rpc " + req,
		f.gw + ` gw/rpc {"c":"o1","id":"r1","method":"m","deadline":5}`,
		own.ID + " feed {}",
	}
	if len(next.got) != 3 || next.got[0] != want[0] || next.got[1] != want[1] || next.got[2] != want[2] {
		t.Fatalf("published\n%q\nwant\n%q", next.got, want)
	}
}

func TestNotAGateway(t *testing.T) {
	f := newFixture(t, "auto")
	plain := storetest.MustCreateDevice(t, f.db, "plain")
	err := f.svc.Handle(context.Background(), plain.ID, protocol.KindGatewaySinks, []byte(`{"sinks":[]}`))
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeForbidden {
		t.Fatalf("Handle from a plain device: %v", err)
	}
	if len(f.send.msgs) != 1 {
		t.Fatalf("error replies %v", f.send.msgs)
	}
}
