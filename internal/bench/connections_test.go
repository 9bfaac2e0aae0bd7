package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/bench"
)

// The connections benchmark end to end, small: every broker in its own
// process (this test binary as a child), the devices held here, the
// restart included. The figures are not checked (they depend on the
// machine), only that each was measured.
func TestConnections(t *testing.T) {
	var out, progress bytes.Buffer
	cfg := []string{"connections", "--devices", "40", "--raw", "--idle", "1s", "--settle", "0s", "--keepalive", "30s", "--timeout", "5m"}
	if err := bench.Main(context.Background(), cfg, &out, &progress); err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var res bench.ConnectionsResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line is not the JSON result: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "RSS/device") {
		t.Errorf("no table:\n%s", out.String())
	}
	want := []string{"platform", "mochi", "mochi-tuned", "floor"}
	if len(res.Brokers) < len(want) {
		t.Fatalf("%d brokers measured, want at least %v", len(res.Brokers), want)
	}
	for i, b := range res.Brokers {
		if i < len(want) && b.Key != want[i] {
			t.Errorf("broker %d is %q, want %q", i, b.Key, want[i])
		}
		if b.RSSMiB <= 0 || b.ConnectSeconds <= 0 || b.ConnectsPerSecond <= 0 || b.ReconnectSeconds <= 0 || b.IdleSeconds < 1 || b.IdleLoad == "" {
			t.Errorf("%s: figure missing: %+v", b.Key, b)
		}
		if b.Key != "mosquitto" && b.Goroutines == 0 {
			t.Errorf("%s: no runtime figures", b.Key)
		}
	}
	if res.Devices != 40 || res.CreateSeconds <= 0 || res.FileLimit == 0 {
		t.Errorf("run figures: %+v", res)
	}
}

func TestConnectionsFlags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"connections", "--devices", "0"},
		{"connections", "--devices", "1000000"},
		{"connections", "--keepalive", "0s"},
		{"connections", "--idle", "0s"},
		{"connections", "--brokers", "platform,emqx"},
		{"connections", "--sources", "0"},
		{"connections", "extra"},
	} {
		if err := bench.Main(ctx, args, io.Discard, io.Discard); err == nil {
			t.Errorf("Main(%q) accepted bad flags", args)
		}
	}
	var out bytes.Buffer
	if err := bench.Main(ctx, []string{"connections", "--help"}, &out, &out); err != nil || !strings.Contains(out.String(), "-devices") {
		t.Errorf("connections --help: %v, %q", err, out.String())
	}
}
