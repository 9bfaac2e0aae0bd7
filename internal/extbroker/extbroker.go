// Package extbroker connects the platform to an external MQTT broker
// (Mosquitto, EMQX, VerneMQ, HiveMQ, …) instead of the embedded one: the
// platform is then a privileged MQTT 5 client of that broker.
//
// Device traffic arrives on a shared subscription
// ($share/GROUP/outpost/v1/+/up/#), so several platform replicas split
// it; each message is acknowledged to the broker only after its home has
// finished it (for telemetry: after the commit). Presence announcements
// and RPC answers also arrive on a plain subscription, at every replica:
// each replica keeps presence and waits for the answers to its own calls.
// Down traffic is published to the devices' down/ topics with QoS 1.
// With Config.Events, the broker's own client events (EMQX's $SYS
// connected/disconnected/subscribed) also give presence, to devices that
// do not announce themselves (events.go).
//
// What the device's PUBACK then means: the broker has the message. The
// chain is durable when the broker keeps it until the platform
// acknowledges it: the platform's session must survive (it connects with
// a fixed client id, clean start off and a session expiry), and the
// broker must persist sessions across its own restarts (Mosquitto:
// persistence true; EMQX: durable sessions). See docs/deploy.md.
package extbroker

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Handler takes the devices' messages: the platform's router.
type Handler interface {
	// StartMessage begins handling a message; it reports true when it
	// will call done with the outcome later. See broker.AsyncHandler.
	StartMessage(ctx context.Context, deviceID, kind string, payload []byte, done func(error)) (async bool, err error)
	// HandleMessage handles a message at once.
	HandleMessage(ctx context.Context, deviceID, kind string, payload []byte) error
}

// Presence follows the devices' sessions from their announcements.
type Presence interface {
	Connected(deviceID string, session outpost.SessionID)
	Disconnected(deviceID string, session outpost.SessionID, reason string) bool
	Online(deviceID string) bool
}

// DeliveryHandler is told when a device can take messages and when it is
// gone (the down queue; the same contract as the embedded broker's).
type DeliveryHandler interface {
	DeviceSubscribed(deviceID string, session outpost.SessionID, pull bool)
	DeviceGone(deviceID string, session outpost.SessionID)
	RoomAvailable(deviceID string)
}

// Config configures the link.
type Config struct {
	// URL is mqtt://USER:PASSWORD@HOST:PORT or mqtts://… (tcp:// and
	// ssl:// are taken too).
	URL string
	// ClientID is the platform's client id at the broker; fixed per
	// replica so its session (and the messages it has not acknowledged)
	// survives a restart. Default "outpost".
	ClientID string
	// Group is the shared-subscription group of the replicas (default
	// "outpost").
	Group string
	// TLS configures mqtts:// (default: the system's roots).
	TLS *tls.Config
	// ReceiveMaximum bounds the messages the broker sends the platform
	// before it acknowledges them (default 1024).
	ReceiveMaximum uint16
	// SessionExpiry is how long the broker keeps the platform's session
	// while it is away (default 1 hour).
	SessionExpiry time.Duration
	// ConnectTimeout bounds Open's wait for the first connection (default
	// 30s).
	ConnectTimeout time.Duration
	// Events names the broker whose own client events also give presence
	// (EventsEMQX: EMQX's $SYS/brokers/+/clients/+/connected,
	// disconnected and subscribed; see events.go), for devices that do
	// not announce themselves. Default EventsNone: announcements only.
	Events string
	// Known reports whether id is a registered device; with Events, the
	// events of other clients (the platform's own, tools) are ignored.
	// nil: every client whose username or client id is a valid device id
	// counts.
	Known  func(ctx context.Context, id string) bool
	Logger *slog.Logger
}

// Subscription identifiers tell the shared subscription's deliveries
// from the plain ones'.
const (
	subShared   = 1
	subFanout   = 2
	subInternal = 3
	// subEvents and subEventsShared take the broker's client events
	// (Config.Events). The shared one is the highest: a broker that merges
	// both copies into one PUBLISH lists both identifiers, and paho keeps
	// the last.
	subEvents       = 4
	subEventsShared = 5
)

