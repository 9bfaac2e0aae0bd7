package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// LandingMode chooses where AppendBatches writes readings.
type LandingMode int

const (
	// LandingAuto (the default) appends a commit to the landing table when
	// it holds few readings per series, and writes a large one straight
	// into the readings table, where each series' page then takes enough
	// rows to be worth writing.
	LandingAuto LandingMode = iota
	// LandingAlways appends every commit to the landing table.
	LandingAlways
	// LandingOff writes every commit into the readings table (the design
	// before the landing table; for comparison).
	LandingOff
)

// directPerSeries is the average number of readings per series from which
// LandingAuto writes a commit straight into the readings table. Every
// series a commit touches costs about four 4 KiB pages of the clustered
// table (its leaf, and the neighbours and parent SQLite rebalances when a
// leaf in the middle of the tree fills), each written to the WAL and again
// at the next checkpoint: about 16 KB/r + 26 bytes per reading for r
// readings per series. The landing table costs about 250 bytes per
// reading, merge and checkpoint included, at one batch per commit; from
// 64 readings per series the direct write costs about as much, and less
// CPU than appending and merging later.
const directPerSeries = 64

// chunkLevels is the number of prepared multi-row INSERTs per table: 1, 2,
// 4, … 128 rows. A commit inserts 128 rows per statement and the rest as
// a sum of powers of two, so every statement is prepared once per
// connection and never parsed again (a 128-row INSERT has 512 or 640
// placeholders: parsing it for every chunk cost 12–16 % of the CPU).
const chunkLevels = 8

// maxChunk is the largest multi-row INSERT.
const maxChunk = 1 << (chunkLevels - 1)

// appendStmts are AppendBatches' statements, prepared once on the writer
// connection. Row inserts use INSERT OR IGNORE: a statement that can
// abort on a constraint needs a statement journal, which SQLite spills to
// a temporary file past 64 KiB — for multi-row inserts into the clustered
// table that was the original of every page the statement touched, about
// 1 KB written per reading. seq makes every key unique, so nothing is
// ever ignored.
type appendStmts struct {
	readings [chunkLevels]*sql.Stmt // INSERT OR IGNORE INTO readings, 1<<i rows
	landing  [chunkLevels]*sql.Stmt // INSERT OR IGNORE INTO readings_landing, 1<<i rows
	insBatch *sql.Stmt
	hasBatch *sql.Stmt
	setSeq   *sql.Stmt
	mark     *sql.Stmt // merges: readings_merged
}

func (st *appendStmts) prepare(ctx context.Context, w *sql.DB) error {
	var err error
	for i := range chunkLevels {
		n := 1 << i
		if st.readings[i], err = w.PrepareContext(ctx, "INSERT OR IGNORE INTO readings (series, ts, seq, value) VALUES "+strings.TrimSuffix(strings.Repeat("(?,?,?,?),", n), ",")); err != nil {
			return err
		}
		if st.landing[i], err = w.PrepareContext(ctx, "INSERT OR IGNORE INTO readings_landing (seq, series, ts, value, batch) VALUES "+strings.TrimSuffix(strings.Repeat("(?,?,?,?,?),", n), ",")); err != nil {
			return err
		}
	}
	if st.insBatch, err = w.PrepareContext(ctx, `INSERT OR IGNORE INTO batches (device_seq, batch_id, received_at) VALUES (?, ?, ?)`); err != nil {
		return err
	}
	if st.hasBatch, err = w.PrepareContext(ctx, `SELECT 1 FROM batches WHERE device_seq = ? AND batch_id = ?`); err != nil {
		return err
	}
	if st.setSeq, err = w.PrepareContext(ctx, `UPDATE counters SET value = ? WHERE name = 'readings_seq'`); err != nil {
		return err
	}
	st.mark, err = w.PrepareContext(ctx, `INSERT INTO readings_merged (series, through) VALUES (?, ?)
		ON CONFLICT (series) DO UPDATE SET through = excluded.through`)
	return err
}

func (st *appendStmts) close() {
	for _, s := range append(append(st.readings[:], st.landing[:]...), st.insBatch, st.hasBatch, st.setSeq, st.mark) {
		if s != nil {
			s.Close()
		}
	}
}

// appendBuf holds AppendBatches' buffers between calls (guarded by wmu).
type appendBuf struct {
	args     []any
	distinct map[seriesName]struct{}
	pending  map[batchKey]struct{}
}

