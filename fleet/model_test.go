package fleet_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

func TestDeviceModel(t *testing.T) {
	p := outposttest.Start(t)
	f := dial(t, p)
	ctx := testCtx(t)
	nd, err := f.CreateDevice(ctx, "modelled")
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, nd.URL, nil)
	cmds := make(chan device.FeedCommand, 1)
	c.HandleFeed("valve", func(_ context.Context, cmd device.FeedCommand) error { cmds <- cmd; return nil })
	params := make(chan device.ParametersUpdate, 4)
	c.HandleParameters(func(_ context.Context, u device.ParametersUpdate) { params <- u })
	if err := c.RegisterFeeds(ctx, device.Feed{Ref: "valve", Type: device.FeedInOut, DataType: device.Number, Unit: "PERCENT"}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAttribute(ctx, "model", device.String, "V-100"); err != nil {
		t.Fatal(err)
	}

	events := make(chan fleet.Event, 10)
	sub, err := f.Subscribe(ctx, fleet.StreamFilter{DeviceIDs: []string{nd.ID}, Kinds: []string{fleet.KindEvent, fleet.KindNotification, fleet.KindRaw}},
		func(e fleet.Event) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	m, err := f.Model(ctx, nd.ID)
	if err != nil || len(m.Feeds) != 1 || m.Feeds[0].Unit != "PERCENT" || len(m.Attributes) != 1 {
		t.Fatalf("model = %+v, %v", m, err)
	}
	if d, err := f.Device(ctx, nd.ID); err != nil || len(d.Attributes) != 1 || string(d.Attributes[0].Value) != `"V-100"` {
		t.Fatalf("device = %+v, %v", d, err)
	}
	if _, err := f.SetFeedValue(ctx, nd.ID, "valve", 40); err != nil {
		t.Fatal(err)
	}
	select {
	case cmd := <-cmds:
		if string(cmd.Value) != "40" {
			t.Fatalf("command %+v", cmd)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no feed command")
	}
	if _, err := f.SetFeedValue(ctx, nd.ID, "valve", "open"); !errors.Is(err, fleet.ErrInvalid) {
		t.Fatalf("wrong type: %v", err)
	}
	if _, err := f.SetFeedValue(ctx, nd.ID, "nope", 1); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("unknown feed: %v", err)
	}
	if pr, err := f.UpdateParameters(ctx, nd.ID, map[string]any{"rate": 5}); err != nil || (pr.Delivery != "sent" && pr.Delivery != "delivered") {
		t.Fatalf("update parameters: %+v %v", pr, err)
	}
	for u := range params {
		if string(u.Values["rate"]) == "5" {
			break
		}
	}
	if pr, err := f.Parameters(ctx, nd.ID); err != nil || string(pr.Desired["rate"]) != "5" {
		t.Fatalf("parameters %+v %v", pr, err)
	}

	if err := c.SendEvent(ctx, "opened", map[string]int{"pct": 40}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendNotification(ctx, "Valve", "opened to 40%"); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx); err != nil { // both queued: wait for their delivery
		t.Fatal(err)
	}
	if err := c.PublishRaw(ctx, "debug", []byte("plain text")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fleet.KindEvent, fleet.KindNotification, fleet.KindRaw} {
		select {
		case e := <-events:
			if e.Kind != want {
				t.Fatalf("event kind %s, want %s", e.Kind, want)
			}
			switch e.Kind {
			case fleet.KindRaw:
				r, err := e.Raw()
				if err != nil || string(r.Bytes()) != "plain text" || r.Topic != "debug" {
					t.Fatalf("raw %+v %v", r, err)
				}
			default:
				de, err := e.DeviceEvent()
				if err != nil || de.DeviceID != nd.ID {
					t.Fatalf("device event %+v %v", de, err)
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s event", want)
		}
	}
	evs, err := f.Events(ctx, nd.ID, fleet.EventQuery{Kind: fleet.KindNotification})
	if err != nil || len(evs) != 1 || evs[0].Title != "Valve" {
		t.Fatalf("events %+v %v", evs, err)
	}
	if evs[0].MessageID == "" {
		t.Errorf("event %+v has no message_id (the SDK gives every event one)", evs[0])
	}
}
