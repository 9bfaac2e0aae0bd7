package postgres_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/postgres"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
)

const day = int64(24 * time.Hour / time.Millisecond)

// mustConn opens a plain connection on dbURL for looking at the catalog.
func mustConn(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// partitionsOf lists the readings partitions, default included.
func partitionsOf(t *testing.T, c *pgx.Conn) []string {
	t.Helper()
	rows, err := c.Query(context.Background(), `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'readings'::regclass ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// homeOf returns the partition that holds the reading at ts.
func homeOf(t *testing.T, c *pgx.Conn, ts int64) string {
	t.Helper()
	var name string
	if err := c.QueryRow(context.Background(), `SELECT tableoid::regclass::text FROM readings WHERE ts = $1`, ts).Scan(&name); err != nil {
		t.Fatalf("reading at %d: %v", ts, err)
	}
	return name
}

func dayName(ms int64) string {
	return "readings_" + time.UnixMilli(ms).UTC().Format("20060102")
}

func midnight(t time.Time) int64 {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC).UnixMilli()
}

// Open makes today's partition and the next PartitionsAhead days'.
func TestPartitionsAhead(t *testing.T) {
	u, _ := pgtest.MustSchema(t)
	MustOpen(t, u, postgres.Options{PartitionsAhead: 2})
	today := midnight(time.Now())
	want := []string{dayName(today), dayName(today + day), dayName(today + 2*day), "readings_default"}
	slices.Sort(want)
	if got := partitionsOf(t, mustConn(t, u)); !slices.Equal(got, want) {
		t.Errorf("partitions %v, want %v", got, want)
	}
}

// A reading of a day within the window gets its day's partition; one
// outside goes to the default partition, and moves into its day's
// partition when one is made for it later, keeping its arrival order.
func TestPartitionsOnDemand(t *testing.T) {
	ctx := context.Background()
	u, _ := pgtest.MustSchema(t)
	db := MustOpen(t, u, postgres.Options{PartitionLookback: 31 * 24 * time.Hour})
	c := mustConn(t, u)
	d := storetest.MustCreateDevice(t, db, "d")
	today := midnight(time.Now())
	recent, old, future := today-10*day+5, today-100*day+5, time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	storetest.MustAppend(t, db, storetest.Batch(d.ID, "1", "f", recent, old, future, 7))
	for _, tt := range []struct {
		ts   int64
		want string
	}{{recent, dayName(recent)}, {old, "readings_default"}, {future, "readings_default"}, {7, "readings_default"}} {
		if got := homeOf(t, c, tt.ts); got != tt.want {
			t.Errorf("reading at %s in %s, want %s", time.UnixMilli(tt.ts).UTC(), got, tt.want)
		}
	}

	// A store whose window reaches back further makes the old day's
	// partition for the next reading of that day and moves the first.
	wide := MustOpen(t, u, postgres.Options{PartitionLookback: 200 * 24 * time.Hour})
	storetest.MustAppend(t, wide, storetest.Batch(d.ID, "2", "f", old))
	var n int
	if err := c.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{dayName(old)}.Sanitize()).Scan(&n); err != nil || n != 2 {
		t.Fatalf("readings in the old day's new partition: %d, %v; want 2", n, err)
	}
	if err := c.QueryRow(ctx, `SELECT count(*) FROM readings_default WHERE ts >= $1 AND ts < $2`, old-5, old-5+day).Scan(&n); err != nil || n != 0 {
		t.Fatalf("readings of that day left in the default partition: %d, %v", n, err)
	}
	rs := storetest.MustReadings(t, wide, outpost.ReadingFilter{DeviceID: d.ID, Since: old, Until: old + 1})
	if len(rs) != 2 || string(rs[0].Value) != "2" || string(rs[1].Value) != "1" {
		t.Errorf("the two readings of the old day: %+v; want the first batch's before the second's", rs)
	}
}

// A partition that cannot be made at once (a long read holds the default
// partition) does not hold up ingestion: its readings go to the default
// partition.
func TestPartitionCreationDoesNotBlockIngest(t *testing.T) {
	ctx := context.Background()
	u, _ := pgtest.MustSchema(t)
	db := MustOpen(t, u, postgres.Options{})
	d := storetest.MustCreateDevice(t, db, "d")
	c := mustConn(t, u)
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM readings_default`); err != nil {
		t.Fatal(err)
	}
	ts := midnight(time.Now()) - 5*day
	start := time.Now()
	storetest.MustAppend(t, db, storetest.Batch(d.ID, "1", "f", ts))
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("append took %s", took)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := homeOf(t, c, ts); got != "readings_default" {
		t.Errorf("reading in %s, want the default partition", got)
	}
	if rs := storetest.MustReadings(t, db, outpost.ReadingFilter{DeviceID: d.ID}); len(rs) != 1 {
		t.Errorf("readings %v", rs)
	}
}

// Retention drops the partitions of days before the bound's and deletes
// the default partition's old rows; the bound's day is kept whole.
func TestPruneReadingsDropsPartitions(t *testing.T) {
	ctx := context.Background()
	u, _ := pgtest.MustSchema(t)
	db := MustOpen(t, u, postgres.Options{})
	c := mustConn(t, u)
	d := storetest.MustCreateDevice(t, db, "d")
	today := midnight(time.Now())
	ts := []int64{today - 100*day, today - 5*day, today - 2*day, today - 2*day + 1, today - day + 10, today - day + 20, today}
	storetest.MustAppend(t, db, storetest.Batch(d.ID, "1", "f", ts...))
	for _, x := range []int64{today - 5*day, today - 2*day, today - day} {
		if !slices.Contains(partitionsOf(t, c), dayName(x)) {
			t.Fatalf("no partition for %s", dayName(x))
		}
	}
	n, err := db.PruneReadings(ctx, time.UnixMilli(today-day+15))
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("pruned %d readings, want 4", n)
	}
	parts := partitionsOf(t, c)
	for _, x := range []int64{today - 5*day, today - 2*day} {
		if slices.Contains(parts, dayName(x)) {
			t.Errorf("partition %s still there", dayName(x))
		}
	}
	if !slices.Contains(parts, dayName(today-day)) || !slices.Contains(parts, "readings_default") {
		t.Errorf("partitions after pruning: %v", parts)
	}
	var got []int64
	for _, r := range storetest.MustReadings(t, db, outpost.ReadingFilter{DeviceID: d.ID}) {
		got = append(got, r.TS)
	}
	if want := ts[4:]; !slices.Equal(got, want) {
		t.Errorf("readings left %v, want %v (the bound's whole day)", got, want)
	}
}

