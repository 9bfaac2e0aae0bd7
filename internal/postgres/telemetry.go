package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// AppendBatches implements outpost.TelemetryStore. All batches commit in
// one transaction (the ingest writer's group commit):
//
//  1. the devices are looked up FOR KEY SHARE, so a device deleted by any
//     replica is either gone (its batches are AppendUnknownDevice) or
//     cannot go until this commit;
//  2. the feeds not yet known get their series rows;
//  3. the batch ids go into batches with INSERT … ON CONFLICT DO NOTHING
//     RETURNING: a batch whose id comes back is stored, any other is a
//     duplicate (of a batch stored before, by any replica, or earlier in
//     the same call);
//  4. the readings of the stored batches are numbered from one block of
//     readings_seq (one sequence call per 2^20 readings, not per reading)
//     and written with COPY straight into the partitioned readings table,
//     which routes each row to its day.
//
// The dedup decision is made on the batch id before any reading is
// written, so the readings need no unique key and no staging table: the
// one COPY is the only per-reading work.
func (db *DB) AppendBatches(ctx context.Context, batches []*outpost.Batch) ([]outpost.AppendResult, error) {
	res := make([]outpost.AppendResult, len(batches))
	if len(batches) == 0 {
		return res, nil
	}
	now := time.Now()
	// Partitions are DDL: created before the transaction, in one of their
	// own, so the append never holds their locks.
	for _, d := range db.parts.missing(func(yield func(int64) bool) {
		for _, b := range batches {
			for _, r := range b.Readings {
				if !yield(r.TS) {
					return
				}
			}
		}
	}, now) {
		if err := db.parts.ensure(ctx, d, now); err != nil {
			db.log.Warn("postgres: readings of the day go to the default partition for now", "error", err)
		}
	}

	ids := make([]string, 0, 1)
	for _, b := range batches {
		if !slices.Contains(ids, b.DeviceID) {
			ids = append(ids, b.DeviceID)
		}
	}
	var newFeeds map[feedKey]int64
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		newFeeds = nil
		devs := make(map[string]int64, len(ids))
		rows, err := tx.Query(ctx, `SELECT id, seq FROM devices WHERE id = ANY($1) FOR KEY SHARE`, ids)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			var seq int64
			if err := rows.Scan(&id, &seq); err != nil {
				rows.Close()
				return err
			}
			devs[id] = seq
		}
		if err := rows.Err(); err != nil {
			return err
		}

		// The series of this call's feeds: from the cache, and for feeds
		// not seen before, from one sorted insert (two transactions
		// inserting the same feeds lock them in the same order).
		series := map[feedKey]int64{}
		var missing []feedKey
		db.mu.Lock()
		for _, b := range batches {
			dev, ok := devs[b.DeviceID]
			if !ok {
				continue
			}
			for _, r := range b.Readings {
				k := feedKey{dev, r.Feed}
				if _, ok := series[k]; ok {
					continue
				}
				if s, ok := db.feedSeq[k]; ok {
					series[k] = s
				} else {
					series[k] = 0
					missing = append(missing, k)
				}
			}
		}
		db.mu.Unlock()
		if len(missing) > 0 {
			if newFeeds, err = createFeeds(ctx, tx, missing); err != nil {
				return err
			}
			for k, s := range newFeeds {
				series[k] = s
			}
		}

		// Batch ids, in one sorted insert for the same reason.
		type claim struct {
			dev int64
			id  string
		}
		var claims []claim
		for _, b := range batches {
			if dev, ok := devs[b.DeviceID]; ok && b.ID != "" {
				claims = append(claims, claim{dev, b.ID})
			}
		}
		slices.SortFunc(claims, func(a, b claim) int { return cmp.Or(cmp.Compare(a.dev, b.dev), cmp.Compare(a.id, b.id)) })
		claims = slices.Compact(claims)
		won := map[claim]bool{}
		if len(claims) > 0 {
			devCol, idCol := make([]int64, len(claims)), make([]string, len(claims))
			for i, c := range claims {
				devCol[i], idCol[i] = c.dev, c.id
			}
			rows, err := tx.Query(ctx, `INSERT INTO batches (device_seq, batch_id, received_at)
				SELECT d, b, $3 FROM unnest($1::bigint[], $2::text[]) AS t(d, b)
				ON CONFLICT DO NOTHING RETURNING device_seq, batch_id`, devCol, idCol, now.UnixMilli())
			if err != nil {
				return err
			}
			for rows.Next() {
				var c claim
				if err := rows.Scan(&c.dev, &c.id); err != nil {
					rows.Close()
					return err
				}
				won[c] = true
			}
			if err := rows.Err(); err != nil {
				return err
			}
		}

		src := &readingRows{series: series}
		for i, b := range batches {
			dev, ok := devs[b.DeviceID]
			switch {
			case !ok:
				res[i] = outpost.AppendUnknownDevice
				continue
			case b.ID == "":
			case won[claim{dev, b.ID}]:
				delete(won, claim{dev, b.ID}) // a second copy in this call is a duplicate
			default:
				res[i] = outpost.AppendDuplicate
				continue
			}
			res[i] = outpost.AppendStored
			src.add(dev, b)
		}
		if src.count == 0 {
			return nil
		}
		blocks := (src.count + seqBlock - 1) / seqBlock
		rows, err = tx.Query(ctx, `SELECT nextval('readings_seq') FROM generate_series(1, $1)`, blocks)
		if err != nil {
			return err
		}
		if src.blocks, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return err
		}
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"readings"}, []string{"series", "ts", "seq", "value"}, src)
		if err != nil {
			return err
		}
		if n != int64(src.count) {
			return fmt.Errorf("copied %d readings of %d", n, src.count)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("append readings: %w", err)
	}
	if len(newFeeds) > 0 {
		db.mu.Lock()
		for k, s := range newFeeds {
			db.feedSeq[k] = s
		}
		db.mu.Unlock()
	}
	return res, nil
}

