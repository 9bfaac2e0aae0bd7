// Package stream fans platform events (telemetry, presence, …) out to live
// subscribers such as the server-sent-events endpoint.
//
// Publishing never blocks: each subscriber has a bounded buffer, and a
// subscriber that falls behind loses events and is told how many (its
// Dropped counter), rather than slowing ingestion down. Recent events stay
// in a ring so a client that reconnects with the last id it saw can resume
// without a gap, as long as the gap still fits in the ring. The ring is
// bounded in events and in bytes; a hub can also skip encoding (and
// keeping) events while nobody has been subscribed for a while
// (Options.KeepIdle).
package stream

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Event kinds.
const (
	KindTelemetry = "telemetry"
	KindPresence  = "presence"
)

// Event is one platform event.
type Event = outpost.StreamEvent

// Filter selects events; empty fields match everything.
type Filter = outpost.StreamFilter

// Defaults of Options.
const (
	DefaultRingEvents = 10_000
	DefaultRingBytes  = 64 << 20
)

// eventOverhead is what an event costs in the ring besides its data.
const eventOverhead = 128

// Options configure a Hub.
type Options struct {
	// RingEvents and RingBytes bound the replay ring: the newest events
	// whose data, plus a small overhead each, fit in RingBytes, at most
	// RingEvents of them (defaults DefaultRingEvents, DefaultRingBytes).
	// A telemetry batch of 10,000 readings is about 500 KB, so the bytes
	// are the bound that matters.
	RingEvents int
	RingBytes  int64
	// FirstID is the id of the hub's first event (default 1).
	FirstID uint64
	// KeepIdle, when set, is how long after the last subscriber left the
	// hub still encodes events and keeps them for replay, so that a client
	// that reconnects soon resumes without a gap. Beyond it, while nobody
	// is subscribed, events are neither encoded nor kept (their ids are
	// used up, so a late resume is told how many it missed). Zero keeps
	// every event whether anybody listens or not.
	KeepIdle time.Duration
	// Tap, when set, gets every event published here (not those
	// injected), encoded, whether anybody listens here or not, while
	// TapWanted reports true (nil: always): the platform replicas mirror
	// their events to one another through it, only while another replica
	// has a listener. Neither may block.
	Tap       func(kind, deviceID string, data json.RawMessage)
	TapWanted func() bool
	// OnListen, when set, is called (outside the hub's lock, and must not
	// block) each time a subscriber arrives: a replica tells the others at
	// once that it wants their events.
	OnListen func()
}

// Hub distributes events. The zero value is not usable; call New (or
// NewHub).
type Hub struct {
	opt Options

	mu     sync.Mutex
	first  uint64 // id of this hub's first event
	nextID uint64
	// The ring holds the events oldest..nextID-1 in order: ring[head] is
	// oldest, count events in all, bytes their size.
	ring   []*Event
	head   int
	count  int
	oldest uint64
	bytes  int64
	subs   map[*Subscription]struct{}
	// idleSince is when the last subscriber left (zero: there never was
	// one, or there is one now).
	idleSince time.Time
	everSub   bool
}

// New returns a hub.
func New(o Options) *Hub {
	if o.RingEvents <= 0 {
		o.RingEvents = DefaultRingEvents
	}
	if o.RingBytes <= 0 {
		o.RingBytes = DefaultRingBytes
	}
	o.FirstID = max(o.FirstID, 1)
	return &Hub{opt: o, ring: make([]*Event, o.RingEvents), subs: map[*Subscription]struct{}{}, first: o.FirstID, nextID: o.FirstID, oldest: o.FirstID}
}

// NewHub returns a hub that keeps the last ringSize events (and at most
// DefaultRingBytes of them) for replay, listened to or not; its event ids
// start at 1.
func NewHub(ringSize int) *Hub { return NewHubAt(ringSize, 1) }

// NewHubAt is NewHub with event ids starting at firstID. The platform
// starts them at its start time in microseconds, so ids keep growing across
// restarts and a client resuming with an id from before a restart is told
// it missed events (the ring does not survive the restart) rather than
// being replayed unrelated ones.
func NewHubAt(ringSize int, firstID uint64) *Hub {
	return New(Options{RingEvents: ringSize, FirstID: firstID})
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

// Events returns C.
func (s *Subscription) Events() <-chan *Event { return s.C }

// FollowBuffer is the buffer of a Follow subscription, in events.
const FollowBuffer = 4096

// Follow subscribes with a buffer of FollowBuffer events (see Subscribe):
// the live stream of the HTTP API.
func (h *Hub) Follow(f Filter, afterID uint64) (outpost.Subscription, uint64) {
	return h.Subscribe(f, FollowBuffer, afterID)
}

// Close unsubscribes; C is closed.
func (s *Subscription) Close() {
	s.once.Do(func() {
		s.hub.mu.Lock()
		delete(s.hub.subs, s)
		if len(s.hub.subs) == 0 {
			s.hub.idleSince = time.Now()
		}
		close(s.C)
		s.hub.mu.Unlock()
	})
}

// Listening reports whether the hub has a subscriber, or had one within
// Options.KeepIdle (so that a client reconnecting soon resumes without a
// gap): whether this replica wants the other replicas' events.
func (h *Hub) Listening() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listening(time.Now())
}

