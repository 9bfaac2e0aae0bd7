package device

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// This file keeps several outbox messages in flight while putting them on
// the wire strictly in outbox order. paho's Publish blocks until the
// PUBACK, so each message in flight has its own goroutine; to keep their
// order on the wire the window starts message k+1 only once message k has
// been written to the connection, which the connection wrapper below
// reports. Only message k itself counts: RPC answers, pull requests and
// device-model messages go up at the same time without moving the window.

// errRetryLater: the platform did not take a message for now (MQTT 5
// reason code 0x97 "quota exceeded", or another transient failure code);
// the same message is sent again after a pause.
var errRetryLater = errors.New("device: platform busy, retry later")

// wire tells the window when the message it waits for has been written.
type wire struct {
	mu      sync.Mutex
	topic   string
	payload []byte // nil: waiting for nothing
	hit     bool
	notify  chan struct{} // a token after the hit
}

func newWire() *wire { return &wire{notify: make(chan struct{}, 1)} }

// expect makes the next first transmission of a QoS 1 PUBLISH of payload
// on topic the one to report.
func (w *wire) expect(topic string, payload []byte) {
	w.mu.Lock()
	w.topic, w.payload, w.hit = topic, payload, false
	w.mu.Unlock()
}

// written reports whether the expected packet has been written.
func (w *wire) written() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.hit
}

// saw inspects one complete packet as written, and notes it if it is the
// expected one: a first transmission of a QoS 1 PUBLISH (DUP and RETAIN
// clear) on the expected topic whose payload is the expected payload (the
// payload ends the packet; batch and event ids make it unique).
func (w *wire) saw(pkt []byte) {
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
	if len(pkt) < i+2+n {
		return
	}
	topic := pkt[i+2 : i+2+n]
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.payload == nil || w.hit || string(topic) != w.topic || !bytes.HasSuffix(pkt[i+2+n:], w.payload) {
		return
	}
	w.hit = true
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
			c.w.saw(c.buf)
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

func newWireConn(conn net.Conn, w *wire) *wireConn {
	return &wireConn{Conn: conn, r: bufio.NewReaderSize(conn, 16<<10), w: w}
}

type sendResult struct {
	i   int
	err error
}

// window sends msgs in order on link l, keeping at most max of them
// waiting for their acknowledgement, and calls done(i, err) for each
// message it sent as its outcome arrives (err nil: acknowledged; a
// *PublishError: refused for good; errRetryLater: not taken for now;
// anything else: not delivered, e.g. the connection dropped, which also
// ends the publications in flight on it). After the first failure it sends
// nothing more. It returns once nothing is in flight.
func (c *Client) window(ctx context.Context, l *link, msgs []sealedMsg, max int, done func(i int, err error)) {
	w := c.tele.wire
	ctx, cancel := onLink(ctx, l)
	defer cancel()
	defer w.expect("", nil)
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
			topic := protocol.UpTopic(c.id, m.kind)
			w.expect(topic, m.payload)
			go func() {
				resp, err := l.cm.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: m.payload})
				results <- sendResult{i, publishOutcome(ctx, m, resp, err)}
			}()
			// Start the next message only once this one is on the wire
			// (or finished without getting there).
			for finished := false; !finished && !w.written(); {
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

// publishOutcome classifies the answer to one outbox message.
func publishOutcome(ctx context.Context, m sealedMsg, resp *paho.PublishResponse, err error) error {
	if err == nil {
		return nil
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		if refusedForGood(resp.ReasonCode) {
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
