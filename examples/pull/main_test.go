package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type call struct {
	ID     string          `json:"id"`
	State  string          `json:"state"`
	Result json.RawMessage `json:"result"`
}

type readings struct {
	Readings []struct {
		Value json.RawMessage `json:"value"`
	} `json:"readings"`
}

// TestPull runs the example's cycles against an in-process platform: work
// queued while the device is away is done on its next wake-up, and its
// readings arrive.
func TestPull(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "pull")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out syncBuffer
	cfg := config{URL: d.URL, Outbox: t.TempDir(), Interval: time.Hour, Cycles: 1, Readings: 3}
	once := func() {
		t.Helper()
		if err := run(ctx, cfg, &out, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatalf("run: %v\n%s", err, out.String())
		}
	}

	// First wake-up: nothing queued; the readings and the feeds arrive.
	once()
	var rs readings
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=temperature", nil, &rs); st != 200 || len(rs.Readings) != 3 {
		t.Fatalf("after the first cycle: %d, %d readings\n%s", st, len(rs.Readings), out.String())
	}

	// While the device sleeps: a queued call and a feed command.
	var c call
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/set_interval?queue=true&ttl=1h", map[string]any{"seconds": 5}, &c); st != 202 || c.State != "queued" {
		t.Fatalf("queue call: %d %+v", st, c)
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/feeds/valve/value", map[string]any{"value": true}, nil); st != 202 {
		t.Fatalf("set valve: %d", st)
	}

	// Second wake-up: Pull returns once the call is answered and the
	// answer acknowledged, and run once the valve handler is done.
	once()
	if st := p.Do(t, "GET", "/api/v1/calls/"+c.ID, nil, &c); st != 200 || c.State != "succeeded" || string(c.Result) != `{"previous_seconds":3600}` {
		t.Fatalf("call after the second cycle: %d %+v\n%s", st, c, out.String())
	}
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=temperature", nil, &rs); st != 200 || len(rs.Readings) != 6 {
		t.Fatalf("after the second cycle: %d, %d readings", st, len(rs.Readings))
	}

	// Third wake-up: the valve's new state, written to the outbox by the
	// handler after the second pull, is sent by a new client.
	once()
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=valve", nil, &rs); st != 200 || len(rs.Readings) != 1 || string(rs.Readings[0].Value) != "true" {
		t.Fatalf("valve readings: %d %+v\n%s", st, rs, out.String())
	}
	for _, want := range []string{
		"cycle 1: sent 3 readings, received 0 messages",
		"interval set to 5s",
		"cycle 1: sent 3 readings, received 2 messages",
		"valve set to true",
		"cycle 1: sent 4 readings, received 0 messages",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestPullOutboxDir checks the default outbox location.
func TestPullOutboxDir(t *testing.T) {
	t.Setenv("OUTPOST_OUTBOX_DIR", "/var/lib/outbox")
	dir, err := outboxDir(config{URL: "mqtt://d-abc:pw@127.0.0.1:1883"})
	if err != nil || dir != "/var/lib/outbox/d-abc" {
		t.Fatalf("outboxDir = %q, %v", dir, err)
	}
	if dir, _ := outboxDir(config{URL: "mqtt://d-abc:pw@h", Outbox: "/x"}); dir != "/x" {
		t.Fatalf("explicit outbox: %q", dir)
	}
}

// TestMain keeps device outboxes in a temporary directory and checks for
// leaked goroutines.
func TestMain(m *testing.M) { outposttest.Main(m) }