// listening reports whether events must be encoded now; h.mu is held.
func (h *Hub) listening(now time.Time) bool {
	if h.opt.KeepIdle <= 0 || len(h.subs) > 0 {
		return true
	}
	return h.everSub && now.Sub(h.idleSince) < h.opt.KeepIdle
}

// Publish assigns the event an id and delivers it to every matching
// subscriber without blocking. With Options.KeepIdle, an event published
// while nobody listens is only counted.
func (h *Hub) Publish(kind, deviceID string, data any) {
	if h.opt.Tap != nil && (h.opt.TapWanted == nil || h.opt.TapWanted()) {
		raw, err := json.Marshal(data)
		if err != nil {
			return
		}
		h.opt.Tap(kind, deviceID, raw)
		h.publish(kind, deviceID, json.RawMessage(raw))
		return
	}
	h.publish(kind, deviceID, data)
}

// Inject publishes an event encoded elsewhere (another replica's), without
// passing it to Tap.
func (h *Hub) Inject(kind, deviceID string, data json.RawMessage) {
	h.publish(kind, deviceID, data)
}

func (h *Hub) publish(kind, deviceID string, data any) {
	now := time.Now()
	h.mu.Lock()
	if !h.listening(now) {
		// Nobody to tell and nobody to replay to: use the id up so that a
		// late resume knows it missed it, and drop the ring (it would no
		// longer be contiguous).
		h.nextID++
		h.clearRing()
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	raw, ok := data.(json.RawMessage)
	if !ok {
		var err error
		if raw, err = json.Marshal(data); err != nil { // outside the lock: batches can be large
			return
		}
	}
	e := &Event{Kind: kind, DeviceID: deviceID, Time: now, Data: raw}
	h.mu.Lock()
	defer h.mu.Unlock()
	e.ID = h.nextID
	h.nextID++
	h.push(e)
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

// push appends e (whose id is nextID-1) to the ring and evicts the oldest
// events beyond the bounds; h.mu is held.
func (h *Hub) push(e *Event) {
	if h.count > 0 && h.oldest+uint64(h.count) != e.ID {
		h.clearRing() // ids skipped meanwhile
	}
	if h.count == 0 {
		h.oldest = e.ID
	}
	size := int64(len(e.Data)) + eventOverhead
	for h.count > 0 && (h.count == len(h.ring) || h.bytes+size > h.opt.RingBytes) {
		h.evict()
	}
	if size > h.opt.RingBytes {
		h.oldest = e.ID + 1 // too large to keep even alone
		return
	}
	h.ring[(h.head+h.count)%len(h.ring)] = e
	h.count++
	h.bytes += size
}

func (h *Hub) evict() {
	e := h.ring[h.head]
	h.ring[h.head] = nil
	h.head = (h.head + 1) % len(h.ring)
	h.count--
	h.bytes -= int64(len(e.Data)) + eventOverhead
	h.oldest++
}

func (h *Hub) clearRing() {
	for h.count > 0 {
		h.evict()
	}
	h.head = 0
	h.oldest = h.nextID
}

// RingBytes returns the size of the events held for replay, as the ring
// counts it (data plus a small overhead per event).
func (h *Hub) RingBytes() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bytes
}

// MissedUnknown is the missed count Subscribe reports for an id from
// before the hub started: events were lost, nobody knows how many.
const MissedUnknown = outpost.MissedUnknown

// Subscribe registers a subscriber with a buffer of size events. If
// afterID > 0, events newer than afterID still in the ring are queued first;
// missed reports how many newer events had already left the ring (or were
// never kept), or MissedUnknown.
func (h *Hub) Subscribe(f Filter, size int, afterID uint64) (s *Subscription, missed uint64) {
	if size <= 0 {
		size = 1024
	}
	if h.opt.OnListen != nil {
		defer h.opt.OnListen() // after the unlock below
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var replay []*Event
	if afterID == outpost.ForeignEventID {
		missed = MissedUnknown
	} else if afterID > 0 && afterID < h.nextID-1 {
		first := afterID + 1
		if first < h.oldest {
			missed = h.oldest - first
			if first < h.first {
				// The id is from before this hub started (a restart):
				// how many events the client missed is unknown.
				missed = MissedUnknown
			}
			first = h.oldest
		}
		for id := first; id < h.oldest+uint64(h.count); id++ {
			if e := h.ring[(h.head+int(id-h.oldest))%len(h.ring)]; e.ID == id && f.Match(e) {
				replay = append(replay, e)
			}
		}
	}
	s = &Subscription{C: make(chan *Event, max(size, len(replay)+size)), filter: f, hub: h}
	for _, e := range replay {
		s.C <- e
	}
	h.subs[s] = struct{}{}
	h.everSub = true
	return s, missed
}

// LastID returns the id of the newest event, 0 if none.
func (h *Hub) LastID() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nextID - 1
}
