// Package retention prunes what the platform keeps only for a while: the
// ids of committed telemetry batches (kept to recognise redeliveries),
// finished down-queue rows and, when configured, old readings.
package retention

import (
	"context"
	"log/slog"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Defaults: batch ids are kept longer than any device outbox is expected
// to hold readings back; finished queue rows a week, for applications to
// read the outcome of their calls.
const (
	DefaultBatches  = 30 * 24 * time.Hour
	DefaultQueue    = 7 * 24 * time.Hour
	DefaultInterval = 10 * time.Minute
)

// Options say how long things are kept (zero: the defaults; Readings 0:
// for ever) and how often they are pruned.
type Options struct {
	Batches, Queue, Readings, Interval time.Duration
	Logger                             *slog.Logger
}

// Pruner prunes on a ticker until Close.
type Pruner struct {
	store outpost.RetentionStore
	o     Options
	stop  chan struct{}
	done  chan struct{}
}

// Start prunes once now and then every Interval, in a goroutine that
// Close stops.
func Start(store outpost.RetentionStore, o Options) *Pruner {
	if o.Batches <= 0 {
		o.Batches = DefaultBatches
	}
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Pruner{store: store, o: o, stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	return p
}

// Close stops the pruner and waits for it.
func (p *Pruner) Close() error {
	close(p.stop)
	<-p.done
	return nil
}

func (p *Pruner) run() {
	defer close(p.done)
	t := time.NewTicker(p.o.Interval)
	defer t.Stop()
	for {
		p.Once()
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// Once prunes once.
func (p *Pruner) Once() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := p.o.Logger
	now := time.Now()
	if n, err := p.store.PruneBatches(ctx, now.Add(-p.o.Batches)); err != nil {
		log.Warn("prune batch ids", "error", err)
	} else if n > 0 {
		log.Info("pruned batch ids", "count", n, "older_than", p.o.Batches)
	}
	if n, err := p.store.PurgeFinished(ctx, now.Add(-p.o.Queue)); err != nil {
		log.Warn("purge finished queue rows", "error", err)
	} else if n > 0 {
		log.Info("purged finished queue rows", "count", n, "older_than", p.o.Queue)
	}
	if p.o.Readings > 0 {
		if n, err := p.store.PruneReadings(ctx, now.Add(-p.o.Readings)); err != nil {
			log.Warn("prune readings", "error", err)
		} else if n > 0 {
			log.Info("pruned readings", "count", n, "older_than", p.o.Readings)
		}
	}
}
