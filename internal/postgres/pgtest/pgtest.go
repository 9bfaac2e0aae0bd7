// Package pgtest gives each test a PostgreSQL schema of its own on the
// server named by OUTPOST_TEST_POSTGRES, created for the test and dropped
// when it ends. Tests that use it skip, with a message, when the variable
// is unset.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvVar names the variable that holds the PostgreSQL URL of the tests.
const EnvVar = "OUTPOST_TEST_POSTGRES"

// Base returns the URL in OUTPOST_TEST_POSTGRES, or skips tb.
func Base(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv(EnvVar)
	if u == "" {
		tb.Skipf("%s is not set: set it to a PostgreSQL URL (.ci/run uses postgres://postgres@127.0.0.1:5432/test?sslmode=disable) to run the PostgreSQL tests", EnvVar)
	}
	return u
}

// MustSchema creates a new, empty schema, drops it (with everything in
// it) when tb ends, and returns a URL whose connections use it as their
// search_path. Cleanups registered after it (closing the stores that use
// the schema) run before the drop.
func MustSchema(tb testing.TB) (dbURL, schema string) {
	tb.Helper()
	base := Base(tb)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema = "outpost_test_" + hex.EncodeToString(b[:])
	exec(tb, base, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize())
	tb.Cleanup(func() { exec(tb, base, `DROP SCHEMA `+pgx.Identifier{schema}.Sanitize()+` CASCADE`) })
	return WithSearchPath(tb, base, schema), schema
}

// WithSearchPath returns dbURL with its connections' search_path set to
// schema.
func WithSearchPath(tb testing.TB, dbURL, schema string) string {
	tb.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		tb.Fatalf("%s: %v", EnvVar, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func exec(tb testing.TB, dbURL, sql string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		tb.Fatalf("connect to %s: %v", EnvVar, err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
}
