package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/queue"
	"github.com/outpost-iot/outpost/protocol"
)

// DownSender sends a message to a device on its down/{kind} topic. The
// down queue implements it (queueSender): delivered at once to a connected
// PUSH device subscribed to the topic, otherwise kept until the device
// connects or pulls, and dropped (state expired) when it outlives ttl.
type DownSender interface {
	// SendDown queues payload under message id id (which the payload
	// carries as its "id", for the device to acknowledge) and returns the
	// queued message's state (queued, or sent when it went out at once).
	SendDown(ctx context.Context, id, deviceID, kind string, payload []byte, ttl time.Duration) (outpost.State, error)
}

// queueSender puts down messages in the persistent down queue.
type queueSender struct{ s *Server }

var _ DownSender = queueSender{}

func (d queueSender) SendDown(ctx context.Context, id, deviceID, kind string, payload []byte, ttl time.Duration) (outpost.State, error) {
	m, err := d.s.queue.EnqueueID(ctx, id, deviceID, kind, payload, ttl)
	if err != nil {
		return "", err
	}
	return m.State, nil
}

// Default lifetimes of messages to devices.
const (
	feedCommandTTL = time.Hour
	parametersTTL  = 24 * time.Hour
)

// modelState is the platform's side of the device model: a cache of each
// device's feed definitions (consulted for every telemetry message), the
// per-device rejection counters, and the sender of down messages.
type modelState struct {
	s    *Server
	down DownSender

	// wmu serialises changes to the model so the cache follows the store.
	wmu sync.Mutex

	mu       sync.Mutex
	feeds    map[string]map[string]outpost.Feed // device → ref → definition
	rejected map[string]map[string]int64        // device → "kind/code" → count

	rejectedTotal *prometheus.CounterVec
}

func newModelState(s *Server) *modelState {
	m := &modelState{s: s, down: queueSender{s}, feeds: map[string]map[string]outpost.Feed{}, rejected: map[string]map[string]int64{}}
	m.rejectedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "outpost_device_rejected_total",
		Help: "Device messages or items (readings, feeds, attributes, …) rejected, by message kind and error code."}, []string{"kind", "code"})
	s.metrics.reg.MustRegister(m.rejectedTotal)
	return m
}

// labelOther stands for every kind or code outside the closed sets below.
const labelOther = "other"

// knownKinds are the up/ kinds the platform handles. Metric labels and the
// per-device rejection counters take only these values (raw/… counts as
// raw): a device chooses its topics, and every distinct value would cost
// memory and a metric series for as long as the platform runs.
var knownKinds = map[string]bool{
	protocol.KindTelemetry: true, protocol.KindRPC: true, protocol.KindPull: true,
	protocol.KindFeeds: true, protocol.KindAttributes: true, protocol.KindParameters: true,
	protocol.KindTime: true, protocol.KindEvent: true, protocol.KindNotification: true,
	protocol.KindRaw: true, protocol.KindAck: true,
	protocol.KindFileList: true, protocol.KindFileStatus: true, protocol.KindFileRequest: true,
	protocol.KindFileURL: true, protocol.KindFirmwareVersion: true, protocol.KindFirmwareStatus: true,
	protocol.KindFirmwareCheck: true,
	protocol.KindGatewaySinks: true, protocol.KindGatewayChildren: true, protocol.KindGatewayTelemetry: true,
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

// kindLabel maps a device-chosen kind into the closed set of knownKinds.
func kindLabel(kind string) string {
	if _, ok := protocol.RawSubtopic(kind); ok {
		return protocol.KindRaw
	}
	if knownKinds[kind] {
		return kind
	}
	return labelOther
}

// codeLabel maps an error code into the closed set of knownCodes.
func codeLabel(code string) string {
	if knownCodes[code] {
		return code
	}
	return labelOther
}

// countReject records n rejected items of a device.
func (m *modelState) countReject(deviceID, kind, code string, n int) {
	if n <= 0 {
		n = 1
	}
	kind, code = kindLabel(kind), codeLabel(code)
	m.rejectedTotal.WithLabelValues(kind, code).Add(float64(n))
	m.mu.Lock()
	c := m.rejected[deviceID]
	if c == nil {
		c = map[string]int64{}
		m.rejected[deviceID] = c
	}
	c[kind+"/"+code] += int64(n)
	m.mu.Unlock()
}

func (m *modelState) rejections(deviceID string) map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.rejected[deviceID]
	if len(c) == 0 {
		return nil
	}
	out := make(map[string]int64, len(c))
	for k, v := range c {
		out[k] = v
	}
	return out
}

