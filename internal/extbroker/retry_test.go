package extbroker_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/internal/extbroker"
	"github.com/outpost-iot/outpost/internal/mosquittotest"
	"github.com/outpost-iot/outpost/internal/outpost"
)

// flaky is a Handler whose every message fails transiently the first
// time, and those of one device always: a database that is down, and one
// device whose messages keep failing.
type flaky struct {
	nobody
	stuck string

	mu      sync.Mutex
	seen    map[string]bool // payloads tried once
	handled []string        // payloads handled, in order
	changed chan struct{}
}

func (f *flaky) StartMessage(ctx context.Context, id, kind string, p []byte, done func(error)) (bool, error) {
	return false, f.HandleMessage(ctx, id, kind, p)
}

func (f *flaky) HandleMessage(_ context.Context, id, _ string, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id == f.stuck || !f.seen[string(p)] {
		f.seen[string(p)] = true
		return errors.New("store unavailable")
	}
	f.handled = append(f.handled, string(p))
	select {
	case f.changed <- struct{}{}:
	default:
	}
	return nil
}

// TestRetriesOfOneDeviceDoNotHoldOthers: a message that keeps failing
// is retried without holding up the retries of other devices' messages
// (a single retrier went on with it alone, backing off up to 5 s a try),
// and one device's retried messages are handled in the order they came.
func TestRetriesOfOneDeviceDoNotHoldOthers(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Plain())
	// Two devices whose retries go to different workers.
	stuck := outpost.NewDeviceID()
	other := outpost.NewDeviceID()
	for extbroker.RetryShard(other) == extbroker.RetryShard(stuck) {
		other = outpost.NewDeviceID()
	}
	h := &flaky{stuck: stuck, seen: map[string]bool{}, changed: make(chan struct{}, 1)}
	l, err := extbroker.New(extbroker.Config{URL: "mqtt://" + b.Addr, ClientID: "outpost-retry"}, h, nobody{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	conn, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "dev"})
	defer func() { _ = c.Disconnect(&paho.Disconnect{}); <-c.Done() }()
	if _, err := c.Connect(ctx, &paho.Connect{KeepAlive: 30, ClientID: "dev", CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	send := func(id, payload string) {
		t.Helper()
		if _, err := c.Publish(ctx, &paho.Publish{Topic: "outpost/v1/" + id + "/up/telemetry", QoS: 1, Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	send(stuck, "s1")
	for _, p := range []string{"o1", "o2", "o3"} {
		send(other, p)
	}
	want := []string{"o1", "o2", "o3"}
	for {
		h.mu.Lock()
		got := slices.Clone(h.handled)
		h.mu.Unlock()
		if len(got) >= len(want) {
			if !slices.Equal(got, want) {
				t.Fatalf("handled %v, want %v (in order)", got, want)
			}
			// The store comes back for the stuck device too, so that
			// Close does not wait for its message.
			h.mu.Lock()
			h.stuck = ""
			h.mu.Unlock()
			return
		}
		select {
		case <-h.changed:
		case <-ctx.Done():
			t.Fatalf("handled %v while %s's message kept failing; want %v", got, stuck, want)
		}
	}
}
