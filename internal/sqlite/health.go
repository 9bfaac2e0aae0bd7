package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	sqlitedrv "modernc.org/sqlite"
)

// The files of an open database: path, path-wal (committed transactions
// not yet copied into path: deleting it loses them) and path-shm (the
// WAL's index). They belong together; see docs/architecture.md.
const (
	walSuffix = "-wal"
	shmSuffix = "-shm"
	// runningSuffix names the marker that exists while a platform has the
	// database open. Found at start, it means the previous run did not
	// close the database, so its WAL must still be there.
	runningSuffix = ".running"
)

// DefaultIntegrityCheck bounds the quick integrity check Open runs.
const DefaultIntegrityCheck = 10 * time.Second

// ErrCorrupt is returned (wrapped) by Open when the integrity check finds
// damage, and by Backup when the copy fails its check.
var ErrCorrupt = errors.New("database is damaged")

// quickCheck runs PRAGMA quick_check for at most limit. It returns
// ErrCorrupt with SQLite's findings; running out of time only logs.
func (db *DB) quickCheck(ctx context.Context, limit time.Duration, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	problems, err := check(ctx, db.w, "quick_check")
	switch {
	case err != nil && ctx.Err() != nil:
		log.Warn("sqlite: quick integrity check did not finish in time; skipped", "path", db.path, "limit", limit)
		return nil
	case unwritable(err):
		return err // Open decides what a full disk means
	case isCorrupt(err):
		return fmt.Errorf("sqlite: %w: %s fails its integrity check: %v", ErrCorrupt, db.path, err)
	case err != nil:
		return fmt.Errorf("sqlite: integrity check of %s: %w", db.path, err)
	case len(problems) > 0:
		return fmt.Errorf("sqlite: %w: %s fails its integrity check: %s", ErrCorrupt, db.path, strings.Join(problems, "; "))
	}
	log.Debug("sqlite: quick integrity check passed", "path", db.path, "took", time.Since(start))
	return nil
}

// check runs an integrity pragma and returns what it found wrong (nothing
// for "ok"), at most ten lines.
func check(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, pragma string) ([]string, error) {
	rows, err := q.QueryContext(ctx, "PRAGMA "+pragma+"(10)")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	return problems, rows.Err()
}

// SQLite's primary result codes for a damaged file.
const (
	sqliteCorrupt = 11 // SQLITE_CORRUPT
	sqliteNotADB  = 26 // SQLITE_NOTADB
)

// SQLite's primary result codes for a file that cannot be written.
const (
	sqliteIOErr = 10 // SQLITE_IOERR (including SHMSIZE: no room for the WAL index)
	sqliteFull  = 13 // SQLITE_FULL
)

// unwritable reports whether err is SQLite failing to write: a full disk,
// or an I/O error such as the WAL index that cannot be sized.
func unwritable(err error) bool {
	var se *sqlitedrv.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code() & 0xff
	return c == sqliteIOErr || c == sqliteFull
}

// isCorrupt reports whether err is SQLite finding the file damaged.
func isCorrupt(err error) bool {
	var se *sqlitedrv.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code() & 0xff
	return c == sqliteCorrupt || c == sqliteNotADB
}

