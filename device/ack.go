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
			for {
				ctx, cancel := context.WithTimeout(c.lifetime, c.opt.connectTimeout)
				more, err := c.sendAcks(ctx)
				cancel()
				if err != nil {
					c.opt.log.Debug("acknowledge queued messages; will retry", "device_id", c.id, "error", err)
					select {
					case <-c.lifetime.Done():
						return
					case <-time.After(time.Second):
					}
					continue
				}
				if !more {
					break
				}
			}
		}
	}()
}

// flushAcks sends every pending acknowledgement and waits for the
// platform's PUBACK, until ctx ends. Pull calls it, so that a PULL device
// that disconnects right after is not sent its messages again; Close
// tries it briefly.
func (c *Client) flushAcks(ctx context.Context) error {
	for {
		more, err := c.sendAcks(ctx)
		if err != nil || !more {
			return err
		}
	}
}

// sendAcks publishes one batch of pending ids and waits for its PUBACK. It
// reports whether more ids are pending. Sending the same id twice (the
// goroutine and flushAcks at once) is harmless.
func (c *Client) sendAcks(ctx context.Context) (more bool, err error) {
	a := &c.acks
	a.mu.Lock()
	n := min(len(a.ids), protocol.MaxAckIDs)
	batch := append([]string(nil), a.ids[:n]...)
	end := a.base + uint64(n) // ids before this index are in the batch
	a.mu.Unlock()
	if n == 0 {
		return false, nil
	}
	payload, _ := json.Marshal(protocol.Ack{IDs: batch})
	if err := c.publishUp(ctx, protocol.KindAck, payload); err != nil {
		return true, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if end > a.base {
		cut := min(int(end-a.base), len(a.ids))
		a.ids = a.ids[cut:]
		a.base += uint64(cut)
	}
	return len(a.ids) > 0, nil
}
