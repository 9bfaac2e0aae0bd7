package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// Reading is one value of one feed. Value is a number, a bool or a string.
// A zero Time means "now" (stamped when the reading is added).
type Reading struct {
	Feed  string
	Value any
	Time  time.Time
}

// PublishError reports that the platform refused a message for good (for
// example because it was malformed). The readings in it were dropped; the
// platform also sent an error reply with details.
type PublishError struct {
	BatchID    string
	Readings   int
	ReasonCode byte
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("device: platform rejected batch %s (%d readings) with reason code 0x%02x", e.BatchID, e.Readings, e.ReasonCode)
}

// telemetry holds readings until the platform acknowledges them. Readings
// are appended to an open batch; Publish seals open readings into messages
// with a fixed batch id, so a message that is retried is byte-for-byte the
// one sent before and the platform can recognise the redelivery.
type telemetry struct {
	c      *Client
	mu     sync.Mutex
	open   []protocol.Reading
	sealed []sealedMsg
	prefix string
	seq    uint64
	pubMu  sync.Mutex // one Publish at a time keeps messages in order
	kickCh chan struct{}
}

type sealedMsg struct {
	id       string
	payload  []byte
	readings int
}

func (t *telemetry) init(c *Client) {
	t.c = c
	var b [6]byte
	_, _ = rand.Read(b[:])
	t.prefix = hex.EncodeToString(b[:])
	t.kickCh = make(chan struct{}, 1)
}

func (t *telemetry) kick() {
	select {
	case t.kickCh <- struct{}{}:
	default:
	}
}

// Add queues a reading of feed stamped now.
func (c *Client) Add(feed string, value any) error {
	return c.AddReadings(Reading{Feed: feed, Value: value})
}

// AddAt queues a reading of feed with an explicit timestamp (kept to the
// millisecond).
func (c *Client) AddAt(feed string, value any, ts time.Time) error {
	return c.AddReadings(Reading{Feed: feed, Value: value, Time: ts})
}

// AddReadings queues several readings. Either all are queued or, if one is
// invalid, none.
func (c *Client) AddReadings(rs ...Reading) error {
	now := time.Now().UnixMilli()
	enc := make([]protocol.Reading, len(rs))
	for i, r := range rs {
		v, err := protocol.EncodeValue(r.Value)
		if err != nil {
			return fmt.Errorf("device: feed %s: %w", r.Feed, err)
		}
		ts := now
		if !r.Time.IsZero() {
			ts = r.Time.UnixMilli()
		}
		enc[i] = protocol.Reading{Feed: r.Feed, Value: v, TS: ts}
		if err := protocol.ValidateReading(enc[i]); err != nil {
			return fmt.Errorf("device: %w", err)
		}
	}
	c.tele.mu.Lock()
	c.tele.open = append(c.tele.open, enc...)
	c.tele.mu.Unlock()
	return nil
}

// Pending returns the number of readings not yet acknowledged by the
// platform.
func (c *Client) Pending() int {
	c.tele.mu.Lock()
	defer c.tele.mu.Unlock()
	n := len(c.tele.open)
	for _, m := range c.tele.sealed {
		n += m.readings
	}
	return n
}

// seal packs the open readings into messages of at most maxBatch readings.
func (t *telemetry) seal() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.open) > 0 {
		n := min(len(t.open), t.c.opt.maxBatch)
		t.seq++
		id := t.prefix + "-" + strconv.FormatUint(t.seq, 10)
		payload, _ := json.Marshal(protocol.Telemetry{ID: id, Readings: t.open[:n]})
		for len(payload) > protocol.MaxMessageBytes && n > 1 {
			n /= 2
			payload, _ = json.Marshal(protocol.Telemetry{ID: id, Readings: t.open[:n]})
		}
		t.sealed = append(t.sealed, sealedMsg{id: id, payload: payload, readings: n})
		t.open = t.open[n:]
	}
	if len(t.open) == 0 {
		t.open = nil
	}
}

// Publish sends every queued reading and returns when the platform has
// acknowledged (committed) all of them, or with the first error. Readings
// that were not acknowledged stay queued for the next Publish, in order.
func (c *Client) Publish(ctx context.Context) error {
	t := &c.tele
	t.pubMu.Lock()
	defer t.pubMu.Unlock()
	t.seal()
	for {
		t.mu.Lock()
		if len(t.sealed) == 0 {
			t.mu.Unlock()
			return nil
		}
		m := t.sealed[0]
		t.mu.Unlock()

		if c.cm == nil || c.Err() != nil {
			if err := c.Err(); err != nil {
				return err
			}
			return ErrNotConnected
		}
		err := c.publishOne(ctx, m)
		var pe *PublishError
		if err != nil && !errors.As(err, &pe) {
			return err
		}
		t.mu.Lock()
		t.sealed[0] = sealedMsg{} // let the acknowledged payload be collected
		t.sealed = t.sealed[1:]
		if len(t.sealed) == 0 {
			t.sealed = nil
		}
		t.mu.Unlock()
		if pe != nil {
			return pe
		}
	}
}

func (c *Client) publishOne(ctx context.Context, m sealedMsg) error {
	for {
		if err := c.cm.AwaitConnection(ctx); err != nil {
			return fmt.Errorf("device: publish: %w", err)
		}
		resp, err := c.cm.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(c.id, protocol.KindTelemetry), QoS: 1, Payload: m.payload})
		if err == nil {
			return nil
		}
		if resp != nil && resp.ReasonCode >= 0x80 {
			switch resp.ReasonCode {
			case 0x87, 0x90, 0x99, 0x83: // refused for good
				return &PublishError{BatchID: m.id, Readings: m.readings, ReasonCode: resp.ReasonCode}
			}
			// Overloaded or failed to commit: back off and resend the same
			// batch (the platform deduplicates by its id).
			select {
			case <-time.After(500 * time.Millisecond):
				continue
			case <-ctx.Done():
				return fmt.Errorf("device: publish: %w", ctx.Err())
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("device: publish: %w", ctx.Err())
		}
		// Connection dropped mid-publish: wait for the reconnect and resend.
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("device: publish: %w", ctx.Err())
		case <-c.Done():
			return c.Err()
		}
	}
}
