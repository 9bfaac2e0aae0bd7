package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The write path of readings, off the commit path:
//
//   - Small commits append to readings_landing, a rowid table keyed by
//     seq: every append lands at the end of one B-tree, so a commit dirties
//     a page or two however many series it touches. (Writing into the
//     clustered readings table dirties at least one page per series, and
//     each dirty page is written whole to the WAL and again at the next
//     checkpoint: most of the bytes written per reading at low load.)
//   - A background goroutine merges the landing table into the clustered
//     table once it holds MergeRows rows or its oldest row has waited
//     MergeAge. The clustered table costs pages per series touched (the
//     leaf, and the siblings and parent that SQLite rebalances when a leaf
//     in the middle of the tree fills), so a merge reads the rows once,
//     outside the write lock, sorted by the clustered key, and moves all
//     the rows of a series at once, a few series per transaction (about
//     MergeChunk rows): each transaction holds the write lock briefly, yet
//     each series' pages are written once per merge. A chunk records in
//     readings_merged the seq up to which its series are merged, which
//     hides those landing rows from reads (readings_all) until the last
//     transaction of the merge deletes them, a contiguous seq range. The
//     batch ids that travelled with the readings (readings_landing.batch)
//     move to the batches table with their series; until then db.land.ids
//     knows them, so redeliveries are recognised either way.
//   - The writer connection never checkpoints (wal_autocheckpoint 0): the
//     same goroutine runs a passive checkpoint on a connection of its own
//     every CheckpointReadings readings or CheckpointEvery, concurrently
//     with commits. A WAL that passed
//     CheckpointRestart pages is finished under the write lock (only the
//     frames written since the passive pass remain), so that the next
//     commit starts the WAL over from its beginning.
//
// Reads see both tables through the readings_all view.

// landing is the in-memory state of readings_landing, guarded by wmu.
type landing struct {
	ids   map[batchKey]struct{} // ids of the batches whose readings are in readings_landing, not yet merged
	rows  int                   // rows in readings_landing not yet merged
	since time.Time             // when the oldest of them landed; zero when none
}

// maintStats are the counters behind Stats, guarded by mu.
type maintStats struct {
	mu                 sync.Mutex
	merges, mergedRows int64
	mergeHeld          time.Duration
	appendHeld         time.Duration
	checkpoints        int64
	checkpointTime     time.Duration
	checkpointHeld     time.Duration
	restarts           int64
	walFrames          int
	errors             int64
	lastErr            error
}

// Stats are counters of the store's background work since Open.
type Stats struct {
	// LandingRows is the number of readings in the landing table now.
	LandingRows int
	// AppendHeld is the time AppendBatches held the write lock.
	AppendHeld time.Duration
	// Merges counts merge transactions; MergedRows the readings they
	// moved; MergeHeld the time they held the write lock.
	Merges, MergedRows int64
	MergeHeld          time.Duration
	// Checkpoints counts background checkpoints; CheckpointTime is their
	// total duration, CheckpointHeld the part spent under the write lock
	// (finishing a WAL before it starts over), Restarts how often that
	// happened.
	Checkpoints    int64
	CheckpointTime time.Duration
	CheckpointHeld time.Duration
	Restarts       int64
	// WALFrames is the WAL's length in pages at the last checkpoint.
	WALFrames int
	// Errors counts failed merges and checkpoints (each is retried);
	// LastError is the latest.
	Errors    int64
	LastError error
}

// Stats returns the counters of the background merge and checkpoints.
func (db *DB) Stats() Stats {
	db.wmu.Lock()
	rows := db.land.rows
	db.wmu.Unlock()
	m := &db.maint
	m.mu.Lock()
	defer m.mu.Unlock()
	return Stats{LandingRows: rows, AppendHeld: m.appendHeld, Merges: m.merges, MergedRows: m.mergedRows, MergeHeld: m.mergeHeld,
		Checkpoints: m.checkpoints, CheckpointTime: m.checkpointTime, CheckpointHeld: m.checkpointHeld, Restarts: m.restarts,
		WALFrames: m.walFrames, Errors: m.errors, LastError: m.lastErr}
}

// WriteTime returns how long appends and background work (merges,
// finishing checkpoints) have held the write lock since Open: the writer's
// busy time, without the time commits spent waiting for the lock.
func (db *DB) WriteTime() time.Duration {
	m := &db.maint
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.appendHeld + m.mergeHeld + m.checkpointHeld
}

// held adds the time since start to *d.
func (m *maintStats) held(d *time.Duration, start time.Time) {
	t := time.Since(start)
	m.mu.Lock()
	*d += t
	m.mu.Unlock()
}

