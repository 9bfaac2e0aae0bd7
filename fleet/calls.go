package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"time"
)

// KindCall is the stream event kind of queued calls changing state (see
// Event.Call); KindQueue that of other queued messages.
const (
	KindCall  = "call"
	KindQueue = "queue"
)

// States of a queued call.
const (
	CallQueued    = "queued"    // waiting for the device
	CallSent      = "sent"      // published to the device
	CallDelivered = "delivered" // the device acknowledged the request
	CallSucceeded = "succeeded" // the device answered with a result
	CallFailed    = "failed"    // the device answered with an error
	CallExpired   = "expired"   // not sent before its TTL ran out
	CallTimedOut  = "timed_out" // sent, but not answered in time
	CallCancelled = "cancelled"
)

// QueueOptions tune a queued call. Zero fields take the platform's
// defaults (TTL 1h, timeout 30s).
type QueueOptions struct {
	// TTL is how long the call may wait for the device (offline, or in
	// PULL mode) before it expires; at most 30 days.
	TTL time.Duration
	// Timeout is how long the device has to answer once the call is sent;
	// at most 1h.
	Timeout time.Duration
}

// CallError is the error of a call that failed, expired or timed out.
type CallError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Call is a queued call as the platform stores it.
type Call struct {
	ID          string          `json:"id"`
	DeviceID    string          `json:"device_id"`
	Method      string          `json:"method"`
	Args        json.RawMessage `json:"args,omitempty"`
	State       string          `json:"state"`
	CreatedAt   time.Time       `json:"created_at"`
	ExpiresAt   time.Time       `json:"expires_at"`
	TimeoutMS   int64           `json:"timeout_ms"`
	SentAt      time.Time       `json:"sent_at,omitzero"`
	DeliveredAt time.Time       `json:"delivered_at,omitzero"`
	FinishedAt  time.Time       `json:"finished_at,omitzero"`
	Result      json.RawMessage `json:"result,omitempty"`
	Error       *CallError      `json:"error,omitempty"`
	// LateAt and LateResponse record an answer that came after the call
	// had finished (typically timed out).
	LateAt       time.Time       `json:"late_at,omitzero"`
	LateResponse json.RawMessage `json:"late_response,omitempty"`
}

// Finished reports whether the call's state is final.
func (c *Call) Finished() bool {
	switch c.State {
	case CallSucceeded, CallFailed, CallExpired, CallTimedOut, CallCancelled:
		return true
	}
	return false
}

// CallQueued queues a call of method with args (as Call) for a device
// that may be offline or in PULL mode, and returns at once with the stored
// call. A connected device gets it immediately (state sent). Follow it
// with GetCall, or on the stream (KindCall events). Errors: ErrNotFound,
// ErrInvalid, ErrConflict (the device's queue is full).
func (c *Client) CallQueued(ctx context.Context, deviceID, method string, args any, o QueueOptions) (*Call, error) {
	q := url.Values{"queue": {"true"}}
	if o.TTL > 0 {
		q.Set("ttl", o.TTL.String())
	}
	if o.Timeout > 0 {
		q.Set("timeout", o.Timeout.String())
	}
	var out Call
	if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(deviceID)+"/rpc/"+url.PathEscape(method), q, bodyOrEmpty(args), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetCall returns a queued call (ErrNotFound).
func (c *Client) GetCall(ctx context.Context, id string) (*Call, error) {
	var out Call
	if err := c.do(ctx, "GET", "/api/v1/calls/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CancelCall cancels a call still queued (ErrNotFound; ErrConflict once it
// was sent).
func (c *Client) CancelCall(ctx context.Context, id string) (*Call, error) {
	var out Call
	if err := c.do(ctx, "DELETE", "/api/v1/calls/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Calls lists a device's queued calls, newest first; state, if not empty,
// keeps only calls in that state.
func (c *Client) Calls(ctx context.Context, deviceID string, state ...string) ([]Call, error) {
	q := url.Values{}
	if len(state) > 1 {
		return nil, fmt.Errorf("fleet: Calls takes at most one state")
	}
	if len(state) == 1 && state[0] != "" {
		q.Set("state", state[0])
	}
	var out struct {
		Calls []Call `json:"calls"`
	}
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/calls", q, nil, &out); err != nil {
		return nil, err
	}
	return out.Calls, nil
}

// Call decodes a KindCall event.
func (e Event) Call() (*Call, error) {
	var c Call
	return &c, e.decode(KindCall, &c)
}
