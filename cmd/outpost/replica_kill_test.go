package main

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/mosquittotest"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
)

// mosquitto starts a Mosquitto of its own (anonymous, sessions kept in
// memory while it runs, no bound on what it queues for an absent replica)
// or skips the test without the binary.
func mosquitto(t *testing.T) string {
	t.Helper()
	return mosquittotest.Start(t, mosquittotest.Plain(), mosquittotest.ConfigLines("max_queued_messages 0", "max_inflight_messages 0")).Addr
}

// TestReplicaKilledMidIngest: two `outpost serve` replicas between one
// Mosquitto and one PostgreSQL; one gets SIGKILL while a device sends
// 100,000 readings, and is started again. Every reading is stored once:
// what the killed replica had received and not committed was never
// acknowledged to Mosquitto, which hands it to the restarted replica (same
// client id, same session); what it had committed and redelivers is
// recognised by batch id.
func TestReplicaKilledMidIngest(t *testing.T) {
	dbURL, _ := pgtest.MustSchema(t)
	broker := "mqtt://outpost:secret@" + mosquitto(t)
	dir := t.TempDir()
	serve := func(name string) *serveProc {
		return startServe(t, dir, "--data", filepath.Join(dir, name), "--http", "127.0.0.1:0",
			"--broker", broker, "--db", dbURL, "--replica", name)
	}
	a, b := serve("a"), serve("b")
	api := func(p *serveProc, method, path string, body string, out any) int {
		t.Helper()
		req, _ := http.NewRequest(method, p.line("http")+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+p.line("admin token"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil {
			json.NewDecoder(resp.Body).Decode(out)
		}
		return resp.StatusCode
	}
	var d struct{ ID, URL string }
	if st := api(b, "POST", "/api/v1/devices", `{"name":"burst"}`, &d); st != http.StatusCreated {
		t.Fatalf("create device: %d", st)
	}
	outposttest.AddSecret(d.URL)
	dev, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)), device.WithMaxBatch(50), device.WithAutoPublish(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := dev.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	const total = 100_000
	base := int64(1_760_000_000_000)
	go func() {
		for i := range total {
			if err := dev.AddAt("v", i, time.UnixMilli(base+int64(i))); err != nil {
				return
			}
		}
	}()
	stored := func(p *serveProc) float64 {
		resp, err := http.Get(p.line("http") + "/metrics")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		var buf strings.Builder
		b := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(b)
			buf.Write(b[:n])
			if err != nil {
				break
			}
		}
		for _, l := range strings.Split(buf.String(), "\n") {
			if v, ok := strings.CutPrefix(l, "outpost_readings_stored_total "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return 0
	}
	outposttest.Eventually(t, 60*time.Second, "replica a committing readings", func() bool { return stored(a) >= 5_000 })
	before := stored(a)
	a.kill() // SIGKILL mid-ingest
	t.Logf("killed replica a after it committed %v readings (b: %v)", before, stored(b))
	a = serve("a")

	type resp struct {
		Readings []struct {
			TS    int64           `json:"ts"`
			Value json.RawMessage `json:"value"`
		} `json:"readings"`
	}
	var got resp
	for deadline := time.Now().Add(120 * time.Second); ; time.Sleep(250 * time.Millisecond) { // a poll: each look reads every reading
		got = resp{}
		api(b, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=v&limit=100000", "", &got)
		if len(got.Readings) >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d readings stored after 120s", len(got.Readings), total)
		}
	}
	if len(got.Readings) != total {
		t.Fatalf("stored %d readings, want %d", len(got.Readings), total)
	}
	for i, r := range got.Readings {
		if r.TS != base+int64(i) || string(r.Value) != strconv.Itoa(i) {
			t.Fatalf("reading %d: ts %d value %s (a lost or duplicated reading)", i, r.TS, r.Value)
		}
	}
}