func (m *modelState) forget(deviceID string) {
	m.mu.Lock()
	delete(m.feeds, deviceID)
	delete(m.rejected, deviceID)
	m.mu.Unlock()
}

// feedsOf returns the device's feed definitions by reference, from the
// cache or the store. An empty map means the device registered none. The
// map must not be modified.
func (m *modelState) feedsOf(ctx context.Context, deviceID string) (map[string]outpost.Feed, error) {
	m.mu.Lock()
	f, ok := m.feeds[deviceID]
	m.mu.Unlock()
	if ok {
		return f, nil
	}
	defs, err := m.s.db.FeedDefs(ctx, deviceID)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	f = make(map[string]outpost.Feed, len(defs))
	for _, d := range defs {
		f[d.Ref] = d
	}
	m.mu.Lock()
	if cur, ok := m.feeds[deviceID]; ok {
		f = cur // a concurrent change got there first
	} else {
		m.feeds[deviceID] = f
	}
	m.mu.Unlock()
	return f, nil
}

func (m *modelState) setFeeds(deviceID string, defs []outpost.Feed) {
	f := make(map[string]outpost.Feed, len(defs))
	for _, d := range defs {
		f[d.Ref] = d
	}
	m.mu.Lock()
	m.feeds[deviceID] = f
	m.mu.Unlock()
}

// checkReading applies the feed rules to a reading that passed
// protocol.ValidateReading:
//   - a reading for a removed feed is rejected;
//   - once a device registered any feed, a reading for a feed it did not
//     register is rejected;
//   - a reading for a registered feed must match its data type.
//
// A device that never registered a feed keeps feeds auto-created from its
// telemetry.
func checkReading(feeds map[string]outpost.Feed, r protocol.Reading) *protocol.Error {
	if len(feeds) == 0 {
		return nil
	}
	f, ok := feeds[r.Feed]
	if ok && f.Removed {
		return &protocol.Error{Code: protocol.CodeUnknownFeed, Message: "feed " + r.Feed + " was removed"}
	}
	if !ok {
		if !hasActive(feeds) {
			return nil // every registered feed was removed: back to auto-creation
		}
		return &protocol.Error{Code: protocol.CodeUnknownFeed, Message: "feed " + r.Feed + " is not registered"}
	}
	if err := protocol.ValidateTyped(f.DataType, r.Value); err != nil {
		return &protocol.Error{Code: err.Code, Message: "feed " + r.Feed + ": " + err.Message}
	}
	return nil
}

func hasActive(feeds map[string]outpost.Feed) bool {
	for _, f := range feeds {
		if !f.Removed {
			return true
		}
	}
	return false
}

// handleModelMessage handles the device-model kinds. It reports false for
// a kind it does not know.
func (s *Server) handleModelMessage(ctx context.Context, deviceID, kind string, payload []byte) (bool, error) {
	switch kind {
	case protocol.KindFeeds:
		return true, s.handleFeeds(ctx, deviceID, payload)
	case protocol.KindAttributes:
		return true, s.handleAttributes(ctx, deviceID, payload)
	case protocol.KindParameters:
		return true, s.handleParameters(ctx, deviceID, payload)
	case protocol.KindTime:
		return true, s.handleTime(deviceID, payload)
	case protocol.KindEvent, protocol.KindNotification:
		return true, s.handleEvent(ctx, deviceID, kind, payload)
	}
	if sub, ok := protocol.RawSubtopic(kind); ok {
		return true, s.handleRaw(deviceID, kind, sub, payload)
	}
	return false, nil
}

// partial reports a message of which some items were rejected: the device
// gets one error reply with the first error and the count. It returns the
// error for the broker when nothing was accepted.
func (s *Server) partial(deviceID, kind, id string, bad, good int, first *protocol.Error) error {
	if bad == 0 || first == nil {
		return nil
	}
	s.sendError(deviceID, protocol.ErrorReply{Kind: kind, ID: id, Code: first.Code, Message: first.Message, Rejected: bad})
	if good == 0 {
		return first
	}
	return nil
}

