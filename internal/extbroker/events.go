package extbroker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// The broker's own client events (Config.Events).
//
// EMQX publishes, on every node, a message when a client connects,
// disconnects and subscribes:
//
//	$SYS/brokers/{node}/clients/{clientid}/connected
//	$SYS/brokers/{node}/clients/{clientid}/disconnected
//	$SYS/brokers/{node}/clients/{clientid}/subscribed
//
// (sys_topics.sys_event_messages; subscribed is off by default). They
// give presence to devices that never announce themselves (docs/protocol.md
// §2.9): a third-party device speaking plain MQTT.
//
// Sessions: a connection is named by its client id and its connected_at
// (milliseconds, from the broker); EMQX 5 repeats connected_at in the
// disconnected event, so the end of an old connection that arrives after
// the next connection's start names the old session, which the presence
// tracker ignores. EMQX 4 sends only disconnected_at: the end then belongs
// to the device's latest connection when disconnected_at is not before
// that connection's connected_at, and is ignored otherwise (a take-over
// ends the old connection before the new one's connected_at is taken). A
// connected event older than the latest one seen for the device (nodes of
// a cluster deliver independently) is ignored.
//
// Deliveries: every replica gets every event on a plain subscription and
// keeps presence; one replica also gets the connected event on the shared
// subscription and owns that connection's deliveries, so exactly one
// replica sends what is queued for the device. The queue sends a message
// of a kind only once the connection has subscribed to a filter that
// covers that kind's down/ topic (a subscribed event), or at once when the
// connection asked for a persistent session (clean start off: the broker
// may have resumed its subscriptions, which sends no subscribed event).
//
// Mixed sources: a device that announces itself (an SDK device) is
// followed by its announcements alone from its first announcement on;
// its events are ignored from then on. Before that first announcement its
// connection may have been taken from the events: the announcement drops
// that (the event session's deliveries end, the announcement's session
// replaces it in the tracker), so at no time do two replicas own the
// device, and whichever ends arrive later name a session that is no longer
// live and change nothing.

// Event sources for Config.Events.
const (
	// EventsNone: presence comes from the devices' announcements only.
	EventsNone = ""
	// EventsEMQX: also from EMQX's $SYS client events.
	EventsEMQX = "emqx"
)

// ParseEvents checks a --broker-events value.
func ParseEvents(s string) (string, error) {
	switch s {
	case EventsNone, "none":
		return EventsNone, nil
	case EventsEMQX:
		return EventsEMQX, nil
	}
	return "", fmt.Errorf("--broker-events %q: want emqx or none", s)
}

// EMQX's event topics.
const (
	emqxEventRoot = "$SYS/brokers/"
	// emqxFilter is a filter of one event kind, for every node and client.
	emqxFilter = "$SYS/brokers/+/clients/+/"
)

// Kinds of EMQX client events.
const (
	EventConnected    = "connected"
	EventDisconnected = "disconnected"
	EventSubscribed   = "subscribed"
)

// maxEventBytes bounds an event's payload (EMQX's are a few hundred
// bytes).
const maxEventBytes = 8 << 10

// EMQXEvent is one of EMQX's client events.
type EMQXEvent struct {
	Kind     string // EventConnected, EventDisconnected or EventSubscribed
	Node     string
	ClientID string
	// Username is empty when the client sent none.
	Username string
	// ConnectedAt is the connection's start in milliseconds (connected;
	// disconnected from EMQX 5 on); 0 when absent.
	ConnectedAt int64
	// DisconnectedAt is the connection's end in milliseconds
	// (disconnected).
	DisconnectedAt int64
	// CleanStart is the connection's clean start (session) flag
	// (connected; true when absent).
	CleanStart bool
	// Reason is why the connection ended (disconnected: tcp_closed,
	// keepalive_timeout, takenover, …).
	Reason string
	// Topic is the filter subscribed to (subscribed).
	Topic string
}