// Replicas starting at once on a new schema migrate it once.
func TestMigrateConcurrently(t *testing.T) {
	u, schema := pgtest.MustSchema(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	dbs := make([]*postgres.DB, 4)
	for i := range dbs {
		wg.Go(func() {
			dbs[i], errs[i] = postgres.Open(context.Background(), u, postgres.Options{Replica: fmt.Sprint(i), MaxConns: 2})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		t.Cleanup(func() { dbs[i].Close() })
	}
	c := mustConn(t, u)
	var versions []int
	rows, err := c.Query(context.Background(), `SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	if versions, err = pgx.CollectRows(rows, pgx.RowTo[int]); err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 2, 3, 4}; !slices.Equal(versions, want) {
		t.Errorf("applied %v, want %v", versions, want)
	}
	if v, err := dbs[0].SchemaVersion(context.Background()); err != nil || v != 4 || dbs[0].Schema() != schema {
		t.Errorf("schema %s version %d, %v", dbs[0].Schema(), v, err)
	}
}

// A database from a later binary is refused.
func TestOpenRefusesNewerSchema(t *testing.T) {
	u, _ := pgtest.MustSchema(t)
	db := MustOpen(t, u, postgres.Options{})
	db.Close()
	if _, err := mustConn(t, u).Exec(context.Background(), `INSERT INTO schema_migrations (version) VALUES (99)`); err != nil {
		t.Fatal(err)
	}
	_, err := postgres.Open(context.Background(), u, postgres.Options{})
	if err == nil || !strings.Contains(err.Error(), "newer than this binary") {
		t.Fatalf("open: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	base := pgtest.Base(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tt := range []struct{ url, msg string }{
		{pgtest.WithSearchPath(t, base, "outpost_no_such_schema"), "create it first"},
		{"postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=5", "postgres: connect to postgres@127.0.0.1:1/test"},
		{"postgres://%zz", "postgres: "},
	} {
		db, err := postgres.Open(ctx, tt.url, postgres.Options{})
		if err == nil {
			db.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("open %s: %v, want an error with %q", tt.url, err, tt.msg)
		}
	}
}
