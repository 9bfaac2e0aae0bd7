// Package postgres implements the platform's stores on PostgreSQL through
// a pgx v5 connection pool, for deployments that outgrow one node or
// already run PostgreSQL.
//
// The schema mirrors the SQLite engine's (the same tables, times in Unix
// milliseconds, JSON values kept as the text the device sent) with two
// differences that let several platform replicas share one database:
// readings live in a table partitioned by day of their timestamp, so
// retention drops whole partitions; and a device's online state records
// the replica that set it (see outpost.PresenceStore). Schema versions are
// applied by internal/migrate under an advisory lock.
//
// The database's search_path chooses the schema (add search_path=NAME to
// the URL to keep Outpost's tables out of public); the schema must exist.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outpost-iot/outpost/internal/migrate"
	"github.com/outpost-iot/outpost/internal/outpost"
)

// Options tune the store.
type Options struct {
	// Replica names this platform replica in a database several replicas
	// share: the devices it records online are its own, and only those
	// are reset when it starts (ResetPresence). Empty, the default, suits
	// a single replica, which owns every device.
	Replica string
	// MaxConns bounds the main connection pool (default 8). Long reads
	// that stream to an API client use a second pool of at most 4, so
	// they never hold the connections ingestion needs.
	MaxConns int32
	// PartitionLookback and PartitionAhead bound the days that get a
	// readings partition of their own when a reading needs one (defaults
	// 31 days back and 7 ahead of today, UTC). Readings outside (a device
	// clock far off, an outbox emptied after weeks) go to the default
	// partition, which retention prunes row by row; a partition created
	// later for their day takes them over. Bounding the window bounds the
	// number of partitions a device's timestamps can make.
	PartitionLookback, PartitionAhead time.Duration
	// PartitionsAhead is how many days from today get their partition in
	// advance, at Open and every hour after (default 3), so ingestion
	// normally never waits for one to be created.
	PartitionsAhead int
	// Logger receives what the store does in the background; default:
	// discard.
	Logger *slog.Logger
}

// DB is an open Outpost database on PostgreSQL.
type DB struct {
	pool   *pgxpool.Pool // everything but long scans
	scan   *pgxpool.Pool // EachReading
	schema string
	opt    Options
	log    *slog.Logger

	mu      sync.Mutex
	feedSeq map[feedKey]int64 // (device seq, ref) → feeds.seq; feeds are only ever deleted with their device
	parts   *partitions

	stop chan struct{}
	done chan struct{}
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
	_ outpost.ModelStore     = (*DB)(nil)
	_ outpost.QueueStore     = (*DB)(nil)
	_ outpost.RetentionStore = (*DB)(nil)
	_ outpost.HealthStore    = (*DB)(nil)
	_ outpost.BackupStore    = (*DB)(nil)
)

// Open connects to the database at url (postgres://… or a key=value
// connection string, as pgx takes them), migrates the schema that
// search_path chooses to the current version, and creates the readings
// partitions of the next days.
func Open(ctx context.Context, url string, o Options) (*DB, error) {
	if o.MaxConns <= 0 {
		o.MaxConns = 8
	}
	if o.PartitionLookback <= 0 {
		o.PartitionLookback = 31 * 24 * time.Hour
	}
	if o.PartitionAhead <= 0 {
		o.PartitionAhead = 7 * 24 * time.Hour
	}
	if o.PartitionsAhead <= 0 {
		o.PartitionsAhead = 3
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	cfg.MaxConns = o.MaxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	db := &DB{pool: pool, opt: o, log: o.Logger, feedSeq: map[feedKey]int64{}}
	fail := func(err error) (*DB, error) {
		db.pool.Close()
		if db.scan != nil {
			db.scan.Close()
		}
		return nil, err
	}
	var schema *string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return fail(fmt.Errorf("postgres: connect to %s: %w", redact(cfg.ConnConfig), err))
	}
	if schema == nil {
		var path string
		_ = pool.QueryRow(ctx, `SHOW search_path`).Scan(&path)
		return fail(fmt.Errorf("postgres: no schema of the search path (%s) exists in database %s: create it first", path, cfg.ConnConfig.Database))
	}
	db.schema = *schema
	if _, err := migrate.Run(ctx, "postgres", migrator{db}, migrations); err != nil {
		return fail(err)
	}
	scfg := cfg.Copy()
	scfg.MaxConns = 4
	if db.scan, err = pgxpool.NewWithConfig(ctx, scfg); err != nil {
		return fail(fmt.Errorf("postgres: %w", err))
	}
	if db.parts, err = loadPartitions(ctx, db); err != nil {
		return fail(err)
	}
	if err := db.parts.ensureAhead(ctx, time.Now()); err != nil {
		return fail(err)
	}
	db.stop, db.done = make(chan struct{}), make(chan struct{})
	go db.maintain()
	return db, nil
}

