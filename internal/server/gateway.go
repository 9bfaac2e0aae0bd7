package server

import (
	"context"
	"time"

	"github.com/outpost-iot/outpost/internal/extbroker"
	"github.com/outpost-iot/outpost/internal/gateway"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/presence"
	"github.com/outpost-iot/outpost/internal/reply"
	"github.com/outpost-iot/outpost/internal/router"
	"github.com/outpost-iot/outpost/internal/stream"
	"github.com/outpost-iot/outpost/internal/telemetry"
	"github.com/outpost-iot/outpost/protocol"
)

// The gateway home's wiring (protocol §26): the service, its routes, and
// the three seams where gateways change how other homes reach a device —
// presence (a gateway's end takes its children offline), the RPC relay
// and the down queue (a child's messages go through its gateway).

// openGateway starts the gateway service.
func (s *Server) openGateway(db outpost.Store, side mqttSide, rt *router.Router, replies *reply.Replier,
	tel *telemetry.Service, feeds telemetry.Feeds, hub *stream.Hub) {
	// Replicas share the store: they tell one another of changes to
	// gateways, and read again before refusing.
	shared := s.link != nil
	var changed func(string)
	if shared {
		changed = s.link.Notifier(extbroker.NoticeGateway)
	}
	s.gw = gateway.New(gateway.Options{
		Store:       db,
		Sender:      side,
		Submitter:   s.writer,
		Router:      rt,
		Presence:    s.presence,
		Queue:       s.queue,
		ReadingRule: tel.ReadingRule,
		Allow:       tel.Allow,
		Rejected:    replies.Count,
		Events:      hub.Publish,
		Logger:      s.log.With("component", "gateway"),
		Shared:      shared,
		Changed:     changed,
	})
	if s.link != nil {
		s.link.OnNotice(extbroker.NoticeGateway, s.gw.Stale)
	}
}

// routeGateways sends the gw/… kinds to the gateway service.
func (s *Server) routeGateways(rt *router.Router, replies *reply.Replier) {
	rt.RouteAsync(protocol.KindGatewayTelemetry, s.gw)
	rt.RouteMatch(gateway.Handles, s.gw)
}

// gatewayPresence is the presence the broker and the router report
// sessions to: when a gateway's session ends, its children go offline
// with it.
type gatewayPresence struct {
	*presence.Tracker
	s *Server
}

func (p gatewayPresence) Disconnected(deviceID string, session outpost.SessionID, reason string) bool {
	if !p.Tracker.Disconnected(deviceID, session, reason) {
		return false
	}
	if gw := p.s.gw; gw != nil {
		gw.GatewayOffline(context.Background(), deviceID)
	}
	return true
}

// routedSide is the broker side as the RPC relay and the down queue use
// it: a message for a child that its gateway reaches goes to the
// gateway. The service is made after both; until then (and without
// gateways) everything goes to the side as it is.
type routedSide struct {
	mqttSide
	s *Server
}

func (r routedSide) queue() gateway.QueueSender {
	if gw := r.s.gw; gw != nil {
		return gw.RouteQueue(r.mqttSide)
	}
	return r.mqttSide
}

func (r routedSide) PublishUntil(deviceID, kind string, payload []byte, deadline time.Time) error {
	if gw := r.s.gw; gw != nil {
		return gw.RoutePublisher(r.mqttSide).PublishUntil(deviceID, kind, payload, deadline)
	}
	return r.mqttSide.PublishUntil(deviceID, kind, payload, deadline)
}

func (r routedSide) PublishQueued(deviceID, kind, msgID string, payload []byte) error {
	return r.queue().PublishQueued(deviceID, kind, msgID, payload)
}

func (r routedSide) PublishToDevice(deviceID, kind string, payload []byte) error {
	return r.queue().PublishToDevice(deviceID, kind, payload)
}

func (r routedSide) Room(deviceID string, want int) int { return r.queue().Room(deviceID, want) }

func (r routedSide) Subscribed(deviceID, kind string) bool {
	return r.queue().Subscribed(deviceID, kind)
}

// decorateWithGateway adds a child's gateway to a device shown alone.
func (s *Server) decorateWithGateway(db outpost.Store, next func(context.Context, *outpost.Device)) func(context.Context, *outpost.Device) {
	st, ok := db.(outpost.GatewayStore)
	return func(ctx context.Context, d *outpost.Device) {
		if next != nil {
			next(ctx, d)
		}
		if !ok {
			return
		}
		if c, err := st.ChildOf(ctx, d.ID); err == nil {
			d.Gateway = &outpost.GatewayRef{ID: c.GatewayID, Address: c.Address}
		}
	}
}

// gatewayDeviceDeleted drops what the gateway service keeps of a deleted
// gateway or child.
func (s *Server) gatewayDeviceDeleted(deviceID string) {
	if gw := s.gw; gw != nil {
		gw.DeviceDeleted(deviceID)
	}
}
