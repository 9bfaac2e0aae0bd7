package gateway

import (
	"encoding/json"
	"fmt"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Queue is the down queue as the service tells it about children: a
// child announced by its gateway has a session (through the gateway's),
// and its confirmations come up through the gateway.
type Queue interface {
	// DeviceSubscribed starts a device's session conn: what waits for it
	// is delivered.
	DeviceSubscribed(deviceID string, conn outpost.SessionID, pull bool)
	// DeviceGone ends the session conn.
	DeviceGone(deviceID string, conn outpost.SessionID)
	// Acknowledged records queued messages the device confirmed.
	Acknowledged(deviceID string, ids []string) error
}

// QueueSender is what the down queue publishes with (the broker's side of
// it): see RouteQueue.
type QueueSender interface {
	PublishQueued(deviceID, kind, msgID string, payload []byte) error
	PublishToDevice(deviceID, kind string, payload []byte) error
	Room(deviceID string, want int) int
	Subscribed(deviceID, kind string) bool
}

// RouteQueue wraps the down queue's sender: a message for a child that
// its gateway reaches goes to the gateway — an RPC request as a
// ChildRPCRequest on down/gw/rpc, anything else wrapped in a
// ChildDownMessage on down/gw/child — in the gateway's send window. The
// rest goes to next unchanged.
func (s *Service) RouteQueue(next QueueSender) QueueSender { return routeQueue{s: s, next: next} }

type routeQueue struct {
	s    *Service
	next QueueSender
}

// downKind is the gateway kind that carries a child's message of kind.
func downKind(kind string) string {
	if kind == protocol.KindRPC {
		return protocol.KindGatewayRPC
	}
	return protocol.KindGatewayChild
}

// wrap turns a child's down message into its gateway's.
func wrap(addr, kind string, payload []byte) ([]byte, error) {
	if kind == protocol.KindRPC {
		req, err := protocol.DecodeRPCRequest(payload)
		if err != nil {
			return nil, fmt.Errorf("route rpc request: %w", err)
		}
		return json.Marshal(protocol.ChildRPCRequest{Child: addr, ID: req.ID, Method: req.Method, Args: req.Args, Deadline: req.Deadline})
	}
	if !json.Valid(payload) {
		return nil, fmt.Errorf("route %s message for child %s: not JSON", kind, addr)
	}
	return json.Marshal(protocol.ChildDownMessage{Child: addr, Kind: kind, Msg: payload})
}

func (r routeQueue) PublishQueued(deviceID, kind, msgID string, payload []byte) error {
	gw, addr, ok := r.s.Route(deviceID)
	if !ok {
		return r.next.PublishQueued(deviceID, kind, msgID, payload)
	}
	b, err := wrap(addr, kind, payload)
	if err != nil {
		return err
	}
	return r.next.PublishQueued(gw, downKind(kind), msgID, b)
}

func (r routeQueue) PublishToDevice(deviceID, kind string, payload []byte) error {
	gw, addr, ok := r.s.Route(deviceID)
	if !ok {
		return r.next.PublishToDevice(deviceID, kind, payload)
	}
	b, err := wrap(addr, kind, payload)
	if err != nil {
		return err
	}
	return r.next.PublishToDevice(gw, downKind(kind), b)
}

func (r routeQueue) Room(deviceID string, want int) int {
	if gw, _, ok := r.s.Route(deviceID); ok {
		return r.next.Room(gw, want)
	}
	return r.next.Room(deviceID, want)
}

func (r routeQueue) Subscribed(deviceID, kind string) bool {
	if gw, _, ok := r.s.Route(deviceID); ok {
		return r.next.Subscribed(gw, downKind(kind))
	}
	return r.next.Subscribed(deviceID, kind)
}
