package device

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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
// example because it was malformed, or broke a limit): resending it cannot
// help. It is the one error for such refusals, whatever the message:
// telemetry from Publish, events and notifications queued in the outbox,
// and the device-model, raw and RPC messages. A refused outbox message
// was dropped from the outbox. The platform also sent an error reply with
// the details (WithErrorHandler).
type PublishError struct {
	Kind       string // the message kind: telemetry, event, feeds, time, raw/…
	BatchID    string // for telemetry
	Readings   int    // for telemetry: the readings dropped
	ReasonCode byte   // the MQTT 5 PUBACK reason code
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
	dir    string        // of a durable outbox opened by the client
	sendMu chan struct{} // one sender at a time keeps messages in order
	kickCh chan struct{} // wakes the background sender
	want   atomic.Uint64 // the background sender sends up to this seq
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
	t.sendMu = make(chan struct{}, 1)
	t.wire = newWire()
	o := c.opt
	// The one bound on the size of what the outbox seals.
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
		var err error
		if dir, err = defaultOutboxDir(c.id, o.log); err != nil {
			return err
		}
	}
	ob, err := outbox.OpenDir(dir, opts...)
	if errors.Is(err, outbox.ErrLocked) {
		return fmt.Errorf("%w; give each client its own directory (WithOutbox)", err)
	}
	if err != nil {
		return fmt.Errorf("outbox %s: %w", dir, err)
	}
	if rerr := ob.Recovery(); rerr != nil {
		o.log.Warn("outbox was damaged (power cut?); the damaged records were skipped and the batch ids start afresh", "device_id", c.id, "dir", dir, "instance_id", ob.InstanceID(), "error", rerr)
	}
	t.ob = ob
	t.dir = dir
	if c.answeredLog, err = openAnsweredLog(dir, c.answered, c.model.commands); err != nil {
		ob.Close()
		return err
	}
	return nil
}

// defaultOutboxDir chooses the directory of the durable outbox when the
// application did not: $OUTPOST_OUTBOX_DIR/{id}, else a state directory
// (never a cache, which may be purged): $STATE_DIRECTORY/outbox/{id}
// (systemd's StateDirectory=), $XDG_STATE_HOME/outpost/outbox/{id}, or
// ~/.local/state/outpost/outbox/{id}. An outbox left by an earlier version
// in the user's cache directory is moved there.
func defaultOutboxDir(id string, log *slog.Logger) (string, error) {
	if base := os.Getenv("OUTPOST_OUTBOX_DIR"); base != "" {
		return filepath.Join(base, id), nil
	}
	var dir string
	if sd, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); filepath.IsAbs(sd) {
		dir = filepath.Join(sd, "outbox", id)
	} else if x := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(x) {
		dir = filepath.Join(x, "outpost", "outbox", id)
	} else if home, err := os.UserHomeDir(); err == nil && filepath.IsAbs(home) {
		dir = filepath.Join(home, ".local", "state", "outpost", "outbox", id)
	} else {
		return "", errors.New("no directory for the durable outbox: none of $STATE_DIRECTORY, $XDG_STATE_HOME and $HOME is set; " +
			"choose one with WithOutbox(dir), or keep readings in memory only with WithMemoryOutbox")
	}
	moveOldOutbox(id, dir, log)
	return dir, nil
}

// moveOldOutbox moves the outbox of an earlier version of the SDK, which
// kept it in the user's cache directory, to dir when dir does not exist
// yet, so that its readings are not stranded.
func moveOldOutbox(id, dir string, log *slog.Logger) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return
	}
	old := filepath.Join(cache, "outpost", "outbox", id)
	if _, err := os.Stat(old); err != nil {
		return
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err == nil {
		err = os.Rename(old, dir)
	}
	if err != nil {
		log.Warn("could not move the outbox from the cache directory; its readings stay there", "device_id", id, "from", old, "to", dir, "error", err)
		return
	}
	log.Info("moved the outbox out of the cache directory", "device_id", id, "from", old, "to", dir)
}

// OutboxDir returns the directory of the client's durable outbox, empty
// for WithMemoryOutbox and WithOutboxQueue.
func (c *Client) OutboxDir() string { return c.tele.dir }