// InternalRoot is the root of the topics the replicas use among
// themselves: notices about a device (notify/{id}, feeds/{id},
// gateway/{id}: Notice), mirrored stream events (event) while another
// replica listens (interest), and rate-limit usage (usage).
// Devices must not be allowed to publish or subscribe under it (the
// device ACLs of docs/deploy.md allow only their own outpost/v1/{id}/
// topics).
const InternalRoot = "outpost-internal/v1"

// DefaultReceiveMaximum is Config.ReceiveMaximum's default.
const DefaultReceiveMaximum = 1024

// fanoutKinds arrive at every replica (plain subscription); the shared
// subscription's copies of answers are acknowledged and dropped, those
// of presence announcements make their replica the session's owner.
// Answers go to every replica because the caller waits on one of them:
// a device's RPC answers, and a gateway's answers for its children (RPC)
// and for its sinks (configuration, send), which the gateway home matches
// to the waiting request on the replica that made it (the others find
// none; a sink configuration is stored by each, the same row).
var fanoutKinds = []string{protocol.KindPresence, protocol.KindRPC,
	protocol.KindGatewayRPC, protocol.KindGatewayConfig, protocol.KindGatewaySend}

// Link is the platform's connection to an external broker. It
// implements what the platform's parts publish through (the same methods
// as the embedded broker's) and feeds the router. Safe for concurrent
// use.
type Link struct {
	cfg      Config
	url      *url.URL
	log      *slog.Logger
	h        Handler
	presence Presence
	cm       *autopaho.ConnectionManager
	// started is cm once Start set it, for publishers that may run
	// before (the rate limit's usage reports start with the platform).
	started atomic.Pointer[autopaho.ConnectionManager]
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	retries []chan retry // per retry worker; a device's messages go to one

	dh atomic.Pointer[deliveryBox]
	// notices are what a replica does with another's notice, by kind
	// (OnNotice); set while wiring, before Start.
	noticeMu sync.RWMutex
	notices  map[string]func(id string)
	events   atomic.Pointer[func(kind, deviceID string, data json.RawMessage)]
	usage    atomic.Pointer[func(origin string, usage map[string]int)]

	interest interest

	up          atomic.Bool
	subscribed  chan struct{} // closed once the first subscriptions are made
	subOnce     sync.Once
	received    atomic.Int64
	inflight    atomic.Int64 // device messages taken and not yet acknowledged
	retried     atomic.Int64
	mirrored    atomic.Int64
	unsupported atomic.Bool // the broker ignores subscription identifiers

	// The broker's client events (Config.Events, events.go).
	eventq     chan eventMsg
	evMu       sync.Mutex
	ev         map[string]*evConn // device id → its latest connection in the events
	announcing map[string]bool    // devices that announce themselves
}

type deliveryBox struct{ h DeliveryHandler }

// retry is a message whose handling failed for now: it is handled again
// until it succeeds, and only then acknowledged.
type retry struct {
	client   *paho.Client
	pk       *paho.Publish
	deviceID string
	kind     string
}

