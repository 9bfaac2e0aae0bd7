package outpost

import (
	"context"
	"encoding/json"
	"time"
)

// State is where a queued message or a queued call stands. Messages use
// queued, sent, delivered, expired and cancelled; calls go on from sent or
// delivered to succeeded, failed or timed_out.
//
//	queued ──▶ sent ──▶ delivered ──▶ succeeded | failed | timed_out
//	  │          │  └──────────────────▶ succeeded | failed | timed_out
//	  │          └──▶ expired (messages only: TTL passed before the PUBACK)
//	  ├──▶ expired  (TTL passed before it could be sent)
//	  └──▶ cancelled
//
// A device may answer a call before its PUBACK reaches the platform, hence
// sent → succeeded. CanTransition is the one place these rules live; the
// stores build their conditional updates from TransitionSources.
type State string

// States of queued messages and calls.
const (
	StateQueued    State = "queued"
	StateSent      State = "sent"
	StateDelivered State = "delivered"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateExpired   State = "expired"
	StateTimedOut  State = "timed_out"
	StateCancelled State = "cancelled"
)

// transitions lists, for each state, the states it may move to.
var transitions = map[State][]State{
	StateQueued:    {StateSent, StateExpired, StateCancelled},
	StateSent:      {StateDelivered, StateSucceeded, StateFailed, StateTimedOut, StateExpired},
	StateDelivered: {StateSucceeded, StateFailed, StateTimedOut},
}

// States lists every state, in lifecycle order.
var States = []State{StateQueued, StateSent, StateDelivered, StateSucceeded, StateFailed, StateExpired, StateTimedOut, StateCancelled}

// Valid reports whether s is a known state.
func (s State) Valid() bool {
	for _, x := range States {
		if s == x {
			return true
		}
	}
	return false
}

// Final reports whether nothing follows s. Delivered is final for plain
// messages but not for calls, which wait for the answer.
func (s State) Final() bool {
	return s.Valid() && len(transitions[s]) == 0
}

// CanTransition reports whether a message or call in state from may move
// to state to.
func CanTransition(from, to State) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// TransitionSources returns the states from which to can be reached.
func TransitionSources(to State) []State {
	var out []State
	for _, from := range States {
		if CanTransition(from, to) {
			out = append(out, from)
		}
	}
	return out
}

// QueuedMessage is a platform→device message waiting in the device's
// queue until the device is connected (PUSH) or asks for it (PULL).
type QueuedMessage struct {
	ID       string `json:"id"`
	DeviceID string `json:"device_id"`
	// Kind is the down/{kind} topic level it is published on.
	Kind    string          `json:"kind"`
	Payload json.RawMessage `json:"-"`
	// CreatedAt orders a device's queue (ties by insertion).
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt is when an undelivered message is dropped.
	ExpiresAt time.Time `json:"expires_at"`
	State     State     `json:"state"`
	SentAt    time.Time `json:"sent_at,omitzero"`
	// DeliveredAt is when the device's PUBACK arrived.
	DeliveredAt time.Time `json:"delivered_at,omitzero"`

	// Timeout is set for requests that expect an answer (calls): the time
	// the device has to answer once the request is sent.
	Timeout time.Duration `json:"-"`
	// Deadline is SentAt+Timeout for a call that has been sent.
	Deadline time.Time `json:"-"`
}

// CallError is the error of a failed, expired or timed-out call.
type CallError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Call is a queued remote procedure call: persistent, with an explicit
// state (see State).
type Call struct {
	ID       string          `json:"id"`
	DeviceID string          `json:"device_id"`
	Method   string          `json:"method"`
	Args     json.RawMessage `json:"args,omitempty"`
	State    State           `json:"state"`
	// CreatedAt is when the call was queued.
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt ends the wait for the device: a call not sent by then
	// expires.
	ExpiresAt time.Time `json:"expires_at"`
	// Timeout is the time the device has to answer once the call is sent.
	Timeout     time.Duration   `json:"-"`
	SentAt      time.Time       `json:"sent_at,omitzero"`
	DeliveredAt time.Time       `json:"delivered_at,omitzero"`
	FinishedAt  time.Time       `json:"finished_at,omitzero"`
	Result      json.RawMessage `json:"result,omitempty"`
	Error       *CallError      `json:"error,omitempty"`
	// LateAt and LateResponse record an answer that came after the call
	// had already finished (typically timed out).
	LateAt       time.Time       `json:"late_at,omitzero"`
	LateResponse json.RawMessage `json:"late_response,omitempty"`
}

// MarshalJSON adds timeout_ms.
func (c Call) MarshalJSON() ([]byte, error) {
	type plain Call
	return json.Marshal(struct {
		plain
		TimeoutMS int64 `json:"timeout_ms"`
	}{plain(c), c.Timeout.Milliseconds()})
}

