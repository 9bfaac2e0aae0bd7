package sqlite_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func openWith(tb testing.TB, path string, o sqlite.Options) (*sqlite.DB, error) {
	tb.Helper()
	if o.CacheMiB == 0 {
		o.CacheMiB = 8
	}
	db, err := sqlite.Open(context.Background(), path, o)
	if err == nil {
		tb.Cleanup(func() { db.Close() })
	}
	return db, err
}

// fill stores n batches of 100 readings of one device.
func fill(tb testing.TB, db *sqlite.DB, id string, from, n int) {
	tb.Helper()
	for b := from; b < from+n; b++ {
		vals := make([]int64, 100)
		for i := range vals {
			vals[i] = int64(b*100 + i + 1)
		}
		batch := storetest.Batch(id, fmt.Sprint("b", b), "v", vals...)
		storetest.MustAppend(tb, db, batch)
	}
}

// TestOpenFindsDamage covers issue 12 item 18: pages of the database file
// overwritten while the platform was down went unnoticed at start. Open
// now runs a quick integrity check and refuses a damaged file.
func TestOpenFindsDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outpost.db")
	db := MustOpen(t, path)
	d := storetest.MustCreateDevice(t, db, "pump")
	fill(t, db, d.ID, 0, 200)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	if st.Size() < 64<<10 {
		t.Fatalf("database of %d bytes is too small to damage", st.Size())
	}
	// Overwrite the middle pages (past the schema) with junk.
	junk := bytes.Repeat([]byte{0xa5, 0x5a, 0x00, 0xff}, 4096)
	if _, err := f.WriteAt(junk, st.Size()/2/4096*4096); err != nil {
		t.Fatal(err)
	}
	f.Close()

	_, err = openWith(t, path, sqlite.Options{})
	if !errors.Is(err, sqlite.ErrCorrupt) {
		t.Fatalf("open of a damaged database: %v, want ErrCorrupt", err)
	}
	// An operator may skip the check, knowingly.
	if _, err := openWith(t, path, sqlite.Options{IntegrityCheck: -1}); err != nil {
		t.Fatalf("open with the check off: %v", err)
	}
}

// TestOpenReportsLostWAL covers the other half of item 18: after a crash
// (the database not closed), deleting the WAL silently lost every
// acknowledged write since the last checkpoint. Open now says so.
func TestOpenReportsLostWAL(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.db")
	db := MustOpen(t, path)
	d := storetest.MustCreateDevice(t, db, "pump")
	fill(t, db, d.ID, 0, 5)

	// Simulate kill -9: copy the files of the open database as they are.
	crashed := filepath.Join(t.TempDir(), "outpost.db")
	for _, suffix := range []string{"", "-wal", ".running"} {
		b, err := os.ReadFile(path + suffix)
		if err != nil {
			t.Fatalf("file %s of an open database: %v", path+suffix, err)
		}
		if err := os.WriteFile(crashed+suffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// With its WAL, the crashed copy opens with every reading and no
	// complaint.
	withWAL := filepath.Join(t.TempDir(), "outpost.db")
	for _, suffix := range []string{"", "-wal", ".running"} {
		b, _ := os.ReadFile(crashed + suffix)
		os.WriteFile(withWAL+suffix, b, 0o600)
	}
	var logs logBuffer
	db2, err := openWith(t, withWAL, sqlite.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(storetest.MustReadings(t, db2, outpost.ReadingFilter{DeviceID: d.ID, Limit: 1000})); n != 500 || db2.WALLost() {
		t.Fatalf("crash with WAL: %d readings, WAL lost %v, want 500 and false; log: %s", n, db2.WALLost(), logs.String())
	}

	// Without it, the loss is reported.
	os.Remove(crashed + "-wal")
	logs = logBuffer{}
	db3, err := openWith(t, crashed, sqlite.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !db3.WALLost() || !strings.Contains(logs.String(), "write-ahead log") {
		t.Fatalf("WAL deleted after a crash went unnoticed: WALLost %v, log %q", db3.WALLost(), logs.String())
	}

	// A clean close leaves nothing to report.
	if err := db3.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(crashed + ".running"); !os.IsNotExist(err) {
		t.Fatalf("run marker after a clean close: %v", err)
	}
	db4, err := openWith(t, crashed, sqlite.Options{})
	if err != nil || db4.WALLost() {
		t.Fatalf("reopen after a clean close: %v, WAL lost %v", err, db4.WALLost())
	}
}

// TestBackupWhileWriting covers the backup half of item 18: a backup
// taken while readings are committed is a consistent snapshot (whole
// batches only), self-contained, and a platform opens the restored copy
// with everything it held.
func TestBackupWhileWriting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "outpost.db")
	db := MustOpen(t, path)
	d := storetest.MustCreateDevice(t, db, "pump")
	fill(t, db, d.ID, 0, 50)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for b := 50; ; b++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			vals := make([]int64, 100)
			for i := range vals {
				vals[i] = int64(b*100 + i + 1)
			}
			if _, err := db.AppendBatches(ctx, []*outpost.Batch{storetest.Batch(d.ID, fmt.Sprint("b", b), "v", vals...)}); err != nil {
				done <- err
				return
			}
		}
	}()
	dest := filepath.Join(t.TempDir(), "backup.db")
	info, err := sqlite.Backup(ctx, path, dest)
	close(stop)
	if werr := <-done; werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	if info.Devices != 1 || info.Readings < 5000 || info.Readings%100 != 0 {
		t.Fatalf("backup holds %d devices, %d readings: want 1 and whole batches of 100, at least 5000", info.Devices, info.Readings)
	}
	if _, err := os.Stat(dest + "-wal"); !os.IsNotExist(err) {
		t.Fatalf("backup left a WAL beside it: %v", err)
	}
	if _, err := sqlite.Backup(ctx, path, dest); err == nil {
		t.Fatal("backup overwrote an existing file")
	}

	// Restore: the copy becomes a data directory's database.
	restored := filepath.Join(t.TempDir(), "outpost.db")
	if err := os.Rename(dest, restored); err != nil {
		t.Fatal(err)
	}
	rdb := MustOpen(t, restored)
	got := storetest.MustReadings(t, rdb, outpost.ReadingFilter{DeviceID: d.ID, Since: 1, Limit: 100_000})
	if int64(len(got)) != info.Readings {
		t.Fatalf("restored %d readings, the backup said %d", len(got), info.Readings)
	}
	if h, err := rdb.SecretHash(ctx, d.ID); err != nil || !outpost.CheckSecret(h, "secret-pump") {
		t.Fatalf("restored secret hash: %x %v", h, err)
	}
}

// TestCheckWrite: the readiness probe's store check writes and reads.
func TestCheckWrite(t *testing.T) {
	db := MustOpen(t, filepath.Join(t.TempDir(), "outpost.db"))
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := db.CheckWrite(ctx); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	if err := db.CheckWrite(ctx); err == nil {
		t.Fatal("CheckWrite on a closed database succeeded")
	}
}
