package device_test

import (
	"context"
	"encoding/json"

	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

// Item 3: readings, events and notifications reach the platform in outbox
// order while RPC answers and device-model messages (which are not in the
// outbox) go up concurrently. A proxy in front of the platform records the
// order in which the PUBLISH packets arrive.
func TestOutboxOrderUnderConcurrentTraffic(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "orderly")
	px := startProxy(t, p.MQTTAddr())
	c := newClient(t, via(p, d, px.addr), device.WithMemoryOutbox(), device.WithMaxBatch(1), device.WithMaxInFlight(32))
	if err := c.Handle("echo", func(_ context.Context, args json.RawMessage) (any, error) { return args, nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}

	// Traffic outside the outbox: RPC answers and platform time requests.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
				_, _ = c.PlatformTime(tctx)
				tcancel()
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/echo?timeout=5s", map[string]int{"i": i}, nil)
			}
		}()
	}

	// The outbox: single readings (one message each, WithMaxBatch(1)) with
	// an event or a notification now and then.
	var want []string
	const n = 1500
	for i := range n {
		switch {
		case i%100 == 50:
			if err := c.SendEvent(ctx, "e"+strconv.Itoa(i), nil); err != nil {
				t.Fatal(err)
			}
			want = append(want, "e"+strconv.Itoa(i))
		case i%100 == 99:
			if err := c.SendNotification(ctx, "n"+strconv.Itoa(i), "text"); err != nil {
				t.Fatal(err)
			}
			want = append(want, "n"+strconv.Itoa(i))
		default:
			if err := c.Add("v", i); err != nil {
				t.Fatal(err)
			}
			want = append(want, strconv.Itoa(i))
		}
		if i%300 == 299 {
			if err := c.Publish(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()

	// What arrived, in arrival order; a resent message (DUP, or the same
	// message again after a 0x97) counts where it first arrived.
	seen := map[string]bool{}
	var got []string
	for _, m := range px.published(protocol.KindTelemetry, protocol.KindEvent, protocol.KindNotification) {
		if m.dup {
			continue
		}
		labels, key := label(t, m)
		if seen[key] {
			continue
		}
		seen[key] = true
		got = append(got, labels...)
	}
	if len(got) != len(want) {
		t.Fatalf("%d messages arrived, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("message %d to arrive was %s, want %s (outbox order lost; around it: %v)", i, got[i], want[i], got[max(0, i-3):min(len(got), i+4)])
		}
	}
	if rpcs := len(px.published(protocol.KindRPC)); rpcs == 0 {
		t.Error("no RPC answer went up during the test")
	}
}

// label names the outbox entries in a message as the test queued them, and
// returns a key that identifies the message.
func label(t *testing.T, m upPublish) ([]string, string) {
	t.Helper()
	switch {
	case hasKind(m.topic, protocol.KindTelemetry):
		tel, err := protocol.DecodeTelemetry(m.payload)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range tel.Readings {
			out = append(out, string(r.Value))
		}
		return out, tel.ID
	case hasKind(m.topic, protocol.KindEvent):
		e, err := protocol.DecodeEvent(m.payload)
		if err != nil {
			t.Fatal(err)
		}
		return []string{e.Name}, e.ID
	default:
		n, err := protocol.DecodeNotification(m.payload)
		if err != nil {
			t.Fatal(err)
		}
		return []string{n.Title}, n.ID
	}
}

func hasKind(topic, kind string) bool {
	return len(topic) > len(kind) && topic[len(topic)-len(kind)-1:] == "/"+kind
}