type seriesName struct{ dev, feed string }

// batchKey identifies a batch id of a device.
type batchKey struct {
	dev int64
	id  string
}

// toLanding tells whether a commit of batches goes to the landing table.
func (db *DB) toLanding(batches []*outpost.Batch) bool {
	switch db.opt.Landing {
	case LandingAlways:
		return true
	case LandingOff:
		return false
	}
	n := 0
	for _, b := range batches {
		n += len(b.Readings)
	}
	if n < directPerSeries {
		return true
	}
	if db.app.distinct == nil {
		db.app.distinct = map[seriesName]struct{}{}
	}
	clear(db.app.distinct)
	for _, b := range batches {
		for _, r := range b.Readings {
			db.app.distinct[seriesName{b.DeviceID, r.Feed}] = struct{}{}
		}
	}
	return n < directPerSeries*len(db.app.distinct)
}

// rowInserter inserts rows through the prepared multi-row statements of
// one table within a transaction.
type rowInserter struct {
	ctx   context.Context
	tx    *sql.Tx
	stmts *[chunkLevels]*sql.Stmt
	txs   [chunkLevels]*sql.Stmt // the statements bound to tx, made on first use
	cols  int
	args  []any
}

func (in *rowInserter) add(vals ...any) error {
	in.args = append(in.args, vals...)
	if len(in.args) == in.cols*maxChunk {
		return in.flush()
	}
	return nil
}

// flush inserts every row held, in order (appends to the landing table
// must stay appends): maxChunk rows per statement, then the rest as a
// sum of powers of two.
func (in *rowInserter) flush() error {
	args := in.args
	for len(args) > 0 {
		rows := len(args) / in.cols
		lvl := chunkLevels - 1
		for 1<<lvl > rows {
			lvl--
		}
		n := (1 << lvl) * in.cols
		st := in.txs[lvl]
		if st == nil {
			st = in.tx.StmtContext(in.ctx, in.stmts[lvl])
			in.txs[lvl] = st
		}
		if _, err := st.ExecContext(in.ctx, args[:n]...); err != nil {
			return err
		}
		args = args[n:]
	}
	clear(in.args)
	in.args = in.args[:0]
	return nil
}

