package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
)

// serveAndList starts outpost serve with extra arguments, creates a
// device through the CLI if create is set, lists the devices, stops the
// platform and returns the listing.
func serveAndList(t *testing.T, dir string, args []string, create string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuf
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "--data", dir, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warn"}, args...), &out, &errb)
	}()
	re := regexp.MustCompile(`(?m)^http: (http://\S+)$`)
	outposttest.Eventually(t, 20*time.Second, "serve output", func() bool {
		select {
		case err := <-done:
			t.Fatalf("serve %v: %v (%s)", args, err, errb.String())
		default:
		}
		return re.MatchString(out.String())
	})
	url := re.FindStringSubmatch(out.String())[1]
	token, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) string {
		var o, e syncBuf
		cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer ccancel()
		if err := run(cctx, append(args, "--server", url, "--token", strings.TrimSpace(string(token))), &o, &e); err != nil {
			t.Fatalf("%v: %v (%s)", args, err, e.String())
		}
		return o.String()
	}
	if create != "" {
		cli("device", "create", create)
	}
	list := cli("device", "list")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve %v: %v (%s)", args, err, errb.String())
	}
	return list
}

// --db chooses the store: sqlite:PATH and a plain path name another
// SQLite file, which is then the one used (it was ignored before), and
// postgres://… PostgreSQL; the data directory gets no database then.
func TestServeDB(t *testing.T) {
	other := filepath.Join(t.TempDir(), "elsewhere", "fleet.db")
	tests := []struct {
		name         string
		first, again []string
		file         string // the database file that must exist afterwards
	}{
		{"sqlite:PATH, then the plain path", []string{"--db", "sqlite:" + other}, []string{"--db", other}, other},
	}
	if os.Getenv(pgtest.EnvVar) != "" {
		u, _ := pgtest.MustSchema(t)
		tests = append(tests, struct {
			name         string
			first, again []string
			file         string
		}{"postgres", []string{"--db", u}, []string{"--db", u}, ""})
	} else {
		t.Logf("%s is not set: PostgreSQL case skipped", pgtest.EnvVar)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if list := serveAndList(t, dir, tt.first, "pump-7"); !strings.Contains(list, "pump-7") {
				t.Fatalf("device list after create: %s", list)
			}
			// A fresh data directory with the same --db sees the device.
			if list := serveAndList(t, t.TempDir(), tt.again, ""); !strings.Contains(list, "pump-7") {
				t.Fatalf("device list from the same --db: %s", list)
			}
			if _, err := os.Stat(filepath.Join(dir, "outpost.db")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the data directory has a database of its own: %v", err)
			}
			if tt.file != "" {
				if _, err := os.Stat(tt.file); err != nil {
					t.Errorf("database file: %v", err)
				}
			}
		})
	}
}

func TestServeDBRefused(t *testing.T) {
	for _, tt := range []struct{ db, msg string }{
		{"mysql://root@localhost/outpost", "unknown database"},
		{"redis:6379", "unknown database"},
		{"sqlite:", "needs the database file"},
	} {
		var out, errb syncBuf
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := run(ctx, []string{"serve", "--data", t.TempDir(), "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--db", tt.db}, &out, &errb)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("--db %s: %v, want an error saying %q", tt.db, err, tt.msg)
		}
	}
}