// New returns a link that hands every device message to h; presence is
// read by Room and Subscribed. It connects only in Start, once the
// platform's parts are ready for messages.
func New(cfg Config, h Handler, presence Presence) (*Link, error) {
	u, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "outpost"
	}
	if cfg.Group == "" {
		cfg.Group = "outpost"
	}
	if cfg.ReceiveMaximum == 0 {
		cfg.ReceiveMaximum = DefaultReceiveMaximum
	}
	if cfg.SessionExpiry <= 0 {
		cfg.SessionExpiry = time.Hour
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if _, err := ParseEvents(cfg.Events); err != nil {
		return nil, err
	}
	l := &Link{cfg: cfg, url: u, log: cfg.Logger, h: h, presence: presence, subscribed: make(chan struct{}),
		eventq: make(chan eventMsg, 4096), ev: map[string]*evConn{}, announcing: map[string]bool{}}
	l.interest.wake = make(chan struct{}, 1)
	for range retryWorkers {
		// The broker sends at most ReceiveMaximum messages before their
		// acknowledgements, and a message waiting for a retry is not
		// acknowledged: a worker's queue never fills, so finish (called
		// from the ingest writer) never waits on it.
		l.retries = append(l.retries, make(chan retry, int(cfg.ReceiveMaximum)))
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l, nil
}

// Start connects to the broker and subscribes; it returns once the first
// connection is up and subscribed (or fails after ConnectTimeout). Close
// ends it either way.
func (l *Link) Start(ctx context.Context) error {
	cfg, u := l.cfg, l.url
	var user string
	var pass []byte
	if u.User != nil {
		user = u.User.Username()
		p, _ := u.User.Password()
		pass = []byte(p)
	}
	server := *u
	server.User = nil
	rm := cfg.ReceiveMaximum
	acfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{&server},
		TlsCfg:                        cfg.TLS,
		KeepAlive:                     30,
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(cfg.SessionExpiry / time.Second),
		ConnectUsername:               user,
		ConnectPassword:               pass,
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(100*time.Millisecond, 10*time.Second, 200*time.Millisecond, 2),
		OnConnectionUp:                l.onUp,
		OnConnectionDown: func() bool {
			l.up.Store(false)
			l.log.Warn("external broker connection lost; reconnecting")
			return true
		},
		OnConnectError: func(err error) {
			l.log.Warn("external broker connection attempt failed", "broker", server.Host, "error", err)
		},
		ConnectPacketBuilder: func(p *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if p.Properties == nil {
				p.Properties = &paho.ConnectProperties{}
			}
			p.Properties.ReceiveMaximum = &rm
			return p, nil
		},
		ClientConfig: paho.ClientConfig{
			ClientID:                   cfg.ClientID,
			EnableManualAcknowledgment: true,
			SendAcksInterval:           5 * time.Millisecond,
			OnPublishReceived:          []func(paho.PublishReceived) (bool, error){l.onPublish},
		},
	}
	cm, err := autopaho.NewConnection(l.ctx, acfg)
	if err != nil {
		return fmt.Errorf("external broker: %w", err)
	}
	l.cm = cm
	l.started.Store(cm)
	l.wg.Add(1 + len(l.retries))
	for _, ch := range l.retries {
		go l.retrier(ch)
	}
	go l.eventLoop()
	wctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := cm.AwaitConnection(wctx); err != nil {
		return fmt.Errorf("external broker %s: no connection within %s: %w", server.Host, cfg.ConnectTimeout, err)
	}
	// The subscriptions are made on each connection (onUp); wait for the
	// first ones so that nothing is missed once Start returns.
	select {
	case <-l.subscribed:
		return nil
	case <-wctx.Done():
		return fmt.Errorf("external broker %s: subscribe: %w", server.Host, wctx.Err())
	}
}

// ParseURL checks a --broker URL: mqtt://, tcp://, mqtts:// or ssl://,
// with a host and a port.
func ParseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("--broker: %w", err)
	}
	switch u.Scheme {
	case "mqtt", "tcp":
		u.Scheme = "tcp"
	case "mqtts", "ssl", "tls":
		u.Scheme = "ssl"
	default:
		return nil, fmt.Errorf("--broker: scheme %q: want mqtt://USER:PASSWORD@HOST:PORT or mqtts://…", u.Scheme)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return nil, fmt.Errorf("--broker %s: want HOST:PORT", u.Redacted())
	}
	return u, nil
}

// sharedFilter is the replicas' shared subscription to device traffic.
func (l *Link) sharedFilter() string {
	return "$share/" + l.cfg.Group + "/" + protocol.Root + "/+/up/#"
}

// Addr returns the broker's HOST:PORT.
func (l *Link) Addr() string { return l.url.Host }

// URL returns the broker's URL for devices (tcp:// or ssl://, without the
// platform's credentials).
func (l *Link) URL() string {
	u := *l.url
	u.User = nil
	return u.String()
}

