// Package migrate brings a storage engine's schema to the version a binary
// knows, the same way for every engine.
//
// An engine keeps its migrations as a list of SQL scripts in its own
// dialect: entry i brings the schema to version i+1. Shipped entries are
// never edited, only appended to, so a database at version v always holds
// the same schema whatever binary migrated it. The runner applies the
// missing ones in order, each in its own transaction together with the
// record of its version, under the engine's lock so two processes sharing a
// database (platform replicas) never migrate it at once. A database newer
// than the binary is refused rather than used.
package migrate

import (
	"context"
	"fmt"
)

// Engine is what the runner needs of one database.
type Engine interface {
	// Lock keeps other runners on the same database out until unlock is
	// called. An engine that only one process can open may do nothing.
	Lock(ctx context.Context) (unlock func(), err error)
	// Version creates the engine's record of applied migrations if it is
	// missing and returns the highest version applied (0 for a new
	// database).
	Version(ctx context.Context) (int, error)
	// Apply runs script and records version v in one transaction: either
	// both happen or neither.
	Apply(ctx context.Context, v int, script string) error
}

// Result says what Run did.
type Result struct {
	// From is the version the database had, To the version it has now.
	From, To int
}

// Run applies the migrations the database has not seen. name names the
// engine in errors. On an error, the migrations before the failing one
// stay applied.
func Run(ctx context.Context, name string, e Engine, migrations []string) (Result, error) {
	unlock, err := e.Lock(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("%s: migrate: %w", name, err)
	}
	defer unlock()
	have, err := e.Version(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("%s: schema version: %w", name, err)
	}
	res := Result{From: have, To: have}
	if have > len(migrations) {
		return res, fmt.Errorf("%s: database schema version %d is newer than this binary knows (%d); upgrade outpost", name, have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		if err := e.Apply(ctx, v, migrations[v-1]); err != nil {
			return res, fmt.Errorf("%s: migration %d: %w", name, v, err)
		}
		res.To = v
	}
	return res, nil
}

// Check fails unless the database is at exactly the version migrations
// lead to: for a database that cannot be migrated (opened read-only).
// Version must not create anything in that case; Check calls it without
// the lock.
func Check(ctx context.Context, name string, version func(context.Context) (int, error), migrations []string) error {
	have, err := version(ctx)
	if err != nil {
		return fmt.Errorf("%s: schema version: %w", name, err)
	}
	switch {
	case have > len(migrations):
		return fmt.Errorf("%s: database schema version %d is newer than this binary knows (%d); upgrade outpost", name, have, len(migrations))
	case have < len(migrations):
		return fmt.Errorf("%s: database schema version %d needs migrating to %d, which a read-only database cannot do", name, have, len(migrations))
	}
	return nil
}
