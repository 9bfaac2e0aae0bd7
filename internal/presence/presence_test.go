package presence_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/presence"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type write struct {
	id     string
	online bool
	at     time.Time
}

// recordingStore keeps every presence write in order, and counts the
// calls (one per transaction). When hold is set, a batch holding a write
// for which it returns true reports that write on held and waits for
// release before it completes. fail makes the next calls fail.
type recordingStore struct {
	hold    func(w write) bool
	held    chan write
	release chan struct{}

	mu     sync.Mutex
	fail   int
	calls  int
	writes []write
}

func (s *recordingStore) SetPresences(ctx context.Context, ps []outpost.Presence) error {
	for _, p := range ps {
		if w := (write{p.ID, p.Online, p.LastSeen}); s.hold != nil && s.hold(w) {
			s.held <- w
			<-s.release
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.fail > 0 {
		s.fail--
		return errors.New("database is locked")
	}
	for _, p := range ps {
		s.writes = append(s.writes, write{p.ID, p.Online, p.LastSeen})
	}
	return nil
}

func (s *recordingStore) all() []write {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.writes)
}

func (s *recordingStore) transactions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// changeLog keeps every change reported to onChange, in order.
type changeLog struct {
	mu      sync.Mutex
	changes []presence.Change
}

func (l *changeLog) add(c presence.Change) {
	l.mu.Lock()
	l.changes = append(l.changes, c)
	l.mu.Unlock()
}

func (l *changeLog) all() []presence.Change {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.changes)
}

// MustTracker returns a tracker persisting to store and logging changes,
// closed at the end of the test.
func MustTracker(tb testing.TB, store *recordingStore) (*presence.Tracker, *changeLog) {
	tb.Helper()
	log := &changeLog{}
	tr := presence.NewTracker(store, log.add, nil)
	tb.Cleanup(func() { tr.Close() })
	return tr, log
}

// flushed waits, in a synctest bubble, for the next periodic flush.
func flushed() {
	time.Sleep(presence.FlushInterval)
	synctest.Wait()
}

func wantState(tb testing.TB, tr *presence.Tracker, id string, online bool, seen time.Time) {
	tb.Helper()
	gotOnline, gotSeen, ok := tr.State(id)
	if !ok || gotOnline != online || !gotSeen.Equal(seen) {
		tb.Errorf("State(%s) = %v, %v, %v; want %v, %v, true", id, gotOnline, gotSeen, ok, online, seen)
	}
	if tr.Online(id) != online {
		tb.Errorf("Online(%s) = %v, want %v", id, !online, online)
	}
}

func TestConnectDisconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &recordingStore{}
		tr, log := MustTracker(t, store)
		c1 := outpost.SessionID(1)
		t0 := time.Now()
		tr.Connected("a", c1)
		wantState(t, tr, "a", true, t0)
		if n := tr.Count(); n != 1 {
			t.Errorf("Count() = %d, want 1", n)
		}
		flushed()
		if got, want := store.all(), []write{{"a", true, t0}}; !slices.Equal(got, want) {
			t.Errorf("store writes after a flush %v, want %v", got, want)
		}

		time.Sleep(time.Minute)
		t1 := time.Now()
		if !tr.Disconnected("a", c1, "keepalive timeout") {
			t.Error("Disconnected of the live connection reported no change")
		}
		wantState(t, tr, "a", false, t1)
		if n := tr.Count(); n != 0 {
			t.Errorf("Count() = %d, want 0", n)
		}
		flushed()

		wantWrites := []write{{"a", true, t0}, {"a", false, t1}}
		if got := store.all(); !slices.Equal(got, wantWrites) {
			t.Errorf("store writes %v, want %v", got, wantWrites)
		}
		wantChanges := []presence.Change{
			{DeviceID: "a", Online: true, At: t0},
			{DeviceID: "a", Online: false, At: t1, Reason: "keepalive timeout"},
		}
		if got := log.all(); !slices.Equal(got, wantChanges) {
			t.Errorf("changes %v, want %v", got, wantChanges)
		}
	})
}