func (s *Server) handleFeeds(ctx context.Context, deviceID string, payload []byte) error {
	msg, err := protocol.DecodeFeeds(payload)
	if err != nil {
		return s.reject(deviceID, protocol.KindFeeds, "", err)
	}
	m := s.model
	m.wmu.Lock()
	defer m.wmu.Unlock()
	cur, err := m.feedsOf(ctx, deviceID)
	if err != nil {
		return err
	}
	active := 0
	for _, f := range cur {
		if !f.Removed {
			active++
		}
	}
	var bad int
	var first *protocol.Error
	fail := func(err *protocol.Error) {
		bad++
		if first == nil {
			first = err
		}
	}
	var reg []outpost.Feed
	seen := map[string]bool{}
	for _, d := range msg.Register {
		if err := protocol.ValidateFeedDef(&d); err != nil {
			fail(err)
			continue
		}
		if !seen[d.Ref] {
			if f, ok := cur[d.Ref]; !ok || f.Removed {
				if active >= protocol.MaxFeedsPerDevice {
					fail(&protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("feed %s: a device may register at most %d feeds", d.Ref, protocol.MaxFeedsPerDevice)})
					continue
				}
				active++
			}
		}
		seen[d.Ref] = true
		reg = append(reg, outpost.Feed{Ref: d.Ref, Name: d.Name, Type: d.Type, DataType: d.DataType, Unit: d.Unit})
	}
	var rm []string
	for _, ref := range msg.Remove {
		if err := protocol.ValidFeed(ref); err != nil {
			fail(&protocol.Error{Code: protocol.CodeInvalid, Message: err.Error()})
			continue
		}
		if f, ok := cur[ref]; ok && f.Removed {
			continue
		}
		if _, ok := cur[ref]; !ok && len(cur) >= 2*protocol.MaxFeedsPerDevice {
			continue // bound the tombstones of never-registered feeds
		}
		rm = append(rm, ref)
	}
	if len(reg)+len(rm) > 0 {
		defs, err := s.db.PutFeeds(ctx, deviceID, reg, rm)
		if err != nil {
			if outpost.ErrorCode(err) == outpost.ENOTFOUND {
				return nil // deleted meanwhile
			}
			return err
		}
		m.setFeeds(deviceID, defs)
	}
	return s.partial(deviceID, protocol.KindFeeds, msg.ID, bad, len(reg)+len(rm), first)
}

func (s *Server) handleAttributes(ctx context.Context, deviceID string, payload []byte) error {
	msg, err := protocol.DecodeAttributes(payload)
	if err != nil {
		return s.reject(deviceID, protocol.KindAttributes, "", err)
	}
	s.model.wmu.Lock()
	defer s.model.wmu.Unlock()
	have, err := s.db.Attributes(ctx, deviceID)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND {
		return nil
	} else if err != nil {
		return err
	}
	names := make(map[string]bool, len(have))
	for _, a := range have {
		names[a.Name] = true
	}
	var bad int
	var first *protocol.Error
	var ok []outpost.Attribute
	for _, a := range msg.Attributes {
		err := protocol.ValidateAttribute(a)
		if err == nil && !names[a.Name] && len(names) >= protocol.MaxAttributesPerDevice {
			err = &protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("attribute %s: a device may have at most %d attributes", a.Name, protocol.MaxAttributesPerDevice)}
		}
		if err != nil {
			bad++
			if first == nil {
				first = err
			}
			continue
		}
		names[a.Name] = true
		ok = append(ok, outpost.Attribute{Name: a.Name, DataType: a.DataType, Value: compact(a.Value)})
	}
	if len(ok) > 0 {
		if err := s.db.PutAttributes(ctx, deviceID, ok); err != nil && outpost.ErrorCode(err) != outpost.ENOTFOUND {
			return err
		}
	}
	return s.partial(deviceID, protocol.KindAttributes, msg.ID, bad, len(ok), first)
}

func compact(v json.RawMessage) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, v); err != nil {
		return v
	}
	return json.RawMessage(buf.Bytes())
}

func (s *Server) handleParameters(ctx context.Context, deviceID string, payload []byte) error {
	msg, err := protocol.DecodeParametersReport(payload)
	if err != nil {
		return s.reject(deviceID, protocol.KindParameters, "", err)
	}
	if len(msg.Reported) > 0 {
		s.model.wmu.Lock()
		p, err := s.db.Parameters(ctx, deviceID)
		if err == nil {
			n := len(p.Reported)
			for k := range msg.Reported {
				if _, ok := p.Reported[k]; !ok {
					n++
				}
			}
			if n > protocol.MaxParametersPerDevice {
				s.model.wmu.Unlock()
				return s.reject(deviceID, protocol.KindParameters, msg.ID, &protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("a device may report at most %d parameters", protocol.MaxParametersPerDevice)})
			}
			vals := make(map[string]json.RawMessage, len(msg.Reported))
			for k, v := range msg.Reported {
				vals[k] = compact(v)
			}
			err = s.db.SetReportedParameters(ctx, deviceID, vals)
		}
		s.model.wmu.Unlock()
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil
		} else if err != nil {
			return err
		}
	}
	if msg.Pull {
		p, err := s.db.Parameters(ctx, deviceID)
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil
		} else if err != nil {
			return err
		}
		b, _ := json.Marshal(protocol.ParametersUpdate{Version: p.Version, Full: true, Values: p.Desired})
		if err := s.broker.PublishToDevice(deviceID, protocol.KindParameters, b); err != nil {
			s.log.Debug("send parameters", "device_id", deviceID, "error", err)
		}
	}
	return nil
}