// UnmarshalJSON reads timeout_ms.
func (c *Call) UnmarshalJSON(b []byte) error {
	type plain Call
	var v struct {
		plain
		TimeoutMS int64 `json:"timeout_ms"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*c = Call(v.plain)
	c.Timeout = time.Duration(v.TimeoutMS) * time.Millisecond
	return nil
}

// CallFilter selects calls of one device.
type CallFilter struct {
	DeviceID string
	State    State // empty: every state
	Limit    int   // default 100, newest first
}

// CallAnswer is a device's answer to a call.
type CallAnswer struct {
	DeviceID string
	ID       string
	Result   json.RawMessage // set on success
	Error    *CallError      // set on failure
	// Raw is the response as the device sent it, kept for a late answer.
	Raw json.RawMessage
	At  time.Time
}

// SendMark records that a message was (re)sent.
type SendMark struct {
	ID string
	// Deadline is the call's answer deadline (zero for plain messages).
	Deadline time.Time
}

// Expiry is what one sweep of ExpireDue finished.
type Expiry struct {
	Messages []*QueuedMessage // plain messages that expired
	Calls    []*Call          // calls that expired or timed out
}

// QueueStore keeps the per-device queues of platform→device messages and
// the queued calls. A call is queued together with its request message, so
// calls and plain messages of one device are delivered in one order.
type QueueStore interface {
	// EnqueueMessage appends m to its device's queue. It fails with
	// ENOTFOUND for an unknown device and ECONFLICT when the device
	// already has maxPending messages waiting.
	EnqueueMessage(ctx context.Context, m *QueuedMessage, maxPending int) error
	// EnqueueCall appends c, with its request message m (kind "rpc",
	// same id), to the device's queue. Errors as EnqueueMessage.
	EnqueueCall(ctx context.Context, c *Call, m *QueuedMessage, maxPending int) error
	// Deliverable returns, in queue order, up to limit messages of the
	// device to send now: queued ones that have not expired and, when
	// resend is set, ones sent but not acknowledged (plain messages before
	// their expiry, calls before their deadline) and calls delivered but
	// not answered before their deadline.
	Deliverable(ctx context.Context, deviceID string, now time.Time, resend bool, limit int) ([]*QueuedMessage, error)
	// PendingDevices returns the devices that have something unfinished:
	// messages or calls queued or sent, or calls delivered but not
	// answered. (What it returns may include some whose messages are due
	// to expire.)
	PendingDevices(ctx context.Context) ([]string, error)
	// MarkSent records that messages were published at at. Queued ones
	// become sent; a call gets its deadline the first time it is sent
	// (and a new one when it is sent again without having been
	// acknowledged). It returns the calls whose state changed.
	MarkSent(ctx context.Context, marks []SendMark, at time.Time) ([]*Call, error)
	// MarkDelivered records the device's acknowledgement of messages of one
	// device. It returns the messages and calls whose state changed.
	MarkDelivered(ctx context.Context, deviceID string, ids []string, at time.Time) ([]*QueuedMessage, []*Call, error)
	// AnswerCall records a device's answer. It returns the call and
	// whether the answer came late (the call had already finished; the
	// answer is then kept as LateResponse). ENOTFOUND when the device has
	// no call with that id.
	AnswerCall(ctx context.Context, a CallAnswer) (c *Call, late bool, err error)
	// CancelCall cancels a call still queued. ENOTFOUND; ECONFLICT when it
	// has already been sent.
	CancelCall(ctx context.Context, id string, at time.Time) (*Call, error)
	// ExpireDue expires what is due at now, of one device or of all
	// (deviceID ""): queued messages and calls past their expiry, plain
	// messages sent but unacknowledged past their expiry, calls sent or
	// delivered past their deadline (timed_out).
	ExpireDue(ctx context.Context, deviceID string, now time.Time) (Expiry, error)
	// TakeExpiredUnreported returns the ids of the device's messages and
	// calls that expired and have not been reported to the device yet, in
	// queue order, and marks them reported.
	TakeExpiredUnreported(ctx context.Context, deviceID string) ([]string, error)
	// QueuedMessage returns a message. ENOTFOUND.
	QueuedMessage(ctx context.Context, id string) (*QueuedMessage, error)
	// Call returns a call. ENOTFOUND.
	Call(ctx context.Context, id string) (*Call, error)
	// Calls lists a device's calls, newest first.
	Calls(ctx context.Context, f CallFilter) ([]*Call, error)
}

// RPCResult is the outcome of a successful synchronous call.
type RPCResult struct {
	ID       string          `json:"id"`
	Result   json.RawMessage `json:"result"`
	Duration time.Duration   `json:"-"`
}

// Bounds of a synchronous call's timeout.
const (
	DefaultRPCTimeout = 5 * time.Second
	MaxRPCTimeout     = 5 * time.Minute
)
