// Package sqlite implements the platform's stores on SQLite through the pure
// Go driver modernc.org/sqlite.
//
// One connection writes (SQLite allows one writer at a time; serialising in
// Go avoids busy retries) and a small pool reads, both in WAL mode so reads
// never block ingestion. Readings take a path of their own (landing.go):
// small commits append to a landing table that a goroutine owned by the DB
// merges into the clustered readings table, and the same goroutine
// checkpoints the WAL on a connection of its own, off the commit path. The
// schema is versioned: Open applies every migration the file has not seen,
// in one transaction each.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Options tune the database.
type Options struct {
	// Synchronous is the SQLite synchronous pragma for the writer: "NORMAL"
	// (default) survives a crash of the process, "FULL" also a power cut at
	// the cost of an fsync per commit.
	Synchronous string
	// CacheMiB is the writer's page cache in MiB (default 256). A large cache
	// keeps the readings index in memory and decides ingest speed.
	CacheMiB int
	// Landing chooses where AppendBatches puts readings; see LandingMode.
	Landing LandingMode
	// MergeRows and MergeAge start a merge of the landing table into the
	// readings table once it holds MergeRows readings (default 16384) or
	// its oldest reading has waited MergeAge (default 5s). A merge moves
	// the readings of a few series per transaction, about MergeChunk
	// readings (default 1024), so a commit waits for one chunk at most.
	MergeRows  int
	MergeAge   time.Duration
	MergeChunk int
	// A background checkpoint copies the WAL into the database file once
	// CheckpointReadings readings (default 100,000) were written since the
	// last one, or CheckpointEvery (default 5s) has passed; commits never
	// checkpoint. A page written many times in between (the end of the
	// landing table, a page of a busy series) is copied once. Once the WAL
	// holds more than CheckpointRestart pages (default 8192, 32 MiB at 4
	// KiB pages) the checkpoint finishes under the write lock, so the WAL
	// starts over from its beginning.
	CheckpointReadings int
	CheckpointEvery    time.Duration
	CheckpointRestart  int
}

// DB is an open Outpost database.
type DB struct {
	path string
	w    *sql.DB // single writer connection
	r    *sql.DB // read pool

	// wmu serialises writes and guards the id caches, so a deletion can
	// never race an append that still holds a stale cached key.
	wmu     sync.Mutex
	devSeq  map[string]int64 // device id → devices.seq
	feedSeq map[feedKey]int64
	readSeq int64 // last readings.seq used (counters.readings_seq or readings_landing)

	opt   Options
	stmts appendStmts // prepared once on the writer connection
	land  landing     // guarded by wmu
	app   appendBuf   // AppendBatches' reusable buffers, guarded by wmu

	ck        *sql.DB      // checkpointer connection
	written   atomic.Int64 // readings appended since the last checkpoint
	deletions int64        // devices deleted since Open, guarded by wmu
	mergeMu   sync.Mutex   // one merge at a time; guards mergeBuf
	mergeBuf  []landRow
	maint     maintStats
	maintKick chan struct{}
	maintStop chan struct{}
	maintDone chan struct{}
}

type feedKey struct {
	dev int64
	ref string
}

var (
	_ outpost.DeviceStore    = (*DB)(nil)
	_ outpost.TelemetryStore = (*DB)(nil)
)

