// Package router maps the kind of a device message (the {kind} of its
// up/{kind} topic) to the one home that handles it. It is the only place
// that knows every kind; each home (telemetry, model, rpc answers, queue,
// files and firmware, …) registers the kinds it owns.
//
// The router is what the broker calls for every device message and
// session (it implements the broker's Handler and AsyncHandler). It keeps
// presence current, bounds the payload size, and rejects kinds no home
// owns; everything else is the home's.
package router

import (
	"context"
	"fmt"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Handler is the home of one or more message kinds. Handle returns nil to
// acknowledge the message, a *protocol.Error to reject it for good (after
// sending the device its error reply), and any other error when it could
// not handle the message now (the message is not acknowledged and the
// device sends it again; wrap outpost.ErrOverloaded to ask it to back off).
type Handler interface {
	Handle(ctx context.Context, deviceID, kind string, payload []byte) error
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(ctx context.Context, deviceID, kind string, payload []byte) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, deviceID, kind string, payload []byte) error {
	return f(ctx, deviceID, kind, payload)
}

// AsyncHandler is a home that can finish a message after the broker's
// read loop has moved on: Start reports true when it took the message and
// will call done with its outcome (as Handle's) later, false when it
// finished it at once with err. ctx bounds the wait for room in the
// home's queue; storeCtx bounds any store work Start does itself.
type AsyncHandler interface {
	Handler
	Start(ctx, storeCtx context.Context, deviceID string, payload []byte, done func(error)) (async bool, err error)
}

// Presence follows the devices' sessions (internal/presence implements
// it).
type Presence interface {
	Connected(deviceID string, session outpost.SessionID)
	// Disconnected reports whether session was the device's live session.
	Disconnected(deviceID string, session outpost.SessionID, reason string) bool
	// Seen records that the device sent something.
	Seen(deviceID string)
}

// Rejecter sends the error reply for a message rejected for good
// (internal/reply implements it).
type Rejecter interface {
	Reject(deviceID, kind, id string, err error) error
}

// StoreTimeout bounds the store work of one synchronous message.
const StoreTimeout = 10 * time.Second

type route struct {
	match func(kind string) bool
	h     Handler
}

// Router dispatches device messages by kind. Register every route before
// the broker starts; the router is read-only afterwards and safe for
// concurrent use.
type Router struct {
	presence Presence
	reply    Rejecter
	exact    map[string]Handler
	async    map[string]AsyncHandler
	matches  []route
}

// New returns a router with no routes.
func New(presence Presence) *Router {
	return &Router{presence: presence, exact: map[string]Handler{}, async: map[string]AsyncHandler{}}
}

// SetRejecter sets where the error replies for oversized messages and
// unknown kinds go. Required before the broker starts.
func (r *Router) SetRejecter(reply Rejecter) { r.reply = reply }

// Route sends the messages of kind to h.
func (r *Router) Route(kind string, h Handler) {
	if _, dup := r.exact[kind]; dup {
		panic("router: two homes for kind " + kind)
	}
	r.exact[kind] = h
}

// RouteAsync sends the messages of kind to h, asynchronously when the
// broker can finish them later.
func (r *Router) RouteAsync(kind string, h AsyncHandler) {
	r.Route(kind, h)
	r.async[kind] = h
}

// RouteMatch sends the messages of every kind match reports to h (for
// families of kinds such as files/… or raw/…). Exact routes go first,
// then matches in the order they were added.
func (r *Router) RouteMatch(match func(kind string) bool, h Handler) {
	r.matches = append(r.matches, route{match, h})
}

// Kinds reports whether some home owns kind.
func (r *Router) Kinds(kind string) bool { return r.lookup(kind) != nil }

func (r *Router) lookup(kind string) Handler {
	if h, ok := r.exact[kind]; ok {
		return h
	}
	for _, m := range r.matches {
		if m.match(kind) {
			return m.h
		}
	}
	return nil
}

// DeviceConnected implements broker.Handler.
func (r *Router) DeviceConnected(deviceID string, session outpost.SessionID) {
	r.presence.Connected(deviceID, session)
}

// DeviceDisconnected implements broker.Handler.
func (r *Router) DeviceDisconnected(deviceID string, session outpost.SessionID, reason string) {
	r.presence.Disconnected(deviceID, session, reason)
}

// HandleMessage implements broker.Handler: it hands the message to the
// home of its kind and returns the home's outcome.
func (r *Router) HandleMessage(ctx context.Context, deviceID, kind string, payload []byte) error {
	r.presence.Seen(deviceID)
	h, err := r.check(deviceID, kind, payload)
	if err != nil {
		return err
	}
	return h.Handle(ctx, deviceID, kind, payload)
}

// StartMessage implements broker.AsyncHandler: a kind with an
// asynchronous home (telemetry) finishes after its commit, so the
// broker's read loop goes on reading the device's next messages; every
// other kind is handled at once.
func (r *Router) StartMessage(ctx context.Context, deviceID, kind string, payload []byte, done func(error)) (bool, error) {
	// ctx only bounds the wait for room in a home's queue (it may be
	// done already); store work gets its own bound.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), StoreTimeout)
	defer cancel()
	r.presence.Seen(deviceID)
	h, err := r.check(deviceID, kind, payload)
	if err != nil {
		return false, err
	}
	if a, ok := r.async[kind]; ok {
		return a.Start(ctx, sctx, deviceID, payload, done)
	}
	return false, h.Handle(sctx, deviceID, kind, payload)
}

// check finds the home of kind, or rejects the message.
func (r *Router) check(deviceID, kind string, payload []byte) (Handler, error) {
	if len(payload) > protocol.MaxMessageBytes {
		// Only MQTT 3.1.1 devices get here (MQTT 5 ones are disconnected
		// with 0x95 for a packet this large): rejected for good, so the
		// device drops the message instead of resending it for ever.
		return nil, r.reply.Reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("payload of %d bytes exceeds %d", len(payload), protocol.MaxMessageBytes)})
	}
	h := r.lookup(kind)
	if h == nil {
		return nil, r.reply.Reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeUnknownKind, Message: fmt.Sprintf("unknown message kind %.64q", kind)})
	}
	return h, nil
}