// checkWAL warns when the previous run ended without closing the database
// and its WAL is gone: every transaction committed since the last
// checkpoint is lost, and SQLite cannot tell. walFound says whether the
// WAL existed before this run opened the database. Then it marks this run.
func (db *DB) checkWAL(walFound bool, log *slog.Logger) {
	marker := db.path + runningSuffix
	if prev, err := os.ReadFile(marker); err == nil && !walFound {
		db.walLost = true
		log.Error("sqlite: the previous run did not shut down cleanly and its write-ahead log "+db.path+walSuffix+
			" is missing: every write since its last checkpoint is lost (was the file deleted, or the database copied without it?)",
			"path", db.path, "previous_run", strings.TrimSpace(string(prev)))
	}
	if err := os.WriteFile(marker, []byte(strconv.Itoa(os.Getpid())+" "+time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		log.Warn("sqlite: cannot write the run marker", "path", marker, "error", err)
	}
}

// WALLost reports whether Open found that the previous run's write-ahead
// log had been deleted (see checkWAL).
func (db *DB) WALLost() bool { return db.walLost }

// probeKey is the counters row CheckWrite writes.
const probeKey = "readiness_probe"

// CheckWrite proves the store works end to end: it commits a write
// through the writer connection and reads it back through the read pool.
// It fails while the disk is full or the database cannot be written, and
// always when Open could only open it read-only. It implements
// outpost.HealthStore.
func (db *DB) CheckWrite(ctx context.Context) error {
	if db.readOnly != nil {
		return fmt.Errorf("store opened read-only at start (%w): free space, then restart", db.readOnly)
	}
	v := time.Now().UnixNano()
	db.wmu.Lock()
	_, err := db.w.ExecContext(ctx, `INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value`, probeKey, v)
	db.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("store write: %w", err)
	}
	var got int64
	if err := db.r.QueryRowContext(ctx, `SELECT value FROM counters WHERE name = ?`, probeKey).Scan(&got); err != nil {
		return fmt.Errorf("store read: %w", err)
	}
	if got != v {
		return fmt.Errorf("store read: wrote %d, read back %d", v, got)
	}
	return nil
}

// BackupInfo describes a backup Backup wrote.
type BackupInfo = outpost.BackupInfo

// Backup implements outpost.BackupStore: Backup of the open database's
// file (see the function Backup).
func (db *DB) Backup(ctx context.Context, dest string) (*BackupInfo, error) {
	return Backup(ctx, db.path, dest)
}

// Backup writes a consistent copy of the database at src to dest with
// VACUUM INTO, while a platform may be running on src: the copy is one
// read transaction, so it holds exactly what was committed when it began,
// and it does not stop writers. The copy is a single self-contained file
// (no -wal) that Open can use as is. Backup refuses to overwrite dest,
// writes it under a temporary name, checks it with PRAGMA integrity_check
// and renames it into place only if it passes.
func Backup(ctx context.Context, src, dest string) (*BackupInfo, error) {
	start := time.Now()
	if _, err := os.Stat(src); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	if _, err := os.Stat(dest); err == nil {
		return nil, fmt.Errorf("backup: %s already exists", dest)
	}
	tmp := dest + ".partial"
	_ = os.Remove(tmp)
	q := url.Values{}
	for _, p := range []string{"busy_timeout(10000)"} {
		q.Add("_pragma", p)
	}
	sdb, err := sql.Open("sqlite", "file:"+uriPath.Replace(src)+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("backup: open %s: %w", src, err)
	}
	defer sdb.Close()
	sdb.SetMaxOpenConns(1)
	var version int
	if err := sdb.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
		return nil, fmt.Errorf("backup: %s is not an outpost database: %w", src, err)
	}
	if _, err := sdb.ExecContext(ctx, `VACUUM INTO ?`, tmp); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("backup: copy %s: %w", src, err)
	}
	if err := sdb.Close(); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("backup: %w", err)
	}
	info, err := verifyCopy(ctx, tmp)
	if err != nil {
		os.Remove(tmp)
		return nil, err
	}
	if err := syncFile(tmp); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("backup: %w", err)
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("backup: %w", err)
	}
	info.Path, info.Took = dest, time.Since(start)
	return info, nil
}

// verifyCopy runs the full integrity check on a backup and counts what it
// holds.
func verifyCopy(ctx context.Context, path string) (*BackupInfo, error) {
	q := url.Values{}
	q.Add("_pragma", "query_only(1)")
	db, err := sql.Open("sqlite", "file:"+uriPath.Replace(path)+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("backup: check copy: %w", err)
	}
	defer db.Close()
	problems, err := check(ctx, db, "integrity_check")
	if err != nil {
		return nil, fmt.Errorf("backup: check copy: %w", err)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("backup: %w: the copy fails its integrity check: %s", ErrCorrupt, strings.Join(problems, "; "))
	}
	info := &BackupInfo{}
	if err := db.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM readings_all)`).Scan(&info.Devices, &info.Readings); err != nil {
		return nil, fmt.Errorf("backup: check copy: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	info.Bytes = st.Size()
	return info, nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
