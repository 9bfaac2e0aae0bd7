package device

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/device/outbox"
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
	Kind       string // the message kind: telemetry, event, notification
	BatchID    string // for telemetry
	Readings   int
	ReasonCode byte
}

// Error describes the rejected message with its MQTT reason code.
func (e *PublishError) Error() string {
	if e.Kind != "" && e.Kind != protocol.KindTelemetry {
		return fmt.Sprintf("device: platform rejected %s message with reason code 0x%02x", e.Kind, e.ReasonCode)
	}
	return fmt.Sprintf("device: platform rejected batch %s (%d readings) with reason code 0x%02x", e.BatchID, e.Readings, e.ReasonCode)
}

// telemetry holds readings until the platform acknowledges them, in an
// outbox (device/outbox): readings are appended as they are added; Publish
// seals them into messages with a fixed batch id, recorded in the outbox,
// so a message that is retried — even by a restarted process — is
// byte-for-byte the one sent before and the platform recognises the
// redelivery.
type telemetry struct {
	c      *Client
	ob     outbox.Queue
	pubMu  sync.Mutex // one Publish at a time keeps messages in order
	kickCh chan struct{}
	wire   *wire
}

// sealedMsg is one message on its way: the outbox's sequence number, the
// batch id and the payload.
type sealedMsg struct {
	seq      uint64
	kind     string // protocol kind: telemetry, event, notification
	id       string
	payload  []byte
	readings int
}

func (t *telemetry) init(c *Client) error {
	t.c = c
	t.kickCh = make(chan struct{}, 1)
	t.wire = newWire(c.id)
	o := c.opt
	opts := append([]outbox.Option{
		outbox.WithMessageLimits(o.maxBatch, protocol.MaxMessageBytes),
		outbox.WithLogger(o.log),
	}, o.outboxOpts...)
	switch {
	case o.outboxQueue != nil:
		t.ob = o.outboxQueue
		return nil
	case o.outboxMem:
		ob, err := outbox.Open(outbox.NewMemStore(), opts...)
		if err != nil {
			return err
		}
		t.ob = ob
		return nil
	}
	dir := o.outboxDir
	if dir == "" {
		base := os.Getenv("OUTPOST_OUTBOX_DIR")
		if base == "" {
			cache, err := os.UserCacheDir()
			if err != nil {
				return fmt.Errorf("no outbox directory (set WithOutbox or OUTPOST_OUTBOX_DIR): %w", err)
			}
			base = filepath.Join(cache, "outpost", "outbox")
		}
		dir = filepath.Join(base, c.id)
	}
	ob, err := outbox.OpenDir(dir, opts...)
	if err != nil {
		return fmt.Errorf("outbox %s: %w", dir, err)
	}
	if rerr := ob.Recovery(); rerr != nil {
		o.log.Warn("outbox was damaged (power cut?); the damaged records were skipped", "device_id", c.id, "dir", dir, "error", rerr)
	}
	t.ob = ob
	if c.answeredLog, err = openAnsweredLog(dir, c.answered, c.model.commands); err != nil {
		ob.Close()
		return err
	}
	return nil
}

func (t *telemetry) kick() {
	select {
	case t.kickCh <- struct{}{}:
	default:
	}
}

// autoPublish publishes every interval and after each reconnect, until
// the client stops.
func (c *Client) autoPublish(interval time.Duration) {
	defer c.wg.Done()
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		select {
		case <-c.lifetime.Done():
			return
		case <-tk.C:
		case <-c.tele.kickCh:
		}
		if !c.Connected() || c.Pending() == 0 {
			continue
		}
		if err := c.Publish(c.lifetime); err != nil && c.lifetime.Err() == nil {
			c.opt.log.Warn("auto-publish", "device_id", c.id, "error", err)
		}
	}
}

// ErrOutboxFull is returned by Add… when the outbox holds as many readings
// (or bytes) as it may (WithOutboxOptions) and drops nothing: the reading
// was not taken. Publish to make room.
var ErrOutboxFull = outbox.ErrFull

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
// invalid, none. They are in the outbox (on disk, for the durable outbox)
// when it returns.
func (c *Client) AddReadings(rs ...Reading) error {
	enc, err := encodeReadings(rs)
	if err != nil {
		return err
	}
	if err := c.tele.ob.AddReadings(enc...); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	return nil
}