// onUp subscribes on every (re)connection, in a goroutine: autopaho's
// callback must not block.
func (l *Link) onUp(cm *autopaho.ConnectionManager, _ *paho.Connack) {
	go func() {
		ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
		defer cancel()
		shared, fan := subShared, subFanout
		subs := []*paho.Subscribe{
			{Subscriptions: []paho.SubscribeOptions{{Topic: l.sharedFilter(), QoS: 1}},
				Properties: &paho.SubscribeProperties{SubscriptionIdentifier: &shared}},
		}
		for _, k := range fanoutKinds {
			subs = append(subs, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: protocol.Root + "/+/up/" + k, QoS: 1}},
				Properties: &paho.SubscribeProperties{SubscriptionIdentifier: &fan}})
		}
		internal := subInternal
		subs = append(subs, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: InternalRoot + "/#", QoS: 0, NoLocal: true}},
			Properties: &paho.SubscribeProperties{SubscriptionIdentifier: &internal}})
		subs = append(subs, l.eventSubscriptions()...)
		for _, s := range subs {
			sa, err := cm.Subscribe(ctx, s)
			if err == nil && sa != nil {
				for _, r := range sa.Reasons {
					if r >= 0x80 {
						err = fmt.Errorf("refused with reason code 0x%02x", r)
						break
					}
				}
			}
			if err != nil {
				l.log.Error("external broker: subscribe failed; reconnecting", "filter", s.Subscriptions[0].Topic, "error", err)
				_ = cm.Disconnect(ctx) // autopaho connects again
				return
			}
		}
		l.up.Store(true)
		l.subOnce.Do(func() { close(l.subscribed) })
		l.log.Info("connected to the external broker", "broker", l.url.Host, "client_id", l.cfg.ClientID)
	}()
}

// onPublish hands a device message to the router and acknowledges it to
// the broker once the router is done with it.
func (l *Link) onPublish(pr paho.PublishReceived) (bool, error) {
	pk := pr.Packet
	if strings.HasPrefix(pk.Topic, InternalRoot+"/") {
		l.internal(pk)
		l.ack(pr.Client, pk)
		return true, nil
	}
	if l.cfg.Events != EventsNone && strings.HasPrefix(pk.Topic, "$SYS/") {
		l.eventMessage(pk)
		l.ack(pr.Client, pk)
		return true, nil
	}
	t, err := protocol.ParseTopic(pk.Topic)
	if err != nil || t.Dir != protocol.Up {
		l.ack(pr.Client, pk) // not ours: never take it again
		return true, nil
	}
	l.received.Add(1)
	if t.Kind == protocol.KindPresence {
		l.presenceMessage(t.DeviceID, pk)
		l.ack(pr.Client, pk)
		return true, nil
	}
	if l.duplicate(pk, t.Kind) {
		l.ack(pr.Client, pk)
		return true, nil
	}
	cl := pr.Client
	l.inflight.Add(1)
	async, err := l.h.StartMessage(l.ctx, t.DeviceID, t.Kind, pk.Payload, func(err error) {
		l.finish(cl, pk, t.DeviceID, t.Kind, err)
	})
	if !async {
		l.finish(cl, pk, t.DeviceID, t.Kind, err)
	}
	return true, nil
}

// duplicate reports whether pk is the shared subscription's copy of a
// kind that every replica also gets on its plain subscription.
func (l *Link) duplicate(pk *paho.Publish, kind string) bool {
	fan := false
	for _, k := range fanoutKinds {
		fan = fan || k == kind
	}
	if !fan {
		return false
	}
	if pk.Properties == nil || pk.Properties.SubscriptionIdentifier == nil {
		// A broker without subscription identifiers: the copy cannot be
		// told apart; both are handled (both handlings are idempotent).
		if !l.unsupported.Swap(true) {
			l.log.Warn("the external broker sends no subscription identifiers: presence and RPC answers may be handled twice (harmless)")
		}
		return false
	}
	return *pk.Properties.SubscriptionIdentifier == subShared
}

// finish acknowledges a handled message, or hands a transient failure to
// the retrier: a message is acknowledged only once handled.
func (l *Link) finish(cl *paho.Client, pk *paho.Publish, deviceID, kind string, err error) {
	var pe *protocol.Error
	if err == nil || errors.As(err, &pe) {
		l.ack(cl, pk)
		l.inflight.Add(-1)
		return
	}
	l.retried.Add(1)
	select {
	case l.retries[retryShard(deviceID)] <- retry{client: cl, pk: pk, deviceID: deviceID, kind: kind}:
	case <-l.ctx.Done():
	}
}