// A connect or disconnect never waits for the store: the store gets every
// change of an interval in one transaction, each device once with its
// latest state. A storm of the whole fleet is then a handful of writes,
// not one serialised write per device.
func TestWritesAreBatched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &recordingStore{}
		tr, log := MustTracker(t, store)
		const n = 2500
		t0 := time.Now()
		for i := range n {
			tr.Connected(fmt.Sprint("d", i), outpost.SessionID(i+1))
		}
		tr.Disconnected("d0", outpost.SessionID(1), "disconnected") // the same session id
		if got := store.transactions(); got != 0 {
			t.Fatalf("%d store transactions during the connects, want none before the flush", got)
		}
		if got := len(log.all()); got != n+1 {
			t.Errorf("%d changes reported, want %d (reports do not wait for the flush)", got, n+1)
		}
		flushed()
		if got, want := store.transactions(), (n+999)/1000; got != want {
			t.Errorf("%d store transactions for %d devices, want %d", got, n, want)
		}
		writes := store.all()
		if len(writes) != n {
			t.Fatalf("%d devices written, want %d (each once)", len(writes), n)
		}
		for _, w := range writes {
			if want := (write{w.id, w.id != "d0", t0}); w != want {
				t.Fatalf("wrote %v, want %v", w, want)
			}
		}
		flushed()
		if got := len(store.all()); got != n {
			t.Errorf("%d writes after a quiet interval, want still %d", got, n)
		}
	})
}

func TestTakeover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &recordingStore{}
		tr, log := MustTracker(t, store)
		old, cur := outpost.SessionID(1), outpost.SessionID(2)
		t0 := time.Now()
		tr.Connected("a", old)
		time.Sleep(time.Second)
		t1 := time.Now()
		tr.Connected("a", cur) // the device logged in again
		time.Sleep(time.Second)
		if tr.Disconnected("a", old, "taken over") { // the old session's end arrives late
			t.Error("the old connection's disconnect took the device offline")
		}
		wantState(t, tr, "a", true, t1)
		if got, want := log.all(), []presence.Change{{DeviceID: "a", Online: true, At: t0}}; !slices.Equal(got, want) {
			t.Errorf("changes %v, want only the first online %v", got, want)
		}
		synctest.Wait()
		for _, w := range store.all() {
			if !w.online {
				t.Errorf("store writes %v, want online only", store.all())
				break
			}
		}

		time.Sleep(time.Second)
		t3 := time.Now()
		if !tr.Disconnected("a", cur, "disconnected") {
			t.Error("the current connection's disconnect reported no change")
		}
		wantState(t, tr, "a", false, t3)
		changes := log.all()
		if want := (presence.Change{DeviceID: "a", Online: false, At: t3, Reason: "disconnected"}); len(changes) != 2 || changes[1] != want {
			t.Errorf("changes %v, want the second to be %v", changes, want)
		}
	})
}

func TestIgnoredDisconnects(t *testing.T) {
	c1, c2 := outpost.SessionID(1), outpost.SessionID(2)
	tests := []struct {
		name  string
		setup func(tr *presence.Tracker)
		id    string
		conn  outpost.SessionID
	}{
		{"never connected", func(tr *presence.Tracker) {}, "a", c1},
		{"other connection", func(tr *presence.Tracker) { tr.Connected("a", c1) }, "a", c2},
		{"other device", func(tr *presence.Tracker) { tr.Connected("a", c1) }, "b", c1},
		{"already disconnected", func(tr *presence.Tracker) {
			tr.Connected("a", c1)
			tr.Disconnected("a", c1, "disconnected")
		}, "a", c1},
		{"forgotten", func(tr *presence.Tracker) {
			tr.Connected("a", c1)
			tr.Forget("a")
		}, "a", c1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &recordingStore{}
			tr, log := MustTracker(t, store)
			tt.setup(tr)
			if err := tr.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			writes, changes := len(store.all()), len(log.all())
			if tr.Disconnected(tt.id, tt.conn, "disconnected") {
				t.Error("Disconnected reported a change")
			}
			if err := tr.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := store.all()[writes:]; len(got) != 0 {
				t.Errorf("store written %v", got)
			}
			if got := log.all()[changes:]; len(got) != 0 {
				t.Errorf("changes reported %v", got)
			}
		})
	}
}

func TestSeen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &recordingStore{}
		tr, log := MustTracker(t, store)
		c := outpost.SessionID(1)
		t0 := time.Now()
		tr.Connected("a", c)
		time.Sleep(90 * time.Second)
		tr.Seen("a")
		wantState(t, tr, "a", true, t0.Add(90*time.Second))
		flushed()
		// Seen only touches memory: one write, one change, from Connected.
		if n := len(store.all()); n != 1 {
			t.Errorf("%d store writes, want 1", n)
		}
		if n := len(log.all()); n != 1 {
			t.Errorf("%d changes, want 1", n)
		}

		tr.Seen("stranger")
		if _, _, ok := tr.State("stranger"); ok {
			t.Error("Seen created state for a device that never connected")
		}

		t1 := time.Now()
		tr.Disconnected("a", c, "disconnected")
		time.Sleep(time.Second)
		tr.Seen("a") // a message that raced the disconnect
		wantState(t, tr, "a", false, t1.Add(time.Second))
	})
}

