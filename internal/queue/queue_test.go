package queue_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/queue"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openStore opens a real SQLite store with one device in it.
func openStore(t *testing.T) (*sqlite.DB, string) {
	t.Helper()
	ctx := context.Background()
	db, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "outpost.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	d := &outpost.Device{ID: outpost.NewDeviceID(), Name: "q", CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := db.CreateDevice(ctx, d, outpost.HashSecret("secret")); err != nil {
		t.Fatal(err)
	}
	return db, d.ID
}

// openSender takes every message at once, as a device with a wide send
// window subscribed to everything.
type openSender struct {
	mu        sync.Mutex
	published []string
}

func (s *openSender) PublishQueued(_, _, msgID string, _ []byte) error {
	s.mu.Lock()
	s.published = append(s.published, msgID)
	s.mu.Unlock()
	return nil
}
func (s *openSender) PublishToDevice(string, string, []byte) error { return nil }
func (s *openSender) Room(string, int) int                         { return 1000 }
func (s *openSender) Subscribed(string, string) bool               { return true }

func (s *openSender) sent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.published)
}

// stuckAcks is a store whose MarkDelivered hangs until released: a
// database that has stopped answering.
type stuckAcks struct {
	*sqlite.DB
	release chan struct{}
}

func (s stuckAcks) MarkDelivered(ctx context.Context, deviceID string, ids []string, at time.Time) ([]*outpost.QueuedMessage, []*outpost.Call, error) {
	select {
	case <-s.release:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	return s.DB.MarkDelivered(ctx, deviceID, ids, at)
}

// failingAcks is a store whose MarkDelivered fails its first n calls.
type failingAcks struct {
	*sqlite.DB
	left  atomic.Int32
	calls atomic.Int32
}

func (s *failingAcks) MarkDelivered(ctx context.Context, deviceID string, ids []string, at time.Time) ([]*outpost.QueuedMessage, []*outpost.Call, error) {
	s.calls.Add(1)
	if s.left.Add(-1) >= 0 {
		return nil, nil, errors.New("database is locked")
	}
	return s.DB.MarkDelivered(ctx, deviceID, ids, at)
}

// TestAcknowledgedNeverBlocks (issue 9, item 9): Acknowledged runs on a
// device's connection and must return at once even when the store does
// not take acknowledgements; past the bound it refuses them (the device
// resends later) instead of waiting.
func TestAcknowledgedNeverBlocks(t *testing.T) {
	db, dev := openStore(t)
	st := stuckAcks{DB: db, release: make(chan struct{})}
	q := queue.New(st, &openSender{}, queue.Options{MaxPendingAcks: 100})
	defer q.Close()
	defer close(st.release)

	done := make(chan error, 1)
	go func() {
		// At most the bound waits, plus the batch the stuck store holds.
		var refused, taken int
		for range 10_000 {
			err := q.Acknowledged(dev, []string{queue.NewID()})
			switch {
			case errors.Is(err, queue.ErrAckBacklog):
				refused++
			case err != nil:
				done <- err
				return
			default:
				if taken++; taken > 200 {
					done <- errors.New("acknowledgements taken beyond the bound")
					return
				}
			}
		}
		if refused < 10_000-200 {
			done <- errors.New("too few acknowledgements refused")
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Acknowledged blocked while the store was stuck")
	}
}

// TestFailedMarkDeliveredRetried (issue 9, item 9): acknowledgements that
// the store fails to record are kept and recorded on a later attempt, not
// dropped.
func TestFailedMarkDeliveredRetried(t *testing.T) {
	db, dev := openStore(t)
	st := &failingAcks{DB: db}
	st.left.Store(3)
	sender := &openSender{}
	q := queue.New(st, sender, queue.Options{})
	defer q.Close()
	ctx := context.Background()
	q.DeviceSubscribed(dev, 1, false)
	m, err := q.Enqueue(ctx, dev, "feed", []byte(`{"id":"x"}`), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if m.State != outpost.StateSent || sender.sent() != 1 {
		t.Fatalf("message %+v, %d published; want it sent at once", m, sender.sent())
	}
	if err := q.Acknowledged(dev, []string{m.ID}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		cur, err := db.QueuedMessage(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if cur.State == outpost.StateDelivered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("message still %s after %d attempts to record its acknowledgement", cur.State, st.calls.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := st.calls.Load(); n < 4 {
		t.Fatalf("%d attempts, want the 3 failures and a success", n)
	}
	if n := q.Stats().AckRetries.Load(); n != 3 {
		t.Fatalf("AckRetries %d, want 3", n)
	}
}