// retryWorkers is how many goroutines handle failed messages again. A
// device's messages all go to the same one (retryShard), in order, so a
// device's model changes keep their order; other devices' go on beside a
// message that keeps failing, and after an outage the backlog drains
// several at a time (a telemetry retry joins the others' group commit).
const retryWorkers = 8

// retryShard returns the retry worker of a device.
func retryShard(deviceID string) int { return outpost.Shard(deviceID, retryWorkers) }

// retrier handles failed messages again, with back-off, until they
// succeed or the link closes (then the broker delivers them again to the
// next session).
func (l *Link) retrier(retries <-chan retry) {
	defer l.wg.Done()
	for {
		select {
		case <-l.ctx.Done():
			return
		case r := <-retries:
			pause := 50 * time.Millisecond
			for {
				ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
				err := l.h.HandleMessage(ctx, r.deviceID, r.kind, r.pk.Payload)
				cancel()
				var pe *protocol.Error
				if err == nil || errors.As(err, &pe) {
					l.ack(r.client, r.pk)
					l.inflight.Add(-1)
					break
				}
				l.log.Debug("external broker: message not handled yet; retrying", "device_id", r.deviceID, "kind", r.kind, "error", err)
				select {
				case <-l.ctx.Done():
					return
				case <-time.After(pause):
				}
				pause = min(2*pause, 5*time.Second)
			}
		}
	}
}

func (l *Link) ack(cl *paho.Client, pk *paho.Publish) {
	if pk.QoS == 0 || cl == nil {
		return
	}
	if err := cl.Ack(pk); err != nil {
		l.log.Debug("external broker: acknowledgement not sent (the broker delivers the message again)", "error", err)
	}
}

// presenceMessage handles a presence announcement (docs/protocol.md
// §2.9). Every replica gets it on its plain subscription and keeps the
// device's presence; one replica also gets it on the shared
// subscription, and that one owns the session's deliveries: its down
// queue sends what waits for the device, so no two replicas send it.
func (l *Link) presenceMessage(deviceID string, pk *paho.Publish) {
	a, err := protocol.DecodePresence(pk.Payload)
	if err != nil {
		l.log.Debug("bad presence announcement", "device_id", deviceID, "error", err)
		return
	}
	s := SessionOf(a.Session)
	owner := true
	if pk.Properties != nil && pk.Properties.SubscriptionIdentifier != nil {
		owner = *pk.Properties.SubscriptionIdentifier == subShared
	}
	b := l.dh.Load()
	if l.cfg.Events != EventsNone {
		// Serialised with the events, which no longer count for this
		// device (events.go, mixed sources).
		l.evMu.Lock()
		defer l.evMu.Unlock()
		var dh DeliveryHandler
		if b != nil {
			dh = b.h
		}
		l.announcedLocked(deviceID, dh)
	}
	if a.Online {
		l.presence.Connected(deviceID, s)
	} else {
		l.presence.Disconnected(deviceID, s, "disconnected")
	}
	switch {
	case b == nil:
	case a.Online && owner:
		b.h.DeviceSubscribed(deviceID, s, a.Mode == protocol.ModePull)
	case !a.Online:
		// Every replica: the session's owner may not be the replica that
		// got the shared copy of its end. The queue ignores the end of a
		// session it does not hold.
		b.h.DeviceGone(deviceID, s)
	}
}

// internal handles a message of another replica.
func (l *Link) internal(pk *paho.Publish) {
	rest := strings.TrimPrefix(pk.Topic, InternalRoot+"/")
	kind, arg, _ := strings.Cut(rest, "/")
	switch kind {
	case NoticeQueued, NoticeFeeds, NoticeGateway:
		l.noticeMu.RLock()
		f := l.notices[kind]
		l.noticeMu.RUnlock()
		if f != nil && arg != "" {
			f(arg)
		}
	case "interest":
		l.gotInterest(pk.Payload)
	case "event":
		var e mirrored
		if f := l.events.Load(); f != nil && json.Unmarshal(pk.Payload, &e) == nil && e.Origin != l.cfg.ClientID {
			(*f)(e.Kind, e.DeviceID, e.Data)
		}
	case "usage":
		if arg == "" {
			l.usageReport(pk.Payload)
		}
	}
}

