package sqlite

// MigrationCount is the schema version a freshly migrated database has.
func MigrationCount() int { return len(migrations) }
