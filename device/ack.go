package device

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// downAcks confirms queued messages to the platform (docs/protocol.md
// §21.1): every message that carries the MQTT 5 user property
// protocol.PropMessageID is acknowledged by that id on up/ack once the
// client has taken it in (a feed command recorded, a request tracked).
// The ids are batched, up to protocol.MaxAckIDs per message, and sent by
// one goroutine; ids that could not be sent are kept (up to maxPendingAcks)
// and sent after the next reconnect. An id that is lost anyway only means
// the platform sends the message again, which the client recognises.
type downAcks struct {
	mu   sync.Mutex
	ids  []string
	base uint64 // how many ids were ever removed from the front of ids
	kick chan struct{}
}

// maxPendingAcks bounds the ids waiting to be sent; the oldest go first.
const maxPendingAcks = 10_000

// ackQueued notes a queued message for acknowledgement. It never blocks.
func (c *Client) ackQueued(p *paho.Publish) {
	if p == nil || p.Properties == nil {
		return
	}
	id := p.Properties.User.Get(protocol.PropMessageID)
	if id == "" {
		return // not from the queue (a direct RPC request, an error reply …)
	}
	a := &c.acks
	a.mu.Lock()
	if a.kick == nil {
		a.kick = make(chan struct{}, 1)
	}
	if len(a.ids) >= maxPendingAcks {
		a.ids = a.ids[1:]
		a.base++
	}
	a.ids = append(a.ids, id)
	kick := a.kick
	a.mu.Unlock()
	select {
	case kick <- struct{}{}:
	default:
	}
}

// startAcks starts the goroutine that sends acknowledgements; Close stops
// it.
func (c *Client) startAcks() {
	a := &c.acks
	a.mu.Lock()
	if a.kick == nil {
		a.kick = make(chan struct{}, 1)
	}
	kick := a.kick
	a.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			select {
			case <-c.lifetime.Done():
				return
			case <-kick:
			}
			for c.sendAcks() {
			}
		}
	}()
}

// sendAcks publishes one batch of pending ids. It reports whether there
// are more to send now; after a failure it waits for a reconnect (or a
// second) and reports true while the client runs.
func (c *Client) sendAcks() bool {
	a := &c.acks
	a.mu.Lock()
	n := min(len(a.ids), protocol.MaxAckIDs)
	batch := append([]string(nil), a.ids[:n]...)
	end := a.base + uint64(n) // ids before this index are in the batch
	a.mu.Unlock()
	if n == 0 {
		return false
	}
	payload, _ := json.Marshal(protocol.Ack{IDs: batch})
	ctx, cancel := context.WithTimeout(c.lifetime, c.opt.connectTimeout)
	defer cancel()
	err := c.cm.AwaitConnection(ctx)
	if err == nil {
		_, err = c.cm.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(c.id, protocol.KindAck), QoS: 1, Payload: payload})
	}
	if err != nil {
		c.opt.log.Debug("acknowledge queued messages; will retry", "device_id", c.id, "ids", n, "error", err)
		select {
		case <-c.lifetime.Done():
			return false
		case <-time.After(time.Second):
		}
		return true
	}
	a.mu.Lock()
	if end > a.base {
		cut := min(int(end-a.base), len(a.ids))
		a.ids = a.ids[cut:]
		a.base += uint64(cut)
	}
	more := len(a.ids) > 0
	a.mu.Unlock()
	return more
}