// emqxPayload is the JSON of every kind of event.
type emqxPayload struct {
	ClientID       *string `json:"clientid"`
	Username       *string `json:"username"`
	ConnectedAt    *int64  `json:"connected_at"`
	DisconnectedAt *int64  `json:"disconnected_at"`
	CleanStart     *bool   `json:"clean_start"`
	Reason         *string `json:"reason"`
	Topic          *string `json:"topic"`
}

var errBadEvent = errors.New("not an EMQX client event")

// ParseEMQXEvent decodes one of EMQX's client events from its topic and
// payload. The payload must be a JSON object whose clientid, when given,
// is the topic's; a connected event needs connected_at, a disconnected one
// disconnected_at or connected_at, a subscribed one its topic. Other
// fields are ignored.
func ParseEMQXEvent(topic string, payload []byte) (EMQXEvent, error) {
	var e EMQXEvent
	rest, ok := strings.CutPrefix(topic, emqxEventRoot)
	if !ok {
		return e, errBadEvent
	}
	node, rest, ok := strings.Cut(rest, "/")
	if !ok || node == "" {
		return e, errBadEvent
	}
	rest, ok = strings.CutPrefix(rest, "clients/")
	if !ok {
		return e, errBadEvent
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return e, errBadEvent
	}
	e.Node, e.ClientID, e.Kind = node, rest[:i], rest[i+1:]
	switch e.Kind {
	case EventConnected, EventDisconnected, EventSubscribed:
	default:
		return e, fmt.Errorf("%w: kind %q", errBadEvent, e.Kind)
	}
	if len(payload) > maxEventBytes {
		return e, fmt.Errorf("%w: payload of %d bytes", errBadEvent, len(payload))
	}
	var p emqxPayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return e, fmt.Errorf("%w: %v", errBadEvent, err)
	}
	if p.ClientID != nil && *p.ClientID != e.ClientID {
		return e, fmt.Errorf("%w: clientid %q in a topic of %q", errBadEvent, *p.ClientID, e.ClientID)
	}
	if p.Username != nil && *p.Username != "undefined" { // EMQX's "none"
		e.Username = *p.Username
	}
	if p.ConnectedAt != nil {
		if *p.ConnectedAt <= 0 {
			return e, fmt.Errorf("%w: connected_at %d", errBadEvent, *p.ConnectedAt)
		}
		e.ConnectedAt = *p.ConnectedAt
	}
	e.CleanStart = p.CleanStart == nil || *p.CleanStart
	switch e.Kind {
	case EventConnected:
		if e.ConnectedAt == 0 {
			return e, fmt.Errorf("%w: connected without connected_at", errBadEvent)
		}
	case EventDisconnected:
		if p.DisconnectedAt != nil {
			if *p.DisconnectedAt <= 0 {
				return e, fmt.Errorf("%w: disconnected_at %d", errBadEvent, *p.DisconnectedAt)
			}
			e.DisconnectedAt = *p.DisconnectedAt
		}
		if e.DisconnectedAt == 0 && e.ConnectedAt == 0 {
			return e, fmt.Errorf("%w: disconnected without disconnected_at or connected_at", errBadEvent)
		}
		if p.Reason != nil {
			e.Reason = *p.Reason
		}
	case EventSubscribed:
		if p.Topic == nil || *p.Topic == "" {
			return e, fmt.Errorf("%w: subscribed without topic", errBadEvent)
		}
		e.Topic = *p.Topic
	}
	return e, nil
}

// DeviceID returns the device the event is about: the username (devices
// log in with their id as username, docs/protocol.md §2.3), or the client
// id for a client that sent no username; "" when that is not a valid
// device id. Whether it is a registered device is the caller's to check.
func (e EMQXEvent) DeviceID() string {
	id := e.Username
	if id == "" {
		id = e.ClientID
	}
	if protocol.ValidID(id) != nil {
		return ""
	}
	return id
}

// EMQXSession is the session id of the EMQX connection of clientID that
// started at connectedAt (milliseconds).
func EMQXSession(clientID string, connectedAt int64) outpost.SessionID {
	return SessionOf("emqx/" + clientID + "/" + strconv.FormatInt(connectedAt, 10))
}

