package sqlite

// MigrationCount is the schema version a freshly migrated database has.
func MigrationCount() int { return len(migrations) }

// Migration returns the SQL of migration v (1-based).
func Migration(v int) string { return migrations[v-1] }
