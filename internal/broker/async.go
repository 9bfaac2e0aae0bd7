package broker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// ErrOverloaded is what a handler returns (wrapped) when its queue is full:
// the message was not taken and the device must retry later. MQTT 5 devices
// get PUBACK 0x97 "quota exceeded"; MQTT 3.1.1 devices, which have no
// negative acknowledgement, get an error reply with code "overloaded" and
// their connection is closed, so they resend on reconnect. It is the
// domain's outpost.ErrOverloaded, which the homes of message kinds return.
var ErrOverloaded = outpost.ErrOverloaded

// AsyncHandler is a Handler that can finish QoS 1 messages later, after the
// broker's read loop for the connection has moved on. The broker writes
// the PUBACK itself when done is called, so a device can have many
// messages in flight and the platform still acknowledges each only after
// it is committed.
type AsyncHandler interface {
	Handler
	// StartMessage begins handling a QoS 1 message. If it returns async
	// true, done is called exactly once, from any goroutine, with
	// HandleMessage's error semantics; for one device, done calls come in
	// the order of the StartMessage calls that returned true. Otherwise
	// the message is finished and err is its outcome, as from
	// HandleMessage. ctx bounds how long StartMessage may wait for room in
	// its queue (an already-done ctx: not at all); when there is no room
	// it returns an error wrapping ErrOverloaded. done must not block.
	StartMessage(ctx context.Context, deviceID, kind string, payload []byte, done func(error)) (async bool, err error)
}

const (
	// receiveMaximum is the Receive Maximum the broker announces to MQTT 5
	// clients: how many QoS 1 messages one connection may have waiting for
	// their PUBACK. It also bounds MQTT 3.1.1 connections, whose read loop
	// waits for a free slot.
	receiveMaximum = 64
	// v3Wait bounds how long an MQTT 3.1.1 connection's read loop waits for
	// a free slot or for room in the handler's queue before the connection
	// is closed.
	v3Wait = 10 * time.Second
)

// noWait is a done context: "do not wait for room".
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// acker writes the PUBACKs of QoS 1 messages handled through an
// AsyncHandler, in the order the messages arrived on each connection (MQTT
// requires it), from one short-lived goroutine per connection that has
// acknowledgements ready (so a device that stops reading blocks only its
// own acknowledgements, never the ingest writer). Every such message gets
// an arrival number; an acknowledgement is written once all earlier ones
// of the connection are.
type acker struct {
	mu     sync.Mutex
	conns  map[*mqtt.Client]*connAcks
	closed bool
	wg     sync.WaitGroup
}

// connAcks is the per-connection state: in-flight slots, arrival numbers
// and the acknowledgements finished but not yet written.
type connAcks struct {
	cl      *mqtt.Client
	slots   chan struct{} // one token per message waiting for its PUBACK
	mu      sync.Mutex
	arrived uint64                // arrival number of the next message
	head    uint64                // arrival number of the next PUBACK not yet written
	taken   uint64                // arrival number of the next PUBACK for the writer to take
	done    map[uint64]pendingAck // finished, waiting for earlier ones
	writing bool
}

type pendingAck struct {
	id     uint16
	code   packets.Code
	stop   error // non-nil: close the connection instead of acknowledging
	noSlot bool  // the message was refused before it took a slot
}

func (a *acker) conn(cl *mqtt.Client) *connAcks {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conns == nil {
		a.conns = map[*mqtt.Client]*connAcks{}
	}
	c := a.conns[cl]
	if c == nil {
		c = &connAcks{cl: cl, slots: make(chan struct{}, receiveMaximum), done: map[uint64]pendingAck{}}
		a.conns[cl] = c
	}
	return c
}

func (a *acker) forget(cl *mqtt.Client) {
	a.mu.Lock()
	delete(a.conns, cl)
	a.mu.Unlock()
}

// arrive numbers the next message of the connection.
func (c *connAcks) arrive() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.arrived
	c.arrived++
	return n
}

// passIfFirst reports whether message n is the oldest not yet
// acknowledged and every earlier acknowledgement has been written; if so
// its acknowledgement counts as written (the caller lets mochi write it at
// once, which keeps the order because no later message has arrived yet).
func (c *connAcks) passIfFirst(n uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.head != n {
		return false
	}
	c.head++
	c.taken++
	return true
}

