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
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Authenticator checks device credentials.
type Authenticator interface {
	// AuthenticateDevice returns nil if secret is the device's secret.
	AuthenticateDevice(ctx context.Context, deviceID, secret string) error
}

// Handler receives what devices do.
type Handler interface {
	// DeviceConnected is called when conn becomes the live session of a
	// device.
	DeviceConnected(deviceID string, conn any)
	// DeviceDisconnected is called when conn ends.
	DeviceDisconnected(deviceID string, conn any, reason string)
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
	Logger    *slog.Logger
}

// Broker is the embedded MQTT broker.
type Broker struct {
	srv     *mqtt.Server
	log     *slog.Logger
	h       Handler
	lns     []*Listener
	closing atomic.Bool
	once    sync.Once
	stats   Stats
	acks    acker
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
	Oversize       atomic.Int64 // MQTT 5 connections ended for a packet over MaxPacketSize
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
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumSessionExpiryInterval = uint32(cfg.MaxSessionExpiry / time.Second)
	// mochi reads packets up to readLimit; MaxPacketSize is what devices
	// are told, and what the down hook enforces (window.go, delivery.go).
	caps.MaximumPacketSize = readLimit
	caps.MaximumInflight = 4096
	caps.ReceiveMaximum = receiveMaximum
	caps.MaximumMessageExpiryInterval = 24 * 3600
	srv := mqtt.New(&mqtt.Options{
		InlineClient: true,
		Capabilities: caps,
		// mochi reports routine events (hooks added, stopped) at info level.
		Logger:                 slog.New(minLevel{cfg.Logger.Handler(), slog.LevelWarn}),
		SysTopicResendInterval: 0,
	})
	b := &Broker{srv: srv, log: cfg.Logger, h: h}
	b.downClient = srv.NewClient(nil, "local", "outpost-down", true)
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
		b.lns = append(b.lns, nl)
		return srv.AddListener(nl)
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

// Clients returns the number of connected clients.
func (b *Broker) Clients() int64 { return atomic.LoadInt64(&b.srv.Info.ClientsConnected) }

// DisconnectDevice closes a device's live session, if any (used when a
// device is deleted or its secret rotated).
func (b *Broker) DisconnectDevice(deviceID string) {
	if cl, ok := b.srv.Clients.Get(deviceID); ok && !cl.Net.Inline && !cl.Closed() {
		_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
	}
}

// Close stops the listeners, disconnects every client and waits until no
// hook is running any more, so the stores behind the handler can be closed
// next.
func (b *Broker) Close() error {
	var err error
	b.once.Do(func() {
		b.closing.Store(true)
		b.closeListeners()
		err = b.srv.Close()
		for _, l := range b.lns {
			l.Shutdown()
		}
		b.acks.close()
	})
	return err
}

func (b *Broker) closeListeners() {
	for _, l := range b.lns {
		l.stop()
	}
}

// Listener serves a mochi server from a net.Listener bound by the caller,
// which gives port 0 and a clear error for a port in use before anything
// starts. It tracks every connection so that Shutdown can wait until mochi
// is done with each (mochi's own TCP listener races with connections being
// established at close: mochi issues #488 and #541).
type Listener struct {
	id   string
	l    net.Listener
	tls  *tls.Config
	log  *slog.Logger
	done atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup // one per connection being served
}

var _ listeners.Listener = (*Listener)(nil)

// NewListener wraps l for mochi's Server.AddListener. With tc set, every
// connection is served over TLS. log may be nil.
func NewListener(id string, l net.Listener, tc *tls.Config, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Listener{id: id, l: l, tls: tc, log: log}
}

// Shutdown stops accepting, then closes every connection and waits until
// mochi has finished with each. Call it around Server.Close: Stop before,
// Shutdown after.
func (n *Listener) Shutdown() {
	n.stop()
	n.closeConns()
}

// Stop stops accepting new connections.
func (n *Listener) Stop() { n.stop() }

// Init implements mochi's listeners.Listener; there is nothing to set up.
func (n *Listener) Init(*slog.Logger) error { return nil }

// ID implements listeners.Listener: the listener's name in mochi.
func (n *Listener) ID() string { return n.id }

// Address implements listeners.Listener: the bound address.
func (n *Listener) Address() string { return n.l.Addr().String() }

// Protocol implements listeners.Listener: "tls" or "tcp".
func (n *Listener) Protocol() string {
	if n.tls != nil {
		return "tls"
	}
	return "tcp"
}

// Serve implements listeners.Listener: it accepts connections and hands
// each to mochi until Stop or Close.
func (n *Listener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := n.l.Accept()
		if err != nil {
			if n.done.Load() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			n.log.Error("mqtt accept", "listener", n.id, "error", err)
			return
		}
		if n.tls != nil {
			conn = tls.Server(conn, n.tls)
		}
		n.mu.Lock()
		if n.done.Load() {
			n.mu.Unlock()
			conn.Close()
			return
		}
		if n.conns == nil {
			n.conns = map[net.Conn]struct{}{}
		}
		n.conns[conn] = struct{}{}
		n.wg.Add(1)
		n.mu.Unlock()
		go func() {
			defer n.wg.Done()
			if err := establish(n.id, conn); err != nil && !n.done.Load() {
				n.log.Debug("mqtt connection ended", "listener", n.id, "remote", conn.RemoteAddr().String(), "error", err)
			}
			n.mu.Lock()
			delete(n.conns, conn)
			n.mu.Unlock()
			conn.Close()
		}()
	}
}

func (n *Listener) stop() {
	if n.done.CompareAndSwap(false, true) {
		n.l.Close()
	}
}

// closeConns closes every connection still open (including ones still
// authenticating, which the broker does not know yet) and waits until the
// broker has finished with each.
func (n *Listener) closeConns() {
	n.mu.Lock()
	for c := range n.conns {
		c.Close()
	}
	n.mu.Unlock()
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownWait):
		// A connection stuck inside mochi must not hang the platform's
		// shutdown forever; say so loudly instead.
		n.mu.Lock()
		left := len(n.conns)
		n.mu.Unlock()
		n.log.Error("mqtt shutdown: connections still busy inside the broker; giving up waiting", "listener", n.id, "connections", left, "waited", shutdownWait)
	}
}

// shutdownWait bounds how long Shutdown waits for connections to finish.
const shutdownWait = 15 * time.Second

// Close implements listeners.Listener: it stops accepting, closes the
// clients and waits (at most shutdownWait) for their connections to end.
func (n *Listener) Close(closeClients listeners.CloseFn) {
	n.stop()
	closeClients(n.id)
}

// minLevel drops records below a level.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(a), h.min}
}
func (h minLevel) WithGroup(g string) slog.Handler { return minLevel{h.Handler.WithGroup(g), h.min} }
