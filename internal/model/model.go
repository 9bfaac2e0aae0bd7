// Package model is the home of the device model's messages: feed
// definitions, attributes, parameters, the time service, events and
// notifications, and raw publishes. It decodes and validates them, applies
// the model's rules, stores them and streams them; it keeps the cache of
// each device's feed definitions that telemetry validation consults; and
// it serves the model's side of the HTTP API (feed commands, desired
// parameters).
package model

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Store is what the model needs from the platform's store.
type Store interface {
	outpost.ModelStore
	Device(ctx context.Context, id string) (*outpost.Device, error)
}

// DownSender sends a message to a device on its down/{kind} topic through
// the persistent down queue: delivered at once to a connected PUSH device
// subscribed to the topic, otherwise kept until the device connects or
// pulls, and dropped (state expired) when it outlives ttl.
type DownSender interface {
	// EnqueueID queues payload under message id id (which the payload
	// carries as its "id", for the device to acknowledge) and returns the
	// queued message.
	EnqueueID(ctx context.Context, id, deviceID, kind string, payload []byte, ttl time.Duration) (*outpost.QueuedMessage, error)
}

// Publisher sends an untracked QoS 1 message to a connected device at
// once (never queued). The broker implements it.
type Publisher interface {
	PublishToDevice(deviceID, kind string, payload []byte) error
}

// Replier sends error replies (internal/reply implements it).
type Replier interface {
	Reject(deviceID, kind, id string, err error) error
	Partial(deviceID, kind, id string, bad, good int, first *protocol.Error) error
	Rejections(deviceID string) map[string]int64
}

// Stream publishes live events (internal/stream implements it).
type Stream interface {
	Publish(kind, deviceID string, data any)
}

// Options connect the model to the rest of the platform.
type Options struct {
	Store     Store
	Down      DownSender
	Publisher Publisher
	Replies   Replier
	Stream    Stream
	Logger    *slog.Logger
	// Changed, when set, is told each time this process changed a
	// device's feed definitions: replicas tell one another, so that
	// their caches follow (Forget).
	Changed func(deviceID string)
}

// Service is the device model. It is safe for concurrent use.
type Service struct {
	db    Store
	down  DownSender
	pub   Publisher
	reply Replier
	hub   Stream
	log   *slog.Logger

	// wmu serialises changes to the model so the cache follows the store.
	wmu sync.Mutex

	changed func(deviceID string)

	mu    sync.Mutex
	feeds map[string]map[string]outpost.Feed // device → ref → definition
	fresh map[string]time.Time               // device → last RefreshFeeds
}

// New returns the model service.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{db: o.Store, down: o.Down, pub: o.Publisher, reply: o.Replies, hub: o.Stream, log: o.Logger,
		changed: o.Changed, feeds: map[string]map[string]outpost.Feed{}, fresh: map[string]time.Time{}}
}

// Default lifetimes of messages to devices.
const (
	feedCommandTTL = time.Hour
	parametersTTL  = 24 * time.Hour
)

// Forget drops a device from the cache: it was deleted, or another
// replica changed its feeds (the next FeedsOf reads the store).
func (m *Service) Forget(deviceID string) {
	m.mu.Lock()
	delete(m.feeds, deviceID)
	delete(m.fresh, deviceID)
	m.mu.Unlock()
}

// refreshEvery bounds how often RefreshFeeds reads one device's feeds.
const refreshEvery = time.Second

// RefreshFeeds is FeedsOf read again from the store, for a caller about
// to reject a reading by the cached definitions when another replica may
// have changed them. It reads the store at most once a second per device
// (a device that keeps sending a wrong feed costs one read a second) and
// returns the cache otherwise.
func (m *Service) RefreshFeeds(ctx context.Context, deviceID string) (map[string]outpost.Feed, error) {
	now := time.Now()
	m.mu.Lock()
	if now.Sub(m.fresh[deviceID]) < refreshEvery {
		m.mu.Unlock()
		return m.FeedsOf(ctx, deviceID)
	}
	if len(m.fresh) >= 4096 {
		for id, at := range m.fresh {
			if now.Sub(at) >= refreshEvery {
				delete(m.fresh, id)
			}
		}
	}
	m.fresh[deviceID] = now
	delete(m.feeds, deviceID)
	m.mu.Unlock()
	return m.FeedsOf(ctx, deviceID)
}

