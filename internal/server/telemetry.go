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
	"github.com/outpost-iot/outpost/protocol"
)

var _ broker.AsyncHandler = (*Server)(nil)

// StartMessage implements broker.AsyncHandler. A telemetry batch is handed
// to the ingest writer and finishes when its group commit does, so the
// broker's read loop goes on reading the device's next messages, which
// join the same group. Other kinds are handled at once.
func (s *Server) StartMessage(ctx context.Context, deviceID, kind string, payload []byte, done func(error)) (bool, error) {
	if gateway.Handles(kind) {
		return s.startGateway(ctx, deviceID, kind, payload, done)
	}
	// ctx only bounds the wait for room in the writer's queue (it may be
	// done already); store work gets its own bound.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if kind != protocol.KindTelemetry {
		return false, s.HandleMessage(lctx, deviceID, kind, payload)
	}
	s.presence.Seen(deviceID)
	b, err := s.telemetryBatch(lctx, deviceID, payload)
	if err != nil || b == nil {
		return false, err
	}
	err = s.writer.Submit(ctx, b, func(_ outpost.AppendResult, err error) { done(err) })
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ingest.ErrQueueFull):
		s.metrics.ingestOverloaded.Inc()
		return false, fmt.Errorf("telemetry: %w: %w", broker.ErrOverloaded, err)
	default:
		return false, err // transient: not acknowledged, the device resends
	}
}

// telemetryBatch decodes and validates a telemetry message. Invalid
// readings are dropped and reported to the device in an error reply; if
// none is left it returns a nil batch, with the *protocol.Error that
// rejects the message for good if there was any reading at all.
func (s *Server) telemetryBatch(ctx context.Context, deviceID string, payload []byte) (*outpost.Batch, error) {
	t, err := protocol.DecodeTelemetry(payload)
	if err != nil {
		s.metrics.readingsRejected.Inc()
		return nil, s.reject(deviceID, protocol.KindTelemetry, "", err)
	}
	if !s.limiter.allow(deviceID, len(t.Readings), time.Now()) {
		s.metrics.rateLimited.Inc()
		return nil, fmt.Errorf("telemetry: device %s over its rate limit: %w", deviceID, broker.ErrOverloaded)
	}
	feeds, err := s.model.feedsOf(ctx, deviceID)
	if err != nil {
		return nil, err // transient: the device resends
	}
	now := time.Now().UnixMilli()
	b := &outpost.Batch{DeviceID: deviceID, ID: t.ID, Readings: make([]outpost.Reading, 0, len(t.Readings))}
	var bad int
	var firstErr *protocol.Error
	for _, r := range t.Readings {
		err := protocol.ValidateReading(r)
		if err == nil {
			err = checkReading(feeds, r)
		}
		if err != nil {
			bad++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		ts := r.TS
		if ts == 0 {
			ts = now
		}
		b.Readings = append(b.Readings, outpost.Reading{Feed: r.Feed, TS: ts, Value: r.Value})
	}
	if bad > 0 {
		s.metrics.readingsRejected.Add(float64(bad))
		s.sendError(deviceID, protocol.ErrorReply{Kind: protocol.KindTelemetry, ID: t.ID, Code: firstErr.Code, Message: firstErr.Message, Rejected: bad})
		if len(b.Readings) == 0 {
			return nil, firstErr
		}
	}
	if len(b.Readings) == 0 {
		return nil, nil
	}
	return b, nil
}