func (t *telemetry) kick() {
	select {
	case t.kickCh <- struct{}{}:
	default:
	}
}

// acquire takes the right to send outbox messages; one sender at a time
// keeps them in order.
func (t *telemetry) acquire(ctx context.Context) error {
	select {
	case t.sendMu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *telemetry) release() { <-t.sendMu }

// sender is the background sender of run r: it sends the events and
// notifications queued since the last Publish (and what is before them in
// the outbox) as soon as the connection is ready, and with WithAutoPublish
// publishes every interval and after each reconnect.
func (c *Client) sender(r *run) {
	defer r.wg.Done()
	var tick <-chan time.Time
	if c.opt.autoPublish > 0 {
		tk := time.NewTicker(c.opt.autoPublish)
		defer tk.Stop()
		tick = tk.C
	}
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-tick:
		case <-c.tele.kickCh:
		}
		if !c.Connected() {
			continue // kicked again once ready
		}
		var err error
		if c.opt.autoPublish > 0 {
			if c.Pending() > 0 || c.OutboxStats().PendingMessages > 0 {
				err = c.Publish(r.ctx)
			}
		} else if want := c.tele.want.Load(); want > 0 {
			err = c.flush(r.ctx, want)
		}
		if err != nil && r.ctx.Err() == nil {
			c.opt.log.Warn("background publish", "device_id", c.id, "error", err)
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

// Publish seals every queued reading into messages and sends them, and
// whatever else waits in the outbox (events, notifications), in outbox
// order, up to WithMaxInFlight messages at once. It returns when the
// platform has acknowledged (committed) all of them, or with the first
// error: ErrNotConnected when the client is not connecting (Connect was not
// called, or gave up), a *PublishError when the platform refused a message
// for good, the context's error (wrapped with ErrNotConnected when no
// connection came). Messages not acknowledged stay in the outbox for the
// next Publish, in order; a connection lost on the way is waited for and
// the messages resent. When the platform is overloaded (MQTT reason code
// 0x97) Publish backs off and resends until ctx ends. Readings added while
// Publish runs wait for the next one.
func (c *Client) Publish(ctx context.Context) error {
	t := &c.tele
	if err := t.acquire(ctx); err != nil {
		return fmt.Errorf("device: publish: %w", err)
	}
	defer t.release()
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
	return c.send(ctx, last)
}

// flush sends the sealed messages numbered up to last, without sealing.
func (c *Client) flush(ctx context.Context, last uint64) error {
	t := &c.tele
	if err := t.acquire(ctx); err != nil {
		return fmt.Errorf("device: publish: %w", err)
	}
	defer t.release()
	return c.send(ctx, last)
}

// queueMessage puts a message of kind in the outbox behind everything
// already added, readings included, and has the background sender send it.
func (c *Client) queueMessage(ctx context.Context, kind string, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("device: %s: %w", kind, err)
	}
	t := &c.tele
	// Seal the open readings first, so that the message follows them.
	if err := t.ob.Seal(); err != nil {
		return fmt.Errorf("device: %s: %w", kind, err)
	}
	seq, err := t.ob.AddMessage(kind, payload)
	if err != nil {
		return fmt.Errorf("device: %s: %w", kind, err)
	}
	for {
		old := t.want.Load()
		if seq <= old || t.want.CompareAndSwap(old, seq) {
			break
		}
	}
	t.kick()
	return nil
}

// send sends the sealed messages numbered up to last. The caller holds
// the sending right.
func (c *Client) send(ctx context.Context, last uint64) error {
	t := &c.tele
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
		l, err := c.waitReady(ctx)
		if err != nil {
			return err
		}
		var (
			refused *PublishError
			busy    bool
			failed  error
			head    int // messages acknowledged in this round
		)
		c.window(ctx, l, msgs, c.opt.maxInFlight, func(i int, err error) {
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
			// The connection dropped mid-publish: wait for the reconnect
			// (waitReady) and resend. Anything else: pause first.
			if l.ctx.Err() == nil {
				if err := c.sleep(ctx, 50*time.Millisecond); err != nil {
					return err
				}
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