// FeedsOf returns the device's feed definitions by reference, from the
// cache or the store. An empty map means the device registered none. The
// map must not be modified.
func (m *Service) FeedsOf(ctx context.Context, deviceID string) (map[string]outpost.Feed, error) {
	m.mu.Lock()
	f, ok := m.feeds[deviceID]
	m.mu.Unlock()
	if ok {
		return f, nil
	}
	defs, err := m.db.FeedDefs(ctx, deviceID)
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

func (m *Service) setFeeds(deviceID string, defs []outpost.Feed) {
	f := make(map[string]outpost.Feed, len(defs))
	for _, d := range defs {
		f[d.Ref] = d
	}
	m.mu.Lock()
	m.feeds[deviceID] = f
	m.mu.Unlock()
}

// Handles reports whether kind is one of the model's up/ kinds.
func Handles(kind string) bool {
	switch kind {
	case protocol.KindFeeds, protocol.KindAttributes, protocol.KindParameters, protocol.KindTime,
		protocol.KindEvent, protocol.KindNotification:
		return true
	}
	_, ok := protocol.RawSubtopic(kind)
	return ok
}

// Handle processes a model message a device published on up/{kind}: nil
// acknowledges it, a *protocol.Error rejects it for good (the device got
// an error reply), any other error is transient (the device resends).
func (m *Service) Handle(ctx context.Context, deviceID, kind string, payload []byte) error {
	switch kind {
	case protocol.KindFeeds:
		return m.handleFeeds(ctx, deviceID, payload)
	case protocol.KindAttributes:
		return m.handleAttributes(ctx, deviceID, payload)
	case protocol.KindParameters:
		return m.handleParameters(ctx, deviceID, payload)
	case protocol.KindTime:
		return m.handleTime(deviceID, payload)
	case protocol.KindEvent, protocol.KindNotification:
		return m.handleEvent(ctx, deviceID, kind, payload)
	}
	if sub, ok := protocol.RawSubtopic(kind); ok {
		return m.handleRaw(deviceID, kind, sub, payload)
	}
	return m.reply.Reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeUnknownKind, Message: fmt.Sprintf("unknown message kind %.64q", kind)})
}

func (m *Service) handleFeeds(ctx context.Context, deviceID string, payload []byte) error {
	msg, err := protocol.DecodeFeeds(payload)
	if err != nil {
		return m.reply.Reject(deviceID, protocol.KindFeeds, "", err)
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	cur, err := m.FeedsOf(ctx, deviceID)
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
		defs, err := m.db.PutFeeds(ctx, deviceID, reg, rm)
		if err != nil {
			if outpost.ErrorCode(err) == outpost.ENOTFOUND {
				return nil // deleted meanwhile
			}
			return err
		}
		m.setFeeds(deviceID, defs)
		if m.changed != nil {
			m.changed(deviceID)
		}
	}
	return m.reply.Partial(deviceID, protocol.KindFeeds, msg.ID, bad, len(reg)+len(rm), first)
}

func (m *Service) handleAttributes(ctx context.Context, deviceID string, payload []byte) error {
	msg, err := protocol.DecodeAttributes(payload)
	if err != nil {
		return m.reply.Reject(deviceID, protocol.KindAttributes, "", err)
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	have, err := m.db.Attributes(ctx, deviceID)
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
		if err := m.db.PutAttributes(ctx, deviceID, ok); err != nil && outpost.ErrorCode(err) != outpost.ENOTFOUND {
			return err
		}
	}
	return m.reply.Partial(deviceID, protocol.KindAttributes, msg.ID, bad, len(ok), first)
}

func compact(v json.RawMessage) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, v); err != nil {
		return v
	}
	return json.RawMessage(buf.Bytes())
}