func (m *maintStats) fail(err error) {
	m.mu.Lock()
	m.errors++
	m.lastErr = err
	m.mu.Unlock()
}

// openAppend prepares the append statements and loads the state of the
// landing table: its row count, the batch ids it holds and, with the
// counter, the last seq used.
func (db *DB) openAppend(ctx context.Context) error {
	if err := db.stmts.prepare(ctx, db.w); err != nil {
		return fmt.Errorf("sqlite: prepare: %w", err)
	}
	var counter, landed int64
	err := db.w.QueryRowContext(ctx, `SELECT value, (SELECT COALESCE(MAX(seq), 0) FROM readings_landing),
		(SELECT COUNT(*) FROM readings_landing l WHERE `+unmerged+`)
		FROM counters WHERE name = 'readings_seq'`).Scan(&counter, &landed, &db.land.rows)
	if err != nil {
		return fmt.Errorf("sqlite: readings sequence: %w", err)
	}
	db.readSeq = max(counter, landed)
	db.land.ids = map[batchKey]struct{}{}
	if db.land.rows > 0 {
		db.land.since = time.Now()
	}
	rows, err := db.w.QueryContext(ctx, `SELECT f.device_seq, l.batch FROM readings_landing l JOIN feeds f ON f.seq = l.series
		WHERE l.batch IS NOT NULL AND `+unmerged)
	if err != nil {
		return fmt.Errorf("sqlite: landing batch ids: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k batchKey
		if err := rows.Scan(&k.dev, &k.id); err != nil {
			return fmt.Errorf("sqlite: landing batch ids: %w", err)
		}
		db.land.ids[k] = struct{}{}
	}
	return rows.Err()
}

// unmerged is the condition on a landing row l that it is not yet in the
// readings table (the same as in the readings_all view).
const unmerged = `l.seq > COALESCE((SELECT m.through FROM readings_merged m WHERE m.series = l.series), 0)`

// landed records n rows appended to the landing table. Callers hold wmu.
func (db *DB) landed(n int) {
	idle := db.written.Add(int64(n)) == int64(n) || db.land.rows == 0
	if db.land.rows == 0 {
		db.land.since = time.Now()
	}
	db.land.rows += n
	if idle || db.land.rows >= db.opt.MergeRows {
		db.kickMaintenance()
	}
}

// kickMaintenance wakes the maintenance goroutine: work is due, or it was
// idle (nothing landed or written) and must start its clock.
func (db *DB) kickMaintenance() {
	select {
	case db.maintKick <- struct{}{}:
	default:
	}
}

// forgetLanding drops what db.land knows of device dev, whose landing
// rows were deleted (n of them). Callers hold wmu.
func (db *DB) forgetLanding(dev int64, n int) {
	db.deletions++
	for k := range db.land.ids {
		if k.dev == dev {
			delete(db.land.ids, k)
		}
	}
	db.land.rows = max(0, db.land.rows-n)
	if db.land.rows == 0 {
		db.land.since = time.Time{}
	}
}

func (db *DB) startMaintenance() {
	db.maintKick = make(chan struct{}, 1)
	db.maintStop = make(chan struct{})
	db.maintDone = make(chan struct{})
	go db.maintain()
}

func (db *DB) stopMaintenance() {
	if db.maintStop == nil {
		return
	}
	select {
	case <-db.maintStop:
	default:
		close(db.maintStop)
	}
	<-db.maintDone
}

// maintain merges the landing table and checkpoints the WAL until Close.
func (db *DB) maintain() {
	defer close(db.maintDone)
	ctx := context.Background()
	tick := time.NewTicker(min(db.opt.MergeAge/4, db.opt.CheckpointEvery, 50*time.Millisecond))
	defer tick.Stop()
	lastCheckpoint := time.Now()
	for {
		// With nothing landed and nothing written since the last
		// checkpoint there is nothing to time: the goroutine waits for a
		// kick (landed) and the ticker wakes nobody. It woke the process
		// 20 times a second for nothing: a third of an idle platform's CPU
		// (issue 16).
		var due <-chan time.Time
		if db.maintBusy() {
			due = tick.C
		}
		select {
		case <-db.maintStop:
			return
		case <-due:
		case <-db.maintKick:
		}
		db.maintWakes.Add(1)
		if upTo, ok := db.mergeDue(); ok {
			if err := db.merge(ctx, upTo); err != nil {
				db.maint.fail(err)
			}
		}
		if n := db.written.Load(); n >= int64(db.opt.CheckpointReadings) || (n > 0 && time.Since(lastCheckpoint) >= db.opt.CheckpointEvery) {
			db.written.Add(-n)
			lastCheckpoint = time.Now()
			if err := db.checkpoint(ctx); err != nil {
				db.maint.fail(err)
			}
		}
	}
}

// maintBusy tells whether the landing table holds rows or readings were
// written since the last checkpoint: the maintenance clock must run.
func (db *DB) maintBusy() bool {
	if db.written.Load() > 0 {
		return true
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	return db.land.rows > 0
}

// mergeDue tells whether the landing table is due for a merge, and up to
// which seq: the rows there now.
func (db *DB) mergeDue() (int64, bool) {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	due := db.land.rows >= db.opt.MergeRows || (db.land.rows > 0 && time.Since(db.land.since) >= db.opt.MergeAge)
	return db.readSeq, due
}

// MergeLanding moves every reading in the landing table into the readings
// table now, instead of waiting for the background merge.
func (db *DB) MergeLanding(ctx context.Context) error {
	db.wmu.Lock()
	upTo := db.readSeq
	db.wmu.Unlock()
	return db.merge(ctx, upTo)
}

// mergeReadHook, when set (tests), runs once a merge has read its rows.
var mergeReadHook func(*DB)

// errDeviceDeleted stops a merge that read rows before a device was
// deleted.
var errDeviceDeleted = errors.New("merge readings: a device was deleted meanwhile")

// landRow is a landing row on its way to the readings table.
type landRow struct {
	series, ts, seq int64
	value           string
}

// merge moves the landing rows with seq ≤ upTo into the readings table.
// It reads them once, outside the write lock, sorted by the clustered key;
// then it inserts them a few series per transaction (about MergeChunk
// rows), releasing the write lock in between, so that a commit waits for
// one short transaction at most; a last transaction deletes them from the
// landing table.
func (db *DB) merge(ctx context.Context, upTo int64) error {
	db.mergeMu.Lock()
	defer db.mergeMu.Unlock()
	began := time.Now()
	// A merge that Close interrupted left marks: finish it first, so that
	// the statements below need not look at marks.
	var marks bool
	if err := db.r.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM readings_merged)`).Scan(&marks); err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	if marks {
		if err := db.dropMerged(ctx, 0, began); err != nil {
			return err
		}
	}
	// This snapshot is taken after upTo was: every row up to upTo is in
	// it. Only merges remove rows, besides the deletion of a device: then
	// the merge stops (see mergeSeries) and the next one starts over.
	db.wmu.Lock()
	deletions := db.deletions
	db.wmu.Unlock()
	rows, err := db.r.QueryContext(ctx, `SELECT series, ts, seq, value FROM readings_landing WHERE seq <= ? ORDER BY series, ts, seq`, upTo)
	if err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	all := db.mergeBuf[:0]
	for rows.Next() {
		var r landRow
		if err := rows.Scan(&r.series, &r.ts, &r.seq, &r.value); err != nil {
			rows.Close()
			return fmt.Errorf("merge readings: %w", err)
		}
		all = append(all, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	defer func() {
		clear(all)
		db.mergeBuf = all[:0]
	}()
	if len(all) == 0 {
		return nil
	}
	if mergeReadHook != nil {
		mergeReadHook(db)
	}
	for first := true; len(all) > 0; first = false {
		select {
		case <-db.maintStop:
			return nil // the next merge finishes from readings_merged
		default:
		}
		// Whole series, about MergeChunk rows (at least one series).
		n := 0
		for n < len(all) {
			s := all[n].series
			end := n
			for end < len(all) && all[end].series == s {
				end++
			}
			if n > 0 && end > db.opt.MergeChunk {
				break
			}
			n = end
		}
		if err := db.mergeSeries(ctx, upTo, deletions, all[:n], first); err != nil {
			if errors.Is(err, errDeviceDeleted) {
				return nil
			}
			return err
		}
		all = all[n:]
	}
	return db.dropMerged(ctx, upTo, began)
}

// mergeSeries inserts the landing rows of whole series into the readings
// table and marks those series merged up to upTo, in one transaction; the
// first of a merge also moves every batch id up to upTo.
func (db *DB) mergeSeries(ctx context.Context, upTo, deletions int64, part []landRow, first bool) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	if db.deletions != deletions {
		// A device deleted since the rows were read took its landing rows
		// with it (and its series number may be reused): they must not
		// come back.
		return errDeviceDeleted
	}
	start := time.Now()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	defer tx.Rollback()
	var keys []batchKey
	if first {
		rows, err := tx.QueryContext(ctx, `INSERT OR IGNORE INTO batches (device_seq, batch_id, received_at)
			SELECT f.device_seq, l.batch, ? FROM readings_landing l JOIN feeds f ON f.seq = l.series
			WHERE l.seq <= ? AND l.batch IS NOT NULL
			RETURNING device_seq, batch_id`, time.Now().UnixMilli(), upTo)
		if err != nil {
			return fmt.Errorf("merge readings: %w", err)
		}
		for rows.Next() {
			var k batchKey
			if err := rows.Scan(&k.dev, &k.id); err != nil {
				rows.Close()
				return fmt.Errorf("merge readings: %w", err)
			}
			keys = append(keys, k)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("merge readings: %w", err)
		}
	}
	in := rowInserter{ctx: ctx, tx: tx, stmts: &db.stmts.readings, cols: 4, args: db.app.args[:0]}
	defer func() { db.app.args = in.args[:0] }()
	mark := tx.StmtContext(ctx, db.stmts.mark)
	var moved int64
	for i := 0; i < len(part); {
		s := part[i].series
		end := i
		for end < len(part) && part[end].series == s {
			end++
		}
		for _, r := range part[i:end] {
			if err := in.add(r.series, r.ts, r.seq, r.value); err != nil {
				return fmt.Errorf("merge readings: %w", err)
			}
		}
		if err := in.flush(); err != nil {
			return fmt.Errorf("merge readings: %w", err)
		}
		if _, err := mark.ExecContext(ctx, s, upTo); err != nil {
			return fmt.Errorf("merge readings: %w", err)
		}
		moved += int64(end - i)
		i = end
	}
	// Every seq up to readSeq has been used: the counter must cover the
	// merged rows once the landing table no longer holds them.
	if _, err := tx.StmtContext(ctx, db.stmts.setSeq).ExecContext(ctx, db.readSeq); err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	for _, k := range keys {
		delete(db.land.ids, k)
	}
	db.land.rows = max(0, db.land.rows-len(part))
	if db.land.rows == 0 {
		db.land.since = time.Time{}
	}
	m := &db.maint
	m.mu.Lock()
	m.merges++
	m.mergedRows += moved
	m.mergeHeld += time.Since(start)
	m.mu.Unlock()
	return nil
}

// dropMerged ends a merge: it deletes the landing rows up to upTo, now
// all in the readings table, and the merge marks, in one transaction.
// With upTo 0 it finishes an interrupted merge: only the rows its marks
// cover go.
func (db *DB) dropMerged(ctx context.Context, upTo int64, began time.Time) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	start := time.Now()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	defer tx.Rollback()
	q, args := `DELETE FROM readings_landing WHERE seq <= ?`, []any{upTo}
	if upTo == 0 {
		q, args = `DELETE FROM readings_landing AS l WHERE NOT (`+unmerged+`)`, nil
	}
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM readings_merged`); err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("merge readings: %w", err)
	}
	if db.land.rows > 0 {
		db.land.since = began // the rows left arrived during the merge
	}
	m := &db.maint
	m.mu.Lock()
	m.mergeHeld += time.Since(start)
	m.mu.Unlock()
	return nil
}