// AppendBatches implements outpost.TelemetryStore. All batches commit in
// one transaction; that is what makes group commit cheap. A commit with
// few readings per series goes to the landing table (see toLanding),
// merged into the readings table in the background; reads see both.
func (db *DB) AppendBatches(ctx context.Context, batches []*outpost.Batch) ([]outpost.AppendResult, error) {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	defer db.maint.held(&db.maint.appendHeld, time.Now())

	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("append readings: %w", err)
	}
	newFeeds := []feedKey{}
	seq0 := db.readSeq
	if db.app.pending == nil {
		db.app.pending = map[batchKey]struct{}{}
	}
	pending := db.app.pending // batch ids that go to the landing table
	clear(pending)
	fail := func(err error) ([]outpost.AppendResult, error) {
		tx.Rollback()
		db.readSeq = seq0
		for _, k := range newFeeds { // their rows were rolled back
			delete(db.feedSeq, k)
		}
		clear(pending)
		return nil, fmt.Errorf("append readings: %w", err)
	}

	landing := db.toLanding(batches)
	in := rowInserter{ctx: ctx, tx: tx, stmts: &db.stmts.readings, cols: 4, args: db.app.args[:0]}
	if landing {
		in.stmts, in.cols = &db.stmts.landing, 5
	}
	defer func() { db.app.args = in.args[:0] }()
	var insBatch, hasBatch *sql.Stmt
	now := time.Now().UnixMilli()
	res := make([]outpost.AppendResult, len(batches))
	landed := 0
	for i, b := range batches {
		dev, ok, err := db.deviceSeq(ctx, tx, b.DeviceID)
		if err != nil {
			return fail(err)
		} else if !ok {
			res[i] = outpost.AppendUnknownDevice
			continue
		}
		var batchID any // the id on the batch's first landing row, or NULL
		if b.ID != "" {
			k := batchKey{dev, b.ID}
			if _, ok := db.land.ids[k]; ok {
				res[i] = outpost.AppendDuplicate
				continue
			}
			if landing && len(b.Readings) > 0 {
				// The id travels with the readings; until the merge it is
				// known by db.land.ids, not by the batches table.
				if _, ok := pending[k]; ok {
					res[i] = outpost.AppendDuplicate
					continue
				}
				if hasBatch == nil {
					hasBatch = tx.StmtContext(ctx, db.stmts.hasBatch)
				}
				var one int
				switch err := hasBatch.QueryRowContext(ctx, dev, b.ID).Scan(&one); {
				case err == nil:
					res[i] = outpost.AppendDuplicate
					continue
				case !errors.Is(err, sql.ErrNoRows):
					return fail(err)
				}
				pending[k] = struct{}{}
				batchID = b.ID
			} else {
				if insBatch == nil {
					insBatch = tx.StmtContext(ctx, db.stmts.insBatch)
				}
				r, err := insBatch.ExecContext(ctx, dev, b.ID, now)
				if err != nil {
					return fail(err)
				}
				if n, _ := r.RowsAffected(); n == 0 {
					res[i] = outpost.AppendDuplicate
					continue
				}
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
			if landing {
				err = in.add(db.readSeq, series, rd.TS, string(rd.Value), batchID)
				batchID = nil
				landed++
			} else {
				err = in.add(series, rd.TS, db.readSeq, string(rd.Value))
			}
			if err != nil {
				return fail(err)
			}
		}
		res[i] = outpost.AppendStored
	}
	if err := in.flush(); err != nil {
		return fail(err)
	}
	// The landing table's largest seq carries the sequence until a merge
	// or a direct commit stores it in counters.
	if !landing && db.readSeq != seq0 {
		if _, err := tx.StmtContext(ctx, db.stmts.setSeq).ExecContext(ctx, db.readSeq); err != nil {
			return fail(err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fail(err)
	}
	for k := range pending {
		db.land.ids[k] = struct{}{}
	}
	clear(pending)
	if landed > 0 {
		db.landed(landed)
	} else if n := db.readSeq - seq0; n > 0 {
		if db.written.Add(n) == n {
			db.kickMaintenance() // it was idle: the checkpoint clock starts
		}
	}
	return res, nil
}

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
	var out []outpost.Reading
	err := db.EachReading(ctx, f, func(r outpost.Reading) error {
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// EachReading calls fn with each reading Readings would return, in the
// same order, as it reads them: one query, whatever the number of feeds,
// so the memory a query takes is bounded by its page, not by the feeds
// times the limit, and a caller that writes each reading out holds none.
// It returns ENOTFOUND for an unknown device (before calling fn), or the
// first error of fn. Long scans run on a pool of their own, so they never
// hold the connections of short API reads.
func (db *DB) EachReading(ctx context.Context, f outpost.ReadingFilter, fn func(r outpost.Reading) error) error {
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	var dev int64
	err := db.r.QueryRowContext(ctx, `SELECT seq FROM devices WHERE id = ?`, f.DeviceID).Scan(&dev)
	if errors.Is(err, sql.ErrNoRows) {
		return outpost.Errorf(outpost.ENOTFOUND, "device %s not found", f.DeviceID)
	} else if err != nil {
		return fmt.Errorf("readings: %w", err)
	}
	until := f.Until
	if until <= 0 {
		until = 1<<63 - 1
	}
	// One statement over the readings key (series, ts, seq): with Since,
	// the first Limit readings from Since (SQLite keeps a sorter of at
	// most Limit rows when several feeds are read); without it, the newest
	// Limit readings, put back in ascending order.
	sel := `SELECT f.ref, r.ts, r.seq, r.value FROM readings_all r JOIN feeds f ON f.seq = r.series
WHERE f.device_seq = ? AND r.ts >= ? AND r.ts < ?`
	args := []any{dev, f.Since, until}
	if f.Feed != "" {
		sel += ` AND f.ref = ?`
		args = append(args, f.Feed)
	}
	var q string
	if f.Since > 0 {
		q = sel + ` ORDER BY r.ts, r.seq LIMIT ?`
	} else {
		q = `SELECT ref, ts, seq, value FROM (` + sel + ` ORDER BY r.ts DESC, r.seq DESC LIMIT ?) ORDER BY ts, seq`
	}
	args = append(args, f.Limit)
	rows, err := db.scan.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("readings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r outpost.Reading
		var seq int64
		var v []byte
		if err := rows.Scan(&r.Feed, &r.TS, &seq, &v); err != nil {
			return fmt.Errorf("readings: %w", err)
		}
		r.Value = v
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("readings: %w", err)
	}
	return nil
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
