package outpost

import (
	"context"
	"encoding/json"
	"time"
)

// Feed is a feed a device registered: what it measures and how.
type Feed struct {
	Ref      string `json:"ref"`
	Name     string `json:"name"`
	Type     string `json:"type"`      // "IN" or "IN_OUT"
	DataType string `json:"data_type"` // number, bool, string, location, hex
	Unit     string `json:"unit,omitempty"`
	// Removed is set once the device removed the feed; readings for it
	// are rejected until the device registers it again.
	Removed   bool      `json:"removed,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Attribute is a named, typed value a device reports about itself.
type Attribute struct {
	Name      string          `json:"name"`
	DataType  string          `json:"data_type"`
	Value     json.RawMessage `json:"value"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// Parameters is a device's configuration: the values the platform owns
// (Desired, changed by applications) and the values the device last
// reported (Reported).
type Parameters struct {
	// Version grows with every change of Desired.
	Version  int64                      `json:"version"`
	Desired  map[string]json.RawMessage `json:"desired"`
	Reported map[string]json.RawMessage `json:"reported"`
	// Delivery, after a change, is the state of the change's message in
	// the down queue ("sent" when it went out at once, "queued" while the
	// device is away or in PULL mode: it gets the change when it comes
	// back or pulls), or "not_queued" when the queue refused it (too many
	// messages waiting): the device gets it with the next full set it asks
	// for.
	Delivery string `json:"delivery,omitempty"`
}

// FeedCommand is a value an application set on an IN_OUT feed.
type FeedCommand struct {
	ID string `json:"id"`
	// MessageID identifies the command's message in the down queue
	// (GET /api/v1/devices/{id}/queue shows its state later).
	MessageID string `json:"message_id"`
	// State is the queued message's state when the command was issued:
	// queued (the device is offline or pulls), or sent.
	State    State           `json:"state"`
	DeviceID string          `json:"device_id"`
	Feed     string          `json:"feed"`
	Value    json.RawMessage `json:"value"`
	IssuedAt int64           `json:"issued_at"` // ms
}

// Kinds of DeviceEvent.
const (
	EventKindEvent        = "event"
	EventKindNotification = "notification"
)

// DeviceEvent is a stored event or notification of a device.
type DeviceEvent struct {
	Seq int64 `json:"seq"`
	// MessageID is the id the device gave the event, if any; a device's
	// events are stored once per id.
	MessageID string `json:"message_id,omitempty"`
	DeviceID  string `json:"device_id"`
	Kind      string `json:"kind"` // EventKindEvent or EventKindNotification
	// Name and Data for events; Title and Text for notifications.
	Name  string          `json:"name,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	Title string          `json:"title,omitempty"`
	Text  string          `json:"text,omitempty"`
	// TS is when it happened (ms), ReceivedAt when the platform got it.
	TS         int64 `json:"ts"`
	ReceivedAt int64 `json:"received_at"`
}

// EventFilter selects stored events of one device.
type EventFilter struct {
	DeviceID string
	Kind     string // empty: both kinds
	Since    int64  // inclusive, ms of TS; 0 = no bound
	// Limit is the maximum number returned (default 100), the most recent.
	Limit int
}

// ModelStore keeps the device model: feed definitions, attributes,
// parameters, events and notifications. Every method returns ENOTFOUND for
// an unknown device.
type ModelStore interface {
	// PutFeeds registers feeds (insert or update by reference, clearing
	// Removed) and marks the refs in remove as removed (a ref never
	// registered is recorded as removed too). Limits are the caller's job.
	// It returns the device's feed definitions after the change.
	PutFeeds(ctx context.Context, deviceID string, register []Feed, remove []string) ([]Feed, error)
	// FeedDefs returns the device's feed definitions, removed ones
	// included, sorted by reference.
	FeedDefs(ctx context.Context, deviceID string) ([]Feed, error)
	// PutAttributes inserts or updates attributes by name.
	PutAttributes(ctx context.Context, deviceID string, attrs []Attribute) error
	// Attributes returns the device's attributes sorted by name.
	Attributes(ctx context.Context, deviceID string) ([]Attribute, error)
	// UpdateParameters applies changes to the desired parameters (a JSON
	// null removes a key) and returns the new set and version.
	UpdateParameters(ctx context.Context, deviceID string, changes map[string]json.RawMessage) (*Parameters, error)
	// SetReportedParameters merges the device's reported values.
	SetReportedParameters(ctx context.Context, deviceID string, values map[string]json.RawMessage) error
	// Parameters returns the device's parameters.
	Parameters(ctx context.Context, deviceID string) (*Parameters, error)
	// AddEvent stores an event or notification and sets its Seq. An event
	// whose MessageID the device used before is not stored again; Seq is
	// then 0.
	AddEvent(ctx context.Context, e *DeviceEvent) error
	// Events returns stored events, oldest first.
	Events(ctx context.Context, f EventFilter) ([]DeviceEvent, error)
}
