package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

// MustOpen opens the database file at path and closes it when the test
// ends.
func MustOpen(tb testing.TB, path string) *sqlite.DB {
	tb.Helper()
	db, err := sqlite.Open(context.Background(), path, sqlite.Options{CacheMiB: 8})
	if err != nil {
		tb.Fatalf("open %s: %v", path, err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		return MustOpen(t, filepath.Join(t.TempDir(), "outpost.db"))
	})
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "data", "outpost.db") // Open creates the directory
	db := MustOpen(t, path)
	d := storetest.MustCreateDevice(t, db, "pump")
	storetest.MustAppend(t, db, storetest.Batch(d.ID, "b1", "temp", 1, 2))
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	for i := range 2 {
		db := MustOpen(t, path)
		if v, err := db.SchemaVersion(ctx); err != nil || v != sqlite.MigrationCount() {
			t.Errorf("open %d: schema version %d, %v; want %d", i+2, v, err, sqlite.MigrationCount())
		}
		if got, err := db.Device(ctx, d.ID); err != nil || got.Name != "pump" {
			t.Errorf("open %d: device %+v, %v", i+2, got, err)
		}
		if rs := storetest.MustReadings(t, db, outpost.ReadingFilter{DeviceID: d.ID}); len(rs) != 2 {
			t.Errorf("open %d: %d readings, want 2", i+2, len(rs))
		}
		if h, err := db.SecretHash(ctx, d.ID); err != nil || !outpost.CheckSecret(h, "secret-pump") {
			t.Errorf("open %d: secret hash %x, %v", i+2, h, err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDuplicateAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outpost.db")
	db := MustOpen(t, path)
	d := storetest.MustCreateDevice(t, db, "pump")
	storetest.MustAppend(t, db, storetest.Batch(d.ID, "b1", "temp", 1))
	db.Close()

	// The id cache is gone; the batches table must still remember b1.
	db = MustOpen(t, path)
	got := storetest.MustAppend(t, db, storetest.Batch(d.ID, "b1", "temp", 2), storetest.Batch(d.ID, "b2", "temp", 3))
	if want := []outpost.AppendResult{outpost.AppendDuplicate, outpost.AppendStored}; !slices.Equal(got, want) {
		t.Errorf("results %v, want %v", got, want)
	}
	if rs := storetest.MustReadings(t, db, outpost.ReadingFilter{DeviceID: d.ID}); len(rs) != 2 {
		t.Errorf("%d readings, want 2", len(rs))
	}
}

func TestSchemaVersion(t *testing.T) {
	db := MustOpen(t, filepath.Join(t.TempDir(), "outpost.db"))
	v, err := db.SchemaVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v != sqlite.MigrationCount() || v < 1 {
		t.Errorf("schema version %d, want %d", v, sqlite.MigrationCount())
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outpost.db")
	MustOpen(t, path).Close()

	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)`, sqlite.MigrationCount()+1); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	db, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	if err == nil {
		db.Close()
		t.Fatal("opened a database with a newer schema")
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Errorf("error %q does not say the schema is newer", err)
	}
}

func TestOpenOptions(t *testing.T) {
	tests := []struct {
		sync    string
		wantErr bool
	}{
		{"", false},
		{"NORMAL", false},
		{"full", false},
		{"OFF", false},
		{"EXTRA", false},
		{"sometimes", true},
		{"NORMAL); DROP TABLE devices; --", true},
	}
	for _, tt := range tests {
		t.Run(tt.sync, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "outpost.db")
			db, err := sqlite.Open(context.Background(), path, sqlite.Options{Synchronous: tt.sync})
			if err == nil {
				defer db.Close()
				if err := db.Ping(context.Background()); err != nil {
					t.Errorf("ping: %v", err)
				}
				if db.Path() != path {
					t.Errorf("path %q, want %q", db.Path(), path)
				}
			}
			if (err != nil) != tt.wantErr {
				t.Errorf("open with synchronous %q: error %v, want error %v", tt.sync, err, tt.wantErr)
			}
		})
	}
}