func (m *Service) handleParameters(ctx context.Context, deviceID string, payload []byte) error {
	msg, err := protocol.DecodeParametersReport(payload)
	if err != nil {
		return m.reply.Reject(deviceID, protocol.KindParameters, "", err)
	}
	if len(msg.Reported) > 0 {
		m.wmu.Lock()
		p, err := m.db.Parameters(ctx, deviceID)
		if err == nil {
			n := len(p.Reported)
			for k := range msg.Reported {
				if _, ok := p.Reported[k]; !ok {
					n++
				}
			}
			if n > protocol.MaxParametersPerDevice {
				m.wmu.Unlock()
				return m.reply.Reject(deviceID, protocol.KindParameters, msg.ID, &protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("a device may report at most %d parameters", protocol.MaxParametersPerDevice)})
			}
			vals := make(map[string]json.RawMessage, len(msg.Reported))
			for k, v := range msg.Reported {
				vals[k] = compact(v)
			}
			err = m.db.SetReportedParameters(ctx, deviceID, vals)
		}
		m.wmu.Unlock()
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil
		} else if err != nil {
			return err
		}
	}
	if msg.Pull {
		p, err := m.db.Parameters(ctx, deviceID)
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil
		} else if err != nil {
			return err
		}
		b, _ := json.Marshal(protocol.ParametersUpdate{Version: p.Version, Full: true, Values: p.Desired})
		if err := m.pub.PublishToDevice(deviceID, protocol.KindParameters, b); err != nil {
			m.log.Debug("send parameters", "device_id", deviceID, "error", err)
		}
	}
	return nil
}

func (m *Service) handleTime(deviceID string, payload []byte) error {
	req, err := protocol.DecodeTimeRequest(payload)
	if err != nil {
		return m.reply.Reject(deviceID, protocol.KindTime, "", err)
	}
	// Answered at once and never queued: a stale time is useless.
	b, _ := json.Marshal(protocol.TimeReply{ID: req.ID, Sent: req.Sent, T: time.Now().UnixMilli()})
	if err := m.pub.PublishToDevice(deviceID, protocol.KindTime, b); err != nil {
		m.log.Debug("send time", "device_id", deviceID, "error", err)
	}
	return nil
}

func (m *Service) handleEvent(ctx context.Context, deviceID, kind string, payload []byte) error {
	now := time.Now().UnixMilli()
	e := &outpost.DeviceEvent{DeviceID: deviceID, Kind: kind, ReceivedAt: now}
	if kind == protocol.KindEvent {
		ev, err := protocol.DecodeEvent(payload)
		if err != nil {
			return m.reply.Reject(deviceID, kind, "", err)
		}
		e.MessageID, e.Name, e.Data, e.TS = ev.ID, ev.Name, ev.Data, ev.T
		if len(e.Data) > 0 {
			e.Data = compact(e.Data)
		}
	} else {
		n, err := protocol.DecodeNotification(payload)
		if err != nil {
			return m.reply.Reject(deviceID, kind, "", err)
		}
		e.MessageID, e.Title, e.Text, e.TS = n.ID, n.Title, n.Text, n.T
	}
	if e.TS == 0 {
		e.TS = now
	}
	if err := m.db.AddEvent(ctx, e); err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil
		}
		return err // transient: not acknowledged, the device resends
	}
	if e.Seq == 0 {
		return nil // a redelivery of an event already stored
	}
	m.hub.Publish(kind, deviceID, e)
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

func (m *Service) handleRaw(deviceID, kind, sub string, payload []byte) error {
	if len(payload) > protocol.MaxMessageBytes {
		return m.reply.Reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("raw payload of %d bytes exceeds %d", len(payload), protocol.MaxMessageBytes)})
	}
	if len(sub) > protocol.MaxRawTopicLen {
		return m.reply.Reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeInvalid, Message: fmt.Sprintf("raw subtopic longer than %d bytes", protocol.MaxRawTopicLen)})
	}
	ev := rawEvent{DeviceID: deviceID, Topic: sub, At: time.Now().UnixMilli()}
	// Inline only strict JSON (valid UTF-8 above all): the stream's data
	// must stay valid JSON. Anything else travels as base64.
	if len(payload) > 0 && protocol.CheckJSON(payload) == nil {
		ev.Payload = compact(payload)
	} else if len(payload) > 0 {
		ev.PayloadBase64 = base64.StdEncoding.EncodeToString(payload)
	}
	m.hub.Publish(streamKindRaw, deviceID, ev)
	return nil
}

// The model's side of the HTTP API.

