package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// insertChunk is the number of rows per multi-row INSERT. Fewer, larger
// statements cut the per-row cost of crossing into SQLite by about half.
const insertChunk = 128

// insertCols is the number of values per readings row.
const insertCols = 4

// AppendBatches implements outpost.TelemetryStore. All batches commit in
// one transaction; that is what makes group commit cheap.
func (db *DB) AppendBatches(ctx context.Context, batches []*outpost.Batch) ([]outpost.AppendResult, error) {
	db.wmu.Lock()
	defer db.wmu.Unlock()

	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("append readings: %w", err)
	}
	newFeeds := []feedKey{}
	seq0 := db.readSeq
	fail := func(err error) ([]outpost.AppendResult, error) {
		tx.Rollback()
		db.readSeq = seq0
		for _, k := range newFeeds { // their rows were rolled back
			delete(db.feedSeq, k)
		}
		return nil, fmt.Errorf("append readings: %w", err)
	}

	now := time.Now().UnixMilli()
	res := make([]outpost.AppendResult, len(batches))
	args := make([]any, 0, insertCols*insertChunk)
	flush := func(all bool) error {
		for len(args) >= insertCols*insertChunk || (all && len(args) > 0) {
			n := min(len(args)/insertCols, insertChunk)
			if _, err := tx.ExecContext(ctx, insertSQL(n), args[:insertCols*n]...); err != nil {
				return err
			}
			args = append(args[:0], args[insertCols*n:]...)
		}
		return nil
	}
	for i, b := range batches {
		dev, ok, err := db.deviceSeq(ctx, tx, b.DeviceID)
		if err != nil {
			return fail(err)
		} else if !ok {
			res[i] = outpost.AppendUnknownDevice
			continue
		}
		if b.ID != "" {
			r, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO batches (device_seq, batch_id, received_at) VALUES (?, ?, ?)`, dev, b.ID, now)
			if err != nil {
				return fail(err)
			}
			if n, _ := r.RowsAffected(); n == 0 {
				res[i] = outpost.AppendDuplicate
				continue
			}
		}
		for _, rd := range b.Readings {
			k := feedKey{dev, rd.Feed}
			series, ok := db.feedSeq[k]
			if !ok {
				if series, err = feedSeqTx(ctx, tx, k); err != nil {
					return fail(err)
				}
				db.feedSeq[k] = series
				newFeeds = append(newFeeds, k)
			}
			db.readSeq++
			args = append(args, series, rd.TS, db.readSeq, string(rd.Value))
			if len(args) >= insertCols*insertChunk {
				if err := flush(false); err != nil {
					return fail(err)
				}
			}
		}
		res[i] = outpost.AppendStored
	}
	if err := flush(true); err != nil {
		return fail(err)
	}
	if db.readSeq != seq0 {
		if _, err := tx.ExecContext(ctx, `UPDATE counters SET value = ? WHERE name = 'readings_seq'`, db.readSeq); err != nil {
			return fail(err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fail(err)
	}
	return res, nil
}

var insertSQLs = func() []string {
	s := make([]string, insertChunk+1)
	for n := 1; n <= insertChunk; n++ {
		s[n] = "INSERT INTO readings (series, ts, seq, value) VALUES " + strings.TrimSuffix(strings.Repeat("(?,?,?,?),", n), ",")
	}
	return s
}()

func insertSQL(n int) string { return insertSQLs[n] }

// deviceSeq resolves a device id to its internal key, caching hits. Callers
// hold wmu.
func (db *DB) deviceSeq(ctx context.Context, tx *sql.Tx, id string) (int64, bool, error) {
	if seq, ok := db.devSeq[id]; ok {
		return seq, true, nil
	}
	var seq int64
	err := tx.QueryRowContext(ctx, `SELECT seq FROM devices WHERE id = ?`, id).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	} else if err != nil {
		return 0, false, err
	}
	db.devSeq[id] = seq
	return seq, true, nil
}

func feedSeqTx(ctx context.Context, tx *sql.Tx, k feedKey) (int64, error) {
	if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO feeds (device_seq, ref) VALUES (?, ?)`, k.dev, k.ref); err != nil {
		return 0, err
	}
	var seq int64
	err := tx.QueryRowContext(ctx, `SELECT seq FROM feeds WHERE device_seq = ? AND ref = ?`, k.dev, k.ref).Scan(&seq)
	return seq, err
}

