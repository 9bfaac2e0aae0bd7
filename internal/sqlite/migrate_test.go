package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

// A database holding readings in the first schema (a rowid table with a
// (series, ts) index) keeps them, in order, when the readings table is
// rebuilt clustered on (series, ts, seq); new readings continue the
// sequence.
func TestMigrateReadingsToClustered(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "outpost.db")
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`,
		sqlite.Migration(1),
		`INSERT INTO schema_migrations VALUES (1, 0)`,
		`INSERT INTO devices (seq, id, name, secret_hash, created_at) VALUES (1, 'd-old', 'old', x'00', 0)`,
		`INSERT INTO feeds (seq, device_seq, ref) VALUES (1, 1, 'temp')`,
		// Two readings with the same timestamp: arrival order must survive.
		`INSERT INTO readings (series, ts, value) VALUES (1, 1000, '1'), (1, 2000, '2'), (1, 2000, '3')`,
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	raw.Close()

	db := MustOpen(t, path)
	storetest.MustAppend(t, db, &outpost.Batch{DeviceID: "d-old", ID: "b-new", Readings: []outpost.Reading{{Feed: "temp", TS: 2000, Value: []byte("4")}}})
	got, err := db.Readings(ctx, outpost.ReadingFilter{DeviceID: "d-old", Since: 1})
	if err != nil {
		t.Fatal(err)
	}
	var vals []string
	for _, r := range got {
		vals = append(vals, string(r.Value))
	}
	if want := []string{"1", "2", "3", "4"}; len(vals) != len(want) || vals[0] != "1" || vals[1] != "2" || vals[2] != "3" || vals[3] != "4" {
		t.Fatalf("readings after migration %v, want %v", vals, want)
	}
}
