package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/postgres"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
	"github.com/outpost-iot/outpost/internal/server"
)

// startOnPostgres starts a platform on a schema of its own in the
// PostgreSQL of OUTPOST_TEST_POSTGRES, or skips the test.
func startOnPostgres(t *testing.T, dbURL string, mod ...func(*server.Config)) *outposttest.Platform {
	t.Helper()
	return outposttest.Start(t, append([]func(*server.Config){func(c *server.Config) { c.DB = dbURL }}, mod...)...)
}

// openPostgres opens a second handle on a platform's store, to look at
// what the platform wrote.
func openPostgres(t *testing.T, dbURL string) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), dbURL, postgres.Options{Replica: "test-observer", MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// The platform on PostgreSQL, end to end with the embedded broker: a call
// queued for a device not yet connected, telemetry through the SDK read
// back from the API, a synchronous RPC, an event, and all of it still
// there after a restart. Nothing is written to an SQLite file.
func TestPostgresEndToEnd(t *testing.T) {
	dbURL, _ := pgtest.MustSchema(t)
	p := startOnPostgres(t, dbURL, fastSweep)
	d := p.CreateDevice(t, "pg-thermo")
	queued := queueCall(t, p, d.ID, "add", `{"a":2,"b":3}`, "ttl=1h&timeout=5s")

	dev, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)), device.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
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

	if got := waitState(t, p, queued.ID, "succeeded"); string(got.Result) != "5" {
		t.Fatalf("queued call: %+v", got)
	}

	base := time.Date(2026, 3, 1, 23, 59, 0, 0, time.UTC) // crosses midnight: two day partitions
	const n = 500
	for i := range n {
		var v any = float64(i) + 0.25
		if i%10 == 3 {
			v = fmt.Sprintf("s%d", i)
		}
		if err := dev.AddAt("temperature", v, base.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.Publish(ctx); err != nil {
		t.Fatalf("publish: %v", err)
	}
	checkReadings := func(t *testing.T) {
		t.Helper()
		var got readingsResp
		if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=temperature&limit=1000", nil, &got); st != 200 {
			t.Fatalf("status %d", st)
		}
		if len(got.Readings) != n {
			t.Fatalf("got %d readings, want %d", len(got.Readings), n)
		}
		for i, r := range got.Readings {
			want := fmt.Sprint(float64(i) + 0.25)
			if i%10 == 3 {
				want = fmt.Sprintf(`"s%d"`, i)
			}
			if r.TS != base.Add(time.Duration(i)*time.Second).UnixMilli() || string(r.Value) != want {
				t.Fatalf("reading %d = ts %d value %s, want ts %d value %s", i, r.TS, r.Value, base.Add(time.Duration(i)*time.Second).UnixMilli(), want)
			}
		}
	}
	checkReadings(t)

	var res struct {
		Result int `json:"result"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/add", `{"a":40,"b":2}`, &res); st != 200 || res.Result != 42 {
		t.Fatalf("rpc: status %d, result %+v", st, res)
	}
	if err := dev.SendEvent(ctx, "door", map[string]bool{"open": true}); err != nil {
		t.Fatal(err)
	}
	if err := dev.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	var events struct {
		Events []struct {
			Name string          `json:"name"`
			Data json.RawMessage `json:"data"`
		} `json:"events"`
	}
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/events", nil, &events); st != 200 || len(events.Events) != 1 || events.Events[0].Name != "door" {
		t.Fatalf("events: status %d, %+v", st, events)
	}

	p.Restart(t)
	checkReadings(t)
	if got := getCall(t, p, queued.ID); got.State != "succeeded" {
		t.Fatalf("queued call after restart: %+v", got)
	}
	outposttest.Eventually(t, 10*time.Second, "device back online", func() bool {
		var got struct{ Online bool }
		p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &got)
		return got.Online
	})
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/add", `{"a":1,"b":1}`, &res); st != 200 || res.Result != 2 {
		t.Fatalf("rpc after restart: status %d, result %+v", st, res)
	}
	if _, err := os.Stat(filepath.Join(p.DataDir(), server.DBFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an SQLite database was created in the data directory: %v", err)
	}
}

// Issue 18: no replica's start may reset another's state. Two platforms
// share one PostgreSQL store; a device connected to the first stays
// online in the store when the second starts, and goes offline when the
// first restarts without it.
func TestPostgresStartKeepsOtherReplicasPresence(t *testing.T) {
	dbURL, _ := pgtest.MustSchema(t)
	a := startOnPostgres(t, dbURL, func(c *server.Config) { c.Replica = "a" })
	d := a.CreateDevice(t, "on-a")
	store := openPostgres(t, dbURL)
	online := func() bool {
		got, err := store.Device(context.Background(), d.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Online
	}
	c := connect(t, d.URL)
	outposttest.Eventually(t, 10*time.Second, "device online in the store", online)

	startOnPostgres(t, dbURL, func(c *server.Config) { c.Replica = "b" })
	if !online() {
		t.Fatal("the second platform's start marked the first one's device offline")
	}

	c.Close()
	outposttest.Eventually(t, 10*time.Second, "device offline in the store", func() bool { return !online() })
}
