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
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/internal/migrate"
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
	// IntegrityCheck bounds the quick integrity check (PRAGMA quick_check)
	// Open runs before anything else (default DefaultIntegrityCheck;
	// negative: skip it). Damage found fails Open with ErrCorrupt; a check
	// that runs out of time is skipped with a warning.
	IntegrityCheck time.Duration
	// Logger receives what Open finds wrong; default: discard.
	Logger *slog.Logger
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
	scan *sql.DB // read pool for long scans that stream to a client

	// wmu serialises writes and guards the id caches, so a deletion can
	// never race an append that still holds a stale cached key.
	wmu     sync.Mutex
	devSeq  map[string]int64 // device id → devices.seq
	feedSeq map[feedKey]int64
	readSeq int64 // last readings.seq used (counters.readings_seq or readings_landing)

	walLost  bool  // see checkWAL
	readOnly error // see ReadOnly

	opt   Options
	stmts appendStmts // prepared once on the writer connection
	land  landing     // guarded by wmu
	app   appendBuf   // AppendBatches' reusable buffers, guarded by wmu

	ck         *sql.DB      // checkpointer connection; nil when read-only
	written    atomic.Int64 // readings appended since the last checkpoint
	deletions  int64        // devices deleted since Open, guarded by wmu
	mergeMu    sync.Mutex   // one merge at a time; guards mergeBuf
	mergeBuf   []landRow
	maint      maintStats
	maintKick  chan struct{}
	maintStop  chan struct{}
	maintDone  chan struct{}
	maintWakes atomic.Int64 // times the maintenance goroutine woke (tests)
}

type feedKey struct {
	dev int64
	ref string
}

var (
	_ outpost.Store          = (*DB)(nil)
	_ outpost.DeviceStore    = (*DB)(nil)
	_ outpost.PresenceStore  = (*DB)(nil)
	_ outpost.TelemetryStore = (*DB)(nil)
	_ outpost.ReadingScanner = (*DB)(nil)
	_ outpost.HealthStore    = (*DB)(nil)
	_ outpost.BackupStore    = (*DB)(nil)
	_ outpost.RetentionStore = (*DB)(nil)
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
	if o.IntegrityCheck == 0 {
		o.IntegrityCheck = DefaultIntegrityCheck
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
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
	st, err := os.Stat(path + walSuffix)
	walFound := err == nil
	db, err := open(ctx, path, o, false)
	if err == nil {
		db.checkWAL(walFound, o.Logger)
		return db, nil
	}
	if !unwritable(err) {
		return nil, err
	}
	// A full disk (or a file system that refuses writes) must not stop the
	// start: open the database read-only so the API can still read, and
	// say why. Without shared memory SQLite cannot apply a WAL, so this
	// is only safe when there is none to apply.
	if walFound && st.Size() > 0 {
		return nil, fmt.Errorf("sqlite: %w (the write-ahead log %s must be applied first: free some space and start again)", err, path+walSuffix)
	}
	o.Logger.Error("sqlite: the database cannot be opened for writing; opening it read-only: writes fail until space is freed and the platform restarted",
		"path", path, "error", err)
	db, rerr := open(ctx, path, o, true)
	if rerr != nil {
		return nil, errors.Join(err, rerr)
	}
	db.readOnly = err
	return db, nil
}

// open opens the three pools; readOnly opens every one of them read-only
// and immutable (no WAL index, no lock files, nothing written).
func open(ctx context.Context, path string, o Options, readOnly bool) (*DB, error) {
	dsn := func(extra ...string) string {
		q := url.Values{}
		base := []string{"busy_timeout(10000)", "journal_mode(WAL)", "foreign_keys(1)"}
		if readOnly {
			base = []string{"busy_timeout(10000)", "foreign_keys(1)", "query_only(1)"}
		}
		for _, p := range append(base, extra...) {
			q.Add("_pragma", p)
		}
		if readOnly {
			q.Set("mode", "ro")
			q.Set("immutable", "1")
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
	if o.IntegrityCheck > 0 {
		if err := db.quickCheck(ctx, o.IntegrityCheck, o.Logger); err != nil {
			w.Close()
			return nil, err
		}
	}
	if readOnly {
		err = db.checkVersion(ctx)
	} else {
		err = db.migrate(ctx)
	}
	if err != nil {
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
	scan, err := sql.Open("sqlite", dsn("query_only(1)"))
	if err != nil {
		db.stmts.close()
		r.Close()
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	scan.SetMaxOpenConns(4)
	scan.SetMaxIdleConns(1)
	db.scan = scan
	if readOnly {
		return db, nil // nothing to merge or checkpoint
	}
	ck, err := sql.Open("sqlite", dsn())
	if err != nil {
		db.stmts.close()
		scan.Close()
		r.Close()
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	ck.SetMaxOpenConns(1)
	db.ck = ck
	db.startMaintenance()
	return db, nil
}

// ReadOnly returns why Open could only open the database read-only (nil
// when it is writable). Writes then fail until the platform restarts with
// space to write.
func (db *DB) ReadOnly() error { return db.readOnly }

var uriPath = strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23")

// Close stops the background merge and checkpoints and closes the
// database. Pending writes must have finished. Readings still in the
// landing table stay there (the next Open serves them as they are).
func (db *DB) Close() error {
	var err error
	if db.ck != nil {
		db.stopMaintenance()
		err = db.ck.Close()
	}
	db.stmts.close()
	err = errors.Join(err, db.scan.Close(), db.r.Close(), db.w.Close())
	// A clean stop: the next start need not look for this run's WAL.
	if rerr := os.Remove(db.path + runningSuffix); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("sqlite: %w", rerr))
	}
	return err
}

// Path returns the database file path.
func (db *DB) Path() string { return db.path }

// Ping implements outpost.HealthStore: the database answers a read.
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
	// 6: file transfers and firmware updates: artifacts, transfers,
	// firmware jobs, and what devices report (files, version). See ota.go.
	migrationOTA,
	// 7: an append-only landing table for readings. Small commits append
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
	// 8: gateways, their children's bindings and their sinks. See
	// gateway.go.
	migrationGateways,
}

func (db *DB) migrate(ctx context.Context) error {
	_, err := migrate.Run(ctx, "sqlite", migrator{db.w}, migrations)
	return err
}

// checkVersion fails unless the schema is the current one (a read-only
// database cannot be migrated).
func (db *DB) checkVersion(ctx context.Context) error {
	return migrate.Check(ctx, "sqlite", func(ctx context.Context) (int, error) {
		var have int
		err := db.w.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have)
		return have, err
	}, migrations)
}

// migrator runs the migrations on the writer connection. Only one process
// opens the database (the data directory is locked), and the writer is a
// single connection, so it needs no lock of its own.
type migrator struct{ w *sql.DB }

var _ migrate.Engine = migrator{}

func (migrator) Lock(context.Context) (func(), error) { return func() {}, nil }

func (m migrator) Version(ctx context.Context) (int, error) {
	if _, err := m.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return 0, err
	}
	var have int
	err := m.w.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have)
	return have, err
}

func (m migrator) Apply(ctx context.Context, v int, script string) error {
	tx, err := m.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, script); err != nil {
		tx.Rollback()
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, strftime('%s','now'))`, v); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// SchemaVersion returns the schema version of the open database.
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := db.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}