func (s *Server) handleTime(deviceID string, payload []byte) error {
	req, err := protocol.DecodeTimeRequest(payload)
	if err != nil {
		return s.reject(deviceID, protocol.KindTime, "", err)
	}
	// Answered at once and never queued: a stale time is useless.
	b, _ := json.Marshal(protocol.TimeReply{ID: req.ID, Sent: req.Sent, T: time.Now().UnixMilli()})
	if err := s.broker.PublishToDevice(deviceID, protocol.KindTime, b); err != nil {
		s.log.Debug("send time", "device_id", deviceID, "error", err)
	}
	return nil
}

func (s *Server) handleEvent(ctx context.Context, deviceID, kind string, payload []byte) error {
	now := time.Now().UnixMilli()
	e := &outpost.DeviceEvent{DeviceID: deviceID, Kind: kind, ReceivedAt: now}
	if kind == protocol.KindEvent {
		m, err := protocol.DecodeEvent(payload)
		if err != nil {
			return s.reject(deviceID, kind, "", err)
		}
		e.MessageID, e.Name, e.Data, e.TS = m.ID, m.Name, m.Data, m.T
		if len(e.Data) > 0 {
			e.Data = compact(e.Data)
		}
	} else {
		m, err := protocol.DecodeNotification(payload)
		if err != nil {
			return s.reject(deviceID, kind, "", err)
		}
		e.MessageID, e.Title, e.Text, e.TS = m.ID, m.Title, m.Text, m.T
	}
	if e.TS == 0 {
		e.TS = now
	}
	if err := s.db.AddEvent(ctx, e); err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil
		}
		return err // transient: not acknowledged, the device resends
	}
	if e.Seq == 0 {
		return nil // a redelivery of an event already stored
	}
	s.hub.Publish(kind, deviceID, e)
	return nil
}

// rawEvent is the stream payload of a raw publish.
type rawEvent struct {
	DeviceID string `json:"device_id"`
	Topic    string `json:"topic"`
	// Payload holds the payload when it is JSON; PayloadBase64 otherwise.
	Payload       json.RawMessage `json:"payload,omitempty"`
	PayloadBase64 string          `json:"payload_base64,omitempty"`
	At            int64           `json:"at"`
}

// streamKindRaw is the stream event kind of raw publishes.
const streamKindRaw = "raw"

func (s *Server) handleRaw(deviceID, kind, sub string, payload []byte) error {
	if len(payload) > protocol.MaxMessageBytes {
		return s.reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("raw payload of %d bytes exceeds %d", len(payload), protocol.MaxMessageBytes)})
	}
	if len(sub) > protocol.MaxRawTopicLen {
		return s.reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeInvalid, Message: fmt.Sprintf("raw subtopic longer than %d bytes", protocol.MaxRawTopicLen)})
	}
	ev := rawEvent{DeviceID: deviceID, Topic: sub, At: time.Now().UnixMilli()}
	// Inline only strict JSON (valid UTF-8 above all): the stream's data
	// must stay valid JSON. Anything else travels as base64.
	if len(payload) > 0 && protocol.CheckJSON(payload) == nil {
		ev.Payload = compact(payload)
	} else if len(payload) > 0 {
		ev.PayloadBase64 = base64.StdEncoding.EncodeToString(payload)
	}
	s.hub.Publish(streamKindRaw, deviceID, ev)
	return nil
}

// The service side of the model, called by the HTTP API.

func (v *service) FeedDefs(ctx context.Context, id string) ([]outpost.Feed, error) {
	defs, err := v.s.db.FeedDefs(ctx, id)
	if defs == nil && err == nil {
		defs = []outpost.Feed{}
	}
	return defs, err
}

func (v *service) Attributes(ctx context.Context, id string) ([]outpost.Attribute, error) {
	as, err := v.s.db.Attributes(ctx, id)
	if as == nil && err == nil {
		as = []outpost.Attribute{}
	}
	return as, err
}

