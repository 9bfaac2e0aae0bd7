package server

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/internal/httpapi"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/queue"
	"github.com/outpost-iot/outpost/internal/stream"
	"github.com/outpost-iot/outpost/protocol"
)

var (
	_ broker.DeliveryHandler = (*queue.Queue)(nil)
	_ httpapi.CallService    = (*service)(nil)
)

// openQueue starts the down queue and connects it to the broker, the live
// stream and the metrics.
func (s *Server) openQueue() error {
	s.queue = queue.New(s.db, s.queueSender(), queue.Options{
		Sweep:     s.cfg.QueueSweep,
		Logger:    s.log.With("component", "queue"),
		OnCall:    func(c *outpost.Call) { s.hub.Publish(stream.KindCall, c.DeviceID, c) },
		OnMessage: func(m *outpost.QueuedMessage) { s.hub.Publish(stream.KindQueue, m.DeviceID, m) },
	})
	if err := s.broker.SetDeliveryHandler(s.queue); err != nil {
		return err
	}
	st := s.queue.Stats()
	counter := func(name, help string, v interface{ Load() int64 }) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	s.metrics.reg.MustRegister(
		counter("outpost_queue_enqueued_total", "Messages and calls put in device queues.", &st.Enqueued),
		counter("outpost_queue_sent_total", "Queued messages published to devices, redeliveries included.", &st.Sent),
		counter("outpost_queue_delivered_total", "Queued messages confirmed by devices (up/ack, or an answer to a call).", &st.Delivered),
		counter("outpost_queue_expired_total", "Queued messages and calls dropped at expiry without reaching the device.", &st.Expired),
		counter("outpost_queue_pulls_total", "Pull requests served.", &st.Pulls),
		counter("outpost_calls_succeeded_total", "Queued calls answered with a result.", &st.Succeeded),
		counter("outpost_calls_failed_total", "Queued calls answered with an error.", &st.Failed),
		counter("outpost_calls_timed_out_total", "Queued calls sent but not answered in time.", &st.TimedOut),
		counter("outpost_calls_late_answers_total", "Answers to queued calls that had already finished.", &st.LateAnswers),
		counter("outpost_queue_ack_retries_total", "Failed attempts to record device acknowledgements (retried).", &st.AckRetries),
	)
	return nil
}

// answerQueued hands an RPC response nobody waits for synchronously to the
// queue; it counts it as late when it belongs to no call at all.
func (s *Server) answerQueued(ctx context.Context, deviceID string, resp protocol.RPCResponse, raw []byte) error {
	ok, err := s.queue.Answer(ctx, deviceID, resp, raw)
	if err != nil {
		return err // transient: not acknowledged, the device resends
	}
	if !ok {
		s.metrics.rpcLate.Inc()
	}
	return nil
}

// handlePull starts serving a pull request. The messages and the end
// marker follow as the device's send window takes them, after this
// request's PUBACK.
func (s *Server) handlePull(deviceID string, payload []byte) error {
	req, err := protocol.DecodePullRequest(payload)
	if err != nil {
		return s.reject(deviceID, protocol.KindPull, "", err)
	}
	if !s.queue.Pull(deviceID, req.ID) {
		s.log.Debug("pull request from a device that has not subscribed; nothing can reach it", "device_id", deviceID)
	}
	return nil
}

// handleAck records a device's confirmation of queued messages. It never
// waits for the store; when too many confirmations are still waiting to be
// recorded, the message is not acknowledged and the device sends it again
// later.
func (s *Server) handleAck(deviceID string, payload []byte) error {
	a, err := protocol.DecodeAck(payload)
	if err != nil {
		return s.reject(deviceID, protocol.KindAck, "", err)
	}
	if err := s.queue.Acknowledged(deviceID, a.IDs); err != nil {
		return fmt.Errorf("%w: %w", broker.ErrOverloaded, err)
	}
	return nil
}

// QueueCall implements httpapi.CallService.
func (v *service) QueueCall(ctx context.Context, id, method string, args json.RawMessage, ttl, timeout time.Duration) (*outpost.Call, error) {
	return v.s.queue.EnqueueCall(ctx, id, method, args, ttl, timeout)
}

// GetCall implements httpapi.CallService.
func (v *service) GetCall(ctx context.Context, id string) (*outpost.Call, error) {
	return v.s.queue.Call(ctx, id)
}

// DeviceCalls implements httpapi.CallService.
func (v *service) DeviceCalls(ctx context.Context, f outpost.CallFilter) ([]*outpost.Call, error) {
	if _, err := v.s.db.Device(ctx, f.DeviceID); err != nil {
		return nil, err
	}
	return v.s.queue.Calls(ctx, f)
}

// CancelCall implements httpapi.CallService.
func (v *service) CancelCall(ctx context.Context, id string) (*outpost.Call, error) {
	return v.s.queue.CancelCall(ctx, id)
}

// Queue returns the down queue, for other parts of the platform that send
// to devices (feed commands, parameters).
func (s *Server) Queue() *queue.Queue { return s.queue }
