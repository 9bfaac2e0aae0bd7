package broker

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// endGrace is how long a session the platform ends (takeover, revoked
// credentials, shutdown) may still spend writing: enough for a DISCONNECT
// to a healthy device, and a bound on how long anything waits behind a
// device that stopped reading.
const endGrace = 250 * time.Millisecond

// errWriteStalled is what writes to a device fail with once it has taken
// nothing for the write timeout, or has let too much pile up.
var errWriteStalled = errors.New("write stalled: the device is not reading")

// quickWrite is how long a write waits for room in a full socket before
// the rest is left to a flusher goroutine.
const quickWrite = 10 * time.Millisecond

// guard is the TCP side of a device connection. Nothing that writes to a
// device waits for it: the broker library writes under the client's lock,
// which publishing to the device, takeovers and shutdown all need. A write
// that finds the socket full waits at most quickWrite, then leaves the rest
// to a flusher goroutine and returns; later writes queue behind it, up to
// backlogMax bytes. A device is disconnected when its backlog would exceed
// backlogMax, or when the flusher makes no progress for the write timeout.
// A slow device that keeps reading is not cut off.
//
// The broker library sets read and write deadlines together; the guard
// keeps its own write deadlines and lets only read deadlines through.
type guard struct {
	net.Conn
	timeout    time.Duration // 0: no write timeout
	backlogMax int           // 0: no bound
	onStall    func()        // called once when the device is cut off
	stalled    atomic.Bool

	wmu      sync.Mutex // serialises writes made directly to the socket
	mu       sync.Mutex // guards the fields below
	queue    []byte     // accepted, waiting for the flusher
	flushing bool       // a flusher owns the socket's write side
	flushed  chan struct{}
	err      error     // sticky write error
	until    time.Time // non-zero: no write may go on past this instant
}

func (g *guard) Write(p []byte) (int, error) {
	if n, err, ok := g.enqueue(p); ok {
		return n, err
	}
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if n, err, ok := g.enqueue(p); ok { // a flusher may have started meanwhile
		return n, err
	}
	n, err := g.attempt(p, time.Now().Add(quickWrite))
	if err == nil {
		return n, nil
	}
	if !isTimeout(err) || g.cut() {
		return n, g.fail(err)
	}
	// The socket is full: the rest goes to a flusher.
	g.mu.Lock()
	g.queue = append(g.queue[:0], p[n:]...)
	g.flushing = true
	g.flushed = make(chan struct{})
	g.mu.Unlock()
	go g.flush()
	return len(p), nil
}

// enqueue queues p behind a running flusher; ok is false when there is
// none and p must be written directly.
func (g *guard) enqueue(p []byte) (int, error, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return 0, g.err, true
	}
	if !g.flushing {
		return 0, nil, false
	}
	if g.backlogMax > 0 && len(g.queue)+len(p) > g.backlogMax {
		g.stallLocked()
		return 0, g.err, true
	}
	g.queue = append(g.queue, p...)
	return len(p), nil, true
}

// attempt writes p with the write deadline dl (shortened to until).
func (g *guard) attempt(p []byte, dl time.Time) (int, error) {
	g.mu.Lock()
	if !g.until.IsZero() && g.until.Before(dl) {
		dl = g.until
	}
	_ = g.Conn.SetWriteDeadline(dl)
	g.mu.Unlock()
	n, err := g.Conn.Write(p)
	if err == nil {
		// A deadline left set fires when it passes, waking the process
		// for nothing: once per PINGRESP of every idle device (issue 16).
		_ = g.Conn.SetWriteDeadline(time.Time{})
	}
	return n, err
}

// flush writes the backlog until it is empty, the device stops taking
// bytes for the write timeout, or the connection ends.
func (g *guard) flush() {
	defer close(g.flushed)
	progress := time.Now()
	for {
		g.mu.Lock()
		buf := g.queue
		g.queue = nil
		if len(buf) == 0 || g.err != nil {
			g.flushing = false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		for len(buf) > 0 {
			dl := time.Time{}
			if g.timeout > 0 {
				dl = progress.Add(g.timeout)
			}
			n, err := g.attempt(buf, dl)
			buf = buf[n:]
			if n > 0 {
				progress = time.Now()
			}
			if err == nil {
				continue
			}
			if isTimeout(err) && !g.cut() && (n > 0 || g.timeout <= 0) {
				continue // slow but reading
			}
			if isTimeout(err) && !g.cut() {
				err = errWriteStalled
			}
			g.fail(err)
			break
		}
	}
}

// fail makes err the connection's sticky write error and closes it; a
// write stall also counts as one.
func (g *guard) fail(err error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if errors.Is(err, errWriteStalled) {
		g.stallLocked()
	} else if g.err == nil {
		g.err = err
		g.Conn.Close()
	}
	return g.err
}

// stallLocked cuts the device off for not reading; g.mu is held.
func (g *guard) stallLocked() {
	if g.err != nil {
		return
	}
	g.err = errWriteStalled
	g.stalled.Store(true)
	g.Conn.Close()
	if g.onStall != nil {
		g.onStall()
	}
}

// cut reports whether the connection is past its end: no more writing.
func (g *guard) cut() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.until.IsZero() && !time.Now().Before(g.until)
}

