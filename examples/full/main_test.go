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

// TestFull runs the example against an in-process platform and drives
// every capability from the API side.
func TestFull(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "full")
	if st := p.Do(t, "PATCH", "/api/v1/devices/"+d.ID+"/parameters", map[string]any{"interval": 0.05}, nil); st != 200 {
		t.Fatalf("patch parameters: %d", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, d.URL, 0, &out, slog.New(slog.DiscardHandler)) }()

	var m struct {
		Feeds      []json.RawMessage `json:"feeds"`
		Attributes []json.RawMessage `json:"attributes"`
		Parameters struct {
			Reported map[string]json.RawMessage `json:"reported"`
		} `json:"parameters"`
	}
	outposttest.Eventually(t, 10*time.Second, "model registered and interval reported", func() bool {
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/model", nil, &m)
		return len(m.Feeds) == 4 && len(m.Attributes) == 2 && string(m.Parameters.Reported["interval"]) == "0.05"
	})
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/feeds/relay/value", map[string]any{"value": true}, nil); st != 202 {
		t.Fatalf("set relay: %d", st)
	}
	var evs struct {
		Events []struct{ Kind, Name string } `json:"events"`
	}
	outposttest.Eventually(t, 10*time.Second, "relay_changed event", func() bool {
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/events?kind=event", nil, &evs)
		return len(evs.Events) == 1 && evs.Events[0].Name == "relay_changed"
	})
	var rs struct {
		Readings []struct{ Feed string } `json:"readings"`
	}
	outposttest.Eventually(t, 10*time.Second, "several rounds of readings", func() bool {
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=position", nil, &rs)
		return len(rs.Readings) >= 3
	})
	var res struct {
		Result struct {
			Relay bool `json:"relay"`
		} `json:"result"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/status", nil, &res); st != 200 || !res.Result.Relay {
		t.Fatalf("status rpc: %d %+v", st, res)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{"platform keep-alive 30s", "platform clock is", "relay set to true", "interval parameter: 0.05s", "round 3: temperature"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestMain keeps device outboxes in a temporary directory and checks for
// leaked goroutines.
func TestMain(m *testing.M) { outposttest.Main(m) }
