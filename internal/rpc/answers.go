package rpc

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Queued takes the answers that no synchronous caller waits for: answers
// to queued calls (internal/queue implements it). It reports false for an
// answer that belongs to no call at all.
type Queued interface {
	Answer(ctx context.Context, deviceID string, resp protocol.RPCResponse, raw []byte) (bool, error)
}

// Rejecter sends the error reply for a message rejected for good
// (internal/reply implements it).
type Rejecter interface {
	Reject(deviceID, kind, id string, err error) error
}

// Answers is the home of the devices' RPC answers (up/rpc): an answer
// goes to the synchronous caller waiting for it, else to the down queue's
// call it belongs to.
type Answers struct {
	relay  *Relay
	queued Queued
	reply  Rejecter
}

// NewAnswers returns the home of up/rpc messages.
func NewAnswers(relay *Relay, queued Queued, reply Rejecter) *Answers {
	return &Answers{relay: relay, queued: queued, reply: reply}
}

// Handle processes an RPC answer a device published on up/rpc.
func (a *Answers) Handle(ctx context.Context, deviceID, kind string, payload []byte) error {
	resp, err := protocol.DecodeRPCResponse(payload)
	if err != nil {
		return a.reply.Reject(deviceID, kind, "", err)
	}
	if a.relay.Deliver(deviceID, resp) == nil {
		return nil
	}
	// Not a synchronous call: a queued one, or a late answer.
	ok, err := a.queued.Answer(ctx, deviceID, resp, payload)
	if err != nil {
		return err // transient: not acknowledged, the device resends
	}
	if !ok {
		a.relay.metrics.late.Inc()
	}
	return nil
}

// metrics are the relay's counters.
type metrics struct {
	calls   *prometheus.CounterVec
	seconds prometheus.Histogram
	late    prometheus.Counter
}

func newMetrics(r *Relay, reg prometheus.Registerer) *metrics {
	m := &metrics{
		calls:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "outpost_rpc_calls_total", Help: "RPC calls by outcome."}, []string{"outcome"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "outpost_rpc_duration_seconds", Help: "Round trip of successful RPC calls.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		late:    prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_rpc_late_responses_total", Help: "RPC responses that arrived after their caller gave up."}),
	}
	if reg != nil {
		reg.MustRegister(m.calls, m.seconds, m.late,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_rpc_pending", Help: "RPC calls waiting for an answer."},
				func() float64 { return float64(r.Pending()) }))
	}
	return m
}

func (m *metrics) observe(res *Result, err error) {
	if err != nil {
		m.calls.WithLabelValues(outpost.ErrorCode(err)).Inc()
		return
	}
	m.calls.WithLabelValues("ok").Inc()
	m.seconds.Observe(res.Duration.Seconds())
}
