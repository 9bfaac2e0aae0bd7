package faulttest

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/device/outbox"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// TestOutboxFull is fault test 4: a device fills its outbox past its bound
// while offline. By default the reading that does not fit is refused with
// ErrOutboxFull and everything already taken survives a restart and is
// delivered once; with drop-oldest the oldest readings make room, are
// counted, and the newest are delivered.
func TestOutboxFull(t *testing.T) {
	const bound = 1000
	p := outposttest.Start(t)
	for _, tc := range []struct {
		name      string
		opts      []outbox.Option
		add       int
		wantFirst int // first value the platform must hold
	}{
		{name: "refuse", add: bound + 200, wantFirst: 0},
		{name: "drop-oldest", opts: []outbox.Option{outbox.WithDropOldest()}, add: bound + 500, wantFirst: 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := p.CreateDevice(t, "full-"+tc.name)
			dir := t.TempDir()
			opts := []device.Option{device.WithOutbox(dir), device.WithOutboxOptions(append([]outbox.Option{outbox.WithCapacity(bound)}, tc.opts...)...)}
			c, err := device.New(d.URL, opts...)
			if err != nil {
				t.Fatal(err)
			}
			refused := 0
			for j := range tc.add {
				err := c.AddReadings(reading(j))
				switch {
				case err == nil:
				case errors.Is(err, device.ErrOutboxFull):
					refused++
				default:
					t.Fatalf("add %d: %v", j, err)
				}
			}
			st := c.OutboxStats()
			if c.Pending() != bound {
				t.Fatalf("pending = %d, want the bound %d", c.Pending(), bound)
			}
			if tc.wantFirst == 0 && (refused != tc.add-bound || st.Refused != uint64(refused)) {
				t.Fatalf("refused %d (stats %d), want %d", refused, st.Refused, tc.add-bound)
			}
			if tc.wantFirst > 0 && (refused != 0 || st.DroppedReadings != uint64(tc.add-bound)) {
				t.Fatalf("refused %d, dropped %d; want 0 and %d", refused, st.DroppedReadings, tc.add-bound)
			}
			c.Close()

			// A new process on the same outbox finds it intact.
			c, err = device.New(d.URL, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Pending() != bound {
				t.Fatalf("after restart pending = %d, want %d", c.Pending(), bound)
			}
			if st := c.OutboxStats(); st.Corrupt != 0 {
				t.Fatalf("outbox reports %d corrupt records", st.Corrupt)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := c.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			if err := c.Publish(ctx); err != nil {
				t.Fatal(err)
			}
			var got struct {
				Readings []struct {
					Value int `json:"value"`
				} `json:"readings"`
			}
			p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=seq&since=1&limit=5000", nil, &got)
			if len(got.Readings) != bound {
				t.Fatalf("platform holds %d readings, want %d", len(got.Readings), bound)
			}
			for k, r := range got.Readings {
				if r.Value != tc.wantFirst+k {
					t.Fatalf("reading %d = %d, want %d", k, r.Value, tc.wantFirst+k)
				}
			}
		})
	}
}

// The PULL round trip with expired commands (fault test 5) lives with the
// queue's end-to-end tests: internal/server/queue_test.go TestPullDevice.

// An event sent while the device cannot reach the platform waits in the
// durable outbox, survives a restart of the device process and is
// delivered, in order with the readings around it, by the next Publish.
func TestEventWaitsInOutbox(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "event-outbox")
	dir := t.TempDir()
	c, err := device.New(d.URL, device.WithOutbox(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddReadings(reading(0)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Both return once queued (nil: the message is in the outbox).
	if err := c.SendEvent(ctx, "door_open", map[string]int{"door": 2}); err != nil {
		t.Fatalf("SendEvent before Connect = %v, want nil (queued)", err)
	}
	if err := c.SendNotification(ctx, "Battery low", "12 %"); err != nil {
		t.Fatalf("SendNotification before Connect = %v", err)
	}
	if n := c.OutboxStats().PendingMessages; n < 2 {
		t.Fatalf("%d messages in the outbox, want the event and the notification", n)
	}
	c.Close()

	c, err = device.New(d.URL, device.WithOutbox(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Events []struct {
			Kind  string `json:"kind"`
			Name  string `json:"name"`
			Title string `json:"title"`
		} `json:"events"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/events", nil, &got)
	names := map[string]bool{}
	for _, e := range got.Events {
		names[e.Kind+":"+e.Name+e.Title] = true
	}
	if len(got.Events) != 2 || !names["event:door_open"] || !names["notification:Battery low"] {
		t.Fatalf("events stored = %+v, want the event and the notification once each", got.Events)
	}
	if c.Pending() != 0 || c.OutboxStats().PendingMessages != 0 {
		t.Fatalf("outbox not empty after Publish: %+v", c.OutboxStats())
	}
}

// A queued call whose device process stops while the handler runs is sent
// again when the device comes back (the platform never got an answer); the
// restarted device remembers, next to its durable outbox, that it started
// that request and does not execute it a second time.
func TestCallNotExecutedTwiceAcrossDeviceRestart(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "once")
	dir := t.TempDir()
	var runs atomic.Int32
	started := make(chan struct{}, 4)
	newClient := func() *device.Client {
		c, err := device.New(d.URL, device.WithOutbox(dir))
		if err != nil {
			t.Fatal(err)
		}
		c.Handle("reboot", func(ctx context.Context, _ json.RawMessage) (any, error) {
			runs.Add(1)
			started <- struct{}{}
			<-ctx.Done() // still running when the process goes away
			return nil, ctx.Err()
		})
		return c
	}
	var queued struct {
		ID string `json:"id"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/reboot?queue=true&ttl=1h&timeout=1h", nil, &queued); st != 202 {
		t.Fatalf("queue call: status %d", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := newClient()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("queued call never reached the device")
	}
	c.Close() // the device process stops mid-call

	c = newClient()
	defer c.Close()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// The platform sends the unanswered call again to the new session.
	outposttest.Eventually(t, 20*time.Second, "call sent again", func() bool {
		return metricValue(p.HTTPURL(), "outpost_queue_sent_total") >= 2
	})
	var got struct {
		SentAt      time.Time `json:"sent_at"`
		DeliveredAt time.Time `json:"delivered_at"`
	}
	outposttest.Eventually(t, 20*time.Second, "second copy acknowledged by the device", func() bool {
		p.Do(t, "GET", "/api/v1/calls/"+queued.ID, nil, &got)
		return !got.DeliveredAt.Before(got.SentAt)
	})
	// The device has the second copy; a handler started for it would
	// signal within moments.
	select {
	case <-started:
		t.Fatal("the restarted device executed the redelivered request again")
	case <-time.After(time.Second):
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want once", n)
	}
}