func (v *service) Parameters(ctx context.Context, id string) (*outpost.Parameters, error) {
	return v.s.db.Parameters(ctx, id)
}

func (v *service) Events(ctx context.Context, f outpost.EventFilter) ([]outpost.DeviceEvent, error) {
	return v.s.db.Events(ctx, f)
}

// SetFeedValue sends a feed command for an IN_OUT feed.
func (v *service) SetFeedValue(ctx context.Context, id, ref string, value json.RawMessage, ttl time.Duration) (*outpost.FeedCommand, error) {
	if _, err := v.s.db.Device(ctx, id); err != nil {
		return nil, err
	}
	feeds, err := v.s.model.feedsOf(ctx, id)
	if err != nil {
		return nil, err
	}
	f, ok := feeds[ref]
	if !ok || f.Removed {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "device %s has no feed %q", id, ref)
	}
	if f.Type != protocol.FeedInOut {
		return nil, outpost.Errorf(outpost.EINVALID, "feed %s is %s; only IN_OUT feeds take values", ref, f.Type)
	}
	if err := protocol.ValidateTyped(f.DataType, value); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "feed %s: %s", ref, err.Message)
	}
	if ttl <= 0 {
		ttl = feedCommandTTL
	}
	// The command's id is its message id in the down queue: the id the
	// device acknowledges.
	cmd := protocol.FeedCommand{ID: queue.NewID(), Feed: ref, Value: compact(value), T: time.Now().UnixMilli()}
	b, _ := json.Marshal(cmd)
	state, err := v.s.model.down.SendDown(ctx, cmd.ID, id, protocol.KindFeed, b, ttl)
	if err != nil {
		return nil, err
	}
	return &outpost.FeedCommand{ID: cmd.ID, MessageID: cmd.ID, State: state, DeviceID: id, Feed: ref, Value: cmd.Value, IssuedAt: cmd.T}, nil
}

// UpdateParameters changes a device's desired parameters (null removes a
// key) and sends the changes to the device.
func (v *service) UpdateParameters(ctx context.Context, id string, changes map[string]json.RawMessage) (*outpost.Parameters, error) {
	if len(changes) == 0 {
		return nil, outpost.Errorf(outpost.EINVALID, "no parameters to change")
	}
	if err := protocol.ValidateParameters(changes, true); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "%s", err.Message)
	}
	m := v.s.model
	m.wmu.Lock()
	cur, err := v.s.db.Parameters(ctx, id)
	if err != nil {
		m.wmu.Unlock()
		return nil, err
	}
	n := len(cur.Desired)
	for k, val := range changes {
		_, had := cur.Desired[k]
		switch {
		case string(val) == "null" && had:
			n--
		case string(val) != "null" && !had:
			n++
		}
	}
	if n > protocol.MaxParametersPerDevice {
		m.wmu.Unlock()
		return nil, outpost.Errorf(outpost.EINVALID, "a device may have at most %d parameters", protocol.MaxParametersPerDevice)
	}
	vals := make(map[string]json.RawMessage, len(changes))
	for k, val := range changes {
		vals[k] = compact(val)
	}
	p, err := v.s.db.UpdateParameters(ctx, id, vals)
	m.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	// Every change goes through the down queue: a connected PUSH device
	// gets it at once, a device that is away when it comes back (or with
	// its next pull in PULL mode), until parametersTTL. Only when the
	// queue refuses it (the device has too many messages waiting) does
	// the device have to catch up by asking for the full set.
	mid := queue.NewID()
	b, _ := json.Marshal(protocol.ParametersUpdate{ID: mid, Version: p.Version, Values: vals})
	state, err := m.down.SendDown(ctx, mid, id, protocol.KindParameters, b, parametersTTL)
	if err != nil {
		v.s.log.Warn("queue parameter change; the device gets it with its next full set", "device_id", id, "error", err)
		p.Delivery = "not_queued"
	} else {
		p.Delivery = string(state)
	}
	return p, nil
}

// decorate adds the model to a device shown alone.
func (v *service) decorate(ctx context.Context, d *outpost.Device) {
	if as, err := v.s.db.Attributes(ctx, d.ID); err == nil {
		sort.Slice(as, func(i, j int) bool { return as[i].Name < as[j].Name })
		d.Attributes = as
	}
	d.Rejected = v.s.model.rejections(d.ID)
	d.Gateway = v.s.gatewayOf(ctx, d.ID)
}
