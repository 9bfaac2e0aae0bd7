package queue_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/queue"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

// countingStore is the real SQLite store, counting the queries the queue
// makes for each device.
type countingStore struct {
	*sqlite.DB
	mu      sync.Mutex
	queries map[string]int
}

func (s *countingStore) count(id string) {
	s.mu.Lock()
	s.queries[id]++
	s.mu.Unlock()
}

func (s *countingStore) queried(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[id]
}

func (s *countingStore) Deliverable(ctx context.Context, id string, now time.Time, resend bool, limit int) ([]*outpost.QueuedMessage, error) {
	s.count(id)
	return s.DB.Deliverable(ctx, id, now, resend, limit)
}

func (s *countingStore) ExpireDue(ctx context.Context, id string, now time.Time) (outpost.Expiry, error) {
	s.count(id) // "": the sweep's, for every device
	return s.DB.ExpireDue(ctx, id, now)
}

// publisher records what the queue publishes.
type publisher struct{ sent chan string }

func (p *publisher) PublishQueued(deviceID, kind, msgID string, payload []byte) error {
	p.sent <- deviceID
	return nil
}

func (p *publisher) PublishToDevice(deviceID, kind string, payload []byte) error { return nil }

func (p *publisher) Room(deviceID string, want int) int { return want }

func (p *publisher) Subscribed(deviceID, kind string) bool { return true }

// Issue 16: every connecting device cost a write transaction (expiry) and
// a query on the store's single writer, although almost none has anything
// queued. Now only devices that may have something pending are looked up:
// those with unfinished messages when the queue starts, and those enqueued
// to since; one whose round finds nothing leaves the set.
func TestConnectingWithoutPendingCostsNoQuery(t *testing.T) {
	ctx := context.Background()
	db, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "q.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var devs []*outpost.Device
	var hashes [][]byte
	for i := range 50 {
		devs = append(devs, &outpost.Device{ID: fmt.Sprintf("d-%03d", i), Name: fmt.Sprint("dev", i), CreatedAt: time.Now()})
		hashes = append(hashes, outpost.HashSecret("x"))
	}
	if err := db.CreateDevices(ctx, devs, hashes); err != nil {
		t.Fatal(err)
	}
	early, late, idle := devs[0].ID, devs[1].ID, devs[2:]
	now := time.Now().UTC()
	// Queued before the queue starts: found by the load at start.
	if err := db.EnqueueMessage(ctx, &outpost.QueuedMessage{ID: "m-early", DeviceID: early, Kind: "cmd", Payload: []byte(`{}`),
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, 0); err != nil {
		t.Fatal(err)
	}

	store := &countingStore{DB: db, queries: map[string]int{}}
	pub := &publisher{sent: make(chan string, 16)}
	q := queue.New(store, pub, queue.Options{Workers: 1, Sweep: time.Hour})
	defer q.Close()
	if _, err := q.Enqueue(ctx, late, "cmd", []byte(`{}`), 0); err != nil { // offline: waits
		t.Fatal(err)
	}

	// One worker takes the devices in the order they subscribed: once the
	// last one's message is out, every other subscription was handled.
	for i, d := range idle {
		q.DeviceSubscribed(d.ID, outpost.SessionID(i+1), false)
	}
	q.DeviceSubscribed(early, outpost.SessionID(len(idle)+1), false)
	q.DeviceSubscribed(late, outpost.SessionID(len(idle)+2), false)
	for _, want := range []string{early, late} {
		select {
		case got := <-pub.sent:
			if got != want {
				t.Fatalf("published to %s, want %s", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing published to %s", want)
		}
	}
	for _, d := range idle {
		if n := store.queried(d.ID); n != 0 {
			t.Fatalf("device %s with nothing queued: %d store queries on connect, want 0", d.ID, n)
		}
	}
	if store.queried(early) == 0 || store.queried(late) == 0 {
		t.Errorf("devices with messages were not looked up: %d, %d queries", store.queried(early), store.queried(late))
	}
}

// Issue 16: the expiry sweep queried the store every second although
// nothing was queued anywhere (a third of an idle platform's CPU with the
// store's own ticker). It skips the query while no device has anything
// pending, and queries again once something is queued.
func TestIdleSweepDoesNotQueryTheStore(t *testing.T) {
	ctx := context.Background()
	db, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "q.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	dev := &outpost.Device{ID: "sweep-dev", Name: "sweep", CreatedAt: time.Now()}
	if err := db.CreateDevice(ctx, dev, outpost.HashSecret("x")); err != nil {
		t.Fatal(err)
	}
	store := &countingStore{DB: db, queries: map[string]int{}}
	q := queue.New(store, &publisher{sent: make(chan string, 16)}, queue.Options{Workers: 1, Sweep: time.Millisecond})
	defer q.Close()
	st := q.Stats()
	from := st.Sweeps.Load()
	waitFor(t, "20 sweeps", func() bool { return st.Sweeps.Load() >= from+20 })
	if n := store.queried(""); n != 0 {
		t.Fatalf("%d expiry queries with nothing queued, want 0", n)
	}
	if _, err := q.Enqueue(ctx, dev.ID, "cmd", []byte(`{}`), time.Hour); err != nil { // offline: waits
		t.Fatal(err)
	}
	waitFor(t, "an expiry query once something is queued", func() bool { return store.queried("") > 0 })
}
