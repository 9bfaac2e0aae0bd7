package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
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

// The real binary on PostgreSQL, end to end with the embedded broker and
// the CLI: a call queued before the device connects, telemetry from the
// device SDK read back with `outpost telemetry`, a synchronous RPC, and a
// clean stop that leaves no SQLite database behind.
func TestServePostgresBinary(t *testing.T) {
	u, _ := pgtest.MustSchema(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	p := startServe(t, dir, "--data", data, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--db", u)
	env := []string{"OUTPOST_SERVER=" + p.line("http"), "OUTPOST_TOKEN=" + p.line("admin token")}
	cli := func(args ...string) string {
		t.Helper()
		r := outpost(t, dir, env, args...)
		if r.code != 0 {
			t.Fatalf("outpost %v: exit %d: %s", args, r.code, r.stderr)
		}
		return r.stdout
	}
	var d struct{ ID, Password string }
	if err := json.Unmarshal([]byte(cli("device", "create", "pg-pump")), &d); err != nil || d.ID == "" {
		t.Fatalf("device create: %+v, %v", d, err)
	}
	var queued struct{ ID, State string }
	if err := json.Unmarshal([]byte(cli("rpc", "pg-pump", "add", `{"a":2,"b":3}`, "--queue", "--ttl", "10m", "--timeout", "5s")), &queued); err != nil || queued.State != "queued" {
		t.Fatalf("rpc --queue: %+v, %v", queued, err)
	}

	mqtt := strings.TrimPrefix(p.line("mqtt"), "tcp://")
	dev, err := device.New("mqtt://"+d.ID+":"+d.Password+"@"+mqtt, device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	dev.Handle("add", func(ctx context.Context, args json.RawMessage) (any, error) {
		var in struct{ A, B int }
		if err := json.Unmarshal(args, &in); err != nil {
			return nil, err
		}
		return in.A + in.B, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dev.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	outposttest.Eventually(t, 20*time.Second, "queued call answered", func() bool {
		return strings.Contains(cli("call", "show", queued.ID), `"state": "succeeded"`)
	})
	if out := cli("call", "show", queued.ID); !strings.Contains(out, `"result": 5`) {
		t.Fatalf("queued call: %s", out)
	}

	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for i := range 100 {
		if err := dev.AddAt("temperature", float64(i)+0.5, base.Add(time.Duration(i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Readings []struct {
			Feed  string          `json:"feed"`
			TS    int64           `json:"ts"`
			Value json.RawMessage `json:"value"`
		} `json:"readings"`
	}
	out := cli("telemetry", "pg-pump", "--feed", "temperature", "--limit", "1000", "-o", "json")
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("telemetry -o json: %v: %s", err, out)
	}
	readings := got.Readings
	if len(readings) != 100 || readings[0].TS != base.UnixMilli() || string(readings[99].Value) != "99.5" {
		t.Fatalf("telemetry: %d readings, first %+v", len(readings), readings[:min(1, len(readings))])
	}
	if out := strings.TrimSpace(cli("rpc", "pg-pump", "add", `{"a":40,"b":2}`)); out != "42" {
		t.Fatalf("rpc printed %q", out)
	}

	dev.Close()
	p.stop(t)
	if _, err := os.Stat(filepath.Join(data, "outpost.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the data directory has an SQLite database: %v", err)
	}
}
