package sqlite_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

func mustOpenWith(tb testing.TB, path string, o sqlite.Options) *sqlite.DB {
	tb.Helper()
	if o.CacheMiB == 0 {
		o.CacheMiB = 8
	}
	db, err := sqlite.Open(context.Background(), path, o)
	if err != nil {
		tb.Fatalf("open %s: %v", path, err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// The conformance suite holds whichever table the readings are in: the
// clustered table only, the landing table only, and the landing table
// merged in the background after every commit, a series at a time, while
// the suite reads and writes.
func TestStoreDesigns(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    sqlite.Options
	}{
		{"clustered", sqlite.Options{Landing: sqlite.LandingOff}},
		{"landing", sqlite.Options{Landing: sqlite.LandingAlways, MergeAge: time.Hour, MergeRows: 1 << 30}},
		{"landing-merging", sqlite.Options{Landing: sqlite.LandingAlways, MergeAge: time.Millisecond, MergeRows: 1, MergeChunk: 1, CheckpointEvery: time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) storetest.Store {
				return mustOpenWith(t, filepath.Join(t.TempDir(), "outpost.db"), tc.o)
			})
		})
	}
}

// readingsOf returns a device's readings oldest first as "feed@ts=value".
func readingsOf(t *testing.T, db *sqlite.DB, id string) []string {
	t.Helper()
	var out []string
	for _, r := range storetest.MustReadings(t, db, outpost.ReadingFilter{DeviceID: id, Since: 1, Limit: 100_000}) {
		out = append(out, fmt.Sprintf("%s@%d=%s", r.Feed, r.TS, r.Value))
	}
	return out
}

// landingBatch is a batch of n readings over four feeds.
func landingBatch(dev, id string, from, n int) *outpost.Batch {
	b := &outpost.Batch{DeviceID: dev, ID: id}
	for i := from; i < from+n; i++ {
		b.Readings = append(b.Readings, outpost.Reading{Feed: fmt.Sprintf("f%d", i%4), TS: 1000 + int64(i), Value: []byte(strconv.Itoa(i))})
	}
	return b
}

// Readings in the landing table are read like the others, survive a
// reopen, are the same after the merge, and their batch ids recognise a
// redelivery before the merge, after a reopen and after the merge.
func TestLandingMerge(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "outpost.db")
	// A chunk of 5 rows: one series (of 8) per merge transaction.
	o := sqlite.Options{Landing: sqlite.LandingAlways, MergeAge: time.Hour, MergeRows: 1 << 30, MergeChunk: 5}
	db := mustOpenWith(t, path, o)
	a := storetest.MustCreateDevice(t, db, "a")
	b := storetest.MustCreateDevice(t, db, "b")
	for i := range 10 {
		storetest.MustAppend(t, db, landingBatch(a.ID, fmt.Sprint("a", i), i*7, 7), landingBatch(b.ID, fmt.Sprint("b", i), i*3, 3))
	}
	wantA, wantB := readingsOf(t, db, a.ID), readingsOf(t, db, b.ID)
	if len(wantA) != 70 || len(wantB) != 30 {
		t.Fatalf("%d and %d readings, want 70 and 30", len(wantA), len(wantB))
	}
	if st := db.Stats(); st.LandingRows != 100 {
		t.Fatalf("landing rows %d, want 100", st.LandingRows)
	}
	dup := func(when string) {
		t.Helper()
		got := storetest.MustAppend(t, db, landingBatch(a.ID, "a3", 21, 7), landingBatch(b.ID, "b9", 27, 3))
		if !slices.Equal(got, []outpost.AppendResult{outpost.AppendDuplicate, outpost.AppendDuplicate}) {
			t.Errorf("%s: redelivery stored as %v", when, got)
		}
	}
	dup("in the landing table")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = mustOpenWith(t, path, o)
	dup("after reopening")
	if got := readingsOf(t, db, a.ID); !slices.Equal(got, wantA) {
		t.Errorf("after reopening: %v\nwant %v", got, wantA)
	}
	if err := db.MergeLanding(ctx); err != nil {
		t.Fatal(err)
	}
	if st := db.Stats(); st.LandingRows != 0 || st.MergedRows != 100 || st.Merges != 8 {
		t.Errorf("after the merge: %+v", st)
	}
	dup("after the merge")
	if got := readingsOf(t, db, a.ID); !slices.Equal(got, wantA) {
		t.Errorf("after the merge: %v\nwant %v", got, wantA)
	}
	if got := readingsOf(t, db, b.ID); !slices.Equal(got, wantB) {
		t.Errorf("after the merge: %v\nwant %v", got, wantB)
	}
	// New readings continue the sequence: same timestamp, later arrival.
	storetest.MustAppend(t, db, &outpost.Batch{DeviceID: a.ID, ID: "late", Readings: []outpost.Reading{{Feed: "f0", TS: 1000, Value: []byte("late")}}})
	if got := readingsOf(t, db, a.ID); len(got) != 71 || got[1] != "f0@1000=late" {
		t.Errorf("after one more: %v", got[:3])
	}
}