// redact names the server of a connection without its password.
func redact(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

// maintain creates the coming days' partitions every hour until Close.
func (db *DB) maintain() {
	defer close(db.done)
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-db.stop:
			return
		case now := <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := db.parts.ensureAhead(ctx, now); err != nil {
				db.log.Warn("postgres: create the coming days' readings partitions", "error", err)
			}
			cancel()
		}
	}
}

// Close stops the background work and closes the pools. Writes in
// progress must have finished.
func (db *DB) Close() error {
	if db.stop != nil {
		close(db.stop)
		<-db.done
		db.stop = nil
	}
	db.scan.Close()
	db.pool.Close()
	return nil
}

// Schema returns the schema the store's tables are in.
func (db *DB) Schema() string { return db.schema }

// Replica returns the replica name the store was opened with.
func (db *DB) Replica() string { return db.opt.Replica }

// SchemaVersion returns the schema version of the database.
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := db.pool.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// Ping implements outpost.HealthStore.
func (db *DB) Ping(ctx context.Context) error {
	var one int
	if err := db.pool.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

// CheckWrite implements outpost.HealthStore: it commits a row of its own
// replica and reads it back on another statement. It fails while the
// server refuses writes (a read-only standby, a full disk, a primary that
// is down).
func (db *DB) CheckWrite(ctx context.Context) error {
	v := time.Now().UnixNano()
	key := "readiness_probe:" + db.opt.Replica
	if _, err := db.pool.Exec(ctx, `INSERT INTO counters (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value`, key, v); err != nil {
		return fmt.Errorf("store write: %w", err)
	}
	var got int64
	if err := db.pool.QueryRow(ctx, `SELECT value FROM counters WHERE name = $1`, key).Scan(&got); err != nil {
		return fmt.Errorf("store read: %w", err)
	}
	// Another process with the same replica name may have written a later
	// value in between; an older one means the write was lost.
	if got < v {
		return fmt.Errorf("store read: wrote %d, read back %d", v, got)
	}
	return nil
}

// Backup implements outpost.BackupStore: PostgreSQL is backed up with its
// own tools.
func (db *DB) Backup(ctx context.Context, dest string) (*outpost.BackupInfo, error) {
	return nil, outpost.Errorf(outpost.ENOTSUPPORTED, "a PostgreSQL store is backed up with PostgreSQL's tools: pg_dump --schema=%s for a copy, or base backups (pg_basebackup) with WAL archiving for point-in-time recovery", db.schema)
}

// migrator runs the migrations under a session advisory lock, so two
// replicas starting at once migrate one after the other.
type migrator struct{ db *DB }

var _ migrate.Engine = migrator{}

func (m migrator) Lock(ctx context.Context) (func(), error) {
	c, err := m.db.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock(hashtext('outpost.migrate'), hashtext(current_schema()))`); err != nil {
		c.Release()
		return nil, err
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Exec(ctx, `SELECT pg_advisory_unlock(hashtext('outpost.migrate'), hashtext(current_schema()))`); err != nil {
			// The lock goes with the session: close it rather than return
			// a connection that still holds it to the pool.
			c.Conn().Close(ctx)
		}
		c.Release()
	}, nil
}

func (m migrator) Version(ctx context.Context) (int, error) {
	if _, err := m.db.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, err
	}
	return m.db.SchemaVersion(ctx)
}

func (m migrator) Apply(ctx context.Context, v int, script string) error {
	return pgx.BeginFunc(ctx, m.db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, script); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, v)
		return err
	})
}

// PostgreSQL error codes the stores branch on.
const (
	codeUniqueViolation = "23505"
	codeLockTimeout     = "55P03"
)

func pgCode(err error) (code, constraint string) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, pe.ConstraintName
	}
	return "", ""
}

// tx runs fn in a transaction. Coded domain errors pass through as they
// are; others are wrapped with what.
func (db *DB) tx(ctx context.Context, what string, fn func(tx pgx.Tx) error) error {
	err := pgx.BeginFunc(ctx, db.pool, fn)
	if err != nil && outpost.ErrorCode(err) == outpost.EINTERNAL {
		return fmt.Errorf("%s: %w", what, err)
	}
	return err
}

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// seqOf returns the devices.seq of id, or ENOTFOUND.
func seqOf(ctx context.Context, q querier, id string, lock string) (int64, error) {
	var seq int64
	err := q.QueryRow(ctx, `SELECT seq FROM devices WHERE id = $1 `+lock, id).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	}
	return seq, err
}

func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func timeMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
