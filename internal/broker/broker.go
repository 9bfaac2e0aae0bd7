// Package broker runs the embedded MQTT broker (mochi-mqtt) that devices
// connect to, and connects it to the platform through three hooks with one
// concern each: authentication and per-device ACL, presence, and routing of
// device messages into the platform.
//
// Routing happens inside mochi's OnPublish hook, which runs before the
// broker writes the PUBACK. A message is therefore acknowledged only after
// the platform has handled it (for telemetry: committed it), and a message
// the platform could not handle is not acknowledged, so the device resends
// it. For telemetry the hook does not wait for the commit: it tells mochi
// not to acknowledge, and the broker writes the PUBACK itself once the
// group commit is done (async.go), so a connection's next messages are read
// and grouped meanwhile.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Authenticator checks device credentials.
type Authenticator interface {
	// AuthenticateDevice returns nil if secret is the device's secret.
	AuthenticateDevice(ctx context.Context, deviceID, secret string) error
}

// Handler receives what devices do.
type Handler interface {
	// DeviceConnected is called when session becomes the live session of a
	// device: once its credentials are accepted, before its CONNACK and
	// before the device's previous session (if any) is taken over, so
	// that the previous session's DeviceDisconnected always comes after.
	// If the CONNACK cannot be written, DeviceDisconnected follows.
	DeviceConnected(deviceID string, session outpost.SessionID)
	// DeviceDisconnected is called when session ends.
	DeviceDisconnected(deviceID string, session outpost.SessionID, reason string)
	// HandleMessage processes a message a device published on its
	// up/{kind} topic. Return nil to acknowledge it. Return a
	// *protocol.Error to reject it for good: the device gets an error reply
	// (and, on MQTT 5, a failure reason code) and must not resend. Any
	// other error means "not handled, try again": the message is not
	// acknowledged.
	HandleMessage(ctx context.Context, deviceID, kind string, payload []byte) error
}

// Config configures the broker.
type Config struct {
	// Addr is the plain TCP listen address, e.g. ":1883" or
	// "127.0.0.1:0". Empty disables the plain listener.
	Addr string
	// TLSAddr and TLS enable a TLS listener.
	TLSAddr string
	TLS     *tls.Config
	// MaxSessionExpiry caps how long the broker keeps a disconnected
	// device's session (default 1 hour).
	MaxSessionExpiry time.Duration
	// KeepAlive bounds the keep-alive interval the platform dictates.
	KeepAlive KeepAlive
	// Limits bound the connections of each listener. Zero fields take the
	// defaults DefaultConnectTimeout, DefaultWriteTimeout,
	// DefaultWriteBacklog, DefaultMaxPending and DefaultMaxPendingPerAddr;
	// MaxConnections 0 means no bound. A negative field means no bound (or
	// no timeout).
	Limits Limits
	// MaxSubscriptions bounds the subscriptions one device may hold
	// (default DefaultMaxSubscriptions; negative: no bound).
	MaxSubscriptions int
	// AuthFailureDelay and AuthFailureDelayMax set how long a refused
	// login waits for its answer: AuthFailureDelay after the first recent
	// failure of its device id or source address, doubling with each
	// further one up to AuthFailureDelayMax (defaults 100ms and 50 times
	// AuthFailureDelay: 5s).
	AuthFailureDelay, AuthFailureDelayMax time.Duration
	Logger                                *slog.Logger
}

// Defaults of Config.Limits and Config.MaxSubscriptions.
const (
	DefaultConnectTimeout    = 10 * time.Second
	DefaultWriteTimeout      = 10 * time.Second
	DefaultWriteBacklog      = 4 << 20
	DefaultMaxPending        = 10_000
	DefaultMaxPendingPerAddr = 2_000
	DefaultMaxSubscriptions  = 32
)

// Broker is the embedded MQTT broker.
type Broker struct {
	srv      *mqtt.Server
	log      *slog.Logger
	h        Handler
	lns      []*Listener
	closing  atomic.Bool
	once     sync.Once
	stats    Stats
	acks     acker
	sess     sessions
	throttle *authThrottle
	maxSubs  int
	stopc    chan struct{} // closed by Close: ends waits for logins
	// downClient publishes the platform's messages to devices; windows
	// holds each device connection's send window (window.go); dh is the
	// down queue (SetDeliveryHandler).
	downClient *mqtt.Client
	windows    sync.Map // *mqtt.Client → *sendWindow
	dh         atomic.Pointer[DeliveryHandler]
}

