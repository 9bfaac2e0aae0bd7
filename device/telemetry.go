package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

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
	wire   *wire
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
	t.wire = newWire(protocol.UpTopic(c.id, protocol.KindTelemetry))
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
// acknowledged (committed) all of them, or with the first error. Up to
// WithMaxInFlight messages travel at once, in order. Readings that were not
// acknowledged stay queued for the next Publish, in order. When the
// platform is overloaded (MQTT reason code 0x97) Publish backs off and
// resends until ctx ends.
func (c *Client) Publish(ctx context.Context) error {
	t := &c.tele
	t.pubMu.Lock()
	defer t.pubMu.Unlock()
	t.seal()
	pause := retryMin
	for {
		t.mu.Lock()
		msgs := slices.Clone(t.sealed)
		t.mu.Unlock()
		if len(msgs) == 0 {
			return nil
		}
		if c.cm == nil || c.Err() != nil {
			if err := c.Err(); err != nil {
				return err
			}
			return ErrNotConnected
		}
		if err := c.cm.AwaitConnection(ctx); err != nil {
			return fmt.Errorf("device: publish: %w", err)
		}
		var (
			refused *PublishError
			busy    bool
			failed  error
		)
		acked := make([]bool, len(msgs))
		head := 0 // msgs[:head] are acknowledged and gone from t.sealed
		c.window(ctx, msgs, c.opt.maxInFlight, func(i int, err error) {
			var pe *PublishError
			switch {
			case err == nil:
			case errors.As(err, &pe):
				// Dropped for good, like an acknowledged message.
				if refused == nil {
					refused = pe
				}
			case errors.Is(err, errRetryLater):
				busy = true
				return
			default:
				if failed == nil {
					failed = err
				}
				return
			}
			acked[i] = true
			t.mu.Lock()
			for head < len(msgs) && acked[head] {
				t.sealed[0] = sealedMsg{} // let the acknowledged payload be collected
				t.sealed = t.sealed[1:]
				head++
			}
			t.mu.Unlock()
		})
		// Messages acknowledged behind one that was not leave the queue
		// too; the rest keep their order.
		t.mu.Lock()
		rest := t.sealed[:0]
		for k, m := range t.sealed {
			if k < len(msgs)-head && acked[head+k] {
				continue
			}
			rest = append(rest, m)
		}
		clear(t.sealed[len(rest):])
		t.sealed = rest
		if len(t.sealed) == 0 {
			t.sealed = nil
		}
		t.mu.Unlock()

		switch {
		case refused != nil:
			return refused
		case ctx.Err() != nil:
			return fmt.Errorf("device: publish: %w", ctx.Err())
		case c.Err() != nil:
			return c.Err()
		case busy:
			// Back off; the pause grows while the platform takes nothing.
			if head > 0 {
				pause = retryMin
			}
			if err := c.sleep(ctx, pause); err != nil {
				return err
			}
			pause = min(2*pause, retryMax)
		case failed != nil:
			// Connection dropped mid-publish: wait for the reconnect and
			// resend.
			if err := c.sleep(ctx, 50*time.Millisecond); err != nil {
				return err
			}
		default:
			pause = retryMin
		}
	}
}

// Pauses before resending messages the platform was too busy to take.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
)

func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("device: publish: %w", ctx.Err())
	case <-c.Done():
		return c.Err()
	}
}