// checkpoint copies the WAL into the database file without holding up
// commits; a WAL grown past CheckpointRestart pages is then finished
// under the write lock, so the next commit starts it over.
func (db *DB) checkpoint(ctx context.Context) error {
	start := time.Now()
	busy, frames, done, err := db.walCheckpoint(ctx)
	var held time.Duration
	if err == nil && frames >= db.opt.CheckpointRestart {
		db.wmu.Lock()
		t := time.Now()
		busy, frames, done, err = db.walCheckpoint(ctx)
		held = time.Since(t)
		db.wmu.Unlock()
	}
	m := &db.maint
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checkpoints++
	m.checkpointTime += time.Since(start)
	m.checkpointHeld += held
	if held > 0 && err == nil && busy == 0 && done == frames {
		m.restarts++
	}
	if err == nil {
		m.walFrames = frames
	}
	return err
}

// Checkpoint runs a background checkpoint now.
func (db *DB) Checkpoint(ctx context.Context) error { return db.checkpoint(ctx) }

// walCheckpoint runs a passive checkpoint on the checkpointer connection
// and returns SQLite's answer: busy, the WAL's length in frames and how
// many of them are in the database file.
func (db *DB) walCheckpoint(ctx context.Context) (busy, frames, done int, err error) {
	err = db.ck.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &frames, &done)
	if errors.Is(err, sql.ErrNoRows) {
		err = nil
	}
	if err != nil {
		err = fmt.Errorf("checkpoint: %w", err)
	}
	return busy, frames, done, err
}