// written records that the writer has written k more acknowledgements.
func (c *connAcks) written(k int) {
	c.mu.Lock()
	c.head += uint64(k)
	c.mu.Unlock()
}

// finish records the acknowledgement of message n and makes sure a
// goroutine writes it when its turn comes.
func (a *acker) finish(c *connAcks, n uint64, p pendingAck) {
	c.mu.Lock()
	c.done[n] = p
	_, ready := c.done[c.taken]
	start := ready && !c.writing
	if start {
		c.writing = true
	}
	c.mu.Unlock()
	if !start {
		return
	}
	a.mu.Lock()
	if a.closed {
		// Shutting down: every connection is closed, so nothing can be
		// written; the devices resend and the platform deduplicates.
		a.mu.Unlock()
		c.mu.Lock()
		for k, p := range c.done {
			if !p.noSlot {
				<-c.slots
			}
			delete(c.done, k)
		}
		c.writing = false
		c.mu.Unlock()
		return
	}
	a.wg.Add(1)
	a.mu.Unlock()
	go a.write(c)
}

// next takes the acknowledgements whose turn has come, in order.
func (c *connAcks) next(batch []pendingAck) []pendingAck {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		p, ok := c.done[c.taken]
		if !ok {
			break
		}
		delete(c.done, c.taken)
		c.taken++
		batch = append(batch, p)
	}
	if len(batch) == 0 {
		c.writing = false
	}
	return batch
}

func (a *acker) write(c *connAcks) {
	defer a.wg.Done()
	var batch []pendingAck
	for {
		batch = c.next(batch[:0])
		if len(batch) == 0 {
			return
		}
		for len(batch) > 0 {
			// The acknowledgements ready now go out, up to the first that
			// closes the connection instead.
			n := 0
			for n < len(batch) && batch[n].stop == nil {
				n++
			}
			c.writeAcks(batch[:n])
			if n < len(batch) {
				c.cl.Stop(batch[n].stop)
				n++
			}
			c.written(n)
			for _, p := range batch[:n] {
				if !p.noSlot {
					<-c.slots
				}
			}
			batch = batch[n:]
		}
	}
}

// writeAcks writes PUBACKs through mochi's own write path (WritePacket), so
// they queue behind whatever mochi has buffered for the connection and
// reach the wire in the order they were written, PUBACKs mochi writes
// itself included. Several PUBACKs leave in one system call: the
// connection is corked while they are written and uncorked under the
// client's lock. A write error means the connection is gone: the device
// resends and the platform recognises the batch id.
func (c *connAcks) writeAcks(batch []pendingAck) {
	if len(batch) == 0 || c.cl.Closed() {
		return
	}
	nc := connOf(c.cl)
	if nc != nil && len(batch) > 1 {
		nc.cork()
	}
	for _, p := range batch {
		if err := c.cl.WritePacket(c.puback(p)); err != nil {
			break
		}
	}
	if nc != nil && len(batch) > 1 {
		c.cl.Lock()
		_ = nc.uncork()
		c.cl.Unlock()
	}
}

// puback returns the PUBACK for p.
func (c *connAcks) puback(p pendingAck) packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    p.id,
		ReasonCode:  p.code.Code,
	}
	if p.code.Code >= packets.ErrUnspecifiedError.Code {
		pk.Properties.ReasonString = p.code.Reason
	}
	return pk
}

// close stops starting writers and waits for the running ones.
func (a *acker) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.wg.Wait()
}