// A merge that stopped between its transactions (Close, a crash) leaves
// series merged and their landing rows still in place: reads see each
// reading once, redeliveries are recognised, and the next merge
// finishes.
func TestInterruptedMerge(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "outpost.db")
	o := sqlite.Options{Landing: sqlite.LandingAlways, MergeAge: time.Hour, MergeRows: 1 << 30}
	db := mustOpenWith(t, path, o)
	d := storetest.MustCreateDevice(t, db, "d")
	for i := range 4 {
		storetest.MustAppend(t, db, landingBatch(d.ID, fmt.Sprint("b", i), i*8, 8))
	}
	want := readingsOf(t, db, d.ID)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// What a merge does to the first two series before it stops.
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO batches (device_seq, batch_id, received_at) SELECT f.device_seq, l.batch, 0 FROM readings_landing l JOIN feeds f ON f.seq = l.series WHERE l.batch IS NOT NULL`,
		`INSERT INTO readings (series, ts, seq, value) SELECT series, ts, seq, value FROM readings_landing WHERE series IN (SELECT seq FROM feeds WHERE ref IN ('f0', 'f1'))`,
		`INSERT INTO readings_merged (series, through) SELECT seq, (SELECT MAX(seq) FROM readings_landing) FROM feeds WHERE ref IN ('f0', 'f1')`,
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	raw.Close()

	db = mustOpenWith(t, path, o)
	if got := readingsOf(t, db, d.ID); !slices.Equal(got, want) {
		t.Fatalf("mid-merge: %v\nwant %v", got, want)
	}
	if st := db.Stats(); st.LandingRows != 16 {
		t.Errorf("unmerged landing rows %d, want 16 (two series of four)", st.LandingRows)
	}
	if got := storetest.MustAppend(t, db, landingBatch(d.ID, "b2", 16, 8)); !slices.Equal(got, []outpost.AppendResult{outpost.AppendDuplicate}) {
		t.Errorf("redelivery mid-merge stored as %v", got)
	}
	if err := db.MergeLanding(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readingsOf(t, db, d.ID); !slices.Equal(got, want) {
		t.Fatalf("after the merge: %v\nwant %v", got, want)
	}
	var landing, merged int
	err = db.CheckRaw(ctx, `SELECT (SELECT COUNT(*) FROM readings_landing), (SELECT COUNT(*) FROM readings_merged)`, &landing, &merged)
	if err != nil || landing != 0 || merged != 0 {
		t.Errorf("after the merge: %d landing rows, %d marks, %v", landing, merged, err)
	}
}

// Deleting a device removes its readings from both tables and forgets
// its batch ids.
func TestDeleteDeviceWithLanding(t *testing.T) {
	ctx := context.Background()
	db := mustOpenWith(t, filepath.Join(t.TempDir(), "outpost.db"), sqlite.Options{Landing: sqlite.LandingAlways, MergeAge: time.Hour, MergeRows: 1 << 30})
	gone := storetest.MustCreateDevice(t, db, "gone")
	kept := storetest.MustCreateDevice(t, db, "kept")
	storetest.MustAppend(t, db, landingBatch(gone.ID, "g1", 0, 4), landingBatch(kept.ID, "k1", 0, 4))
	if err := db.MergeLanding(ctx); err != nil {
		t.Fatal(err)
	}
	storetest.MustAppend(t, db, landingBatch(gone.ID, "g2", 4, 4), landingBatch(kept.ID, "k2", 4, 4))
	if err := db.DeleteDevice(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	if st := db.Stats(); st.LandingRows != 4 {
		t.Errorf("landing rows %d, want the 4 of the kept device", st.LandingRows)
	}
	again := storetest.MustCreateDevice(t, db, "gone")
	if got := storetest.MustAppend(t, db, landingBatch(again.ID, "g2", 0, 1)); !slices.Equal(got, []outpost.AppendResult{outpost.AppendStored}) {
		t.Errorf("batch id of the deleted device: %v", got)
	}
	if err := db.MergeLanding(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readingsOf(t, db, kept.ID); len(got) != 8 {
		t.Errorf("kept device: %v", got)
	}
	if got := readingsOf(t, db, again.ID); len(got) != 1 {
		t.Errorf("new device of the same name: %v", got)
	}
}

// wchar returns the bytes this process has handed to write(2).
func wchar(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "wchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("no wchar in /proc/self/io")
	return 0
}

// bytesPerReading appends commits of batches (10 devices, 4 feeds each,
// 50 readings per batch, perCommit batches per commit), then merges and
// checkpoints, and returns the bytes written per reading.
func bytesPerReading(t *testing.T, o sqlite.Options, commits, perCommit int) float64 {
	ctx := context.Background()
	o.MergeAge, o.MergeRows, o.CheckpointEvery = time.Hour, 1<<30, time.Hour // all at the end
	db := mustOpenWith(t, filepath.Join(t.TempDir(), "outpost.db"), o)
	devs := make([]*outpost.Device, 10)
	for i := range devs {
		devs[i] = storetest.MustCreateDevice(t, db, fmt.Sprint("dev-", i))
	}
	// A first round, so that every series has pages of its own.
	for i, d := range devs {
		storetest.MustAppend(t, db, landingBatch(d.ID, fmt.Sprint("warm-", i), 0, 1000))
	}
	if err := db.MergeLanding(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	w0 := wchar(t)
	k := 0
	for range commits {
		bs := make([]*outpost.Batch, perCommit)
		for j := range bs {
			d := devs[k%len(devs)]
			bs[j] = landingBatch(d.ID, fmt.Sprint("b-", k), 1000+50*(k/len(devs)), 50)
			k++
		}
		storetest.MustAppend(t, db, bs...)
	}
	if err := db.MergeLanding(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	return float64(wchar(t)-w0) / float64(50*k)
}

// Write amplification. A multi-row INSERT that may abort needs a statement
// journal, which SQLite spills to a temporary file past 64 KiB: with the
// clustered table that was about 1 KB written per reading even in large
// commits. And small commits into the clustered table dirty pages in
// every series they touch, where the landing table costs a page or two.
func TestBytesWrittenPerReading(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	// Large commits into the clustered table (what the platform does at
	// full load): 130 batches of 50 readings.
	if got := bytesPerReading(t, sqlite.Options{Landing: sqlite.LandingOff}, 20, 130); got > 300 {
		t.Errorf("large commits, clustered table: %.0f bytes written per reading, want at most 300", got)
	} else {
		t.Logf("large commits, clustered table: %.0f bytes written per reading", got)
	}
	// One batch per commit (light load), through the landing table,
	// merge and checkpoint included.
	if got := bytesPerReading(t, sqlite.Options{}, 1000, 1); got > 300 {
		t.Errorf("one batch per commit: %.0f bytes written per reading, want at most 300", got)
	} else {
		t.Logf("one batch per commit: %.0f bytes written per reading", got)
	}
}

// Commits never checkpoint: the WAL grows past SQLite's default of 1000
// pages until the background checkpoint runs.
func TestCheckpointOffCommitPath(t *testing.T) {
	ctx := context.Background()
	db := mustOpenWith(t, filepath.Join(t.TempDir(), "outpost.db"), sqlite.Options{Landing: sqlite.LandingOff, CheckpointEvery: time.Hour})
	d := storetest.MustCreateDevice(t, db, "d")
	for i := range 200 {
		storetest.MustAppend(t, db, landingBatch(d.ID, fmt.Sprint(i), i*100, 100))
	}
	var busy, frames, done int
	if err := db.CheckRaw(ctx, `PRAGMA wal_checkpoint(PASSIVE)`, &busy, &frames, &done); err != nil {
		t.Fatal(err)
	}
	if frames <= 1000 {
		t.Errorf("WAL of %d frames after 200 commits: commits checkpointed", frames)
	}
}

// A device deleted while a merge is under way (its rows read, not yet
// inserted) stays deleted: its readings do not reappear, not even under a
// new feed that reuses its series number.
func TestDeleteDeviceDuringMerge(t *testing.T) {
	ctx := context.Background()
	db := mustOpenWith(t, filepath.Join(t.TempDir(), "outpost.db"), sqlite.Options{Landing: sqlite.LandingAlways, MergeAge: time.Hour, MergeRows: 1 << 30})
	kept := storetest.MustCreateDevice(t, db, "kept")
	gone := storetest.MustCreateDevice(t, db, "gone") // its feeds get the highest series numbers
	storetest.MustAppend(t, db, landingBatch(kept.ID, "k1", 0, 4), landingBatch(gone.ID, "g1", 0, 4))
	var again *outpost.Device
	sqlite.SetMergeReadHook(t, func(db *sqlite.DB) {
		sqlite.SetMergeReadHook(t, nil)
		if err := db.DeleteDevice(ctx, gone.ID); err != nil {
			t.Error(err)
		}
		again = storetest.MustCreateDevice(t, db, "again")
		storetest.MustAppend(t, db, &outpost.Batch{DeviceID: again.ID, ID: "a1", Readings: []outpost.Reading{
			{Feed: "f0", TS: 5000, Value: []byte("new")}, {Feed: "f1", TS: 5000, Value: []byte("new")}}})
	})
	if err := db.MergeLanding(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.MergeLanding(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readingsOf(t, db, again.ID); !slices.Equal(got, []string{"f0@5000=new", "f1@5000=new"}) {
		t.Errorf("new device: %v", got)
	}
	if got := readingsOf(t, db, kept.ID); len(got) != 4 {
		t.Errorf("kept device: %v", got)
	}
	if st := db.Stats(); st.LandingRows != 0 {
		t.Errorf("landing rows left: %d", st.LandingRows)
	}
}

// Issue 16: the maintenance goroutine (landing merges, WAL checkpoints)
// woke 20 times a second whether or not anything was written: a third of
// an idle platform's CPU. With nothing landed and nothing written it now
// waits to be told; a write starts its clock again.
func TestIdleStoreMaintenanceSleeps(t *testing.T) {
	dir := t.TempDir()
	// On fake time (synctest): a minute passes at once when every goroutine
	// of the store waits, so the check neither takes a minute nor depends
	// on the machine's speed. The old ticker woke 1,200 times in it.
	synctest.Test(t, func(t *testing.T) {
		db := mustOpenWith(t, filepath.Join(dir, "idle.db"), sqlite.Options{})
		defer db.Close()
		w0 := db.MaintenanceWakes()
		time.Sleep(time.Minute)
		synctest.Wait()
		if n := db.MaintenanceWakes() - w0; n != 0 {
			t.Fatalf("the maintenance goroutine of an idle store woke %d times in a minute, want 0", n)
		}
		// A write wakes it, and it works until what was written is merged
		// and checkpointed.
		ctx := context.Background()
		dev := &outpost.Device{ID: "idle-dev", Name: "idle", CreatedAt: time.Now()}
		if err := db.CreateDevice(ctx, dev, outpost.HashSecret("x")); err != nil {
			t.Fatal(err)
		}
		storetest.MustAppend(t, db, &outpost.Batch{DeviceID: dev.ID, ID: "b1", Readings: []outpost.Reading{{Feed: "f0", TS: 1000, Value: []byte("1")}}})
		synctest.Wait()
		if db.MaintenanceWakes() == w0 {
			t.Fatal("a write did not wake the maintenance goroutine")
		}
	})
}