// createFeeds inserts the series rows of feeds (missing from the cache;
// another replica may have created them) and returns their seqs.
func createFeeds(ctx context.Context, tx pgx.Tx, keys []feedKey) (map[feedKey]int64, error) {
	slices.SortFunc(keys, func(a, b feedKey) int { return cmp.Or(cmp.Compare(a.dev, b.dev), cmp.Compare(a.ref, b.ref)) })
	devs, refs := make([]int64, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		devs[i], refs[i] = k.dev, k.ref
	}
	if _, err := tx.Exec(ctx, `INSERT INTO feeds (device_seq, ref) SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING`, devs, refs); err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT f.device_seq, f.ref, f.seq FROM feeds f JOIN unnest($1::bigint[], $2::text[]) AS k(d, r) ON f.device_seq = k.d AND f.ref = k.r`, devs, refs)
	if err != nil {
		return nil, err
	}
	out := make(map[feedKey]int64, len(keys))
	for rows.Next() {
		var k feedKey
		var seq int64
		if err := rows.Scan(&k.dev, &k.ref, &seq); err != nil {
			rows.Close()
			return nil, err
		}
		out[k] = seq
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) != len(keys) {
		return nil, fmt.Errorf("feeds: %d of %d series found", len(out), len(keys))
	}
	return out, nil
}

// seqBlock is how many readings one readings_seq value numbers.
const seqBlock = 1 << 20

// readingRows feeds COPY the readings of the stored batches, in order,
// without building a row slice per reading.
type readingRows struct {
	series map[feedKey]int64
	parts  []stored
	count  int
	blocks []int64 // readings_seq values: reading i gets blocks[i/seqBlock]<<20 | i%seqBlock

	b, r int // current part, and 1 + the index of its current reading
	i    int // readings sent so far
	row  [4]any
}

type stored struct {
	dev int64
	b   *outpost.Batch
}

func (s *readingRows) add(dev int64, b *outpost.Batch) {
	if len(b.Readings) > 0 {
		s.parts = append(s.parts, stored{dev, b})
		s.count += len(b.Readings)
	}
}

// Next implements pgx.CopyFromSource.
func (s *readingRows) Next() bool {
	s.r++
	for s.b < len(s.parts) && s.r > len(s.parts[s.b].b.Readings) {
		s.b, s.r = s.b+1, 1
	}
	return s.b < len(s.parts)
}

// Values implements pgx.CopyFromSource.
func (s *readingRows) Values() ([]any, error) {
	p := s.parts[s.b]
	rd := p.b.Readings[s.r-1]
	seq := s.blocks[s.i/seqBlock]<<20 | int64(s.i%seqBlock)
	s.i++
	s.row = [4]any{s.series[feedKey{p.dev, rd.Feed}], rd.TS, seq, string(rd.Value)}
	return s.row[:], nil
}

// Err implements pgx.CopyFromSource.
func (s *readingRows) Err() error { return nil }

// Readings implements outpost.TelemetryStore.
func (db *DB) Readings(ctx context.Context, f outpost.ReadingFilter) ([]outpost.Reading, error) {
	var out []outpost.Reading
	err := db.eachReading(ctx, db.pool, f, func(r outpost.Reading) error {
		out = append(out, r)
		return nil
	})
	return out, err
}

// EachReading implements outpost.ReadingScanner. It reads on a pool of its
// own, so a slow client never holds the connections ingestion needs.
func (db *DB) EachReading(ctx context.Context, f outpost.ReadingFilter, fn func(outpost.Reading) error) error {
	return db.eachReading(ctx, db.scan, f, fn)
}

func (db *DB) eachReading(ctx context.Context, pool querier, f outpost.ReadingFilter, fn func(outpost.Reading) error) error {
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	dev, err := seqOf(ctx, pool, f.DeviceID, "")
	if err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return err
		}
		return fmt.Errorf("readings: %w", err)
	}
	until := f.Until
	if until <= 0 {
		until = 1<<63 - 1
	}
	// Each feed contributes at most Limit readings through its own index
	// scan (a LATERAL subquery, merged across the partitions of the
	// window), so a device with many readings is never read whole: with
	// Since, the first Limit from Since; without, the newest Limit, put
	// back in ascending order.
	dir := "DESC"
	if f.Since > 0 {
		dir = "ASC"
	}
	sel := `SELECT f.ref, r.ts, r.seq, r.value FROM feeds f CROSS JOIN LATERAL (
		SELECT ts, seq, value FROM readings WHERE series = f.seq AND ts >= $2 AND ts < $3 ORDER BY ts ` + dir + `, seq ` + dir + ` LIMIT $4) r
		WHERE f.device_seq = $1`
	args := []any{dev, f.Since, until, f.Limit}
	if f.Feed != "" {
		sel += ` AND f.ref = $5`
		args = append(args, f.Feed)
	}
	sel += ` ORDER BY r.ts ` + dir + `, r.seq ` + dir + ` LIMIT $4`
	q := sel
	if f.Since <= 0 {
		q = `SELECT ref, ts, seq, value FROM (` + sel + `) x ORDER BY ts, seq`
	}
	rows, err := pool.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("readings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r outpost.Reading
		var seq int64
		var v string
		if err := rows.Scan(&r.Feed, &r.TS, &seq, &v); err != nil {
			return fmt.Errorf("readings: %w", err)
		}
		r.Value = []byte(v)
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("readings: %w", err)
	}
	return nil
}

// Feeds implements outpost.TelemetryStore.
func (db *DB) Feeds(ctx context.Context, deviceID string) ([]string, error) {
	rows, err := db.pool.Query(ctx, `SELECT f.ref FROM feeds f JOIN devices d ON d.seq = f.device_seq WHERE d.id = $1 ORDER BY f.ref`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("feeds: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("feeds: %w", err)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}
