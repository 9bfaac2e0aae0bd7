// Package ingest turns device telemetry into committed rows.
//
// Writer groups the batches that arrive while a transaction is committing
// into the next transaction (group commit), so each device waits for its own
// batch to be durable — the broker acknowledges only after the batch is
// committed — yet the store sees few, large transactions. Groups are also
// sized by latency: when the writer is idle, a small group waits up to
// MaxDelay for more batches, since every commit writes at least a page
// however few readings it holds. Submit hands a batch over without
// waiting, so one connection can have many batches in the same group;
// batches commit, and their callbacks run, in queue order.
package ingest

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Appender is the part of the telemetry store the writer needs.
type Appender interface {
	AppendBatches(ctx context.Context, batches []*outpost.Batch) ([]outpost.AppendResult, error)
}

// Observer receives what the writer committed; used for metrics and the
// live stream. Calls come from the writer goroutines (concurrently when
// Options.Writers > 1) and must not block.
type Observer interface {
	Committed(batches []*outpost.Batch, results []outpost.AppendResult, took time.Duration)
}

// Options tune a Writer.
type Options struct {
	// MaxReadings bounds the readings in one transaction (default 20,000).
	MaxReadings int
	// MinReadings and MaxDelay size groups by latency: a group of fewer
	// than MinReadings readings (default 256) may wait for more batches
	// until its first batch has waited MaxDelay (default 4ms; negative:
	// never waits) — only while several devices send batches faster than
	// that (see linger), so that a lone device, or one that waits for each
	// acknowledgement, is never held up. Under load the queue fills faster
	// and groups commit at once.
	MinReadings int
	MaxDelay    time.Duration
	// QueueLen is how many batches may wait for the writer (default 4096).
	// When it is full, Submit fails with ErrQueueFull (or waits, if its
	// context allows): the back-pressure that keeps memory bounded.
	QueueLen int
	// Writers is how many transactions may commit at once (default 1).
	// A store that commits concurrent transactions in parallel
	// (PostgreSQL) overlaps one group's commit with the next group's
	// work; each device's batches always go to the same writer
	// (by a hash of its id), so they still commit, and their callbacks
	// run, in the order they were submitted. SQLite has one writer at a
	// time: keep 1 there. The queue is split evenly between writers.
	Writers  int
	Observer Observer
	Logger   *slog.Logger
}

// Errors returned by Write and Submit.
var (
	// ErrClosed: the writer was closed.
	ErrClosed = errors.New("ingest: writer closed")
	// ErrQueueFull: the queue stayed full for as long as the caller was
	// willing to wait; the batch was not queued.
	ErrQueueFull = errors.New("ingest: queue full")
)

// Done receives the outcome of a submitted batch.
type Done func(outpost.AppendResult, error)

// Writer commits batches in groups. It is safe for concurrent use.
type Writer struct {
	store    Appender
	opt      Options
	shards   []*shard
	mu       sync.RWMutex // guards closed against sends on the shards' queues
	closed   bool
	stop     chan struct{} // closed first by Close: Submit stops waiting
	stopOnce sync.Once
}

// shard is one committing goroutine and its queue.
type shard struct {
	in   chan *job
	done chan struct{}
}

type job struct {
	b    *outpost.Batch
	done Done
	at   time.Time // queued
}

// NewWriter starts a writer; Close stops it.
func NewWriter(store Appender, o Options) *Writer {
	if o.MaxReadings <= 0 {
		o.MaxReadings = 20_000
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 4096
	}
	if o.MinReadings <= 0 {
		o.MinReadings = 256
	}
	if o.MaxDelay == 0 {
		o.MaxDelay = 4 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Writers <= 0 {
		o.Writers = 1
	}
	w := &Writer{store: store, opt: o, stop: make(chan struct{})}
	per := max(1, (o.QueueLen+o.Writers-1)/o.Writers)
	for range o.Writers {
		sh := &shard{in: make(chan *job, per), done: make(chan struct{})}
		w.shards = append(w.shards, sh)
		go w.run(sh)
	}
	return w
}

// shardOf returns the writer that commits a device's batches.
func (w *Writer) shardOf(deviceID string) *shard {
	if len(w.shards) == 1 {
		return w.shards[0]
	}
	return w.shards[outpost.Shard(deviceID, len(w.shards))]
}

// Write queues a batch and waits until it is committed (or found to be a
// duplicate). It returns the store's error if the commit failed; the batch
// is then not stored and the caller must not acknowledge it.
func (w *Writer) Write(ctx context.Context, b *outpost.Batch) (outpost.AppendResult, error) {
	type outcome struct {
		res outpost.AppendResult
		err error
	}
	ch := make(chan outcome, 1)
	if err := w.Submit(ctx, b, func(r outpost.AppendResult, err error) { ch <- outcome{r, err} }); err != nil {
		if errors.Is(err, ErrQueueFull) && ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, err
	}
	// Once queued the job will be answered: the writer drains the queue
	// before it exits, so waiting without ctx cannot hang.
	o := <-ch
	return o.res, o.err
}

// Submit queues a batch and returns at once; done is called exactly once,
// from the writer goroutine, when the batch's group has committed (or with
// the store's error if the commit failed). Batches commit and their done
// calls run in the order they were queued, so one caller's batches stay in
// order (with several Writers, the order holds per device). done must not block: it holds up every later commit.
//
// If the queue is full, Submit waits for room until ctx is done and then
// returns ErrQueueFull without calling done; with a ctx that is already
// done it never waits. It returns ErrClosed after Close.
func (w *Writer) Submit(ctx context.Context, b *outpost.Batch, done Done) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return ErrClosed
	}
	j := &job{b: b, done: done, at: time.Now()}
	in := w.shardOf(b.DeviceID).in
	select {
	case in <- j:
		return nil
	default:
	}
	select {
	case in <- j:
		return nil
	case <-ctx.Done():
		return ErrQueueFull
	case <-w.stop:
		return ErrClosed
	}
}

