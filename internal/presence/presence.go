// Package presence tracks which devices hold a live MQTT session and when
// each was last seen.
//
// The broker reports connections and disconnections with the session id
// of the connection (outpost.SessionID). A takeover (the same device logging in again) makes
// the new connection current before the old one's disconnect arrives, so
// that late disconnect is recognised and does not mark the device offline.
//
// Presence lives in memory, where the platform reads it. The store gets it
// in batches: a change marks the device, and a flush (every FlushInterval,
// and at Close) writes the current state of every marked device in one
// transaction. A connect or disconnect therefore never waits for the
// database, and a reconnect storm of the whole fleet costs one write per
// interval instead of one per device. What a crash loses is at most one
// interval of last-seen times; the online flags are reset at every start
// anyway.
package presence

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// FlushInterval is how often changes are written to the store.
const FlushInterval = time.Second

// flushBatch bounds the devices written in one transaction, so that a
// flush after a storm does not hold the store's writer for long.
const flushBatch = 1000

// Store persists presence.
type Store interface {
	// SetPresences records the presence of several devices at once.
	SetPresences(ctx context.Context, ps []outpost.Presence) error
}

// Change is a presence transition.
type Change struct {
	DeviceID string    `json:"device_id"`
	Online   bool      `json:"online"`
	At       time.Time `json:"at"`
	// Reason says why a device went offline ("disconnected", "keepalive
	// timeout", "taken over", …); empty when it came online.
	Reason string `json:"reason,omitempty"`
}

// Tracker holds the live presence of every device. Safe for concurrent
// use. Close stops its flusher.
type Tracker struct {
	store    Store
	onChange func(Change)
	log      *slog.Logger

	// mu guards m and dirty. Transitions and their onChange reports happen
	// under it, so reports come in the order the transitions happened.
	mu    sync.Mutex
	m     map[string]*entry
	dirty map[string]struct{} // changed since the last flush

	flushMu   sync.Mutex // one flush at a time
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type entry struct {
	session  outpost.SessionID
	online   bool
	lastSeen time.Time
}

// NewTracker returns a tracker that persists changes to store and reports
// them to onChange (which must not block, nor call the tracker; may be
// nil).
func NewTracker(store Store, onChange func(Change), log *slog.Logger) *Tracker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if onChange == nil {
		onChange = func(Change) {}
	}
	t := &Tracker{store: store, onChange: onChange, log: log, m: map[string]*entry{}, dirty: map[string]struct{}{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go t.flusher()
	return t
}

// Connected records that session is now the live session of device id.
func (t *Tracker) Connected(id string, session outpost.SessionID) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[id]
	if e == nil {
		e = &entry{}
		t.m[id] = e
	}
	was := e.online
	e.session, e.online, e.lastSeen = session, true, now
	t.dirty[id] = struct{}{}
	if !was {
		t.onChange(Change{DeviceID: id, Online: true, At: now})
	}
}

// Disconnected records the end of session. It is ignored when session is no
// longer the device's current session (it was taken over). It reports
// whether the device went offline.
func (t *Tracker) Disconnected(id string, session outpost.SessionID, reason string) bool {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[id]
	if e == nil || e.session != session || !e.online {
		return false
	}
	e.session, e.online, e.lastSeen = 0, false, now
	t.dirty[id] = struct{}{}
	t.onChange(Change{DeviceID: id, Online: false, At: now, Reason: reason})
	return true
}

// Seen notes activity from a device; it only touches memory.
func (t *Tracker) Seen(id string) {
	t.mu.Lock()
	if e := t.m[id]; e != nil {
		e.lastSeen = time.Now()
	}
	t.mu.Unlock()
}

// Online reports whether a device holds a live session.
func (t *Tracker) Online(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[id]
	return e != nil && e.online
}

// State returns the live state of a device; ok is false when the tracker
// has not seen it since the platform started.
func (t *Tracker) State(id string) (online bool, lastSeen time.Time, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[id]
	if e == nil {
		return false, time.Time{}, false
	}
	return e.online, e.lastSeen, true
}

// Forget drops a device (after deletion).
func (t *Tracker) Forget(id string) {
	t.mu.Lock()
	delete(t.m, id)
	delete(t.dirty, id)
	t.mu.Unlock()
}

// Count returns the number of devices online.
func (t *Tracker) Count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, e := range t.m {
		if e.online {
			n++
		}
	}
	return n
}

// Flush writes the current state of every device changed since the last
// flush. Devices whose write failed are written again by the next flush.
func (t *Tracker) Flush(ctx context.Context) error {
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	t.mu.Lock()
	if len(t.dirty) == 0 {
		t.mu.Unlock()
		return nil
	}
	ps := make([]outpost.Presence, 0, len(t.dirty))
	for id := range t.dirty {
		if e := t.m[id]; e != nil {
			ps = append(ps, outpost.Presence{ID: id, Online: e.online, LastSeen: e.lastSeen})
		}
	}
	t.dirty = map[string]struct{}{}
	t.mu.Unlock()
	for len(ps) > 0 {
		n := min(len(ps), flushBatch)
		if err := t.store.SetPresences(ctx, ps[:n]); err != nil {
			t.mu.Lock()
			for _, p := range ps {
				if _, ok := t.m[p.ID]; ok {
					t.dirty[p.ID] = struct{}{}
				}
			}
			t.mu.Unlock()
			return err
		}
		ps = ps[n:]
	}
	return nil
}

func (t *Tracker) flusher() {
	defer close(t.done)
	tk := time.NewTicker(FlushInterval)
	defer tk.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tk.C:
			if err := t.Flush(context.Background()); err != nil {
				t.log.Error("store presence; retrying at the next flush", "error", err)
			}
		}
	}
}

// Close stops the flusher and writes what is left.
func (t *Tracker) Close() error {
	var err error
	t.closeOnce.Do(func() {
		close(t.stop)
		<-t.done
		err = t.Flush(context.Background())
	})
	return err
}
