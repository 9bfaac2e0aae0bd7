package sqlite_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
)

// Pruned batch ids no longer deduplicate; kept ones still do.
func TestPruneBatches(t *testing.T) {
	ctx := context.Background()
	db := MustOpen(t, filepath.Join(t.TempDir(), "outpost.db"))
	d := storetest.MustCreateDevice(t, db, "pump")
	storetest.MustAppend(t, db, storetest.Batch(d.ID, "old", "temp", 1))
	if n, err := db.PruneBatches(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("prune with nothing old enough: %d, %v", n, err)
	}
	if got := storetest.MustAppend(t, db, storetest.Batch(d.ID, "old", "temp", 1)); !slices.Equal(got, []outpost.AppendResult{outpost.AppendDuplicate}) {
		t.Fatalf("redelivery before pruning: %v", got)
	}
	if n, err := db.PruneBatches(ctx, time.Now().Add(time.Second)); err != nil || n != 1 {
		t.Fatalf("prune: %d, %v; want 1", n, err)
	}
	if got := storetest.MustAppend(t, db, storetest.Batch(d.ID, "old", "temp", 1)); !slices.Equal(got, []outpost.AppendResult{outpost.AppendStored}) {
		t.Fatalf("redelivery after pruning: %v", got)
	}
}

// Only finished queue rows are purged; waiting ones stay.
func TestPurgeFinished(t *testing.T) {
	ctx := context.Background()
	db := MustOpen(t, filepath.Join(t.TempDir(), "outpost.db"))
	d := storetest.MustCreateDevice(t, db, "pump")
	now := time.Now().UTC().Truncate(time.Millisecond)
	mk := func(id string, ttl time.Duration) {
		m := &outpost.QueuedMessage{ID: id, DeviceID: d.ID, Kind: "feed", Payload: []byte(`{}`), CreatedAt: now.Add(-time.Hour), ExpiresAt: now.Add(ttl)}
		if err := db.EnqueueMessage(ctx, m, 100); err != nil {
			t.Fatal(err)
		}
	}
	mk("gone", -time.Minute) // already past its expiry
	mk("waiting", time.Hour)
	if _, err := db.ExpireDue(ctx, d.ID, now); err != nil {
		t.Fatal(err)
	}
	if n, err := db.PurgeFinished(ctx, now.Add(time.Second)); err != nil || n != 1 {
		t.Fatalf("purge: %d, %v; want the expired message only", n, err)
	}
	if _, err := db.QueuedMessage(ctx, "gone"); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("expired message still there: %v", err)
	}
	if m, err := db.QueuedMessage(ctx, "waiting"); err != nil || m.State != outpost.StateQueued {
		t.Fatalf("waiting message: %+v, %v", m, err)
	}
}
