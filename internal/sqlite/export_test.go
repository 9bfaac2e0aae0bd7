package sqlite

import "context"

// MigrationCount is the schema version a freshly migrated database has.
func MigrationCount() int { return len(migrations) }

// Migration returns the SQL of migration v (1-based).
func Migration(v int) string { return migrations[v-1] }

// CheckRaw runs a query on the writer connection and scans its one row.
func (db *DB) CheckRaw(ctx context.Context, q string, dest ...any) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	return db.w.QueryRowContext(ctx, q).Scan(dest...)
}

// SetMergeReadHook runs fn once a merge has read its rows, until the test
// ends.
func SetMergeReadHook(tb interface{ Cleanup(func()) }, fn func(*DB)) {
	mergeReadHook = fn
	tb.Cleanup(func() { mergeReadHook = nil })
}

// MaintenanceWakes returns how many times the maintenance goroutine woke.
func (db *DB) MaintenanceWakes() int64 { return db.maintWakes.Load() }
