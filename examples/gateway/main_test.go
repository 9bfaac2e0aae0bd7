package main

import (
	"bytes"
	"context"
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

// TestGateway runs the example against an in-process platform: 200 nodes
// appear as children with their readings, behind the 2 sinks.
func TestGateway(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "mesh")
	if st := p.Do(t, "PUT", "/api/v1/gateways/"+d.ID, map[string]string{"policy": "auto"}, nil); st != 200 {
		t.Fatalf("declare gateway: %d", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out syncBuffer
	cfg := config{URL: d.URL, Outbox: t.TempDir(), Nodes: 200, Interval: time.Hour, Cycles: 1}
	if err := run(ctx, cfg, &out, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	var cs struct {
		Children []struct {
			Address  string `json:"address"`
			DeviceID string `json:"device_id"`
			Sink     string `json:"sink"`
		} `json:"children"`
	}
	p.Do(t, "GET", "/api/v1/gateways/"+d.ID+"/children", nil, &cs)
	if len(cs.Children) != 200 {
		t.Fatalf("%d children, want 200\n%s", len(cs.Children), out.String())
	}
	var rs struct {
		Readings []struct {
			Feed string `json:"feed"`
		} `json:"readings"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+cs.Children[17].DeviceID+"/telemetry", nil, &rs)
	if len(rs.Readings) != 2 {
		t.Fatalf("node readings = %+v", rs)
	}
	var sinks struct {
		Sinks []struct {
			Name string `json:"name"`
		} `json:"sinks"`
	}
	p.Do(t, "GET", "/api/v1/gateways/"+d.ID+"/sinks", nil, &sinks)
	if len(sinks.Sinks) != 2 {
		t.Fatalf("sinks = %+v", sinks)
	}
	if !strings.Contains(out.String(), "round 1: 400 readings of 200 nodes") {
		t.Fatalf("output:\n%s", out.String())
	}
}