// takenOver reports whether EMQX ended a connection for a newer one of
// the same client.
func takenOver(reason string) bool {
	return reason == "takenover" || reason == "takeovered" || reason == "discarded"
}

// offlineReason turns EMQX's reason into the tracker's words.
func offlineReason(r string) string {
	if takenOver(r) {
		return "taken over"
	}
	switch r {
	case "keepalive_timeout":
		return "keepalive timeout"
	case "":
		return "disconnected"
	}
	if len(r) > 64 {
		r = r[:64]
	}
	return "disconnected: " + strings.ToValidUTF8(r, "?")
}

// evConn is what a replica knows of a device's latest connection seen in
// the events.
type evConn struct {
	session     outpost.SessionID
	connectedAt int64
	live        bool
	owner       bool // this replica got the shared copy: it delivers
	cleanStart  bool
	filters     []string // subscribed filters that cover down/ topics
}

// maxEventFilters bounds the filters kept per connection.
const maxEventFilters = 32

// eventSubscriptions are the subscriptions of Config.Events.
func (l *Link) eventSubscriptions() []*paho.Subscribe {
	if l.cfg.Events != EventsEMQX {
		return nil
	}
	plain, shared := subEvents, subEventsShared
	var opts []paho.SubscribeOptions
	for _, k := range []string{EventConnected, EventDisconnected, EventSubscribed} {
		opts = append(opts, paho.SubscribeOptions{Topic: emqxFilter + k, QoS: 1})
	}
	return []*paho.Subscribe{
		{Subscriptions: opts, Properties: &paho.SubscribeProperties{SubscriptionIdentifier: &plain}},
		{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/" + l.cfg.Group + "/" + emqxFilter + EventConnected, QoS: 1}},
			Properties: &paho.SubscribeProperties{SubscriptionIdentifier: &shared}},
	}
}

// eventMsg is an event waiting for the events goroutine.
type eventMsg struct {
	e      EMQXEvent
	shared bool
}

// eventMessage takes an event off the link's connection: decoded here,
// handled in order by eventLoop (which may ask the store whether a device
// exists). A malformed event is dropped.
func (l *Link) eventMessage(pk *paho.Publish) {
	e, err := ParseEMQXEvent(pk.Topic, pk.Payload)
	if err != nil {
		l.log.Debug("external broker: ignoring a malformed client event", "topic", pk.Topic, "error", err)
		return
	}
	// A broker that sends one copy for both subscriptions lists both
	// identifiers; paho keeps the last, the highest: the shared one's.
	shared := true
	if pk.Properties != nil && pk.Properties.SubscriptionIdentifier != nil {
		shared = *pk.Properties.SubscriptionIdentifier == subEventsShared
	}
	select {
	case l.eventq <- eventMsg{e, shared}:
	case <-l.ctx.Done():
	}
}

// eventLoop handles the events in the order they arrived.
func (l *Link) eventLoop() {
	defer l.wg.Done()
	for {
		select {
		case <-l.ctx.Done():
			return
		case m := <-l.eventq:
			l.handleEvent(m.e, m.shared)
		}
	}
}

