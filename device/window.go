package device

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// This file keeps several telemetry messages in flight while putting them
// on the wire strictly in order. paho's Publish blocks until the PUBACK, so
// each message in flight has its own goroutine; to keep their order on the
// wire the window starts message k+1 only once message k has been written
// to the connection, which the connection wrapper below reports.

// errRetryLater: the platform did not take a message for now (MQTT 5
// reason code 0x97 "quota exceeded", or another transient failure code);
// the same message is sent again after a pause.
var errRetryLater = errors.New("device: platform busy, retry later")

// wire counts the PUBLISH packets (first transmissions, not
// retransmissions) the device writes on its own up/ topics.
type wire struct {
	prefix string // "outpost/v1/{id}/up/"
	sent   atomic.Uint64
	notify chan struct{} // a token after each count, for the waiting window
}

func newWire(deviceID string) *wire {
	return &wire{prefix: protocol.Topic(deviceID, protocol.Up, ""), notify: make(chan struct{}, 1)}
}

// written inspects one complete packet as written and counts it if it is a
// first transmission of a QoS 1 PUBLISH on one of the device's up/ topics.
func (w *wire) written(pkt []byte) {
	// Fixed header 0x32: PUBLISH, QoS 1, DUP and RETAIN clear.
	if len(pkt) < 2 || pkt[0] != 0x32 {
		return
	}
	i := 1
	for i < len(pkt) && i < 5 && pkt[i]&0x80 != 0 { // remaining length
		i++
	}
	i++
	if len(pkt) < i+2 {
		return
	}
	n := int(pkt[i])<<8 | int(pkt[i+1])
	if n < len(w.prefix) || len(pkt) < i+2+len(w.prefix) || string(pkt[i+2:i+2+len(w.prefix)]) != w.prefix {
		return
	}
	w.sent.Add(1)
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// wireConn is the client's connection. paho writes every packet between
// Lock and Unlock (it treats a net.Conn that is a sync.Locker as needing
// that); the wrapper gathers the packet, writes it with one call and tells
// wire what it was.
type wireConn struct {
	net.Conn
	r      *bufio.Reader // paho reads a packet in several small reads
	w      *wire
	mu     sync.Mutex
	locked atomic.Bool
	buf    []byte
}

func (c *wireConn) Lock() {
	c.mu.Lock()
	c.locked.Store(true)
}

func (c *wireConn) Unlock() {
	c.locked.Store(false)
	if len(c.buf) > 0 {
		if _, err := c.Conn.Write(c.buf); err != nil {
			// paho has already been told the write succeeded; closing
			// the connection makes its reader see the failure, and
			// unacknowledged messages are resent after the reconnect.
			c.Conn.Close()
		} else {
			c.w.written(c.buf)
		}
		if cap(c.buf) > 64<<10 {
			c.buf = nil // do not hold on to the largest message ever sent
		} else {
			c.buf = c.buf[:0]
		}
	}
	c.mu.Unlock()
}

func (c *wireConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *wireConn) Write(p []byte) (int, error) {
	if c.locked.Load() {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// dial opens the connection to the platform (autopaho's AttemptConnection).
func (c *Client) dial(ctx context.Context, cfg autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opt.connectTimeout)
	defer cancel()
	var conn net.Conn
	var err error
	if u.Scheme == "mqtts" {
		d := tls.Dialer{Config: cfg.TlsCfg}
		conn, err = d.DialContext(ctx, "tcp", u.Host)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", u.Host)
	}
	if err != nil {
		return nil, err
	}
	return &wireConn{Conn: conn, r: bufio.NewReaderSize(conn, 16<<10), w: c.tele.wire}, nil
}

type sendResult struct {
	i   int
	err error
}

// window sends msgs in order, keeping at most max of them waiting for
// their acknowledgement, and calls done(i, err) for each message it sent as
// its outcome arrives (err nil: acknowledged; a *PublishError: refused for
// good; errRetryLater: not taken for now; anything else: not delivered,
// e.g. the connection dropped). After the first failure it sends nothing
// more. It returns once nothing is in flight.
//
// It knows nothing about where messages come from or go once answered, so
// the queue behind it can change (memory today, a durable outbox later).
func (c *Client) window(ctx context.Context, msgs []sealedMsg, max int, done func(i int, err error)) {
	w := c.tele.wire
	results := make(chan sendResult, max)
	inflight, stopped := 0, false
	receive := func(r sendResult) {
		inflight--
		if r.err != nil {
			stopped = true
		}
		done(r.i, r.err)
	}
	for next := 0; ; {
		if !stopped && next < len(msgs) && inflight < max {
			i, m := next, msgs[next]
			next++
			inflight++
			before := w.sent.Load()
			go func() {
				resp, err := c.cm.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(c.id, m.kind), QoS: 1, Payload: m.payload})
				results <- sendResult{i, publishOutcome(ctx, m, resp, err)}
			}()
			// Start the next message only once this one is on the wire
			// (or finished without getting there).
			for finished := false; !finished && w.sent.Load() == before; {
				select {
				case <-w.notify:
				case r := <-results:
					finished = r.i == i
					receive(r)
				}
			}
			continue
		}
		if inflight == 0 {
			return
		}
		receive(<-results)
	}
}

// publishOutcome classifies the answer to one telemetry message.
func publishOutcome(ctx context.Context, m sealedMsg, resp *paho.PublishResponse, err error) error {
	if err == nil {
		return nil
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		switch resp.ReasonCode {
		case 0x87, 0x90, 0x99, 0x83: // refused for good
			return &PublishError{Kind: m.kind, BatchID: m.id, Readings: m.readings, ReasonCode: resp.ReasonCode}
		}
		// Overloaded or failed to commit: the same batch is resent later
		// (the platform deduplicates by its id).
		return fmt.Errorf("%w (reason code 0x%02x)", errRetryLater, resp.ReasonCode)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("device: publish: %w", ctx.Err())
	}
	return fmt.Errorf("device: publish: %w", err)
}
