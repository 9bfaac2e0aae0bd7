package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

var sharedSuite = []struct {
	name string
	fn   func(t *testing.T, open func(replica string) Store)
}{
	{"PresenceOwners", testPresenceOwners},
	{"BatchOnceAcrossHandles", testBatchOnceAcrossHandles},
	{"DeletedElsewhere", testDeletedElsewhere},
	{"QueueLimitAcrossHandles", testQueueLimitAcrossHandles},
}

// SharedTests lists RunShared's tests by name.
func SharedTests() []string {
	out := make([]string, len(sharedSuite))
	for i, tt := range sharedSuite {
		out[i] = tt.name
	}
	return out
}

// RunShared runs the tests of a store that several platform replicas
// share. For each test, open must create a new, empty store and return a
// function that opens a handle on it as the named replica; the handles
// are closed when t ends.
func RunShared(t *testing.T, open func(t *testing.T) func(replica string) Store) {
	for _, tt := range sharedSuite {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

// A replica's start resets only the devices it recorded online, and an
// offline from a replica a device has left does not override the replica
// it moved to.
func testPresenceOwners(t *testing.T, open func(string) Store) {
	ctx := context.Background()
	a, b := open("a"), open("b")
	onA := MustCreateDevice(t, a, "on-a")
	onB := MustCreateDevice(t, a, "on-b")
	moved := MustCreateDevice(t, a, "moved")
	t1 := time.UnixMilli(1_700_000_000_000).UTC()
	t2, t3 := t1.Add(time.Minute), t1.Add(2*time.Minute)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string, id string, online bool, seen time.Time) {
		t.Helper()
		d, err := b.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Online != online || !d.LastSeen.Equal(seen) {
			t.Errorf("%s: %s online %v, last seen %v; want %v, %v", what, d.Name, d.Online, d.LastSeen, online, seen)
		}
	}
	must(a.SetPresence(ctx, onA.ID, true, t1))
	must(b.SetPresence(ctx, onB.ID, true, t1))
	must(a.SetPresence(ctx, moved.ID, true, t1))
	must(b.SetPresence(ctx, moved.ID, true, t2)) // the device logs in on b
	must(a.SetPresence(ctx, moved.ID, false, t3))
	check("late offline from the replica it left", moved.ID, true, t3)

	must(b.ResetPresence(ctx)) // b restarts
	check("a's device after b's start", onA.ID, true, t1)
	check("b's device after b's start", onB.ID, false, t1)
	check("moved device after b's start", moved.ID, false, t3)

	must(a.SetPresence(ctx, onA.ID, false, t2))
	check("offline from its own replica", onA.ID, false, t2)
}

// Two handles appending the same batches at once store each batch once.
func testBatchOnceAcrossHandles(t *testing.T, open func(string) Store) {
	ctx := context.Background()
	a, b := open("a"), open("b")
	d := MustCreateDevice(t, a, "d")
	const batches = 40
	var wg sync.WaitGroup
	results := make([][]outpost.AppendResult, 2)
	errs := make([]error, 2)
	for i, s := range []Store{a, b} {
		wg.Go(func() {
			for n := range batches {
				// A new feed per few batches: both handles create it at once.
				r, err := s.AppendBatches(ctx, []*outpost.Batch{Batch(d.ID, fmt.Sprint(n), fmt.Sprintf("f%d", n/4), int64(n+1), int64(n+1))})
				if err != nil {
					errs[i] = err
					return
				}
				results[i] = append(results[i], r...)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("handle %d: %v", i, err)
		}
	}
	for n := range batches {
		got := []outpost.AppendResult{results[0][n], results[1][n]}
		slices.Sort(got)
		if !slices.Equal(got, []outpost.AppendResult{outpost.AppendStored, outpost.AppendDuplicate}) {
			t.Errorf("batch %d: %v, want stored once and once a duplicate", n, got)
		}
	}
	rs := MustReadings(t, b, outpost.ReadingFilter{DeviceID: d.ID, Limit: 10 * batches})
	if len(rs) != 2*batches {
		t.Errorf("%d readings, want %d", len(rs), 2*batches)
	}
	if fs, err := a.Feeds(ctx, d.ID); err != nil || len(fs) != batches/4 {
		t.Errorf("feeds %v, %v; want %d", fs, err, batches/4)
	}
}

// A device deleted through one handle is unknown to the other, even one
// that appended for it before.
func testDeletedElsewhere(t *testing.T, open func(string) Store) {
	ctx := context.Background()
	a, b := open("a"), open("b")
	d := MustCreateDevice(t, a, "d")
	if res := MustAppend(t, b, Batch(d.ID, "1", "f", 1)); res[0] != outpost.AppendStored {
		t.Fatalf("append: %v", res)
	}
	if err := a.DeleteDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if res := MustAppend(t, b, Batch(d.ID, "2", "f", 2), Batch(d.ID, "", "f", 3)); !slices.Equal(res, []outpost.AppendResult{outpost.AppendUnknownDevice, outpost.AppendUnknownDevice}) {
		t.Errorf("append after the device was deleted elsewhere: %v", res)
	}
	again := &outpost.Device{ID: d.ID, Name: d.Name, CreatedAt: d.CreatedAt}
	if err := a.CreateDevice(ctx, again, outpost.HashSecret("x")); err != nil {
		t.Fatal(err)
	}
	if res := MustAppend(t, b, Batch(d.ID, "1", "f", 4)); res[0] != outpost.AppendStored {
		t.Errorf("append for the device created again: %v", res)
	}
	if rs := MustReadings(t, a, outpost.ReadingFilter{DeviceID: d.ID}); len(rs) != 1 || rs[0].TS != 4 {
		t.Errorf("readings of the device created again: %v", view(rs))
	}
}

// The bound on waiting messages holds when two handles enqueue at once.
func testQueueLimitAcrossHandles(t *testing.T, open func(string) Store) {
	ctx := context.Background()
	a, b := open("a"), open("b")
	d := MustCreateDevice(t, a, "d")
	now := time.Now().UTC().Truncate(time.Millisecond)
	const limit, each = 5, 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, conflicts := 0, 0
	var other []error
	for _, s := range []Store{a, b} {
		wg.Go(func() {
			for range each {
				err := s.EnqueueMessage(ctx, msg(d.ID, "cmd", now, time.Hour), limit)
				mu.Lock()
				switch outpost.ErrorCode(err) {
				case "":
					ok++
				case outpost.ECONFLICT:
					conflicts++
				default:
					other = append(other, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(other) > 0 || ok != limit || conflicts != 2*each-limit {
		t.Errorf("%d enqueued, %d refused, errors %v; want %d and %d", ok, conflicts, other, limit, 2*each-limit)
	}
	if got, err := b.Deliverable(ctx, d.ID, now, false, 0); err != nil || len(got) != limit {
		t.Errorf("deliverable: %d, %v", len(got), err)
	}
}