// publishAsync hands a QoS 1 message to an AsyncHandler. It returns the
// packet and error for mochi, as OnPublish does. Every outcome, also the
// immediate ones, is acknowledged in arrival order: an immediate one is
// left to mochi when nothing earlier is still waiting, and queued behind
// the earlier ones otherwise.
func (h *routeHook) publishAsync(ah AsyncHandler, cl *mqtt.Client, pk packets.Packet, kind string) (packets.Packet, error) {
	v5 := cl.Properties.ProtocolVersion == 5
	c := h.b.acks.conn(cl)
	wait := noWait
	if !v5 {
		ctx, cancel := context.WithTimeout(context.Background(), v3Wait)
		defer cancel()
		wait = ctx
	}
	id := pk.PacketID
	select {
	case c.slots <- struct{}{}:
	default:
		select {
		case c.slots <- struct{}{}:
		case <-wait.Done():
			// A v5 client past the Receive Maximum we announced, or a v3
			// client whose acknowledgements have not come for v3Wait.
			n := c.arrive()
			if c.passIfFirst(n) {
				return h.finishNow(cl, pk, ErrOverloaded)
			}
			code, stop := h.outcome(cl, pk.TopicName, ErrOverloaded)
			h.b.acks.finish(c, n, pendingAck{id: id, code: code, stop: stop, noSlot: true})
			return pk, packets.ErrRejectPacket
		}
	}
	n := c.arrive()
	async, err := ah.StartMessage(wait, cl.ID, kind, pk.Payload, func(err error) {
		code, stop := h.outcome(cl, pk.TopicName, err)
		h.b.acks.finish(c, n, pendingAck{id: id, code: code, stop: stop})
	})
	if async {
		// mochi sends no PUBACK and keeps no receive quota for a rejected
		// packet; the acker acknowledges once done is called.
		return pk, packets.ErrRejectPacket
	}
	if c.passIfFirst(n) {
		<-c.slots
		return h.finishNow(cl, pk, err)
	}
	code, stop := h.outcome(cl, pk.TopicName, err)
	h.b.acks.finish(c, n, pendingAck{id: id, code: code, stop: stop})
	return pk, packets.ErrRejectPacket
}

// finishNow maps a synchronous outcome to what OnPublish returns to mochi.
func (h *routeHook) finishNow(cl *mqtt.Client, pk packets.Packet, err error) (packets.Packet, error) {
	code, stop := h.outcome(cl, pk.TopicName, err)
	switch {
	case stop != nil:
		cl.Stop(stop)
		return pk, packets.ErrRejectPacket
	case code == packets.CodeSuccess:
		// Acknowledge, but fan out to nobody: device traffic reaches
		// applications through the platform, not through MQTT.
		return pk, packets.CodeSuccessIgnore
	default:
		return pk, code
	}
}

// outcome maps a handler's result for a QoS 1 message to a PUBACK reason
// code, or to an error to close the connection with (MQTT 3.1.1 has no
// negative PUBACK). It counts and logs.
func (h *routeHook) outcome(cl *mqtt.Client, topic string, err error) (packets.Code, error) {
	v5 := cl.Properties.ProtocolVersion == 5
	if err == nil {
		h.b.stats.MessagesRouted.Add(1)
		return packets.CodeSuccess, nil
	}
	var perr *protocol.Error
	if errors.As(err, &perr) {
		h.b.stats.Rejected.Add(1)
		if v5 {
			return reasonCode(perr.Code), nil
		}
		return packets.CodeSuccess, nil
	}
	h.b.stats.Retried.Add(1)
	if errors.Is(err, ErrOverloaded) {
		h.b.stats.Overloaded.Add(1)
		h.b.log.Debug("device message refused: overloaded; device will retry", "device_id", cl.ID, "topic", topic)
		if v5 {
			return packets.ErrQuotaExceeded, nil
		}
		h.b.sendOverloaded(cl.ID, topic)
		return packets.CodeSuccess, err
	}
	// Transient failure: do not acknowledge. MQTT 5 devices get "quota
	// exceeded" and retry later; MQTT 3.1.1 has no negative PUBACK, so the
	// session is closed and the device resends on reconnect.
	h.b.log.Warn("device message not handled; device will retry", "device_id", cl.ID, "topic", topic, "error", err)
	if v5 {
		return packets.ErrQuotaExceeded, nil
	}
	return packets.CodeSuccess, err
}

// sendOverloaded tells an MQTT 3.1.1 device, on its down/error topic, why
// its connection is about to close.
func (b *Broker) sendOverloaded(deviceID, topic string) {
	kind := ""
	if t, err := protocol.ParseTopic(topic); err == nil {
		kind = t.Kind
	}
	e, _ := json.Marshal(protocol.ErrorReply{Kind: kind, Code: protocol.CodeOverloaded, Message: "platform overloaded: message not acknowledged; the connection is closed, resend it after reconnecting"})
	_ = b.PublishToDevice(deviceID, protocol.KindError, e)
}
