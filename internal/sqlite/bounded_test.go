package sqlite_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
)

// TestReadingsAcrossFeedsBounded covers issue 12 item 11: the newest N
// readings of a device with many feeds were read as N rows per feed and
// merged in memory (1,000 feeds × 1,000 readings made one ?limit=100000
// request take 220 MiB). Now it is one query bounded by N: the Go memory
// a query allocates follows the page, not feeds × limit.
func TestReadingsAcrossFeedsBounded(t *testing.T) {
	const feeds, perFeed, limit = 500, 200, 200
	db := MustOpen(t, filepath.Join(t.TempDir(), "outpost.db"))
	d := storetest.MustCreateDevice(t, db, "many-feeds")
	value := json.RawMessage(`"a fairly long string value, so that rows cost memory"`)
	for f := 0; f < feeds; f++ {
		b := &outpost.Batch{DeviceID: d.ID, ID: fmt.Sprint("b", f)}
		for i := 0; i < perFeed; i++ {
			b.Readings = append(b.Readings, outpost.Reading{Feed: fmt.Sprint("f", f), TS: int64(1 + i*feeds + f), Value: value})
		}
		storetest.MustAppend(t, db, b)
	}
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		f    outpost.ReadingFilter
		// first and last timestamps of the page
		first, last int64
	}{
		{"newest", outpost.ReadingFilter{DeviceID: d.ID, Limit: limit}, feeds*perFeed - limit + 1, feeds * perFeed},
		{"from since", outpost.ReadingFilter{DeviceID: d.ID, Since: 1000, Limit: limit}, 1000, 1000 + limit - 1},
		{"newest before until", outpost.ReadingFilter{DeviceID: d.ID, Until: 5001, Limit: limit}, 5001 - limit, 5000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			rs, err := db.Readings(ctx, tt.f)
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) != limit || rs[0].TS != tt.first || rs[len(rs)-1].TS != tt.last {
				t.Fatalf("got %d readings from %d to %d, want %d from %d to %d", len(rs), rs[0].TS, rs[len(rs)-1].TS, limit, tt.first, tt.last)
			}
			for i := 1; i < len(rs); i++ {
				if rs[i].TS <= rs[i-1].TS {
					t.Fatalf("readings out of order at %d: %d after %d", i, rs[i].TS, rs[i-1].TS)
				}
			}
			// The page itself is ~200 rows of ~100 bytes; reading every
			// feed's newest 200 would allocate 100,000 rows (>10 MB).
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 2<<20 {
				t.Errorf("one page of %d readings allocated %d bytes", limit, alloc)
			}
		})
	}
}
