package fleet_test

import (
	"errors"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

func TestCallQueued(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p)
	ctx := testCtx(t)
	d, err := f.CreateDevice(ctx, "sleepy")
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan fleet.Event, 100)
	sub, err := f.Subscribe(ctx, fleet.StreamFilter{Kinds: []string{fleet.KindCall}}, func(e fleet.Event) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	c, err := f.CallQueued(ctx, d.ID, "echo", map[string]int{"n": 7}, fleet.QueueOptions{TTL: time.Hour, Timeout: 10 * time.Second})
	if err != nil || c.State != fleet.CallQueued || c.TimeoutMS != 10000 || c.Finished() {
		t.Fatalf("CallQueued: %+v, %v", c, err)
	}
	if _, err := f.CallQueued(ctx, "nope", "echo", nil, fleet.QueueOptions{}); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("CallQueued to unknown device: %v", err)
	}
	connect(t, d.URL, map[string]device.Handler{"echo": echo})
	var got *fleet.Call
	for got == nil || !got.Finished() {
		select {
		case e := <-events:
			if got, err = e.Call(); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("no final call event; last %+v", got)
		}
	}
	if got.ID != c.ID || got.State != fleet.CallSucceeded || string(got.Result) != `{"n":7}` {
		t.Fatalf("final event %+v", got)
	}
	if g, err := f.GetCall(ctx, c.ID); err != nil || g.State != fleet.CallSucceeded {
		t.Fatalf("GetCall: %+v, %v", g, err)
	}
	if cs, err := f.Calls(ctx, d.ID); err != nil || len(cs) != 1 {
		t.Fatalf("Calls: %+v, %v", cs, err)
	}
	if _, err := f.GetCall(ctx, "nope"); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("GetCall unknown: %v", err)
	}
}
