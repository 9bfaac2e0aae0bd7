package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Readings are partitioned by UTC day of their timestamp (native range
// partitioning on ts), so that retention drops a day's partition instead
// of deleting its rows one by one, and a query over a time window reads
// only the days it covers.
//
// A day gets its partition ahead of time (today and the next few days, at
// Open and every hour), or when a reading of a day without one arrives and
// the day is within the window the options set. Readings of days outside
// the window go to the default partition; a partition created later for
// their day moves them over (in the same transaction that attaches it), so
// the default partition never holds rows of a day that has a partition.
//
// Creating and dropping partitions is serialised across replicas by an
// advisory lock, and bounded by a short lock_timeout: a DDL statement
// queued behind a long read would hold up every later statement on the
// table. A creation that times out leaves the readings in the default
// partition, which is correct, only slower; it is tried again later.

const dayMS = int64(24 * time.Hour / time.Millisecond)

// ddlLockTimeout bounds how long partition DDL waits for its locks.
const ddlLockTimeout = "2s"

// retryAfter is how long a day whose partition could not be created waits
// before the next try.
const retryAfter = time.Minute

// dayOf returns the day number (days since 1970-01-01 UTC) of a
// millisecond timestamp.
func dayOf(ts int64) int64 {
	d := ts / dayMS
	if ts%dayMS < 0 {
		d--
	}
	return d
}

const partPrefix = "readings_"

// partName returns the partition table of a day, e.g. readings_20261105.
func partName(day int64) string {
	return partPrefix + time.UnixMilli(day*dayMS).UTC().Format("20060102")
}

// partDay parses a partition name; ok is false for other tables (such as
// readings_default).
func partDay(name string) (int64, bool) {
	s, ok := strings.CutPrefix(name, partPrefix)
	if !ok || len(s) != 8 {
		return 0, false
	}
	t, err := time.Parse("20060102", s)
	if err != nil {
		return 0, false
	}
	return dayOf(t.UnixMilli()), true
}

// partitions tracks which days have a partition of their own. It can be
// stale (another replica may have created or dropped one); every decision
// it takes is checked under the advisory lock, and a stale entry costs at
// most a reading routed to the default partition.
type partitions struct {
	db     *DB
	mu     sync.Mutex
	days   map[int64]bool
	failed map[int64]time.Time // days whose creation failed, and when
}

func loadPartitions(ctx context.Context, db *DB) (*partitions, error) {
	p := &partitions{db: db, days: map[int64]bool{}, failed: map[int64]time.Time{}}
	days, err := p.list(ctx, db.pool)
	if err != nil {
		return nil, err
	}
	for _, d := range days {
		p.days[d] = true
	}
	return p, nil
}

// list reads the days that have a partition from the catalog.
func (p *partitions) list(ctx context.Context, q querier) ([]int64, error) {
	rows, err := q.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'readings'::regclass`)
	if err != nil {
		return nil, fmt.Errorf("postgres: list readings partitions: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("postgres: list readings partitions: %w", err)
	}
	var days []int64
	for _, n := range names {
		if d, ok := partDay(n); ok {
			days = append(days, d)
		}
	}
	slices.Sort(days)
	return days, nil
}

// ensureAhead creates the partitions of today and the next days.
func (p *partitions) ensureAhead(ctx context.Context, now time.Time) error {
	today := dayOf(now.UnixMilli())
	var errs []error
	for d := today; d <= today+int64(p.db.opt.PartitionsAhead); d++ {
		if err := p.ensure(ctx, d, now); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// window returns the first and last day that may get a partition when a
// reading needs one.
func (p *partitions) window(now time.Time) (first, last int64) {
	return dayOf(now.Add(-p.db.opt.PartitionLookback).UnixMilli()), dayOf(now.Add(p.db.opt.PartitionAhead).UnixMilli())
}

// missing returns the days of readings within the window that have no
// partition yet, and have not failed to get one in the last retryAfter.
func (p *partitions) missing(readings func(yield func(ts int64) bool), now time.Time) []int64 {
	first, last := p.window(now)
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int64
	prev := int64(-1 << 62)
	for ts := range readings {
		d := dayOf(ts)
		if d == prev {
			continue
		}
		prev = d
		if d < first || d > last || p.days[d] || slices.Contains(out, d) {
			continue
		}
		if at, ok := p.failed[d]; ok && now.Sub(at) < retryAfter {
			continue
		}
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// ensure creates the partition of day unless it exists, moving the
// day's readings out of the default partition.
func (p *partitions) ensure(ctx context.Context, day int64, now time.Time) error {
	p.mu.Lock()
	have := p.days[day]
	p.mu.Unlock()
	if have {
		return nil
	}
	name := partName(day)
	ident := pgx.Identifier{name}.Sanitize()
	lo, hi := day*dayMS, (day+1)*dayMS
	err := pgx.BeginFunc(ctx, p.db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+ddlLockTimeout+`'`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('outpost.partitions'), hashtext(current_schema()))`); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, ident).Scan(&exists); err != nil || exists {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE `+ident+` (LIKE readings INCLUDING DEFAULTS)`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `WITH moved AS (DELETE FROM readings_default WHERE ts >= $1 AND ts < $2 RETURNING series, ts, seq, value)
			INSERT INTO `+ident+` (series, ts, seq, value) SELECT series, ts, seq, value FROM moved`, lo, hi); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, fmt.Sprintf(`ALTER TABLE readings ATTACH PARTITION %s FOR VALUES FROM (%d) TO (%d)`, ident, lo, hi))
		return err
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.failed[day] = now
		return fmt.Errorf("postgres: create readings partition %s: %w", name, err)
	}
	delete(p.failed, day)
	p.days[day] = true
	return nil
}

// dropBefore drops the partitions whose days end at or before before (so
// none holds a reading at or after it) and deletes the default
// partition's readings older than before. It returns the readings removed:
// for a dropped partition, PostgreSQL's estimate of its rows when it has
// one (counting a day's rows would read the whole day).
func (p *partitions) dropBefore(ctx context.Context, before time.Time) (int64, error) {
	cut := dayOf(before.UnixMilli())
	days, err := p.list(ctx, p.db.pool)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, d := range days {
		if d >= cut {
			break
		}
		name := partName(d)
		ident := pgx.Identifier{name}.Sanitize()
		var rows int64
		err := pgx.BeginFunc(ctx, p.db.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+ddlLockTimeout+`'`); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('outpost.partitions'), hashtext(current_schema()))`); err != nil {
				return err
			}
			var est *float64
			if err := tx.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)`, ident).Scan(&est); errors.Is(err, pgx.ErrNoRows) {
				return nil // dropped by another replica
			} else if err != nil {
				return err
			}
			if est != nil && *est >= 0 {
				rows = int64(*est)
			} else if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+ident).Scan(&rows); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `DROP TABLE `+ident)
			return err
		})
		if err != nil {
			return n, fmt.Errorf("postgres: drop readings partition %s: %w", name, err)
		}
		n += rows
		p.mu.Lock()
		delete(p.days, d)
		p.mu.Unlock()
	}
	tag, err := p.db.pool.Exec(ctx, `DELETE FROM readings_default WHERE ts < $1`, before.UnixMilli())
	if err != nil {
		return n, fmt.Errorf("postgres: prune readings: %w", err)
	}
	return n + tag.RowsAffected(), nil
}