// Queued returns the number of batches waiting for the writer.
func (w *Writer) Queued() int {
	n := 0
	for _, sh := range w.shards {
		n += len(sh.in)
	}
	return n
}

// Close stops accepting batches, commits everything queued and returns.
func (w *Writer) Close() error {
	w.stopOnce.Do(func() { close(w.stop) })
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		for _, sh := range w.shards {
			close(sh.in)
		}
	}
	w.mu.Unlock()
	for _, sh := range w.shards {
		<-sh.done
	}
	return nil
}

// lingerMaxSkip bounds the backoff of lingering: after lingers that caught
// nothing, at most one group in this many lingers.
const lingerMaxSkip = 128

// linger decides whether a small group waits for more batches. A wait
// pays off only when other batches are on their way independently of this
// commit: it needs batches from more than one device lately, arriving
// faster than the time left; it lasts at most twice the usual gap; and
// after waits that caught nothing it backs off.
type linger struct {
	gap    time.Duration // moving average of the time between batches
	last   time.Time
	recent [4]string // devices of the latest batches
	next   int
	misses int // lingers in a row that caught nothing
	skip   int // groups left before lingering again
}

func (l *linger) arrived(j *job) {
	if !l.last.IsZero() {
		d := max(0, j.at.Sub(l.last))
		l.gap += (d - l.gap) / 8
	}
	l.last = j.at
	l.recent[l.next] = j.b.DeviceID
	l.next = (l.next + 1) % len(l.recent)
}

// until returns how long to wait for another batch before the deadline,
// or 0 not to wait.
func (l *linger) until(deadline time.Time) time.Duration {
	wait := time.Until(deadline)
	if wait <= 0 || l.gap >= wait {
		return 0
	}
	devices := false
	for _, d := range l.recent[1:] {
		if d != "" && d != l.recent[0] {
			devices = true
		}
	}
	if !devices {
		return 0
	}
	if l.skip > 0 {
		l.skip--
		return 0
	}
	return min(wait, 2*l.gap)
}

// result records whether a wait caught a batch.
func (l *linger) result(caught bool) {
	if caught {
		l.misses = 0
		return
	}
	l.misses = min(l.misses+1, 8)
	l.skip = min(1<<l.misses, lingerMaxSkip)
}

func (w *Writer) run(sh *shard) {
	defer close(sh.done)
	var group []*job
	var batches []*outpost.Batch
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	// The gap starts as if the platform were idle.
	l := linger{gap: max(w.opt.MaxDelay, 0)}
	for {
		j, ok := <-sh.in
		if !ok {
			return
		}
		l.arrived(j)
		group, batches = append(group[:0], j), append(batches[:0], j.b)
		n := len(j.b.Readings)
		deadline := j.at.Add(w.opt.MaxDelay)
	fill:
		for n < w.opt.MaxReadings {
			select {
			case j, ok := <-sh.in:
				if !ok {
					break fill
				}
				l.arrived(j)
				group, batches = append(group, j), append(batches, j.b)
				n += len(j.b.Readings)
				continue
			default:
			}
			if n >= w.opt.MinReadings {
				break
			}
			wait := l.until(deadline)
			if wait <= 0 {
				break
			}
			timer.Reset(wait)
			select {
			case j, ok := <-sh.in:
				timer.Stop()
				l.result(true)
				if !ok {
					break fill
				}
				l.arrived(j)
				group, batches = append(group, j), append(batches, j.b)
				n += len(j.b.Readings)
			case <-timer.C:
				l.result(false)
				break fill
			}
		}
		start := time.Now()
		res, err := w.store.AppendBatches(context.Background(), batches)
		took := time.Since(start)
		if err != nil {
			w.opt.Logger.Error("commit telemetry", "batches", len(batches), "readings", n, "error", err)
		} else if w.opt.Observer != nil {
			w.opt.Observer.Committed(batches, res, took)
		}
		for i, j := range group {
			if err != nil {
				j.done(0, err)
			} else {
				j.done(res[i], nil)
			}
		}
		clear(group)
		clear(batches)
	}
}
