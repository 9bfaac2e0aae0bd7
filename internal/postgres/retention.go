package postgres

import (
	"context"
	"fmt"
	"time"
)

// pruneChunk bounds the rows one retention statement deletes, so no
// transaction of retention holds its locks and its WAL for long.
const pruneChunk = 10_000

// PruneBatches implements outpost.RetentionStore, in chunks over the
// received_at index.
func (db *DB) PruneBatches(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for {
		tag, err := db.pool.Exec(ctx, `DELETE FROM batches WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM batches WHERE received_at < $1 LIMIT $2))`, before.UnixMilli(), pruneChunk)
		if err != nil {
			return total, fmt.Errorf("prune batches: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < pruneChunk {
			return total, nil
		}
	}
}

// PurgeFinished implements outpost.RetentionStore.
func (db *DB) PurgeFinished(ctx context.Context, before time.Time) (int64, error) {
	ms := before.UnixMilli()
	tag, err := db.pool.Exec(ctx, `DELETE FROM down_queue WHERE
		(state IN ('succeeded', 'failed', 'timed_out', 'cancelled') AND finished_at > 0 AND finished_at < $1)
		OR (state = 'expired' AND expires_at < $1)
		OR (method IS NULL AND state = 'delivered' AND delivered_at > 0 AND delivered_at < $1)`, ms)
	if err != nil {
		return 0, fmt.Errorf("purge queue: %w", err)
	}
	return tag.RowsAffected(), nil
}

// PruneReadings implements outpost.RetentionStore: it drops the day
// partitions that end at or before before, and deletes the default
// partition's older readings. The readings of before's own day stay until
// the day is over. For a dropped partition the count is PostgreSQL's
// estimate of its rows.
func (db *DB) PruneReadings(ctx context.Context, before time.Time) (int64, error) {
	return db.parts.dropBefore(ctx, before)
}
