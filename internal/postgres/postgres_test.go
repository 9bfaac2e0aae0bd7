package postgres_test

import (
	"context"
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/postgres"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
)

// MustOpen opens a store on dbURL and closes it when the test ends.
func MustOpen(tb testing.TB, dbURL string, o postgres.Options) *postgres.DB {
	tb.Helper()
	db, err := postgres.Open(context.Background(), dbURL, o)
	if err != nil {
		tb.Fatalf("open: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		u, _ := pgtest.MustSchema(t)
		return MustOpen(t, u, postgres.Options{MaxConns: 4})
	})
}

func TestSharedStore(t *testing.T) {
	storetest.RunShared(t, func(t *testing.T) func(string) storetest.Store {
		u, _ := pgtest.MustSchema(t)
		return func(replica string) storetest.Store {
			return MustOpen(t, u, postgres.Options{Replica: replica, MaxConns: 4})
		}
	})
}
