package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/internal/gateway"
	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/ota"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/presence"
	"github.com/outpost-iot/outpost/internal/stream"
	"github.com/outpost-iot/outpost/protocol"
)

var (
	_ broker.Authenticator = (*Server)(nil)
	_ broker.Handler       = (*Server)(nil)
	_ ingest.Observer      = (*Server)(nil)
)

// AuthenticateDevice implements broker.Authenticator: a lookup in the
// in-memory credentials, never a query (credentials.go).
func (s *Server) AuthenticateDevice(ctx context.Context, deviceID, secret string) error {
	return s.creds.check(deviceID, secret)
}

// DeviceConnected implements broker.Handler.
func (s *Server) DeviceConnected(deviceID string, conn any) {
	s.presence.Connected(deviceID, conn)
}

// DeviceDisconnected implements broker.Handler.
func (s *Server) DeviceDisconnected(deviceID string, conn any, reason string) {
	if s.presence.Disconnected(deviceID, conn, reason) {
		s.gatewayOffline(deviceID)
	}
}

func (s *Server) presenceChanged(c presence.Change) {
	s.hub.Publish(stream.KindPresence, c.DeviceID, c)
}

// HandleMessage implements broker.Handler: it routes a device message by
// kind.
func (s *Server) HandleMessage(ctx context.Context, deviceID, kind string, payload []byte) error {
	s.presence.Seen(deviceID)
	if len(payload) > protocol.MaxMessageBytes {
		// Only MQTT 3.1.1 devices get here (MQTT 5 ones are disconnected
		// with 0x95 for a packet this large): rejected for good, so the
		// device drops the message instead of resending it for ever.
		return s.reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("payload of %d bytes exceeds %d", len(payload), protocol.MaxMessageBytes)})
	}
	switch kind {
	case protocol.KindTelemetry:
		return s.handleTelemetry(ctx, deviceID, payload)
	case protocol.KindRPC:
		resp, err := protocol.DecodeRPCResponse(payload)
		if err != nil {
			return s.reject(deviceID, kind, "", err)
		}
		if err := s.relay.Deliver(deviceID, resp); err != nil {
			// Not a synchronous call: a queued one, or a late answer.
			return s.answerQueued(ctx, deviceID, resp, payload)
		}
		return nil
	case protocol.KindPull:
		return s.handlePull(deviceID, payload)
	case protocol.KindAck:
		return s.handleAck(deviceID, payload)
	default:
		if gateway.Handles(kind) {
			return s.handleGateway(ctx, deviceID, kind, payload)
		}
		if ota.Handles(kind) {
			if s.ota == nil {
				return s.reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeNotSupported, Message: "files and firmware are not available with this platform's database engine"})
			}
			return s.ota.Handle(ctx, deviceID, kind, payload)
		}
		if ok, err := s.handleModelMessage(ctx, deviceID, kind, payload); ok {
			return err
		}
		return s.reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeUnknownKind, Message: fmt.Sprintf("unknown message kind %.64q", kind)})
	}
}

func (s *Server) handleTelemetry(ctx context.Context, deviceID string, payload []byte) error {
	b, err := s.telemetryBatch(ctx, deviceID, payload)
	if err != nil || b == nil {
		return err
	}
	if _, err := s.writer.Write(ctx, b); err != nil {
		return err // transient: not acknowledged, the device resends
	}
	return nil
}

// Committed implements ingest.Observer: it counts what was stored and
// streams it to live subscribers.
func (s *Server) Committed(batches []*outpost.Batch, results []outpost.AppendResult, took time.Duration) {
	s.metrics.commitSeconds.Observe(took.Seconds())
	for i, b := range batches {
		switch results[i] {
		case outpost.AppendStored:
			s.metrics.readingsStored.Add(float64(len(b.Readings)))
			s.metrics.batchesStored.Inc()
			s.hub.Publish(stream.KindTelemetry, b.DeviceID, telemetryEvent{DeviceID: b.DeviceID, BatchID: b.ID, Readings: b.Readings})
		case outpost.AppendDuplicate:
			s.metrics.batchesDuplicate.Inc()
		case outpost.AppendUnknownDevice:
			s.metrics.readingsRejected.Add(float64(len(b.Readings)))
		}
	}
}

type telemetryEvent struct {
	DeviceID string            `json:"device_id"`
	BatchID  string            `json:"batch_id,omitempty"`
	Readings []outpost.Reading `json:"readings"`
}

// reject sends an error reply for a message rejected for good and returns
// the error for the broker to map to a reason code.
func (s *Server) reject(deviceID, kind, id string, err error) error {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		pe = &protocol.Error{Code: protocol.CodeInvalid, Message: err.Error()}
	}
	s.sendError(deviceID, protocol.ErrorReply{Kind: kind, ID: id, Code: pe.Code, Message: pe.Message})
	return pe
}

func (s *Server) sendError(deviceID string, e protocol.ErrorReply) {
	s.metrics.deviceErrors.WithLabelValues(codeLabel(e.Code)).Inc()
	s.model.countReject(deviceID, e.Kind, e.Code, e.Rejected)
	b, _ := json.Marshal(e)
	if err := s.broker.PublishToDevice(deviceID, protocol.KindError, b); err != nil {
		s.log.Debug("send error reply", "device_id", deviceID, "error", err)
	}
}
