package queue_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/queue"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

// flakySender fails every publish to one device while fail is set.
type flakySender struct {
	bad       string
	fail      atomic.Bool
	delivered atomic.Int64 // publishes to bad that went out
}

func (s *flakySender) PublishQueued(deviceID, _, _ string, _ []byte) error {
	if deviceID == s.bad {
		if s.fail.Load() {
			return errors.New("broker refused")
		}
		s.delivered.Add(1)
	}
	return nil
}
func (s *flakySender) PublishToDevice(string, string, []byte) error { return nil }
func (s *flakySender) Room(_ string, want int) int                  { return want }
func (s *flakySender) Subscribed(string, string) bool               { return true }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Issue 16: the once-a-second sweep looked at every connected device to
// find the few whose last delivery failed; at 19,000 idle devices it was a
// third of the platform's idle CPU. It now looks only at those that
// failed, and still retries them.
func TestSweepRetriesOnlyFailedDeliveries(t *testing.T) {
	ctx := context.Background()
	db, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "q.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const idle = 1000
	var devs []*outpost.Device
	var hashes [][]byte
	for i := range idle + 1 {
		devs = append(devs, &outpost.Device{ID: fmt.Sprintf("d-%04d", i), Name: fmt.Sprint("dev", i), CreatedAt: time.Now()})
		hashes = append(hashes, outpost.HashSecret("x"))
	}
	if err := db.CreateDevices(ctx, devs, hashes); err != nil {
		t.Fatal(err)
	}
	s := &flakySender{bad: devs[idle].ID}
	s.fail.Store(true)
	q := queue.New(db, s, queue.Options{Workers: 1, Sweep: 2 * time.Millisecond})
	defer q.Close()
	st := q.Stats()
	for i, d := range devs {
		q.DeviceSubscribed(d.ID, outpost.SessionID(i+1), false)
	}
	if _, err := q.Enqueue(ctx, s.bad, "cmd", []byte(`{}`), 0); err != nil {
		t.Fatal(err)
	}

	// While the delivery fails, every sweep looks at that one session.
	from := st.Sweeps.Load()
	waitFor(t, "20 sweeps", func() bool { return st.Sweeps.Load() >= from+20 })
	sweeps, visits := st.Sweeps.Load(), st.SweepVisits.Load()
	if visits > sweeps {
		t.Fatalf("%d sweeps looked at %d sessions: more than the one whose delivery fails (%d connected)", sweeps, visits, idle+1)
	}
	if visits == 0 {
		t.Fatal("no sweep looked at the session whose delivery failed")
	}

	// It is retried until it goes out; then no sweep looks at anything.
	s.fail.Store(false)
	waitFor(t, "the retried delivery", func() bool { return s.delivered.Load() > 0 })
	waitFor(t, "a sweep after the delivery", func() bool { return st.Sweeps.Load() >= sweeps+2 })
	visits = st.SweepVisits.Load()
	from = st.Sweeps.Load()
	waitFor(t, "20 more sweeps", func() bool { return st.Sweeps.Load() >= from+20 })
	if v := st.SweepVisits.Load(); v != visits {
		t.Fatalf("sweeps looked at %d sessions with no delivery failing", v-visits)
	}
}
