package bench

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

// writerMaxReadings is the ingest writer's default cap on the readings of
// one group commit (ingest.Options.MaxReadings, set in ingest.NewWriter).
const writerMaxReadings = 20_000

type rawStoreResult struct {
	readings int
	batches  int
	commits  int
	took     time.Duration
}

// runRawStore appends batches straight into a fresh SQLite store (the
// platform's own sqlite package, same synchronous mode, default cache), no
// broker and no ingest writer. Groups are formed the way the ingest writer
// forms them: with perGroup == 0, batches are added to a transaction while
// it holds fewer than writerMaxReadings readings (the writer's grouping
// under a full queue); with perGroup > 0, exactly perGroup batches go into
// each transaction (to replay a group size observed on the platform).
// Every batch carries its id, so the dedup insert is paid as on the
// platform. It checks that every batch was stored and counts the rows.
func runRawStore(ctx context.Context, so sqlite.Options, deviceIDs []string, batches []*outpost.Batch, perGroup int) (rawStoreResult, error) {
	var res rawStoreResult
	dir, err := os.MkdirTemp("", "outpost-bench-store-*")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "raw.db")
	db, err := sqlite.Open(ctx, path, so)
	if err != nil {
		return res, fmt.Errorf("bench: raw store: %w", err)
	}
	defer db.Close()
	now := time.Now().UTC().Truncate(time.Millisecond)
	for i, id := range deviceIDs {
		if err := db.CreateDevice(ctx, &outpost.Device{ID: id, Name: fmt.Sprintf("raw-%d", i), CreatedAt: now}, outpost.HashSecret(outpost.NewSecret())); err != nil {
			return res, fmt.Errorf("bench: raw store: %w", err)
		}
	}

	start := time.Now()
	for next := 0; next < len(batches); {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("bench: raw store: %w", err)
		}
		end, n := next, 0
		if perGroup > 0 {
			end = min(len(batches), next+perGroup)
			for _, b := range batches[next:end] {
				n += len(b.Readings)
			}
		} else {
			for end < len(batches) && (end == next || n < writerMaxReadings) {
				n += len(batches[end].Readings)
				end++
			}
		}
		rs, err := db.AppendBatches(ctx, batches[next:end])
		if err != nil {
			return res, fmt.Errorf("bench: raw store: %w", err)
		}
		for i, r := range rs {
			if r != outpost.AppendStored {
				return res, fmt.Errorf("bench: raw store: batch %s not stored (result %d)", batches[next+i].ID, r)
			}
		}
		res.readings += n
		res.batches += end - next
		res.commits++
		next = end
	}
	res.took = time.Since(start)

	rows, err := countRows(ctx, path)
	if err != nil {
		return res, fmt.Errorf("bench: raw store: count: %w", err)
	}
	if rows != res.readings {
		return res, fmt.Errorf("bench: raw store: %d rows stored, want %d", rows, res.readings)
	}
	return res, nil
}

// countRows counts the readings rows of a database file, read-only.
func countRows(ctx context.Context, path string) (int, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var n int
	err = db.QueryRowContext(ctx, `SELECT COUNT(*) FROM readings_all`).Scan(&n)
	return n, err
}
