package queue

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Rejecter sends the error reply for a message rejected for good
// (internal/reply implements it).
type Rejecter interface {
	Reject(deviceID, kind, id string, err error) error
}

// Devices tells whether a device exists; the store implements it.
type Devices interface {
	Device(ctx context.Context, id string) (*outpost.Device, error)
}

// Handles reports whether kind is one of the queue's up/ kinds: pull
// requests and acknowledgements of queued messages.
func Handles(kind string) bool { return kind == protocol.KindPull || kind == protocol.KindAck }

// Handle processes a pull request (up/pull) or an acknowledgement
// (up/ack). It never waits for the store.
func (q *Queue) Handle(_ context.Context, deviceID, kind string, payload []byte) error {
	switch kind {
	case protocol.KindPull:
		return q.handlePull(deviceID, payload)
	case protocol.KindAck:
		return q.handleAck(deviceID, payload)
	}
	return q.opt.Replies.Reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeUnknownKind, Message: fmt.Sprintf("unknown message kind %.64q", kind)})
}

// handlePull starts serving a pull request. The messages and the end
// marker follow as the device's send window takes them, after this
// request's PUBACK.
func (q *Queue) handlePull(deviceID string, payload []byte) error {
	req, err := protocol.DecodePullRequest(payload)
	if err != nil {
		return q.opt.Replies.Reject(deviceID, protocol.KindPull, "", err)
	}
	if !q.Pull(deviceID, req.ID) {
		q.log.Debug("pull request from a device that has not subscribed; nothing can reach it", "device_id", deviceID)
	}
	return nil
}

// handleAck records a device's confirmation of queued messages. When too
// many confirmations are still waiting to be recorded, the message is not
// acknowledged (outpost.ErrOverloaded) and the device sends it again
// later.
func (q *Queue) handleAck(deviceID string, payload []byte) error {
	a, err := protocol.DecodeAck(payload)
	if err != nil {
		return q.opt.Replies.Reject(deviceID, protocol.KindAck, "", err)
	}
	if err := q.Acknowledged(deviceID, a.IDs); err != nil {
		return fmt.Errorf("%w: %w", outpost.ErrOverloaded, err)
	}
	return nil
}

// register adds the queue's counters to reg.
func (q *Queue) register(reg prometheus.Registerer) {
	st := &q.stats
	counter := func(name, help string, v interface{ Load() int64 }) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	reg.MustRegister(
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
}
