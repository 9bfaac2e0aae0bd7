package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

func TestMain(m *testing.M) {
	outposttest.Main(m)
}

// syncBuffer is a bytes.Buffer safe for the console's goroutines.
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

func connect(t *testing.T, url string, h map[string]device.Handler) *device.Client {
	t.Helper()
	c, err := device.New(url)
	if err != nil {
		t.Fatal(err)
	}
	for name, fn := range h {
		c.Handle(name, fn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestOnce(t *testing.T) {
	p := outposttest.Start(t)
	lamp := p.CreateDevice(t, "lamp")
	pump := p.CreateDevice(t, "pump")
	p.CreateDevice(t, "idle")
	connect(t, lamp.URL, map[string]device.Handler{
		"status": func(context.Context, json.RawMessage) (any, error) { return map[string]bool{"on": true}, nil },
	})
	connect(t, pump.URL, map[string]device.Handler{
		"status": func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("dry run") },
	})
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := run(ctx, []string{"--server", p.HTTPURL(), "--token", p.AdminToken(), "--method", "status", "--once"}, &out, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"fleet: 3 devices, 2 online",
		"status on 2 online devices",
		`lamp             ok`, `{"on":true}`,
		"pump             error", "handler failed: dry run",
		"status: 1 ok, 1 failed",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "idle ") {
		t.Errorf("the offline device was called:\n%s", out.String())
	}
}

func TestWatch(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "thermo")
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--server", p.HTTPURL(), "--token", p.AdminToken(), "--every", "0"}, &out, &out)
	}()
	outposttest.Eventually(t, 10*time.Second, "the console to watch", func() bool {
		return strings.Contains(out.String(), "watching live events")
	})
	dev := connect(t, d.URL, nil)
	dev.Add("temperature", 21.5)
	if err := dev.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	outposttest.Eventually(t, 10*time.Second, "presence and telemetry lines", func() bool {
		s := out.String()
		return strings.Contains(s, "presence     thermo           online") &&
			strings.Contains(s, "telemetry    thermo           temperature=21.5 (1 reading)") &&
			strings.Contains(s, "presence     thermo           offline (")
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--token", ""},
		{"--token", "t", "--args", "{not json"},
		{"--token", "t", "--timeout", "0s"},
		{"--token", "t", "extra"},
	} {
		t.Setenv("OUTPOST_TOKEN", "")
		var out bytes.Buffer
		if err := run(context.Background(), args, &out, &out); err == nil {
			t.Errorf("run %q succeeded", args)
		}
	}
}
