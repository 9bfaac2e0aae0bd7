package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// PruneBatches implements outpost.RetentionStore. It forgets the ids of telemetry batches received before
// before. A batch id is kept so that a redelivered batch is not stored
// twice; a device redelivers only what its outbox still holds, so ids
// older than any outbox can wait may go. It returns how many were removed.
func (db *DB) PruneBatches(ctx context.Context, before time.Time) (int64, error) {
	// Ids still in the landing table move to batches first, so that
	// they are pruned like the others.
	if err := db.MergeLanding(ctx); err != nil {
		return 0, fmt.Errorf("prune batches: %w", err)
	}
	var n int64
	err := db.writeTx(ctx, "prune batches", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM batches WHERE received_at < ?`, before.UnixMilli())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

// PurgeFinished implements outpost.RetentionStore. It removes down-queue rows that finished before before:
// calls that succeeded, failed, timed out or were cancelled, messages that
// expired, and other messages the device acknowledged. Waiting and
// in-flight rows are never touched. It returns how many were removed.
func (db *DB) PurgeFinished(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	ms := before.UnixMilli()
	err := db.writeTx(ctx, "purge queue", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM down_queue WHERE
			(state IN ('succeeded', 'failed', 'timed_out', 'cancelled') AND finished_at > 0 AND finished_at < ?)
			OR (state = 'expired' AND expires_at < ?)
			OR (method IS NULL AND state = 'delivered' AND delivered_at > 0 AND delivered_at < ?)`, ms, ms, ms)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

// PruneReadings implements outpost.RetentionStore: it removes every
// reading older than before. Each series is pruned in a transaction of its
// own over the readings key (series, ts, seq), so the writer is never held
// for the whole table and ingestion goes on between them.
func (db *DB) PruneReadings(ctx context.Context, before time.Time) (int64, error) {
	// Readings still in the landing table move to readings first, so that
	// they are pruned like the others.
	if err := db.MergeLanding(ctx); err != nil {
		return 0, fmt.Errorf("prune readings: %w", err)
	}
	rows, err := db.r.QueryContext(ctx, `SELECT seq FROM feeds ORDER BY seq`)
	if err != nil {
		return 0, fmt.Errorf("prune readings: %w", err)
	}
	var series []int64
	for rows.Next() {
		var s int64
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return 0, fmt.Errorf("prune readings: %w", err)
		}
		series = append(series, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("prune readings: %w", err)
	}
	var total int64
	ms := before.UnixMilli()
	for _, s := range series {
		err := db.writeTx(ctx, "prune readings", func(tx *sql.Tx) error {
			res, err := tx.ExecContext(ctx, `DELETE FROM readings WHERE series = ? AND ts < ?`, s, ms)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			total += n
			return err
		})
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
