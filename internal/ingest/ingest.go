// Package ingest turns device telemetry into committed rows.
//
// Writer groups the batches that arrive while a transaction is committing
// into the next transaction (group commit), so each device waits for its own
// batch to be durable — the broker acknowledges only after Write returns —
// yet the store sees few, large transactions.
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
// live stream. Calls come from the writer goroutine and must not block.
type Observer interface {
	Committed(batches []*outpost.Batch, results []outpost.AppendResult, took time.Duration)
}

// Options tune a Writer.
type Options struct {
	// MaxReadings bounds the readings in one transaction (default 20,000).
	MaxReadings int
	// QueueLen is how many batches may wait for the writer (default 4096).
	QueueLen int
	Observer Observer
	Logger   *slog.Logger
}

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("ingest: writer closed")

// Writer commits batches in groups. It is safe for concurrent use.
type Writer struct {
	store  Appender
	opt    Options
	in     chan *job
	mu     sync.RWMutex // guards closed against sends on in
	closed bool
	done   chan struct{}
}

type job struct {
	b    *outpost.Batch
	res  outpost.AppendResult
	err  error
	done chan struct{}
}

var jobPool = sync.Pool{New: func() any { return &job{done: make(chan struct{}, 1)} }}

// NewWriter starts a writer; Close stops it.
func NewWriter(store Appender, o Options) *Writer {
	if o.MaxReadings <= 0 {
		o.MaxReadings = 20_000
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 4096
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Writer{store: store, opt: o, in: make(chan *job, o.QueueLen), done: make(chan struct{})}
	go w.run()
	return w
}

// Write queues a batch and waits until it is committed (or found to be a
// duplicate). It returns the store's error if the commit failed; the batch
// is then not stored and the caller must not acknowledge it.
func (w *Writer) Write(ctx context.Context, b *outpost.Batch) (outpost.AppendResult, error) {
	j := jobPool.Get().(*job)
	j.b, j.err = b, nil
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		jobPool.Put(j)
		return 0, ErrClosed
	}
	select {
	case w.in <- j:
		w.mu.RUnlock()
	case <-ctx.Done():
		w.mu.RUnlock()
		jobPool.Put(j)
		return 0, ctx.Err()
	}
	// Once queued the job will be answered: the writer drains the queue
	// before it exits, so waiting without ctx cannot hang.
	<-j.done
	res, err := j.res, j.err
	j.b = nil
	jobPool.Put(j)
	return res, err
}

// Close stops accepting batches, commits everything queued and returns.
func (w *Writer) Close() error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.in)
	}
	w.mu.Unlock()
	<-w.done
	return nil
}

func (w *Writer) run() {
	defer close(w.done)
	var group []*job
	var batches []*outpost.Batch
	for {
		j, ok := <-w.in
		if !ok {
			return
		}
		group, batches = append(group[:0], j), append(batches[:0], j.b)
		n := len(j.b.Readings)
	fill:
		for n < w.opt.MaxReadings {
			select {
			case j, ok := <-w.in:
				if !ok {
					break fill
				}
				group, batches = append(group, j), append(batches, j.b)
				n += len(j.b.Readings)
			default:
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
				j.err = err
			} else {
				j.res = res[i]
			}
			j.done <- struct{}{}
		}
		clear(batches)
	}
}