// Stats are broker counters.
type Stats struct {
	AuthFailures   atomic.Int64
	ACLDenied      atomic.Int64
	Rejected       atomic.Int64 // messages rejected for good
	Retried        atomic.Int64 // messages not acknowledged (transient error)
	Overloaded     atomic.Int64 // of those, refused because a queue was full
	MessagesRouted atomic.Int64
	// Sessions counts sessions established (authenticated connections).
	Sessions atomic.Int64

	// AcceptErrors counts failed accepts (EMFILE and the like); the
	// listener backs off and goes on accepting.
	AcceptErrors atomic.Int64
	// Connections closed at once because a bound of Limits was reached.
	RefusedMaxConnections, RefusedPending, RefusedPendingPerAddr atomic.Int64
	// ConnectTimeouts counts connections closed for not sending their
	// CONNECT within the connect timeout.
	ConnectTimeouts atomic.Int64
	// WriteStalls counts connections closed because a write to the device
	// made no progress for the write timeout.
	WriteStalls atomic.Int64
	// SubscriptionsRefused counts filters refused because the device
	// held MaxSubscriptions already.
	SubscriptionsRefused atomic.Int64
	// Oversize counts MQTT 5 connections ended for a packet over
	// MaxPacketSize.
	Oversize atomic.Int64
}

// New creates the broker and binds its listeners, so that a port in use is
// reported here, before anything starts. Call Start to accept connections.
func New(cfg Config, auth Authenticator, h Handler) (*Broker, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxSessionExpiry <= 0 {
		cfg.MaxSessionExpiry = time.Hour
	}
	cfg.Limits.fill()
	switch {
	case cfg.MaxSubscriptions == 0:
		cfg.MaxSubscriptions = DefaultMaxSubscriptions
	case cfg.MaxSubscriptions < 0:
		cfg.MaxSubscriptions = 0
	}
	srv := mqtt.New(MochiOptions(cfg))
	if err := TuneMochi(srv); err != nil {
		return nil, err
	}
	b := &Broker{srv: srv, log: cfg.Logger, h: h, maxSubs: cfg.MaxSubscriptions, stopc: make(chan struct{}),
		throttle: newAuthThrottle(cfg.AuthFailureDelay, cfg.AuthFailureDelayMax, cfg.Logger)}
	b.downClient = srv.NewClient(nil, "local", "outpost-down", true)
	// The session hook goes first of the hooks that see clients: its
	// OnDisconnect must run before any other hook's (sessions.go).
	if err := srv.AddHook(&sessionHook{b: b}, nil); err != nil {
		return nil, err
	}
	// Before the presence hook: a device's send window exists before the
	// device is reported online, so nothing is sent around it.
	if err := srv.AddHook(&downHook{b: b}, nil); err != nil {
		return nil, err
	}
	if err := srv.AddHook(&authHook{auth: auth, b: b}, nil); err != nil {
		return nil, err
	}
	cfg.KeepAlive.fill()
	if err := srv.AddHook(&keepaliveHook{k: cfg.KeepAlive}, nil); err != nil {
		return nil, err
	}
	if err := srv.AddHook(&presenceHook{b: b}, nil); err != nil {
		return nil, err
	}
	if err := srv.AddHook(&routeHook{b: b}, nil); err != nil {
		return nil, err
	}
	bind := func(id, addr string, tc *tls.Config) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		nl := NewListener(id, l, tc, cfg.Logger)
		nl.lim, nl.stats, nl.ended = cfg.Limits, &b.stats, b.connEnded
		nl.closeClients = func() { b.disconnectAll(id) }
		b.lns = append(b.lns, nl)
		return srv.AddListener(serveTracker{nl}) // see ready.go
	}
	if cfg.Addr != "" {
		if err := bind("mqtt", cfg.Addr, nil); err != nil {
			b.closeListeners()
			return nil, fmt.Errorf("mqtt listener %s: %w", cfg.Addr, err)
		}
	}
	if cfg.TLSAddr != "" {
		if cfg.TLS == nil {
			b.closeListeners()
			return nil, errors.New("mqtt tls listener: no certificate configured")
		}
		if err := bind("mqtts", cfg.TLSAddr, cfg.TLS); err != nil {
			b.closeListeners()
			return nil, fmt.Errorf("mqtt tls listener %s: %w", cfg.TLSAddr, err)
		}
	}
	return b, nil
}

// clientWritesPending bounds the messages waiting for a client's write
// goroutine in mochi. mochi allocates the whole queue with every client
// (8192 pointers, 64 KiB, by default): at 10,000 idle devices that was 640
// MiB of heap, most of it never touched, which also put the collector's
// goal out of reach so that the garbage of a connect storm stayed
// resident. A message that finds the queue full is dropped by mochi and
// counted (Broker.Dropped, outpost_mqtt_messages_dropped_total): what the
// platform sends one device at once must stay well under this bound (the
// down queue's send window).
const clientWritesPending = 256

