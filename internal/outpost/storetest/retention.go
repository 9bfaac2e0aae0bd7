package storetest

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Pruned batch ids no longer deduplicate; kept ones still do.
func testPruneBatches(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "pump")
	MustAppend(t, s, Batch(d.ID, "old", "temp", 1), Batch(d.ID, "", "temp", 2), Batch(d.ID, "older", "temp", 3))
	if n, err := s.PruneBatches(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("prune with nothing old enough: %d, %v", n, err)
	}
	if got := MustAppend(t, s, Batch(d.ID, "old", "temp", 1)); !slices.Equal(got, []outpost.AppendResult{outpost.AppendDuplicate}) {
		t.Fatalf("redelivery before pruning: %v", got)
	}
	if n, err := s.PruneBatches(ctx, time.Now().Add(time.Second)); err != nil || n != 2 {
		t.Fatalf("prune: %d, %v; want the 2 ids", n, err)
	}
	if got := MustAppend(t, s, Batch(d.ID, "old", "temp", 1)); !slices.Equal(got, []outpost.AppendResult{outpost.AppendStored}) {
		t.Fatalf("redelivery after pruning: %v", got)
	}
	if n, err := s.PruneBatches(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("prune the id stored again: %d, %v; want it kept", n, err)
	}
}

// Only finished queue rows, finished before the bound, are purged; waiting
// and in-flight ones stay whatever their age.
func testPurgeFinished(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "pump")
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	created := t0.Add(-time.Hour)
	mk := func(name string, ttl time.Duration) *outpost.QueuedMessage {
		m := msg(d.ID, "cmd", created, ttl)
		m.ID = name + "-" + m.ID
		if err := s.EnqueueMessage(ctx, m, 0); err != nil {
			t.Fatal(err)
		}
		return m
	}
	mkCall := func(name string) *outpost.Call {
		c, m := callOf(d.ID, "x", created, 11*time.Hour, time.Minute)
		c.ID = name + "-" + c.ID
		m.ID = c.ID
		if err := s.EnqueueCall(ctx, c, m, 0); err != nil {
			t.Fatal(err)
		}
		return c
	}
	delivered := mk("delivered", 11*time.Hour)
	expired := mk("expired", 59*time.Minute) // expires at t0-1m
	queued := mk("queued", 11*time.Hour)
	sent := mk("sent", 11*time.Hour)
	succeeded, failed, timedOut := mkCall("succeeded"), mkCall("failed"), mkCall("timed-out")
	inFlight, cancelled, recent := mkCall("in-flight"), mkCall("cancelled"), mkCall("recent")
	far := t0.Add(10 * time.Hour)
	if _, err := s.MarkSent(ctx, []outpost.SendMark{
		{ID: delivered.ID}, {ID: sent.ID},
		{ID: succeeded.ID, Deadline: far}, {ID: failed.ID, Deadline: far}, {ID: timedOut.ID, Deadline: t0.Add(-time.Second)},
		{ID: inFlight.ID, Deadline: far}, {ID: recent.ID, Deadline: far},
	}, created); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.MarkDelivered(ctx, d.ID, []string{delivered.ID, inFlight.ID}, t0); err != nil {
		t.Fatal(err)
	}
	for _, a := range []outpost.CallAnswer{
		{DeviceID: d.ID, ID: succeeded.ID, Result: json.RawMessage(`1`), At: t0},
		{DeviceID: d.ID, ID: failed.ID, Error: &outpost.CallError{Code: "handler_error", Message: "no"}, At: t0},
		{DeviceID: d.ID, ID: recent.ID, Result: json.RawMessage(`1`), At: t0.Add(2 * time.Hour)},
	} {
		if _, _, err := s.AnswerCall(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CancelCall(ctx, cancelled.ID, t0); err != nil {
		t.Fatal(err)
	}
	if ex, err := s.ExpireDue(ctx, d.ID, t0); err != nil || len(ex.Messages) != 1 || len(ex.Calls) != 1 {
		t.Fatalf("expire: %+v, %v; want the expired message and the timed-out call", ex, err)
	}

	if n, err := s.PurgeFinished(ctx, t0.Add(-30*time.Minute)); err != nil || n != 0 {
		t.Fatalf("purge before anything finished: %d, %v", n, err)
	}
	if n, err := s.PurgeFinished(ctx, t0.Add(time.Hour)); err != nil || n != 6 {
		t.Fatalf("purge: %d, %v; want 6", n, err)
	}
	for _, id := range []string{delivered.ID, expired.ID, succeeded.ID, failed.ID, timedOut.ID, cancelled.ID} {
		if _, err := s.QueuedMessage(ctx, id); outpost.ErrorCode(err) != outpost.ENOTFOUND {
			t.Errorf("%s: %v, want purged", id, err)
		}
	}
	for _, id := range []string{queued.ID, sent.ID, inFlight.ID, recent.ID} {
		if _, err := s.QueuedMessage(ctx, id); err != nil {
			t.Errorf("%s: %v, want kept", id, err)
		}
	}
	if n, err := s.PurgeFinished(ctx, t0.Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("purge again: %d, %v", n, err)
	}
}

// Readings before the bound go (an engine may keep those of the
// partition holding the bound); none at or after it; later readings in the
// pruned range are stored and read as usual.
func testPruneReadings(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	other := MustCreateDevice(t, s, "other")
	before := time.Now().UTC().Truncate(time.Millisecond)
	b := before.UnixMilli()
	day := int64(24 * time.Hour / time.Millisecond)
	gone := []int64{5, b - 40*day, b - 3*day}
	kept := []int64{b, b + 1, b + 3600_000, b + 3*day}
	maybe := []int64{b - 1}
	for _, dev := range []string{d.ID, other.ID} {
		MustAppend(t, s, Batch(dev, "", "f", slices.Concat(gone, maybe, kept)...))
	}
	n, err := s.PruneReadings(ctx, before)
	if err != nil {
		t.Fatal(err)
	}
	if n < 0 {
		t.Errorf("pruned %d readings", n)
	}
	for _, dev := range []string{d.ID, other.ID} {
		var got []int64
		for _, r := range MustReadings(t, s, outpost.ReadingFilter{DeviceID: dev}) {
			got = append(got, r.TS)
		}
		if !slices.Equal(got, kept) && !slices.Equal(got, slices.Concat(maybe, kept)) {
			t.Errorf("after pruning: %v, want %v (with %v or not)", got, kept, maybe)
		}
	}
	if n, err := s.PruneReadings(ctx, before); err != nil {
		t.Fatalf("prune again: %d, %v", n, err)
	}
	// The pruned range takes readings again.
	MustAppend(t, s, Batch(d.ID, "late", "f", gone...))
	got := MustReadings(t, s, outpost.ReadingFilter{DeviceID: d.ID, Until: b - 2*day})
	if len(got) != len(gone) {
		t.Errorf("readings stored after pruning: %v, want %d", view(got), len(gone))
	}
}

func testHealth(t *testing.T, s Store) {
	ctx := context.Background()
	for i := range 2 {
		if err := s.Ping(ctx); err != nil {
			t.Errorf("ping %d: %v", i, err)
		}
		if err := s.CheckWrite(ctx); err != nil {
			t.Errorf("check write %d: %v", i, err)
		}
	}
	// The probe leaves nothing the platform would show.
	if ds, err := s.Devices(ctx, outpost.DeviceFilter{}); err != nil || len(ds) != 0 {
		t.Errorf("devices after the checks: %v, %v", ds, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Ping(cctx); err == nil {
		t.Error("ping with a cancelled context succeeded")
	}
}

// A backup holds what the store held and is never written over; an engine
// whose backups are made with its own tools says so with ENOTSUPPORTED.
func testBackup(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	MustAppend(t, s, Batch(d.ID, "b", "f", 1, 2, 3))
	dest := filepath.Join(t.TempDir(), "backup")
	info, err := s.Backup(ctx, dest)
	if outpost.ErrorCode(err) == outpost.ENOTSUPPORTED {
		if outpost.ErrorMessage(err) == "" {
			t.Error("ENOTSUPPORTED without a message")
		}
		if _, serr := os.Stat(dest); serr == nil {
			t.Error("a refused backup wrote its file")
		}
		t.Skipf("backup not supported by this engine: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dest)
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != dest || info.Bytes != st.Size() || info.Devices != 1 || info.Readings != 3 {
		t.Errorf("backup info %+v; want %s, %d bytes, 1 device, 3 readings", info, dest, st.Size())
	}
	if _, err := s.Backup(ctx, dest); err == nil {
		t.Error("a second backup wrote over the first")
	}
	if st2, err := os.Stat(dest); err != nil || st2.Size() != st.Size() || !st2.ModTime().Equal(st.ModTime()) {
		t.Errorf("the first backup changed: %v", err)
	}
}
