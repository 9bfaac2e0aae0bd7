package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// lastJSON returns the last line of out decoded as a JSON object.
func lastJSON(t *testing.T, out string) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	last := lines[len(lines)-1]
	var m map[string]any
	if err := json.Unmarshal([]byte(last), &m); err != nil {
		t.Fatalf("last line is not a JSON object: %v\n%s", err, out)
	}
	if len(lines) < 3 {
		t.Fatalf("no table before the JSON line:\n%s", out)
	}
	return m
}

func positive(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		v, ok := m[k].(float64)
		if !ok {
			t.Errorf("key %q missing or not a number: %v", k, m[k])
			continue
		}
		if v <= 0 {
			t.Errorf("%s = %v, want > 0", k, v)
		}
	}
}

func testLog(t *testing.T) io.Writer {
	if testing.Verbose() {
		return tWriter{t}
	}
	return io.Discard
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestIngest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := Main(ctx, []string{"ingest", "--devices", "2", "--readings", "2001", "--batch", "50", "--timeout", "90s"}, &out, testLog(t))
	if err != nil {
		t.Fatalf("bench ingest: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	m := lastJSON(t, out.String())
	positive(t, m, "readings_per_s", "messages_per_s", "raw_broker_readings_per_s", "raw_store_readings_per_s",
		"ratio", "devices", "readings", "batch", "seconds", "raw_broker_1inflight_readings_per_s", "raw_broker_hook_readings_per_s", "raw_store_observed_group_readings_per_s",
		"platform_heap_mib", "commits")
	if m["readings"] != 2001.0 || m["stored"] != 2001.0 || m["devices"] != 2.0 || m["batch"] != 50.0 {
		t.Errorf("readings %v stored %v devices %v batch %v", m["readings"], m["stored"], m["devices"], m["batch"])
	}
	// 1001 + 1000 readings in messages of at most 50: 21 + 20.
	if m["messages"] != 41.0 {
		t.Errorf("messages = %v, want 41", m["messages"])
	}
	if mc, ok := m["machine"].(map[string]any); !ok || mc["cpus"].(float64) < 1 || mc["go_version"] == "" {
		t.Errorf("machine = %v", m["machine"])
	}
}

func TestRPC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := Main(ctx, []string{"rpc", "--devices", "2", "--callers", "1,4", "--calls", "50", "--timeout", "90s"}, &out, testLog(t))
	if err != nil {
		t.Fatalf("bench rpc: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	m := lastJSON(t, out.String())
	positive(t, m, "devices", "calls", "platform_heap_mib")
	rs, ok := m["results"].([]any)
	if !ok || len(rs) != 2 {
		t.Fatalf("results = %v, want 2 caller counts", m["results"])
	}
	for i, r := range rs {
		l := r.(map[string]any)
		if want := []float64{1, 4}[i]; l["callers"] != want {
			t.Errorf("results[%d].callers = %v, want %v", i, l["callers"], want)
		}
		positive(t, l, "calls_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "ratio")
		if l["errors"] != 0.0 {
			t.Errorf("results[%d].errors = %v", i, l["errors"])
		}
		b, ok := l["baseline"].(map[string]any)
		if !ok {
			t.Fatalf("results[%d] has no baseline", i)
		}
		positive(t, b, "calls_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms")
		if b["errors"] != 0.0 {
			t.Errorf("results[%d].baseline.errors = %v", i, b["errors"])
		}
	}
}

// A latency run measures the 100 % load, then each load on the platform,
// the raw broker and the raw store, and its JSON line holds every figure.
func TestLatency(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := Main(ctx, []string{"latency", "--devices", "2", "--batch", "10", "--load", "0,50", "--duration", "1s", "--warmup", "200ms",
		"--probe-rate", "50", "--timeout", "90s"}, &out, testLog(t))
	if err != nil {
		t.Fatalf("bench latency: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	m := lastJSON(t, out.String())
	positive(t, m, "max_readings_per_s", "devices", "batch", "probe_rate")
	if d, ok := m["design"].(map[string]any); !ok || d["landing"] != "auto" {
		t.Errorf("design = %v", m["design"])
	}
	c, ok := m["calibration"].(map[string]any)
	if !ok {
		t.Fatalf("no calibration run: %v", m)
	}
	positive(t, c, "readings_per_s", "cpu_us_per_reading", "bytes_written_per_reading", "writer_busy")
	ls, ok := m["levels"].([]any)
	if !ok || len(ls) != 2 {
		t.Fatalf("levels = %v, want 2", m["levels"])
	}
	for i, l := range ls {
		lv := l.(map[string]any)
		if want := []float64{0, 50}[i]; lv["load_pct"] != want {
			t.Errorf("levels[%d].load_pct = %v, want %v", i, lv["load_pct"], want)
		}
		for _, run := range []string{"platform", "raw_broker", "raw_store"} {
			r, ok := lv[run].(map[string]any)
			if !ok {
				t.Fatalf("levels[%d] has no %s run", i, run)
			}
			lat := "stream"
			if run != "raw_store" {
				if pa, ok := r["puback"].(map[string]any); !ok {
					t.Errorf("levels[%d].%s has no puback latency", i, run)
				} else {
					positive(t, pa, "n", "p50_ms", "p99_ms", "max_ms")
				}
			}
			if i == 1 || run != "raw_store" { // no batch to time at 0 % without a probe
				if st, ok := r[lat].(map[string]any); !ok {
					t.Errorf("levels[%d].%s has no %s latency", i, run, lat)
				} else {
					positive(t, st, "n", "p50_ms", "p99_ms", "max_ms")
				}
			}
			if i == 1 {
				positive(t, r, "readings_per_s", "cpu_us_per_reading")
			}
		}
		if i == 1 {
			positive(t, lv["platform"].(map[string]any), "writer_busy", "bytes_written_per_reading", "commits")
		}
	}
}

func TestUsage(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{nil, {"nope"}} {
		var out, errOut bytes.Buffer
		if err := Main(ctx, args, &out, &errOut); err == nil {
			t.Errorf("Main(%q) succeeded", args)
		}
		if !strings.Contains(errOut.String(), "usage: outpost bench") {
			t.Errorf("Main(%q) printed no usage: %q", args, errOut.String())
		}
	}
	for _, args := range [][]string{
		{"ingest", "--devices", "0"},
		{"ingest", "--batch", "0"},
		{"ingest", "--sync", "off"},
		{"ingest", "--readings", "5", "--devices", "10"},
		{"ingest", "extra"},
		{"rpc", "--callers", "1,x"},
		{"rpc", "--calls", "0"},
		{"rpc", "--timeout", "0s"},
		{"latency", "--load", "x"},
		{"latency", "--load", "300"},
		{"latency", "--window", "0"},
		{"latency", "--duration", "1ms"},
		{"latency", "--landing", "sometimes"},
		{"ingest", "--landing", "sometimes"},
	} {
		if err := Main(ctx, args, io.Discard, io.Discard); err == nil {
			t.Errorf("Main(%q) accepted bad flags", args)
		}
	}
	for _, b := range []string{"ingest", "rpc", "latency"} {
		if err := Main(ctx, []string{b, "--help"}, io.Discard, io.Discard); err != nil {
			t.Errorf("%s --help: %v", b, err)
		}
	}
}

func TestWorkload(t *testing.T) {
	ids := []string{"d-aaaaaaaaaaaaaaaa", "d-bbbbbbbbbbbbbbbb", "d-cccccccccccccccc"}
	msgs, total := buildMessages(ids, 1000, 7)
	seen := map[int]bool{}
	readings := 0
	for d, dm := range msgs {
		for _, m := range dm {
			i, ok := messageIndex(m.payload)
			if !ok || seen[i] || i >= total {
				t.Fatalf("message index %d ok=%v (dup %v)", i, ok, seen[i])
			}
			seen[i] = true
			readings += m.to - m.from
			if m.device != d || m.to-m.from > 7 {
				t.Fatalf("bad message %+v", m)
			}
		}
	}
	if readings != 1000 || len(seen) != total {
		t.Fatalf("readings %d messages %d/%d", readings, len(seen), total)
	}
	bs := storeBatches(msgs, ids)
	if len(bs) != total {
		t.Fatalf("%d store batches, want %d", len(bs), total)
	}
	l := summarize([]time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10})
	if l.P50 != 5 || l.P90 != 9 || l.P99 != 10 || l.Max != 10 {
		t.Fatalf("summarize = %+v", l)
	}
	if group(1234567) != "1,234,567" || group(12) != "12" || group(-1000) != "-1,000" {
		t.Fatal("group")
	}
}

// TestMain keeps device outboxes in a temporary directory and checks for
// leaked goroutines. Started as `bench connections-child …`, the test
// binary is a child process of a connections test instead.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "bench" && os.Args[2] == childCommand {
		if err := Main(context.Background(), os.Args[2:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	outposttest.Main(m)
}