// mirrored is a stream event of one replica sent to the others.
type mirrored struct {
	Origin   string          `json:"origin"`
	Kind     string          `json:"kind"`
	DeviceID string          `json:"device_id"`
	Data     json.RawMessage `json:"data"`
}

// Notices: what a replica tells the others about one device or gateway,
// on InternalRoot/{kind}/{id}. QoS 0, in the background: every receiver
// copes with a lost one.
const (
	// NoticeQueued: something was queued for a device whose session is
	// not here (queue.Options.Elsewhere → the queue's Notify). A lost one
	// only delays the message to the device's next session.
	NoticeQueued = "notify"
	// NoticeFeeds: a device's feed definitions changed
	// (model.Options.Changed → the model's Forget). A lost one leaves a
	// stale cache that the telemetry home reads again before it rejects a
	// reading by it (telemetry.Options.SharedModel).
	NoticeFeeds = "feeds"
	// NoticeGateway: a gateway, its children or sinks changed, or a
	// device was deleted (gateway.Options.Changed → the gateway service's
	// Stale). A lost one leaves a stale copy that the service reads again
	// before it refuses an address (gateway.Options.Shared).
	NoticeGateway = "gateway"
)

// OnNotice sets what this replica does with the others' notices of a
// kind. Call it while wiring, before Start.
func (l *Link) OnNotice(kind string, f func(id string)) {
	l.noticeMu.Lock()
	defer l.noticeMu.Unlock()
	if l.notices == nil {
		l.notices = map[string]func(string){}
	}
	l.notices[kind] = f
}

// Notice tells the other replicas of a change of kind about id.
func (l *Link) Notice(kind, id string) {
	l.publishInternal(InternalRoot+"/"+kind+"/"+id, nil)
}

// Notifier returns Notice bound to a kind, for the parts that take a
// func(id string).
func (l *Link) Notifier(kind string) func(id string) {
	return func(id string) { l.Notice(kind, id) }
}

// OnEvent sets where the other replicas' stream events go (the hub's
// Inject).
func (l *Link) OnEvent(f func(kind, deviceID string, data json.RawMessage)) { l.events.Store(&f) }

// Mirror sends a stream event to the other replicas (stream.Options.Tap;
// the hub calls it only while Wanted, its TapWanted).
func (l *Link) Mirror(kind, deviceID string, data json.RawMessage) {
	l.mirrored.Add(1)
	b, _ := json.Marshal(mirrored{Origin: l.cfg.ClientID, Kind: kind, DeviceID: deviceID, Data: data})
	l.publishInternal(InternalRoot+"/event", b)
}

func (l *Link) publishInternal(topic string, payload []byte) {
	cm := l.started.Load()
	if cm == nil || !l.up.Load() {
		return
	}
	// autopaho's queue would hold them across reconnects; these are worth
	// nothing late. A QoS 0 publish does not wait for the broker.
	ctx, cancel := context.WithTimeout(l.ctx, time.Second)
	defer cancel()
	if _, err := cm.Publish(ctx, &paho.Publish{Topic: topic, QoS: 0, Payload: payload}); err != nil {
		l.log.Debug("external broker: replica notice not sent", "topic", topic, "error", err)
	}
}

// SessionOf maps a device's session tag to a session id.
func SessionOf(tag string) outpost.SessionID {
	h := fnv.New64a()
	h.Write([]byte(tag))
	return outpost.SessionID(h.Sum64() | 1) // never 0
}

// SetDeliveryHandler sets who is told when devices can take messages.
func (l *Link) SetDeliveryHandler(h DeliveryHandler) error {
	l.dh.Store(&deliveryBox{h})
	return nil
}