// FeedDefs returns a device's registered feeds (ENOTFOUND).

func (m *Service) FeedDefs(ctx context.Context, id string) ([]outpost.Feed, error) {
	defs, err := m.db.FeedDefs(ctx, id)
	if defs == nil && err == nil {
		defs = []outpost.Feed{}
	}
	return defs, err
}

// Attributes returns a device's attributes (ENOTFOUND).
func (m *Service) Attributes(ctx context.Context, id string) ([]outpost.Attribute, error) {
	as, err := m.db.Attributes(ctx, id)
	if as == nil && err == nil {
		as = []outpost.Attribute{}
	}
	return as, err
}

// Parameters returns a device's parameters (ENOTFOUND).
func (m *Service) Parameters(ctx context.Context, id string) (*outpost.Parameters, error) {
	return m.db.Parameters(ctx, id)
}

// Events returns stored events and notifications (ENOTFOUND).
func (m *Service) Events(ctx context.Context, f outpost.EventFilter) ([]outpost.DeviceEvent, error) {
	return m.db.Events(ctx, f)
}

// SetFeedValue sends a feed command for an IN_OUT feed.
func (m *Service) SetFeedValue(ctx context.Context, id, ref string, value json.RawMessage, ttl time.Duration) (*outpost.FeedCommand, error) {
	if _, err := m.db.Device(ctx, id); err != nil {
		return nil, err
	}
	feeds, err := m.FeedsOf(ctx, id)
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
	cmd := protocol.FeedCommand{ID: outpost.NewMessageID(), Feed: ref, Value: compact(value), T: time.Now().UnixMilli()}
	b, _ := json.Marshal(cmd)
	state, err := m.sendDown(ctx, cmd.ID, id, protocol.KindFeed, b, ttl)
	if err != nil {
		return nil, err
	}
	return &outpost.FeedCommand{ID: cmd.ID, MessageID: cmd.ID, State: state, DeviceID: id, Feed: ref, Value: cmd.Value, IssuedAt: cmd.T}, nil
}

// UpdateParameters changes a device's desired parameters (null removes a
// key) and sends the changes to the device.
func (m *Service) UpdateParameters(ctx context.Context, id string, changes map[string]json.RawMessage) (*outpost.Parameters, error) {
	if len(changes) == 0 {
		return nil, outpost.Errorf(outpost.EINVALID, "no parameters to change")
	}
	if err := protocol.ValidateParameters(changes, true); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "%s", err.Message)
	}
	m.wmu.Lock()
	cur, err := m.db.Parameters(ctx, id)
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
	p, err := m.db.UpdateParameters(ctx, id, vals)
	m.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	// Every change goes through the down queue: a connected PUSH device
	// gets it at once, a device that is away when it comes back (or with
	// its next pull in PULL mode), until parametersTTL. Only when the
	// queue refuses it (the device has too many messages waiting) does
	// the device have to catch up by asking for the full set.
	mid := outpost.NewMessageID()
	b, _ := json.Marshal(protocol.ParametersUpdate{ID: mid, Version: p.Version, Values: vals})
	state, err := m.sendDown(ctx, mid, id, protocol.KindParameters, b, parametersTTL)
	if err != nil {
		m.log.Warn("queue parameter change; the device gets it with its next full set", "device_id", id, "error", err)
		p.Delivery = "not_queued"
	} else {
		p.Delivery = string(state)
	}
	return p, nil
}

// Decorate adds the model to a device shown alone: its attributes and
// its rejection counts.
func (m *Service) Decorate(ctx context.Context, d *outpost.Device) {
	if as, err := m.db.Attributes(ctx, d.ID); err == nil {
		sort.Slice(as, func(i, j int) bool { return as[i].Name < as[j].Name })
		d.Attributes = as
	}
	d.Rejected = m.reply.Rejections(d.ID)
}

// sendDown queues a message for the device and returns its state.
func (m *Service) sendDown(ctx context.Context, id, deviceID, kind string, payload []byte, ttl time.Duration) (outpost.State, error) {
	q, err := m.down.EnqueueID(ctx, id, deviceID, kind, payload, ttl)
	if err != nil {
		return "", err
	}
	return q.State, nil
}