// Open opens (creating if needed) the database file at path and migrates it
// to the current schema.
func Open(ctx context.Context, path string, o Options) (*DB, error) {
	if o.Synchronous == "" {
		o.Synchronous = "NORMAL"
	}
	switch strings.ToUpper(o.Synchronous) {
	case "OFF", "NORMAL", "FULL", "EXTRA":
	default:
		return nil, fmt.Errorf("sqlite: synchronous must be OFF, NORMAL, FULL or EXTRA, not %q", o.Synchronous)
	}
	if o.CacheMiB <= 0 {
		o.CacheMiB = 256
	}
	if o.MergeRows <= 0 {
		o.MergeRows = 16384
	}
	if o.MergeAge <= 0 {
		o.MergeAge = 5 * time.Second
	}
	if o.MergeChunk <= 0 {
		o.MergeChunk = 1024
	}
	if o.CheckpointReadings <= 0 {
		o.CheckpointReadings = 100_000
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = 5 * time.Second
	}
	if o.CheckpointRestart <= 0 {
		o.CheckpointRestart = 8192
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	dsn := func(extra ...string) string {
		q := url.Values{}
		for _, p := range append([]string{"busy_timeout(10000)", "journal_mode(WAL)", "foreign_keys(1)"}, extra...) {
			q.Add("_pragma", p)
		}
		// SQLite reads the DSN as a URI: a '#' or '?' in the path would
		// end the file name early, so they (and '%') are escaped.
		return "file:" + uriPath.Replace(path) + "?" + q.Encode()
	}
	// The writer never checkpoints (wal_autocheckpoint 0): a background
	// checkpointer does, off the commit path. journal_size_limit truncates
	// a WAL that grew large once it starts over.
	w, err := sql.Open("sqlite", dsn("synchronous("+o.Synchronous+")", fmt.Sprintf("cache_size(-%d)", o.CacheMiB*1024),
		"wal_autocheckpoint(0)", "journal_size_limit(67108864)")+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	db := &DB{path: path, w: w, devSeq: map[string]int64{}, feedSeq: map[feedKey]int64{}, opt: o}
	if err := db.migrate(ctx); err != nil {
		w.Close()
		return nil, err
	}
	if err := db.openAppend(ctx); err != nil {
		db.stmts.close()
		w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", dsn("query_only(1)"))
	if err != nil {
		db.stmts.close()
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	db.r = r
	ck, err := sql.Open("sqlite", dsn())
	if err != nil {
		db.stmts.close()
		r.Close()
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	ck.SetMaxOpenConns(1)
	db.ck = ck
	db.startMaintenance()
	return db, nil
}

var uriPath = strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23")

// Close stops the background merge and checkpoints and closes the
// database. Pending writes must have finished. Readings still in the
// landing table stay there (the next Open serves them as they are).
func (db *DB) Close() error {
	db.stopMaintenance()
	db.stmts.close()
	return errors.Join(db.ck.Close(), db.r.Close(), db.w.Close())
}

// Path returns the database file path.
func (db *DB) Path() string { return db.path }

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error {
	return db.r.PingContext(ctx)
}

// migrations are applied in order; entry i brings the schema to version i+1.
// Never edit one that has shipped: append a new one.
var migrations = []string{
	// 1: registry, feeds as series keys, readings, batch ids for dedup.
	`
CREATE TABLE devices (
	seq         INTEGER PRIMARY KEY,
	id          TEXT    NOT NULL UNIQUE,
	name        TEXT    NOT NULL UNIQUE,
	secret_hash BLOB    NOT NULL,
	created_at  INTEGER NOT NULL,
	online      INTEGER NOT NULL DEFAULT 0,
	last_seen   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE feeds (
	seq        INTEGER PRIMARY KEY,
	device_seq INTEGER NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	ref        TEXT    NOT NULL,
	UNIQUE (device_seq, ref)
);
-- One row per reading. The only index is (series, ts): it serves every
-- query and keeps appends cheap. value holds the reading's JSON encoding,
-- so numbers, booleans and strings come back exactly as sent.
CREATE TABLE readings (
	series INTEGER NOT NULL,
	ts     INTEGER NOT NULL,
	value  TEXT    NOT NULL
);
CREATE INDEX readings_series_ts ON readings (series, ts);
CREATE TABLE batches (
	device_seq  INTEGER NOT NULL,
	batch_id    TEXT    NOT NULL,
	received_at INTEGER NOT NULL,
	PRIMARY KEY (device_seq, batch_id)
) WITHOUT ROWID;
`,
	// 2: the device model (feed definitions, attributes, parameters,
	// events and notifications). See model.go.
	migrationModel,
	// 3: the down queue: platform→device messages and queued calls (rows
	// with a method), in one table so a device's queue has one order.
	migrationDownQueue,
	// 4: readings clustered by series and time: the table is its own index
	// (WITHOUT ROWID, key (series, ts, seq)), so an append updates one
	// B-tree instead of the table and its (series, ts) index. seq orders
	// readings with the same timestamp by arrival; its next value is kept
	// in counters, updated in each append transaction.
	`
CREATE TABLE readings_clustered (
	series INTEGER NOT NULL,
	ts     INTEGER NOT NULL,
	seq    INTEGER NOT NULL,
	value  TEXT    NOT NULL,
	PRIMARY KEY (series, ts, seq)
) WITHOUT ROWID;
INSERT INTO readings_clustered (series, ts, seq, value) SELECT series, ts, rowid, value FROM readings;
DROP TABLE readings;
ALTER TABLE readings_clustered RENAME TO readings;
CREATE TABLE counters (
	name  TEXT    PRIMARY KEY,
	value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value) SELECT 'readings_seq', COALESCE(MAX(seq), 0) FROM readings;
`,
	// 5: ids of events and notifications, so a redelivered one is stored
	// once.
	`
ALTER TABLE device_events ADD COLUMN msg_id TEXT;
CREATE UNIQUE INDEX device_events_msg ON device_events (device_seq, msg_id) WHERE msg_id IS NOT NULL;
`,
	// 6: an append-only landing table for readings. Small commits append
	// here (one B-tree, written at its end: a page or two per commit
	// whatever the number of series) and a background merge moves the
	// rows into the clustered readings table, many rows per series at a
	// time. seq is the reading's readings.seq; batch holds the batch id on
	// the first reading of a batch, until the merge moves it into batches.
	// During a merge, readings_merged says up to which seq the landing rows
	// of a series are already in readings. Reads go through readings_all,
	// which sees each reading once. See landing.go.
	`
CREATE TABLE readings_landing (
	seq    INTEGER PRIMARY KEY,
	series INTEGER NOT NULL,
	ts     INTEGER NOT NULL,
	value  TEXT    NOT NULL,
	batch  TEXT
);
CREATE TABLE readings_merged (
	series  INTEGER PRIMARY KEY,
	through INTEGER NOT NULL
);
CREATE VIEW readings_all (series, ts, seq, value) AS
	SELECT series, ts, seq, value FROM readings
	UNION ALL
	SELECT l.series, l.ts, l.seq, l.value FROM readings_landing l
	WHERE l.seq > COALESCE((SELECT m.through FROM readings_merged m WHERE m.series = l.series), 0);
`,
}

func (db *DB) migrate(ctx context.Context) error {
	if _, err := db.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("sqlite: migrations table: %w", err)
	}
	var have int
	if err := db.w.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("sqlite: schema version: %w", err)
	}
	if have > len(migrations) {
		return fmt.Errorf("sqlite: database schema version %d is newer than this binary knows (%d); upgrade outpost", have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		tx, err := db.w.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("sqlite: migrate: %w", err)
		}
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			tx.Rollback()
			return fmt.Errorf("sqlite: migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, strftime('%s','now'))`, v); err != nil {
			tx.Rollback()
			return fmt.Errorf("sqlite: migration %d: %w", v, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("sqlite: migration %d: %w", v, err)
		}
	}
	return nil
}

// SchemaVersion returns the schema version of the open database.
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := db.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}