// MochiOptions returns the options the broker gives mochi for cfg (whose
// zero fields take their defaults). The connections benchmark starts mochi
// alone with them, to tell the cost of the platform from the broker's.
func MochiOptions(cfg Config) *mqtt.Options {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxSessionExpiry <= 0 {
		cfg.MaxSessionExpiry = time.Hour
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumSessionExpiryInterval = uint32(cfg.MaxSessionExpiry / time.Second)
	// mochi reads packets up to readLimit; MaxPacketSize is what devices
	// are told, and what the down hook enforces (window.go, delivery.go).
	caps.MaximumPacketSize = readLimit
	caps.MaximumInflight = 4096
	caps.ReceiveMaximum = receiveMaximum
	caps.MaximumMessageExpiryInterval = 24 * 3600
	caps.MaximumClientWritesPending = clientWritesPending
	return &mqtt.Options{
		InlineClient: true,
		Capabilities: caps,
		// mochi reports routine events (hooks added, stopped) at info
		// level, and puts whole packets into its records (log.go).
		Logger: slog.New(mochiLog{cfg.Logger.Handler()}),
		// Devices may not subscribe to $SYS (ACL): mochi's default of
		// publishing it every second only costs idle CPU.
		SysTopicResendInterval: 3600,
		// Every connection holds its read buffer for life. 512 bytes hold
		// an idle device's traffic (pings, acks, small telemetry) and
		// several small packets per read; a larger packet's body is read
		// straight into its own buffer, past this one (bufio). mochi's
		// default is 2 KiB (docs/benchmarks.md, "Connections").
		ClientNetReadBufferSize: clientReadBuffer,
		// An idle device only pings: its PINGREQ is answered in the read
		// loop's small frames, so the connection's stack stays at 4 KiB
		// (no platform hook looks at pings).
		QuietPing: true,
		// Sessions are capped at an hour and in-flight messages at a day:
		// finding them expired up to 30 s late costs nothing, a sweep of
		// every client each second did (sweepInterval).
		ExpirySweepInterval: sweepInterval,
	}
}

// clientReadBuffer is the per-connection read buffer (MochiOptions).
const clientReadBuffer = 512

// Start begins accepting connections.
func (b *Broker) Start() error {
	return b.srv.Serve()
}

// Addr returns the bound address of the plain listener, nil if none.
func (b *Broker) Addr() net.Addr { return b.addr("mqtt") }

// TLSAddr returns the bound address of the TLS listener, nil if none.
func (b *Broker) TLSAddr() net.Addr { return b.addr("mqtts") }

func (b *Broker) addr(id string) net.Addr {
	for _, l := range b.lns {
		if l.id == id {
			return l.l.Addr()
		}
	}
	return nil
}

// Stats returns the broker's counters.
func (b *Broker) Stats() *Stats { return &b.stats }

// Dropped returns how many messages to devices mochi dropped because the
// device's write queue (clientWritesPending) or in-flight window was full.
func (b *Broker) Dropped() int64 {
	return atomic.LoadInt64(&b.srv.Info.MessagesDropped) + atomic.LoadInt64(&b.srv.Info.InflightDropped)
}

// Clients returns the number of connected clients.
func (b *Broker) Clients() int64 { return atomic.LoadInt64(&b.srv.Info.ClientsConnected) }

// DisconnectDevice revokes the credentials a device's connections logged
// in with: it ends every connection of the device that has authenticated,
// and a login that checked its credentials before this call but has not
// completed is refused (sessions.go). Call it after the device's new
// secret is stored, or after the device is deleted. MQTT 5 devices get a
// DISCONNECT with reason 0x87 (not authorized) if their connection takes
// it at once; nothing waits for a device that does not read.
func (b *Broker) DisconnectDevice(deviceID string) {
	conns := b.sess.revoke(deviceID)
	for _, c := range conns {
		c.revoked.Store(true)
		c.end()
	}
	if cl, ok := b.srv.Clients.Get(deviceID); ok && !cl.Net.Inline && !cl.Closed() && slices.Contains(conns, connOf(cl)) {
		_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
	}
	for _, c := range conns {
		c.Close()
	}
}

// Connections returns the open connections of every listener and, of
// those, the ones that have not authenticated yet.
func (b *Broker) Connections() (open, pending int) {
	for _, l := range b.lns {
		o, p := l.Connections()
		open += o
		pending += p
	}
	return open, pending
}

// Close stops the listeners, disconnects every client and waits until no
// hook is running any more, so the stores behind the handler can be closed
// next.
func (b *Broker) Close() error {
	var err error
	b.once.Do(func() {
		b.closing.Store(true)
		close(b.stopc)
		b.closeListeners()
		err = b.srv.Close()
		for _, l := range b.lns {
			l.Shutdown()
		}
		b.acks.close()
		b.throttle.flush()
	})
	return err
}

// disconnectAll disconnects the clients of listener id at shutdown, as
// mochi's closeListenerClients does but reading its client map under one
// read lock (see Listener.Close).
func (b *Broker) disconnectAll(id string) { disconnectAll(b.srv, id) }

func disconnectAll(srv *mqtt.Server, id string) {
	for _, cl := range srv.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Net.Inline && !cl.Closed() {
			_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

func (b *Broker) closeListeners() {
	for _, l := range b.lns {
		l.stop()
	}
}