// AddSeparated queues readings that travel in a message of their own,
// never merged with other readings (the seeds' "separated" messages: an
// alarm that must not wait behind a large batch, say).
func (c *Client) AddSeparated(rs ...Reading) error {
	enc, err := encodeReadings(rs)
	if err != nil {
		return err
	}
	if err := c.tele.ob.AddSeparated(enc...); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	return nil
}

func encodeReadings(rs []Reading) ([]protocol.Reading, error) {
	now := time.Now().UnixMilli()
	enc := make([]protocol.Reading, len(rs))
	for i, r := range rs {
		v, err := protocol.EncodeValue(r.Value)
		if err != nil {
			return nil, fmt.Errorf("device: feed %s: %w", r.Feed, err)
		}
		ts := now
		if !r.Time.IsZero() {
			ts = r.Time.UnixMilli()
		}
		enc[i] = protocol.Reading{Feed: r.Feed, Value: v, TS: ts}
		if err := protocol.ValidateReading(enc[i]); err != nil {
			return nil, fmt.Errorf("device: %w", err)
		}
	}
	return enc, nil
}

// Pending returns the number of readings not yet acknowledged by the
// platform.
func (c *Client) Pending() int {
	return c.tele.ob.Stats().PendingReadings
}

// OutboxStats returns the outbox counters: readings waiting, added,
// acknowledged, dropped or refused because the outbox was full, damaged
// records skipped at start-up, and more.
func (c *Client) OutboxStats() outbox.Stats { return c.tele.ob.Stats() }

// Publish sends every queued reading and returns when the platform has
// acknowledged (committed) all of them, or with the first error. Up to
// WithMaxInFlight messages travel at once, in order. Readings that were not
// acknowledged stay in the outbox for the next Publish, in order. When the
// platform is overloaded (MQTT reason code 0x97) Publish backs off and
// resends until ctx ends. Readings added while Publish runs wait for the
// next one.
func (c *Client) Publish(ctx context.Context) error {
	t := &c.tele
	t.pubMu.Lock()
	defer t.pubMu.Unlock()
	if err := t.ob.Seal(); err != nil {
		return fmt.Errorf("device: publish: %w", err)
	}
	// Only what is sealed now belongs to this Publish: messages numbered
	// below the outbox's next sequence number (a queue that does not
	// report it bounds nothing).
	last := ^uint64(0)
	if n := t.ob.Stats().NextSeq; n > 0 {
		last = n - 1
	}
	pause := retryMin
	for {
		obm, err := t.ob.Next(0, 4*c.opt.maxInFlight)
		if err != nil {
			return fmt.Errorf("device: publish: %w", err)
		}
		msgs := make([]sealedMsg, 0, len(obm))
		for _, m := range obm {
			if m.Seq > last {
				break
			}
			msgs = append(msgs, sealedMsg{seq: m.Seq, kind: m.Kind, id: m.BatchID, payload: m.Payload, readings: m.Readings})
		}
		if len(msgs) == 0 {
			return nil
		}
		if changed, err := c.resealOversize(msgs); err != nil {
			return err
		} else if changed { // split into messages that fit (limits.go)
			if n := t.ob.Stats().NextSeq; n > 0 {
				last = n - 1
			}
			continue
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
			head    int // messages acknowledged in this round
		)
		c.window(ctx, msgs, c.opt.maxInFlight, func(i int, err error) {
			var pe *PublishError
			switch {
			case err == nil:
				head++
				if aerr := t.ob.Ack(msgs[i].seq); aerr != nil && failed == nil {
					failed = aerr
				}
			case errors.As(err, &pe):
				// Dropped for good, like an acknowledged message.
				if refused == nil {
					refused = pe
				}
				_ = t.ob.Drop(msgs[i].seq)
			case errors.Is(err, errRetryLater):
				busy = true
			default:
				if failed == nil {
					failed = err
				}
			}
		})
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
