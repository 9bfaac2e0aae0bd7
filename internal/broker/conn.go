package broker

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// endGrace is how long a session the platform ends (takeover, revoked
// credentials, shutdown) may still spend writing: enough for a DISCONNECT
// to a healthy device, and a bound on how long anything waits behind a
// device that stopped reading.
const endGrace = 250 * time.Millisecond

// errWriteStalled is what writes to a device fail with once its socket has
// accepted nothing for the write timeout.
var errWriteStalled = errors.New("write stalled: the device is not reading")

// guard is the TCP side of a device connection. Every write has a
// deadline: a write that makes no progress for the write timeout fails and
// closes the connection, so a device that stops reading is disconnected,
// never waited for. A slow device that keeps reading is not cut off.
//
// The broker library sets read and write deadlines together; the guard
// keeps its own write deadlines and lets only read deadlines through.
type guard struct {
	net.Conn
	timeout time.Duration // 0: no write timeout
	onStall func()        // called once when a write stalls
	stalled atomic.Bool

	mu    sync.Mutex
	set   time.Time // when the current write deadline was set
	until time.Time // non-zero: no write may go on past this instant
	once  sync.Once
}

func (g *guard) Write(p []byte) (int, error) {
	total := 0
	for {
		g.arm()
		n, err := g.Conn.Write(p[total:])
		total += n
		if err == nil || !isTimeout(err) {
			return total, err
		}
		if n > 0 && !g.cut() {
			continue // slow but reading: keep going
		}
		g.once.Do(func() {
			g.stalled.Store(true)
			g.Conn.Close()
			if g.onStall != nil {
				g.onStall()
			}
		})
		return total, errWriteStalled
	}
}

// arm sets the write deadline for the next write. Resetting a deadline
// costs a little, so it is refreshed only when an eighth of the timeout
// has passed since it was last set.
func (g *guard) arm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.timeout <= 0 && g.until.IsZero() {
		return
	}
	now := time.Now()
	if g.until.IsZero() && now.Sub(g.set) < g.timeout/8 {
		return
	}
	var dl time.Time
	if g.timeout > 0 {
		dl = now.Add(g.timeout)
	}
	if !g.until.IsZero() && (dl.IsZero() || g.until.Before(dl)) {
		dl = g.until
	}
	g.set = now
	_ = g.Conn.SetWriteDeadline(dl)
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
func connOf(cl *mqtt.Client) *conn {
	if cl == nil || cl.Net.Conn == nil {
		return nil
	}
	c, _ := cl.Net.Conn.(*conn)
	return c
}
