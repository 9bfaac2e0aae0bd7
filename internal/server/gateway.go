package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/internal/gateway"
	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/rpc"
	"github.com/outpost-iot/outpost/protocol"
)

// The gateway home's wiring, kept here so that it can move to the message
// router as it is: openGateway in Open, one case in HandleMessage and in
// StartMessage, gatewayOffline on a disconnect.

// openGateway starts the gateway service and returns the publisher the
// RPC relay uses: a call for a child its gateway reaches goes through the
// gateway.
func (s *Server) openGateway() rpc.Publisher {
	st, ok := s.db.(outpost.GatewayStore)
	if !ok {
		s.log.Warn("gateways are not available with this database engine")
		return s.broker
	}
	s.gw = gateway.New(gateway.Options{
		Store:     st,
		Sender:    s.broker,
		Submitter: s.writer,
		Router:    s,
		Presence:  s.presence,
		RPC:       relayOf{s},
		Queue:     queueOf{s},
		ReadingRule: func(ctx context.Context, deviceID string) (func(protocol.Reading) *protocol.Error, error) {
			feeds, err := s.model.feedsOf(ctx, deviceID)
			if err != nil {
				return nil, err
			}
			return func(r protocol.Reading) *protocol.Error { return checkReading(feeds, r) }, nil
		},
		Allow:  func(id string, n int) bool { return s.limiter.allow(id, n, time.Now()) },
		Events: s.hub.Publish,
		Rejected: func(id, kind, code string, n int) {
			s.metrics.deviceErrors.WithLabelValues(codeLabel(code)).Inc()
			s.model.countReject(id, kind, code, n)
		},
		Logger: s.log.With("component", "gateway"),
	})
	return s.gw.RoutePublisher(s.broker)
}

// relayOf hands answers to the relay, which is made after the service.
type relayOf struct{ s *Server }

func (r relayOf) Deliver(deviceID string, resp protocol.RPCResponse) error {
	return r.s.relay.Deliver(deviceID, resp)
}

// queueOf tells the down queue, which is made after the service, about
// children's sessions and acknowledgements.
type queueOf struct{ s *Server }

func (q queueOf) DeviceSubscribed(deviceID string, conn any, pull bool) {
	if q.s.queue != nil {
		q.s.queue.DeviceSubscribed(deviceID, conn, pull)
	}
}

func (q queueOf) DeviceGone(deviceID string, conn any) {
	if q.s.queue != nil {
		q.s.queue.DeviceGone(deviceID, conn)
	}
}

func (q queueOf) Acknowledged(deviceID string, ids []string) error {
	if q.s.queue == nil {
		return nil
	}
	if err := q.s.queue.Acknowledged(deviceID, ids); err != nil {
		return fmt.Errorf("gateway ack: %w: %w", broker.ErrOverloaded, err)
	}
	return nil
}

// queueSender is what the down queue publishes with: a message for a
// child its gateway reaches goes to the gateway.
func (s *Server) queueSender() gateway.QueueSender {
	if s.gw == nil {
		return s.broker
	}
	return s.gw.RouteQueue(s.broker)
}

// handleGateway is HandleMessage's case for the gateway kinds.
func (s *Server) handleGateway(ctx context.Context, deviceID, kind string, payload []byte) error {
	if s.gw == nil {
		return s.reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeNotSupported, Message: "gateways are not available with this platform's database engine"})
	}
	return s.gw.Handle(ctx, deviceID, kind, payload)
}

// startGateway is StartMessage's case for the gateway kinds: a telemetry
// batch of many children goes to the ingest writer like a device's.
func (s *Server) startGateway(ctx context.Context, deviceID, kind string, payload []byte, done func(error)) (bool, error) {
	s.presence.Seen(deviceID)
	if s.gw == nil {
		return false, s.handleGateway(ctx, deviceID, kind, payload)
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if kind != protocol.KindGatewayTelemetry {
		return false, s.gw.Handle(lctx, deviceID, kind, payload)
	}
	overloaded := func(err error) error {
		switch {
		case errors.Is(err, ingest.ErrQueueFull):
			s.metrics.ingestOverloaded.Inc()
		case errors.Is(err, gateway.ErrRateLimited):
			s.metrics.rateLimited.Inc()
		default:
			return err
		}
		return fmt.Errorf("gateway telemetry: %w: %w", broker.ErrOverloaded, err)
	}
	// ctx bounds the wait for room in the writer's queue; the service
	// bounds its store work itself.
	async, err := s.gw.Start(ctx, deviceID, kind, payload, func(err error) { done(overloaded(err)) })
	return async, overloaded(err)
}

// gatewayOffline takes a gateway's children offline with it.
func (s *Server) gatewayOffline(deviceID string) {
	if s.gw != nil {
		s.gw.GatewayOffline(context.Background(), deviceID)
	}
}

// gatewayDeviceDeleted drops what the gateway service keeps of a deleted
// gateway or child.
func (s *Server) gatewayDeviceDeleted(deviceID string) {
	if s.gw != nil {
		s.gw.DeviceDeleted(deviceID)
	}
}

// gatewayOf returns the gateway a child is reached through, nil for a
// device that is no child.
func (s *Server) gatewayOf(ctx context.Context, deviceID string) *outpost.GatewayRef {
	st, ok := s.db.(outpost.GatewayStore)
	if !ok {
		return nil
	}
	c, err := st.ChildOf(ctx, deviceID)
	if err != nil {
		return nil
	}
	return &outpost.GatewayRef{ID: c.GatewayID, Address: c.Address}
}
