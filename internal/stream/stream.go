// Package stream fans platform events (telemetry, presence, …) out to live
// subscribers such as the server-sent-events endpoint.
//
// Publishing never blocks: each subscriber has a bounded buffer, and a
// subscriber that falls behind loses events and is told how many (its
// Dropped counter), rather than slowing ingestion down. Recent events stay
// in a ring so a client that reconnects with the last id it saw can resume
// without a gap, as long as the gap still fits in the ring.
package stream

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"
)

// Event kinds.
const (
	KindTelemetry = "telemetry"
	KindPresence  = "presence"
)

// Event is one platform event.
type Event struct {
	ID       uint64          `json:"-"`
	Kind     string          `json:"-"`
	DeviceID string          `json:"-"`
	Time     time.Time       `json:"-"`
	Data     json.RawMessage `json:"-"` // JSON object sent to clients
}

// Filter selects events; empty fields match everything.
type Filter struct {
	DeviceIDs map[string]bool
	Kinds     map[string]bool
}

// Match reports whether e passes the filter.
func (f Filter) Match(e *Event) bool {
	return (len(f.DeviceIDs) == 0 || f.DeviceIDs[e.DeviceID]) && (len(f.Kinds) == 0 || f.Kinds[e.Kind])
}

// Hub distributes events. The zero value is not usable; call NewHub.
type Hub struct {
	mu     sync.Mutex
	first  uint64 // id of this hub's first event
	nextID uint64
	ring   []*Event // recent events, ring[i%len] for id i
	subs   map[*Subscription]struct{}
}

// NewHub returns a hub that keeps the last ringSize events for replay; its
// event ids start at 1.
func NewHub(ringSize int) *Hub { return NewHubAt(ringSize, 1) }

// NewHubAt is NewHub with event ids starting at firstID. The platform
// starts them at its start time in microseconds, so ids keep growing across
// restarts and a client resuming with an id from before a restart is told
// it missed events (the ring does not survive the restart) rather than
// being replayed unrelated ones.
func NewHubAt(ringSize int, firstID uint64) *Hub {
	if ringSize <= 0 {
		ringSize = 10_000
	}
	firstID = max(firstID, 1)
	return &Hub{ring: make([]*Event, ringSize), subs: map[*Subscription]struct{}{}, first: firstID, nextID: firstID}
}

// Subscription receives matching events on C until Close.
type Subscription struct {
	C       chan *Event
	filter  Filter
	hub     *Hub
	dropped atomic.Uint64
	once    sync.Once
}

// Dropped returns how many events were lost because the subscriber was
// slow.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close unsubscribes; C is closed.
func (s *Subscription) Close() {
	s.once.Do(func() {
		s.hub.mu.Lock()
		delete(s.hub.subs, s)
		close(s.C)
		s.hub.mu.Unlock()
	})
}

// Publish assigns the event an id and delivers it to every matching
// subscriber without blocking.
func (h *Hub) Publish(kind, deviceID string, data any) {
	raw, err := json.Marshal(data)
	if err != nil {
		return
	}
	e := &Event{Kind: kind, DeviceID: deviceID, Time: time.Now(), Data: raw}
	h.mu.Lock()
	defer h.mu.Unlock()
	e.ID = h.nextID
	h.nextID++
	h.ring[e.ID%uint64(len(h.ring))] = e
	for s := range h.subs {
		if !s.filter.Match(e) {
			continue
		}
		select {
		case s.C <- e:
		default:
			s.dropped.Add(1)
		}
	}
}

// MissedUnknown is the missed count Subscribe reports for an id from
// before the hub started: events were lost, nobody knows how many.
const MissedUnknown = ^uint64(0)

// Subscribe registers a subscriber with a buffer of size events. If
// afterID > 0, events newer than afterID still in the ring are queued first;
// missed reports how many newer events had already left the ring, or
// MissedUnknown.
func (h *Hub) Subscribe(f Filter, size int, afterID uint64) (s *Subscription, missed uint64) {
	if size <= 0 {
		size = 1024
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var replay []*Event
	if afterID > 0 && afterID < h.nextID-1 {
		first := afterID + 1
		oldest := h.first
		if h.nextID-h.first > uint64(len(h.ring)) {
			oldest = h.nextID - uint64(len(h.ring))
		}
		if first < oldest {
			missed = oldest - first
			if first < h.first {
				// The id is from before this hub started (a restart):
				// how many events the client missed is unknown.
				missed = MissedUnknown
			}
			first = oldest
		}
		for id := first; id < h.nextID; id++ {
			if e := h.ring[id%uint64(len(h.ring))]; e != nil && e.ID == id && f.Match(e) {
				replay = append(replay, e)
			}
		}
	}
	s = &Subscription{C: make(chan *Event, max(size, len(replay)+size)), filter: f, hub: h}
	for _, e := range replay {
		s.C <- e
	}
	h.subs[s] = struct{}{}
	return s, missed
}

// LastID returns the id of the newest event, 0 if none.
func (h *Hub) LastID() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nextID - 1
}