// handleEvent turns an event into presence and deliveries.
func (l *Link) handleEvent(e EMQXEvent, shared bool) {
	id := e.DeviceID()
	if id == "" {
		return // the platform's own clients, tools, …
	}
	if l.cfg.Known != nil {
		ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
		known := l.cfg.Known(ctx, id)
		cancel()
		if !known {
			l.log.Debug("external broker: client event of no device", "client_id", e.ClientID, "kind", e.Kind)
			return
		}
	}
	var dh DeliveryHandler
	if b := l.dh.Load(); b != nil {
		dh = b.h
	}
	l.evMu.Lock()
	defer l.evMu.Unlock()
	if l.announcing[id] {
		return // followed by its announcements
	}
	c := l.ev[id]
	switch e.Kind {
	case EventConnected:
		if c != nil && e.ConnectedAt < c.connectedAt {
			l.log.Debug("external broker: late connected event of an older connection", "device_id", id)
			return
		}
		s := EMQXSession(e.ClientID, e.ConnectedAt)
		if c == nil || c.session != s {
			c = &evConn{session: s, connectedAt: e.ConnectedAt, live: true, cleanStart: e.CleanStart}
			l.ev[id] = c
			l.presence.Connected(id, s)
		}
		if !c.live {
			return // its end came first
		}
		if shared && !c.owner {
			c.owner = true
			if dh != nil {
				dh.DeviceSubscribed(id, s, false)
			}
		}
	case EventSubscribed:
		if c == nil || !c.live || !coversDown(id, e.Topic) {
			return
		}
		if len(c.filters) < maxEventFilters {
			c.filters = append(c.filters, e.Topic)
		}
		if c.owner && dh != nil {
			dh.DeviceSubscribed(id, c.session, false) // the same session: a new round for what waited
		}
	case EventDisconnected:
		var s outpost.SessionID
		switch {
		case e.ConnectedAt != 0:
			s = EMQXSession(e.ClientID, e.ConnectedAt)
		case takenOver(e.Reason):
			// A newer connection of the same client exists: this end is
			// never the live connection's.
			l.log.Debug("external broker: end of a connection that was taken over", "device_id", id)
			return
		case c != nil && c.live && e.DisconnectedAt >= c.connectedAt:
			s = c.session
		default:
			l.log.Debug("external broker: late disconnected event of an older connection", "device_id", id)
			return
		}
		if c != nil && c.session == s {
			c.live, c.owner, c.filters = false, false, nil
		}
		l.presence.Disconnected(id, s, offlineReason(e.Reason))
		if dh != nil {
			// Every replica: the queue ignores the end of a session it
			// does not hold.
			dh.DeviceGone(id, s)
		}
	}
}

// announced notes that a device announces itself: from now on its events
// are ignored, and what this replica took from them is dropped. l.evMu is
// held.
func (l *Link) announcedLocked(deviceID string, dh DeliveryHandler) {
	if l.announcing[deviceID] {
		return
	}
	l.announcing[deviceID] = true
	c := l.ev[deviceID]
	delete(l.ev, deviceID)
	if c != nil && c.live && c.owner && dh != nil {
		dh.DeviceGone(deviceID, c.session)
	}
}

// eventSubscribed answers Subscribed for a device followed by the events;
// ok is false for the others.
func (l *Link) eventSubscribed(deviceID, kind string) (subscribed, ok bool) {
	if l.cfg.Events == EventsNone {
		return false, false
	}
	l.evMu.Lock()
	defer l.evMu.Unlock()
	c := l.ev[deviceID]
	if c == nil || !c.live || l.announcing[deviceID] {
		return false, false
	}
	if !c.cleanStart {
		return true, true
	}
	topic := protocol.DownTopic(deviceID, kind)
	for _, f := range c.filters {
		if filterMatches(f, topic) {
			return true, true
		}
	}
	return false, true
}

// coversDown reports whether filter matches some down/ topic of the
// device.
func coversDown(deviceID, filter string) bool {
	want := append(strings.Split(protocol.Root, "/"), deviceID, protocol.Down)
	levels := strings.Split(filter, "/")
	for i, w := range want {
		if i >= len(levels) {
			return false
		}
		if levels[i] == "#" {
			return true
		}
		if levels[i] != "+" && levels[i] != w {
			return false
		}
	}
	return len(levels) > len(want) // a kind below down/
}

// filterMatches reports whether an MQTT topic filter matches a topic name
// (MQTT 5 §4.7; no $-topics here).
func filterMatches(filter, topic string) bool {
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore || !tmore {
			if fmore && !tmore {
				return frest == "#" // a/# matches a
			}
			return fmore == tmore
		}
		filter, topic = frest, trest
	}
}
