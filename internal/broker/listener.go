package broker

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/listeners"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Limits bound what a listener accepts. A zero field means no bound.
type Limits struct {
	// MaxConnections bounds the open connections of the listener. One
	// more is accepted and closed at once, so the kernel's queue does
	// not fill up.
	MaxConnections int
	// MaxPending bounds the connections that have not authenticated yet;
	// MaxPendingPerAddr bounds them per source address (IPv4 address or
	// IPv6 /64). A connection over either bound is closed at once.
	MaxPending, MaxPendingPerAddr int
	// ConnectTimeout is how long a new connection has to send its CONNECT
	// (TLS handshake included).
	ConnectTimeout time.Duration
	// WriteTimeout is how long a write to a device may make no progress
	// before the connection is closed.
	WriteTimeout time.Duration
	// WriteBacklog bounds the bytes waiting to be written to one device
	// whose socket is full; a device that would exceed it is disconnected.
	WriteBacklog int
}

// fill applies the defaults of Config.Limits.
func (l *Limits) fill() {
	def := func(v *int, d int) {
		switch {
		case *v == 0:
			*v = d
		case *v < 0:
			*v = 0
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		switch {
		case *v == 0:
			*v = d
		case *v < 0:
			*v = 0
		}
	}
	def(&l.MaxPending, DefaultMaxPending)
	def(&l.MaxPendingPerAddr, DefaultMaxPendingPerAddr)
	l.MaxConnections = max(l.MaxConnections, 0)
	defd(&l.ConnectTimeout, DefaultConnectTimeout)
	defd(&l.WriteTimeout, DefaultWriteTimeout)
	def(&l.WriteBacklog, DefaultWriteBacklog)
}

// Listener serves a mochi server from a net.Listener bound by the caller,
// which gives port 0 and a clear error for a port in use before anything
// starts. It tracks every connection so that Shutdown can wait until mochi
// is done with each (mochi's own TCP listener races with connections being
// established at close: mochi issues #488 and #541), bounds connections
// (Limits), gives every write a deadline, and keeps accepting after
// transient accept errors such as EMFILE.
type Listener struct {
	id    string
	l     net.Listener
	tls   *tls.Config
	log   *slog.Logger
	lim   Limits
	stats *Stats
	// ended is called once a connection is over (mochi is done with it).
	ended func(*conn, error)
	// closeClients, if set, disconnects the listener's clients at Close
	// instead of mochi's own function (see Close).
	closeClients func()
	done         atomic.Bool
	// exited: Serve returned without Stop (see ready.go).
	exited atomic.Bool
	stopc  chan struct{}

	mu        sync.Mutex
	conns     map[*conn]struct{}
	pending   int
	pendingBy map[string]int
	wg        sync.WaitGroup // one per connection being served
}

var _ listeners.Listener = (*Listener)(nil)

// NewListener wraps l for mochi's Server.AddListener. With tc set, every
// connection is served over TLS. log may be nil. It applies no Limits.
func NewListener(id string, l net.Listener, tc *tls.Config, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Listener{id: id, l: l, tls: tc, log: log, stats: new(Stats), stopc: make(chan struct{}),
		conns: map[*conn]struct{}{}, pendingBy: map[string]int{}}
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

// Stats returns the counters the listener adds to (AcceptErrors, the
// Refused and timeout counters): the broker's, for a listener of a Broker.
func (n *Listener) Stats() *Stats { return n.stats }

// Connections returns the number of open connections and of those not
// authenticated yet.
func (n *Listener) Connections() (open, pending int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns), n.pending
}

// Serve implements listeners.Listener: it accepts connections and hands
// each to mochi until Stop or Close. An accept error other than the
// listener being closed (EMFILE, ENFILE, ENOBUFS, ECONNABORTED, …) is
// counted and retried with a back-off of up to a second: it never ends
// the listener.
func (n *Listener) Serve(establish listeners.EstablishFn) {
	var delay time.Duration
	for {
		raw, err := n.l.Accept()
		if err != nil {
			if n.done.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			n.stats.AcceptErrors.Add(1)
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else {
				delay = min(2*delay, time.Second)
			}
			n.log.Warn("mqtt accept failed; retrying", "listener", n.id, "error", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-n.stopc:
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		c := n.admit(raw)
		if c == nil {
			continue
		}
		go n.serveConn(c, establish)
	}
}

// serveConn serves one connection for its life. Its frame stays on the
// connection's goroutine while the device is idle, under the broker
// library's read loop, so it is kept small (what follows establish is in
// connEnded): an idle connection's stack then shrinks to 4 KiB (issue 16).
func (n *Listener) serveConn(c *conn, establish listeners.EstablishFn) {
	n.connEnded(c, establish(n.id, c))
}

// connEnded logs and forgets a connection whose session ended with err.
func (n *Listener) connEnded(c *conn, err error) {
	defer n.wg.Done()
	if err != nil && !n.done.Load() {
		if !c.authed.Load() && isTimeout(err) {
			n.stats.ConnectTimeouts.Add(1)
		}
		n.log.Debug("mqtt connection ended", "listener", n.id, "remote", c.RemoteAddr().String(), "error", err)
	}
	c.Close()
	n.mu.Lock()
	delete(n.conns, c)
	n.unpend(c)
	n.mu.Unlock()
	if n.ended != nil {
		n.ended(c, err)
	}
}

// admit registers a new connection, or closes it when a bound is reached.
func (n *Listener) admit(raw net.Conn) *conn {
	key := addrKey(raw.RemoteAddr())
	n.mu.Lock()
	var refused *atomic.Int64
	switch {
	case n.done.Load():
		n.mu.Unlock()
		raw.Close()
		return nil
	case n.lim.MaxConnections > 0 && len(n.conns) >= n.lim.MaxConnections:
		refused = &n.stats.RefusedMaxConnections
	case n.lim.MaxPending > 0 && n.pending >= n.lim.MaxPending:
		refused = &n.stats.RefusedPending
	case n.lim.MaxPendingPerAddr > 0 && n.pendingBy[key] >= n.lim.MaxPendingPerAddr:
		refused = &n.stats.RefusedPendingPerAddr
	}
	if refused != nil {
		n.mu.Unlock()
		refused.Add(1)
		raw.Close()
		return nil
	}
	c := &conn{ln: n, key: key, session: outpost.SessionID(sessionSeq.Add(1))}
	c.g = &guard{Conn: raw, timeout: n.lim.WriteTimeout, backlogMax: n.lim.WriteBacklog, onStall: func() { n.stats.WriteStalls.Add(1) }}
	c.Conn = c.g
	if n.tls != nil {
		c.Conn = tls.Server(c.g, n.tls)
	}
	if n.lim.ConnectTimeout > 0 {
		_ = raw.SetReadDeadline(time.Now().Add(n.lim.ConnectTimeout))
	}
	n.conns[c] = struct{}{}
	n.pending++
	n.pendingBy[key]++
	n.wg.Add(1)
	n.mu.Unlock()
	return c
}

// authenticated moves c out of the pending connections.
func (n *Listener) authenticated(c *conn) {
	n.mu.Lock()
	n.unpend(c)
	n.mu.Unlock()
}

// unpend takes c out of the pending count, once; n.mu is held.
func (n *Listener) unpend(c *conn) {
	if c.authed.Swap(true) {
		return
	}
	n.pending--
	if k := n.pendingBy[c.key] - 1; k > 0 {
		n.pendingBy[c.key] = k
	} else {
		delete(n.pendingBy, c.key)
	}
}

// addrKey is the source address a connection counts against: the IP
// address, or for IPv6 its /64 network (one host usually holds a whole
// /64).
func addrKey(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		host, _, err := net.SplitHostPort(a.String())
		if err != nil {
			return a.String()
		}
		return host
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return ip4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

func (n *Listener) stop() {
	if n.done.CompareAndSwap(false, true) {
		close(n.stopc)
		n.l.Close()
	}
}

// endAll gives every open connection at most endGrace more for writing,
// so that nothing waits long behind a device that stopped reading.
func (n *Listener) endAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.conns {
		c.end()
	}
}

// closeConns closes every connection still open (including ones still
// authenticating, which the broker does not know yet) and waits until the
// broker has finished with each.
func (n *Listener) closeConns() {
	n.mu.Lock()
	for c := range n.conns {
		c.end()
		c.Close()
	}
	n.mu.Unlock()
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	t := time.NewTimer(shutdownWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
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

// AddTo adds the listener to srv (a broker of its own, such as a
// benchmark's raw mochi). Use it rather than srv.AddListener: the listener
// then disconnects srv's clients at Close without mochi's nested lock of
// its client map (see Close).
func (n *Listener) AddTo(srv *mqtt.Server) error {
	n.closeClients = func() { disconnectAll(srv, n.id) }
	return srv.AddListener(n)
}

// Close implements listeners.Listener: it stops accepting, limits every
// connection's remaining writes to endGrace and closes the clients.
//
// mochi's own closeClients (v2.7.9, Clients.GetByListener) takes the read
// lock of its client map twice, nested; a client ending at that moment
// (Clients.Delete, waiting for the write lock) blocks the second read lock
// and shutdown hangs for ever. A listener of a Broker uses the broker's
// function, and so does one added with AddTo: both read the map once.
func (n *Listener) Close(closeClients listeners.CloseFn) {
	n.stop()
	n.endAll()
	if n.closeClients != nil {
		n.closeClients()
		return
	}
	closeClients(n.id)
}
