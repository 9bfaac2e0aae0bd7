package fleet

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strconv"
	"time"
)

// KindRaw: a raw message a device published under its own namespace (see
// Event.Raw).
const KindRaw = "raw"

// Feed is a feed a device registered.
type Feed struct {
	Ref      string `json:"ref"`
	Name     string `json:"name"`
	Type     string `json:"type"`      // "IN" or "IN_OUT"
	DataType string `json:"data_type"` // number, bool, string, location, hex
	Unit     string `json:"unit,omitempty"`
	// Removed is set for a feed the device removed.
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

// Parameters is a device's configuration: what the platform wants
// (Desired, which applications change) and what the device last reported.
type Parameters struct {
	Version  int64                      `json:"version"`
	Desired  map[string]json.RawMessage `json:"desired"`
	Reported map[string]json.RawMessage `json:"reported"`
	// Delivery, after UpdateParameters, is "sent" when the change went to
	// the device at once, "queued" when it waits in the device's down queue
	// (the device is away or in PULL mode: it gets the change when it comes
	// back or pulls), and "not_queued" when the queue refused it (the
	// device gets it with the next full set it asks for).
	Delivery string `json:"delivery,omitempty"`
}

// Model is what a device told the platform about itself, with its
// parameters.
type Model struct {
	DeviceID   string      `json:"device_id"`
	Feeds      []Feed      `json:"feeds"`
	Attributes []Attribute `json:"attributes"`
	Parameters Parameters  `json:"parameters"`
}

// Model returns a device's feeds, attributes and parameters (ErrNotFound).
func (c *Client) Model(ctx context.Context, deviceID string) (*Model, error) {
	var m Model
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/model", nil, nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// FeedCommand is a value sent to a device's IN_OUT feed.
type FeedCommand struct {
	ID string `json:"id"`
	// MessageID identifies the command's message in the device's down
	// queue.
	MessageID string `json:"message_id"`
	// State is the queued message's state when the command was issued:
	// "queued" (the device is offline or pulls) or "sent".
	State    string          `json:"state"`
	DeviceID string          `json:"device_id"`
	Feed     string          `json:"feed"`
	Value    json.RawMessage `json:"value"`
	IssuedAt int64           `json:"issued_at"` // ms
}

// SetFeedValue sends value to a device's IN_OUT feed ref. Errors:
// ErrNotFound (device or feed), ErrInvalid (not an IN_OUT feed, or a
// value of the wrong type), ErrOffline.
func (c *Client) SetFeedValue(ctx context.Context, deviceID, ref string, value any) (*FeedCommand, error) {
	var fc FeedCommand
	body := map[string]any{"value": value}
	if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(deviceID)+"/feeds/"+url.PathEscape(ref)+"/value", nil, body, &fc); err != nil {
		return nil, err
	}
	return &fc, nil
}

// Parameters returns a device's parameters (ErrNotFound).
func (c *Client) Parameters(ctx context.Context, deviceID string) (*Parameters, error) {
	var p Parameters
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/parameters", nil, nil, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// UpdateParameters changes a device's parameters: each key is set to its
// value, and a nil value removes the key. The device receives the change.
func (c *Client) UpdateParameters(ctx context.Context, deviceID string, changes map[string]any) (*Parameters, error) {
	var p Parameters
	if err := c.do(ctx, "PATCH", "/api/v1/devices/"+url.PathEscape(deviceID)+"/parameters", nil, changes, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// DeviceEvent is an event or a notification a device sent.
type DeviceEvent struct {
	Seq int64 `json:"seq"`
	// MessageID is the id the device gave the event, if any; the platform
	// stores a device's event once per id.
	MessageID string `json:"message_id,omitempty"`
	DeviceID  string `json:"device_id"`
	Kind      string `json:"kind"` // KindEvent or KindNotification
	// Name and Data for events; Title and Text for notifications.
	Name       string          `json:"name,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
	Title      string          `json:"title,omitempty"`
	Text       string          `json:"text,omitempty"`
	TS         int64           `json:"ts"`          // when it happened, ms
	ReceivedAt int64           `json:"received_at"` // ms
}

// EventQuery selects stored events; zero fields: both kinds, the 100 most
// recent.
type EventQuery struct {
	Kind  string // KindEvent, KindNotification or empty for both
	Since time.Time
	Limit int
}

// Events returns a device's stored events and notifications, oldest
// first.
func (c *Client) Events(ctx context.Context, deviceID string, q EventQuery) ([]DeviceEvent, error) {
	v := url.Values{}
	if q.Kind != "" {
		v.Set("kind", q.Kind)
	}
	if !q.Since.IsZero() {
		v.Set("since", strconv.FormatInt(q.Since.UnixMilli(), 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out struct {
		Events []DeviceEvent `json:"events"`
	}
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/events", v, nil, &out); err != nil {
		return nil, err
	}
	return out.Events, nil
}

// DeviceEvent decodes a KindEvent or KindNotification stream event.
func (e Event) DeviceEvent() (*DeviceEvent, error) {
	kind := KindEvent
	if e.Kind == KindNotification {
		kind = KindNotification
	}
	var d DeviceEvent
	return &d, e.decode(kind, &d)
}

// Raw is the payload of a KindRaw stream event.
type Raw struct {
	DeviceID string `json:"device_id"`
	// Topic is the subtopic under the device's up/raw/ namespace.
	Topic string `json:"topic"`
	// Payload is the message when it was JSON.
	Payload json.RawMessage `json:"payload,omitempty"`
	// PayloadBase64 is the message when it was not JSON.
	PayloadBase64 string `json:"payload_base64,omitempty"`
	At            int64  `json:"at"` // ms
}

// Bytes returns the raw message as the device sent it (a JSON payload
// re-encoded compactly).
func (r *Raw) Bytes() []byte {
	if r.Payload != nil {
		return r.Payload
	}
	b, _ := base64.StdEncoding.DecodeString(r.PayloadBase64)
	return b
}

// Raw decodes a KindRaw event.
func (e Event) Raw() (*Raw, error) {
	var r Raw
	return &r, e.decode(KindRaw, &r)
}