func TestForget(t *testing.T) {
	store := &recordingStore{}
	tr, _ := MustTracker(t, store)
	tr.Connected("a", outpost.SessionID(1))
	tr.Connected("b", outpost.SessionID(2))
	tr.Forget("a")
	if _, _, ok := tr.State("a"); ok || tr.Online("a") {
		t.Error("a forgotten device still has state")
	}
	if n := tr.Count(); n != 1 {
		t.Errorf("Count() = %d, want 1", n)
	}
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := store.all(); len(got) != 1 || got[0].id != "b" {
		t.Errorf("store writes %v, want b's only (a was deleted)", got)
	}
}

// A failed write is neither lost nor blocking: changes are still reported
// at once, and the next flush writes the devices again.
func TestStoreErrorRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &recordingStore{fail: 1}
		tr, log := MustTracker(t, store)
		c := outpost.SessionID(1)
		t0 := time.Now()
		tr.Connected("a", c)
		if !tr.Online("a") {
			t.Error("device not online")
		}
		flushed() // fails
		if got := store.all(); len(got) != 0 {
			t.Fatalf("store writes %v after a failed transaction", got)
		}
		flushed() // retried
		if got, want := store.all(), []write{{"a", true, t0}}; !slices.Equal(got, want) {
			t.Errorf("store writes %v after the retry, want %v", got, want)
		}
		if !tr.Disconnected("a", c, "disconnected") {
			t.Error("Disconnected reported no change")
		}
		if n := len(log.all()); n != 2 {
			t.Errorf("%d changes reported, want 2", n)
		}
	})
}

// Close writes what the last interval changed.
func TestCloseFlushes(t *testing.T) {
	store := &recordingStore{}
	tr := presence.NewTracker(store, nil, nil)
	tr.Connected("a", outpost.SessionID(1))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := store.all(); len(got) != 1 || got[0].id != "a" || !got[0].online {
		t.Errorf("store writes %v after Close, want a online", got)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNilOnChange(t *testing.T) {
	tr, _ := MustTracker(t, &recordingStore{})
	tr2 := presence.NewTracker(&recordingStore{}, nil, nil)
	defer tr2.Close()
	c := outpost.SessionID(1)
	for _, tr := range []*presence.Tracker{tr, tr2} {
		tr.Connected("a", c)
		if !tr.Disconnected("a", c, "disconnected") {
			t.Error("Disconnected reported no change")
		}
	}
}

// A reconnect can race the end of the previous session: the old
// connection's disconnect is being persisted when the new connection
// arrives. Whatever the interleaving, the last change reported and the last
// state persisted must be the device's final state, or the store and every
// stream subscriber would believe an online device offline.
func TestReconnectRacingDisconnect(t *testing.T) {
	store := &recordingStore{
		hold:    func(w write) bool { return !w.online },
		held:    make(chan write),
		release: make(chan struct{}),
	}
	tr, log := MustTracker(t, store)
	old, cur := outpost.SessionID(1), outpost.SessionID(2)
	tr.Connected("a", old)
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.Disconnected("a", old, "keepalive timeout")
	flushErr := make(chan error, 1)
	go func() { flushErr <- tr.Flush(context.Background()) }()
	<-store.held // the offline write is in progress
	tr.Connected("a", cur)
	close(store.release)
	if err := <-flushErr; err != nil {
		t.Fatal(err)
	}
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}

	if !tr.Online("a") {
		t.Fatal("device offline after reconnecting")
	}
	changes := log.all()
	if last := changes[len(changes)-1]; !last.Online {
		t.Errorf("changes %v end with offline, but the device is online", changes)
	}
	writes := store.all()
	if last := writes[len(writes)-1]; !last.online {
		t.Errorf("store writes %v end with offline, but the device is online", writes)
	}
}

// A slow store write holds up no device's transitions.
func TestTransitionsDoNotWaitForTheStore(t *testing.T) {
	store := &recordingStore{
		hold:    func(w write) bool { return w.id == "a" && !w.online },
		held:    make(chan write),
		release: make(chan struct{}),
	}
	tr, log := MustTracker(t, store)
	a := outpost.SessionID(1)
	tr.Connected("a", a)
	tr.Disconnected("a", a, "disconnected")
	var wg sync.WaitGroup
	wg.Go(func() { _ = tr.Flush(context.Background()) })
	<-store.held

	tr.Connected("b", outpost.SessionID(2)) // returns while a's write is held
	tr.Connected("a", a)
	if !tr.Online("b") || !tr.Online("a") {
		t.Error("a or b not online")
	}
	if changes := log.all(); len(changes) != 4 {
		t.Errorf("changes %v, want 4 reported while a's write is held", changes)
	}
	close(store.release)
	wg.Wait()
}