func (l *Link) publish(ctx context.Context, deviceID, kind, msgID string, payload []byte) error {
	p := &paho.Publish{Topic: protocol.DownTopic(deviceID, kind), QoS: 1, Payload: payload}
	if msgID != "" {
		p.Properties = &paho.PublishProperties{User: paho.UserProperties{{Key: protocol.PropMessageID, Value: msgID}}}
	}
	r, err := l.cm.Publish(ctx, p)
	if err != nil {
		return fmt.Errorf("external broker: publish to %s: %w", deviceID, err)
	}
	if r != nil && r.ReasonCode >= 0x80 && r.ReasonCode != 0x10 { // 0x10: no matching subscribers
		return fmt.Errorf("external broker: publish to %s refused with reason code 0x%02x", deviceID, r.ReasonCode)
	}
	return nil
}

// PublishToDevice publishes payload on the device's down/{kind} topic
// with QoS 1.
func (l *Link) PublishToDevice(deviceID, kind string, payload []byte) error {
	ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
	defer cancel()
	return l.publish(ctx, deviceID, kind, "", payload)
}

// PublishUntil publishes payload on the device's down/{kind} topic,
// giving up at deadline.
func (l *Link) PublishUntil(deviceID, kind string, payload []byte, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(l.ctx, deadline)
	defer cancel()
	return l.publish(ctx, deviceID, kind, "", payload)
}

// PublishQueued publishes a queued message, tagged with its id.
func (l *Link) PublishQueued(deviceID, kind, msgID string, payload []byte) error {
	ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
	defer cancel()
	return l.publish(ctx, deviceID, kind, msgID, payload)
}

// Room returns want for a device that announced itself online, 0
// otherwise: the external broker does the flow control towards devices.
func (l *Link) Room(deviceID string, want int) int {
	if l.presence.Online(deviceID) {
		return want
	}
	return 0
}

// Subscribed reports whether the device announced itself online (a
// device announces only once subscribed to its down/ topics), or, for a
// device followed by the broker's client events, whether its connection
// subscribed to a filter covering the kind's down/ topic.
func (l *Link) Subscribed(deviceID, kind string) bool {
	if sub, ok := l.eventSubscribed(deviceID, kind); ok {
		return sub
	}
	return l.presence.Online(deviceID)
}

// DisconnectDevice cannot end a session on an external broker; revoking
// a device's credentials at the broker (dynamic security, HTTP auth)
// does.
func (l *Link) DisconnectDevice(deviceID string) {
	l.log.Debug("external broker: the device's sessions end when the broker revokes its credentials", "device_id", deviceID)
}

// Ready reports whether the link is connected and subscribed.
func (l *Link) Ready() error {
	if !l.up.Load() {
		return fmt.Errorf("external broker %s: not connected", l.url.Host)
	}
	return nil
}

// Received returns how many device messages arrived; Retried how many
// were handled again after a transient failure.
func (l *Link) Received() int64 { return l.received.Load() }

// Retried returns how many messages failed for now and were retried.
func (l *Link) Retried() int64 { return l.retried.Load() }

// Close leaves the shared subscription, so the broker sends this
// replica's share to the others from now on, waits (up to 10 seconds) for
// the messages it took to be handled and acknowledged, then disconnects
// and stops the link's goroutines. Call it while the parts that finish
// messages (the ingest writer) still run. What is still unacknowledged
// stays in this client id's session at the broker and is delivered when
// a replica of the same name connects again within the session expiry;
// so does what a replica killed with SIGKILL held.
func (l *Link) Close() error {
	if l.cm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if l.up.Load() {
			if _, err := l.cm.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{l.sharedFilter()}}); err != nil {
				l.log.Warn("external broker: could not leave the shared subscription; the broker keeps sending this replica's share to its session", "error", err)
			}
		}
		for l.inflight.Load() > 0 && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond): // poll: acknowledgements come from the writer's callbacks
			}
		}
		if n := l.inflight.Load(); n > 0 {
			l.log.Warn("external broker: closing with messages not yet handled; the broker delivers them to this replica's next session", "messages", n)
		}
		// The acknowledgements go out with paho's next flush.
		time.Sleep(20 * time.Millisecond)
		_ = l.cm.Disconnect(ctx)
		cancel()
	}
	l.cancel()
	if l.cm != nil {
		<-l.cm.Done()
	}
	l.wg.Wait()
	return nil
}