// Readings implements outpost.TelemetryStore.
func (db *DB) Readings(ctx context.Context, f outpost.ReadingFilter) ([]outpost.Reading, error) {
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	var dev int64
	err := db.r.QueryRowContext(ctx, `SELECT seq FROM devices WHERE id = ?`, f.DeviceID).Scan(&dev)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "device %s not found", f.DeviceID)
	} else if err != nil {
		return nil, fmt.Errorf("readings: %w", err)
	}
	type series struct {
		seq int64
		ref string
	}
	var all []series
	q, args := `SELECT seq, ref FROM feeds WHERE device_seq = ?`, []any{dev}
	if f.Feed != "" {
		q, args = q+` AND ref = ?`, append(args, f.Feed)
	}
	rows, err := db.r.QueryContext(ctx, q+` ORDER BY seq`, args...)
	if err != nil {
		return nil, fmt.Errorf("readings: %w", err)
	}
	for rows.Next() {
		var s series
		if err := rows.Scan(&s.seq, &s.ref); err != nil {
			rows.Close()
			return nil, fmt.Errorf("readings: %w", err)
		}
		all = append(all, s)
	}
	rows.Close()

	until := f.Until
	if until <= 0 {
		until = 1<<63 - 1
	}
	// Each series is read through the (series, ts, seq) key, newest first (or
	// oldest first from Since), then the per-series slices are merged.
	order := "DESC"
	if f.Since > 0 {
		order = "ASC"
	}
	type row struct {
		outpost.Reading
		seq int64
	}
	var merged []row
	for _, s := range all {
		rows, err := db.r.QueryContext(ctx, `SELECT seq, ts, value FROM readings WHERE series = ? AND ts >= ? AND ts < ? ORDER BY ts `+order+`, seq `+order+` LIMIT ?`,
			s.seq, f.Since, until, f.Limit)
		if err != nil {
			return nil, fmt.Errorf("readings: %w", err)
		}
		for rows.Next() {
			var r row
			var v string
			if err := rows.Scan(&r.seq, &r.TS, &v); err != nil {
				rows.Close()
				return nil, fmt.Errorf("readings: %w", err)
			}
			r.Feed, r.Value = s.ref, []byte(v)
			merged = append(merged, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("readings: %w", err)
		}
	}
	slices.SortFunc(merged, func(a, b row) int {
		if a.TS != b.TS {
			return cmpInt(a.TS, b.TS)
		}
		return cmpInt(a.seq, b.seq)
	})
	if len(merged) > f.Limit {
		if f.Since > 0 {
			merged = merged[:f.Limit]
		} else {
			merged = merged[len(merged)-f.Limit:]
		}
	}
	out := make([]outpost.Reading, len(merged))
	for i := range merged {
		out[i] = merged[i].Reading
	}
	return out, nil
}

// Feeds implements outpost.TelemetryStore.
func (db *DB) Feeds(ctx context.Context, deviceID string) ([]string, error) {
	rows, err := db.r.QueryContext(ctx, `SELECT f.ref FROM feeds f JOIN devices d ON d.seq = f.device_seq WHERE d.id = ? ORDER BY f.ref`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("feeds: %w", err)
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("feeds: %w", err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// MaintenanceTime returns the time the writer has spent on background
// work (merges, checkpoints) since Open.
func (db *DB) MaintenanceTime() time.Duration { return 0 }