// limit makes every write, including one in progress, end by t at the
// latest.
func (g *guard) limit(t time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.until.IsZero() || t.Before(g.until) {
		g.until = t
	}
	_ = g.Conn.SetWriteDeadline(g.until)
}

// SetDeadline sets only the read deadline (see guard).
func (g *guard) SetDeadline(t time.Time) error { return g.Conn.SetReadDeadline(t) }

// SetWriteDeadline can only shorten what writes may take (TLS uses it to
// bound its close_notify alert); it never lifts the guard's own deadline.
func (g *guard) SetWriteDeadline(t time.Time) error {
	if !t.IsZero() {
		g.limit(t)
	}
	return nil
}

// Close closes the connection and waits for its flusher, if any.
func (g *guard) Close() error {
	err := g.Conn.Close()
	g.mu.Lock()
	ch := g.flushed
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
	return err
}

// conn is a device connection as the broker's listener hands it to mochi:
// TLS (if any) over a guard. It carries what the broker's hooks need to
// know about the connection: whether it has authenticated, which device
// it belongs to, and whether it holds that device's session lock.
type conn struct {
	net.Conn        // tls.Conn over g, or g itself
	g        *guard // the TCP side
	ln       *Listener
	key      string // source address, for the per-address bound

	authed atomic.Bool // false while it counts as pending

	// Set by the auth hook on the connection's own goroutine before
	// mochi registers the session; read by the hooks and the listener on
	// that goroutine after.
	deviceID string
	client   *mqtt.Client
	// session is the connection's number, given when it was accepted.
	session  outpost.SessionID
	lockHeld bool // holds the device's session lock
	// connected: DeviceConnected was reported; ended: DeviceDisconnected
	// was (both set on the connection's goroutine).
	connected, ended bool
	revoked          atomic.Bool // its credentials were revoked

	// cork state (see cork).
	cmu    sync.Mutex
	corked bool
	cbuf   []byte
}

// SetDeadline sets the read deadline only: writes have their own.
func (c *conn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

func (c *conn) Write(p []byte) (int, error) {
	c.cmu.Lock()
	if c.corked {
		c.cbuf = append(c.cbuf, p...)
		c.cmu.Unlock()
		return len(p), nil
	}
	c.cmu.Unlock()
	return c.Conn.Write(p)
}

// cork makes writes collect in a buffer until uncork, so that several
// packets written through mochi (each under the client's lock, in order)
// leave in one system call.
func (c *conn) cork() {
	c.cmu.Lock()
	c.corked = true
	c.cmu.Unlock()
}

// uncork writes what was collected since cork. Call it with the mochi
// client's lock held, so that no later write can overtake the collected
// bytes.
func (c *conn) uncork() error {
	c.cmu.Lock()
	buf := c.cbuf
	c.cbuf, c.corked = nil, false
	c.cmu.Unlock()
	if len(buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(buf)
	c.cmu.Lock()
	if c.cbuf == nil && cap(buf) <= 64<<10 {
		c.cbuf = buf[:0]
	}
	c.cmu.Unlock()
	return err
}

// end gives the connection at most endGrace more for writing: whatever
// write is in progress or comes later fails by then.
func (c *conn) end() { c.g.limit(time.Now().Add(endGrace)) }

// connOf returns the broker's connection of a mochi client, nil for the
// inline client or a connection from another kind of listener.
// sessionSeq numbers the connections of every listener of the process.
var sessionSeq atomic.Uint64

// sessionOf returns the session id of a client's connection; 0 for a
// client that is not on one of the broker's listeners.
func sessionOf(cl *mqtt.Client) outpost.SessionID {
	if c := connOf(cl); c != nil {
		return c.session
	}
	return 0
}

func connOf(cl *mqtt.Client) *conn {
	if cl == nil || cl.Net.Conn == nil {
		return nil
	}
	c, _ := cl.Net.Conn.(*conn)
	return c
}
