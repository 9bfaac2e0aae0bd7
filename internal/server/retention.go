package server

import (
	"context"
	"time"
)

// Retention defaults: batch ids are kept longer than any device outbox is
// expected to hold readings back; finished queue rows a week, for
// applications to read the outcome of their calls.
const (
	defaultBatchRetention    = 30 * 24 * time.Hour
	defaultQueueRetention    = 7 * 24 * time.Hour
	defaultRetentionInterval = 10 * time.Minute
)

// retention prunes what the platform keeps only for a while: the ids of
// committed telemetry batches (for deduplicating redeliveries), finished
// down-queue rows and, with Config.ReadingRetention, old readings. It runs
// until stop is closed.
func (s *Server) retention(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(s.cfg.RetentionInterval)
	defer t.Stop()
	for {
		s.pruneOnce()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

func (s *Server) pruneOnce() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Now()
	if n, err := s.db.PruneBatches(ctx, now.Add(-s.cfg.BatchRetention)); err != nil {
		s.log.Warn("prune batch ids", "error", err)
	} else if n > 0 {
		s.log.Info("pruned batch ids", "count", n, "older_than", s.cfg.BatchRetention)
	}
	if n, err := s.db.PurgeFinished(ctx, now.Add(-s.cfg.QueueRetention)); err != nil {
		s.log.Warn("purge finished queue rows", "error", err)
	} else if n > 0 {
		s.log.Info("purged finished queue rows", "count", n, "older_than", s.cfg.QueueRetention)
	}
	if s.cfg.ReadingRetention > 0 {
		if n, err := s.db.PruneReadings(ctx, now.Add(-s.cfg.ReadingRetention)); err != nil {
			s.log.Warn("prune readings", "error", err)
		} else if n > 0 {
			s.log.Info("pruned readings", "count", n, "older_than", s.cfg.ReadingRetention)
		}
	}
}
