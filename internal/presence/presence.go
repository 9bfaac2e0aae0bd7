// Package presence tracks which devices hold a live MQTT session and when
// each was last seen.
//
// The broker reports connections and disconnections with an opaque
// connection identity. A takeover (the same device logging in again) makes
// the new connection current before the old one's disconnect arrives, so
// that late disconnect is recognised and does not mark the device offline.
package presence

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Store persists presence changes.
type Store interface {
	SetPresence(ctx context.Context, id string, online bool, lastSeen time.Time) error
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

// Tracker holds the live presence of every device. Safe for concurrent use.
type Tracker struct {
	store    Store
	onChange func(Change)
	log      *slog.Logger

	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	// order serialises the device's transitions from the state change
	// through the store write and the onChange report, so both see them in
	// the order they happened even when a reconnect races the end of the
	// previous session. Reads take only Tracker.mu and are never held up.
	order    sync.Mutex
	conn     any
	online   bool
	lastSeen time.Time
}

// NewTracker returns a tracker that persists changes to store and reports
// them to onChange (which must not block; may be nil).
func NewTracker(store Store, onChange func(Change), log *slog.Logger) *Tracker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if onChange == nil {
		onChange = func(Change) {}
	}
	return &Tracker{store: store, onChange: onChange, log: log, m: map[string]*entry{}}
}

// Connected records that conn is now the live session of device id.
func (t *Tracker) Connected(id string, conn any) {
	e := t.lockEntry(id, true)
	defer e.order.Unlock()
	now := time.Now()
	t.mu.Lock()
	was := e.online
	e.conn, e.online, e.lastSeen = conn, true, now
	t.mu.Unlock()
	if err := t.store.SetPresence(context.Background(), id, true, now); err != nil {
		t.log.Error("store presence", "device_id", id, "error", err)
	}
	if !was {
		t.onChange(Change{DeviceID: id, Online: true, At: now})
	}
}

// Disconnected records the end of conn. It is ignored when conn is no
// longer the device's current session (it was taken over). It reports
// whether the device went offline.
func (t *Tracker) Disconnected(id string, conn any, reason string) bool {
	e := t.lockEntry(id, false)
	if e == nil {
		return false
	}
	defer e.order.Unlock()
	now := time.Now()
	t.mu.Lock()
	if e.conn != conn || !e.online {
		t.mu.Unlock()
		return false
	}
	e.conn, e.online, e.lastSeen = nil, false, now
	t.mu.Unlock()
	if err := t.store.SetPresence(context.Background(), id, false, now); err != nil {
		t.log.Error("store presence", "device_id", id, "error", err)
	}
	t.onChange(Change{DeviceID: id, Online: false, At: now, Reason: reason})
	return true
}

// lockEntry returns the device's entry with its order lock held, creating
// it if create is set; nil if there is none.
func (t *Tracker) lockEntry(id string, create bool) *entry {
	t.mu.Lock()
	e := t.m[id]
	if e == nil && create {
		e = &entry{}
		t.m[id] = e
	}
	t.mu.Unlock()
	if e != nil {
		e.order.Lock()
	}
	return e
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
