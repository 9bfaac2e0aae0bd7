package presence_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

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

// recordingStore keeps every presence write in order. When hold is set, a
// write for which it returns true reports itself on held and waits for
// release before it completes.
type recordingStore struct {
	err     error
	hold    func(w write) bool
	held    chan write
	release chan struct{}

	mu     sync.Mutex
	writes []write
}

func (s *recordingStore) SetPresence(ctx context.Context, id string, online bool, lastSeen time.Time) error {
	w := write{id, online, lastSeen}
	if s.hold != nil && s.hold(w) {
		s.held <- w
		<-s.release
	}
	s.mu.Lock()
	s.writes = append(s.writes, w)
	s.mu.Unlock()
	return s.err
}

func (s *recordingStore) all() []write {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.writes)
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

// MustTracker returns a tracker persisting to store and logging changes.
func MustTracker(tb testing.TB, store *recordingStore) (*presence.Tracker, *changeLog) {
	tb.Helper()
	log := &changeLog{}
	return presence.NewTracker(store, log.add, nil), log
}

// Connection identities are opaque to the tracker: any comparable value.
type conn struct{ n int }

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
		c1 := &conn{1}
		t0 := time.Now()
		tr.Connected("a", c1)
		wantState(t, tr, "a", true, t0)
		if n := tr.Count(); n != 1 {
			t.Errorf("Count() = %d, want 1", n)
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

func TestTakeover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &recordingStore{}
		tr, log := MustTracker(t, store)
		old, cur := &conn{1}, &conn{2}
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
		if got := store.all(); len(got) != 2 || !got[0].online || !got[1].online {
			t.Errorf("store writes %v, want two online writes", got)
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
	c1, c2 := &conn{1}, &conn{2}
	tests := []struct {
		name  string
		setup func(tr *presence.Tracker)
		id    string
		conn  any
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
			writes, changes := len(store.all()), len(log.all())
			if tr.Disconnected(tt.id, tt.conn, "disconnected") {
				t.Error("Disconnected reported a change")
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
		c := &conn{1}
		t0 := time.Now()
		tr.Connected("a", c)
		time.Sleep(90 * time.Second)
		tr.Seen("a")
		wantState(t, tr, "a", true, t0.Add(90*time.Second))
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

		time.Sleep(time.Second)
		tr.Disconnected("a", c, "disconnected")
		time.Sleep(time.Second)
		tr.Seen("a") // a message that raced the disconnect
		wantState(t, tr, "a", false, t0.Add(92*time.Second))
	})
}

func TestForget(t *testing.T) {
	tr, _ := MustTracker(t, &recordingStore{})
	tr.Connected("a", &conn{1})
	tr.Connected("b", &conn{2})
	tr.Forget("a")
	if _, _, ok := tr.State("a"); ok || tr.Online("a") {
		t.Error("a forgotten device still has state")
	}
	if n := tr.Count(); n != 1 {
		t.Errorf("Count() = %d, want 1", n)
	}
}

func TestStoreErrorStillReports(t *testing.T) {
	store := &recordingStore{err: errors.New("database is locked")}
	tr, log := MustTracker(t, store)
	c := &conn{1}
	tr.Connected("a", c)
	if !tr.Online("a") {
		t.Error("device not online after a failed store write")
	}
	if !tr.Disconnected("a", c, "disconnected") {
		t.Error("Disconnected reported no change after a failed store write")
	}
	if n := len(log.all()); n != 2 {
		t.Errorf("%d changes reported, want 2", n)
	}
}

func TestNilOnChange(t *testing.T) {
	tr := presence.NewTracker(&recordingStore{}, nil, nil)
	c := &conn{1}
	tr.Connected("a", c)
	if !tr.Disconnected("a", c, "disconnected") {
		t.Error("Disconnected reported no change")
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
	old, cur := &conn{1}, &conn{2}
	tr.Connected("a", old)

	var wg sync.WaitGroup
	wg.Go(func() { tr.Disconnected("a", old, "keepalive timeout") })
	<-store.held // the offline write is in progress
	wg.Go(func() { tr.Connected("a", cur) })
	// Give the reconnect up to 50ms to overtake the held offline write. No
	// event marks "the reconnect is waiting its turn", so this bounded poll
	// runs out on a correct tracker and ends early on one that lets the
	// reconnect report first.
	for range 50 {
		if n := len(log.all()); n > 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(store.release)
	wg.Wait()

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

// A slow store write for one device must not hold up another device's
// transitions.
func TestDevicesDoNotWaitForEachOther(t *testing.T) {
	store := &recordingStore{
		hold:    func(w write) bool { return w.id == "a" && !w.online },
		held:    make(chan write),
		release: make(chan struct{}),
	}
	tr, log := MustTracker(t, store)
	a := &conn{1}
	tr.Connected("a", a)
	var wg sync.WaitGroup
	wg.Go(func() { tr.Disconnected("a", a, "disconnected") })
	<-store.held

	tr.Connected("b", &conn{2}) // returns while a's write is held
	if !tr.Online("b") {
		t.Error("b not online")
	}
	if changes := log.all(); changes[len(changes)-1].DeviceID != "b" {
		t.Errorf("changes %v, want b's online reported while a's write is held", changes)
	}
	close(store.release)
	wg.Wait()
}
