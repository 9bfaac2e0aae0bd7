// Package reply sends devices the error replies of the protocol (down/error)
// and counts what was rejected, per device and per kind and code.
//
// Every home of a device message kind rejects through one Replier, so the
// counters shown on a device and in the metrics cover all kinds alike.
package reply

import (
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/protocol"
)

// Publisher sends a message to a device on its down/{kind} topic, with
// QoS 1 and without waiting. The broker implements it.
type Publisher interface {
	PublishToDevice(deviceID, kind string, payload []byte) error
}

// Replier sends error replies and keeps the rejection counters. It is safe
// for concurrent use.
type Replier struct {
	pub Publisher
	log *slog.Logger

	replies  *prometheus.CounterVec // by code
	rejected *prometheus.CounterVec // by kind and code

	mu      sync.Mutex
	devices map[string]map[string]int64 // device → "kind/code" → count
}

// New returns a Replier that publishes through pub and registers its
// metrics on reg (nil: none).
func New(pub Publisher, reg prometheus.Registerer, log *slog.Logger) *Replier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Replier{pub: pub, log: log, devices: map[string]map[string]int64{}}
	r.replies = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "outpost_device_error_replies_total",
		Help: "Error replies sent to devices, by code."}, []string{"code"})
	r.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "outpost_device_rejected_total",
		Help: "Device messages or items (readings, feeds, attributes, …) rejected, by message kind and error code."}, []string{"kind", "code"})
	if reg != nil {
		reg.MustRegister(r.replies, r.rejected)
	}
	return r
}

// Reject sends the error reply for a message rejected for good and returns
// the *protocol.Error for the broker to map to a reason code. An error
// that is not a *protocol.Error is reported as invalid input.
func (r *Replier) Reject(deviceID, kind, id string, err error) error {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		pe = &protocol.Error{Code: protocol.CodeInvalid, Message: err.Error()}
	}
	r.Send(deviceID, protocol.ErrorReply{Kind: kind, ID: id, Code: pe.Code, Message: pe.Message})
	return pe
}

// Partial reports a message of which bad items were rejected and good
// ones accepted: the device gets one error reply with the first error and
// the count. It returns first when nothing was accepted (the message is
// rejected for good), nil otherwise.
func (r *Replier) Partial(deviceID, kind, id string, bad, good int, first *protocol.Error) error {
	if bad == 0 || first == nil {
		return nil
	}
	r.Send(deviceID, protocol.ErrorReply{Kind: kind, ID: id, Code: first.Code, Message: first.Message, Rejected: bad})
	if good == 0 {
		return first
	}
	return nil
}

// Send counts e and publishes it to the device. A device that is not
// connected misses it: error replies are never queued.
func (r *Replier) Send(deviceID string, e protocol.ErrorReply) {
	r.replies.WithLabelValues(CodeLabel(e.Code)).Inc()
	r.count(deviceID, e.Kind, e.Code, e.Rejected)
	b, _ := json.Marshal(e)
	if err := r.pub.PublishToDevice(deviceID, protocol.KindError, b); err != nil {
		r.log.Debug("send error reply", "device_id", deviceID, "error", err)
	}
}

// Count counts an error reply that another home published itself (a
// gateway's, which names the child it concerns), as Send counts its own:
// n items of kind rejected with code.
func (r *Replier) Count(deviceID, kind, code string, n int) {
	r.replies.WithLabelValues(CodeLabel(code)).Inc()
	r.count(deviceID, kind, code, n)
}

func (r *Replier) count(deviceID, kind, code string, n int) {
	if n <= 0 {
		n = 1
	}
	kind, code = KindLabel(kind), CodeLabel(code)
	r.rejected.WithLabelValues(kind, code).Add(float64(n))
	r.mu.Lock()
	c := r.devices[deviceID]
	if c == nil {
		c = map[string]int64{}
		r.devices[deviceID] = c
	}
	c[kind+"/"+code] += int64(n)
	r.mu.Unlock()
}

// Rejections returns a device's rejection counts by "kind/code" since the
// platform started, or nil when there were none.
func (r *Replier) Rejections(deviceID string) map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.devices[deviceID]; len(c) > 0 {
		return maps.Clone(c)
	}
	return nil
}

// Forget drops a deleted device's counters.
func (r *Replier) Forget(deviceID string) {
	r.mu.Lock()
	delete(r.devices, deviceID)
	r.mu.Unlock()
}

// labelOther stands for every kind or code outside the closed sets below.
const labelOther = "other"

// knownKinds are the up/ kinds the platform handles. Metric labels and the
// per-device counters take only these values (raw/… counts as raw): a
// device chooses its topics, and every distinct value would cost memory
// and a metric series for as long as the platform runs.
var knownKinds = map[string]bool{
	protocol.KindTelemetry: true, protocol.KindRPC: true, protocol.KindPull: true,
	protocol.KindFeeds: true, protocol.KindAttributes: true, protocol.KindParameters: true,
	protocol.KindTime: true, protocol.KindEvent: true, protocol.KindNotification: true,
	protocol.KindRaw: true, protocol.KindAck: true, protocol.KindPresence: true,
	protocol.KindFileList: true, protocol.KindFileStatus: true, protocol.KindFileRequest: true,
	protocol.KindFileURL: true, protocol.KindFirmwareVersion: true, protocol.KindFirmwareStatus: true,
	protocol.KindFirmwareCheck: true,
	protocol.KindGatewaySinks:  true, protocol.KindGatewayChildren: true, protocol.KindGatewayTelemetry: true,
	protocol.KindGatewayChild: true, protocol.KindGatewayRPC: true, protocol.KindGatewayConfig: true,
	protocol.KindGatewaySend: true, protocol.KindGatewayData: true, protocol.KindGatewayAck: true,
}

// knownCodes are the error codes the platform sends devices.
var knownCodes = map[string]bool{
	protocol.CodeInvalid: true, protocol.CodeTooLarge: true, protocol.CodeUnknownKind: true,
	protocol.CodeUnknownMethod: true, protocol.CodeHandlerError: true, protocol.CodeNotSupported: true,
	protocol.CodeInternal: true, protocol.CodeOverloaded: true, protocol.CodeUnknownFeed: true,
	protocol.CodeWrongType: true, protocol.CodeUnknownChild: true, protocol.CodeForbidden: true,
}

// KindLabel maps a device-chosen kind into the closed set of known kinds.
func KindLabel(kind string) string {
	if _, ok := protocol.RawSubtopic(kind); ok {
		return protocol.KindRaw
	}
	if knownKinds[kind] {
		return kind
	}
	return labelOther
}

// CodeLabel maps an error code into the closed set of known codes.
func CodeLabel(code string) string {
	if knownCodes[code] {
		return code
	}
	return labelOther
}
