package outpost

import (
	"encoding/json"
	"time"
)

// StreamEvent is one event of the platform's live stream (committed
// telemetry, presence, device events, queue and call changes, …).
type StreamEvent struct {
	ID       uint64
	Kind     string
	DeviceID string
	Time     time.Time
	Data     json.RawMessage // the JSON object sent to clients
}

// StreamFilter selects stream events; empty fields match everything.
type StreamFilter struct {
	DeviceIDs map[string]bool
	Kinds     map[string]bool
}

// Match reports whether e passes the filter.
func (f StreamFilter) Match(e *StreamEvent) bool {
	return (len(f.DeviceIDs) == 0 || f.DeviceIDs[e.DeviceID]) && (len(f.Kinds) == 0 || f.Kinds[e.Kind])
}

// Subscription receives live stream events until Close.
type Subscription interface {
	// Events delivers the matching events; it is closed by Close.
	Events() <-chan *StreamEvent
	// Dropped returns how many events were lost because the subscriber
	// was slow.
	Dropped() uint64
	Close()
}

// MissedUnknown is the number of missed events reported to a subscriber
// that resumes from an event of before the platform's start: how many it
// missed is not known.
const MissedUnknown = ^uint64(0)

// ForeignEventID, given as the id to resume after, stands for an id this
// process did not issue (another replica's, or one it cannot read): the
// subscriber is told it missed an unknown number of events
// (MissedUnknown) and gets live events only.
const ForeignEventID = ^uint64(0)
