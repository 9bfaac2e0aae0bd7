package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

func TestNewEndpoints(t *testing.T) {
	for _, tc := range []struct {
		url     string
		opts    []device.Option
		wantErr string
	}{
		{url: "mqtt://d-1:secret@localhost:1883"},
		{url: "mqtt://d-1:secret@localhost"},
		{url: "mqtts://d-1:secret@example.com"},
		{url: "tcp://d-1:secret@127.0.0.1:1"},
		{url: "mqtt://localhost:1883", opts: []device.Option{device.WithCredentials("d-1", "secret")}},
		{url: "http://d-1:secret@localhost", wantErr: "scheme"},
		{url: "mqtt://d-1@localhost", wantErr: "no password"},
		{url: "mqtt://bad%2Fid:secret@localhost", wantErr: "device id"},
		{url: "mqtt://d-1:secret@", wantErr: "no host"},
		{url: "mqtt://localhost", wantErr: "device id"},
		{url: "mqtt://d-1:s@localhost", opts: []device.Option{device.WithCAFile("/does/not/exist")}, wantErr: "CA file"},
		{url: "mqtt://d-1:s@localhost", opts: []device.Option{device.WithMaxBatch(0)}, wantErr: "max batch"},
	} {
		c, err := device.New(tc.url, append(tc.opts, device.WithMemoryOutbox())...)
		if c != nil {
			c.Close()
		}
		if tc.wantErr == "" && err != nil {
			t.Errorf("New(%q) = %v", tc.url, err)
		}
		if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("New(%q) = %v, want error containing %q", tc.url, err, tc.wantErr)
		}
	}
}

func TestAddValidates(t *testing.T) {
	c, err := device.New("mqtt://d-1:secret@localhost", device.WithMemoryOutbox())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, v := range []any{1, int64(-3), 2.5, float32(1.5), true, "ok", uint8(7)} {
		if err := c.Add("f", v); err != nil {
			t.Errorf("Add(%T %v) = %v", v, v, err)
		}
	}
	for _, tc := range []struct {
		feed string
		v    any
	}{
		{"f", math.NaN()}, {"f", math.Inf(1)}, {"f", nil}, {"f", []int{1}}, {"f", map[string]int{}},
		{"f", strings.Repeat("x", protocol.MaxStringValue)}, {"", 1}, {"has space", 1}, {"a/b", 1},
	} {
		if err := c.Add(tc.feed, tc.v); err == nil {
			t.Errorf("Add(%q, %T) accepted", tc.feed, tc.v)
		}
	}
	// All or nothing.
	before := c.Pending()
	if err := c.AddReadings(device.Reading{Feed: "a", Value: 1}, device.Reading{Feed: "b", Value: nil}); err == nil {
		t.Fatal("AddReadings with one bad reading accepted")
	}
	if c.Pending() != before {
		t.Fatalf("pending %d after a refused AddReadings, want %d", c.Pending(), before)
	}
	if err := c.Handle("rpc_list", func(context.Context, json.RawMessage) (any, error) { return nil, nil }); err == nil {
		t.Error("built-in rpc_list could be replaced")
	}
	if err := c.Handle("bad name", func(context.Context, json.RawMessage) (any, error) { return nil, nil }); err == nil {
		t.Error("method with a space accepted")
	}
}

func TestPublishWithoutConnection(t *testing.T) {
	c, err := device.New("mqtt://d-1:secret@127.0.0.1:1", device.WithMemoryOutbox())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Add("f", 1)
	if err := c.Publish(context.Background()); !errors.Is(err, device.ErrNotConnected) {
		t.Fatalf("Publish before Connect = %v, want ErrNotConnected", err)
	}
	if c.Pending() != 1 {
		t.Fatalf("pending = %d, want the reading kept", c.Pending())
	}
}

// Handlers run concurrently up to WithConcurrency, and every request is
// answered once.
func TestConcurrentHandlers(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "busy")
	c, _ := device.New(d.URL, device.WithConcurrency(4))
	var running, peak atomic.Int32
	release := make(chan struct{})
	c.Handle("wait", func(ctx context.Context, _ json.RawMessage) (any, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return "done", nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	results := make(chan int, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/wait?timeout=8s", nil, nil)
		}()
	}
	outposttest.Eventually(t, 5*time.Second, "4 handlers running", func() bool { return running.Load() == 4 })
	close(release)
	wg.Wait()
	close(results)
	for st := range results {
		if st != 200 {
			t.Fatalf("status %d", st)
		}
	}
	if peak.Load() != 4 {
		t.Fatalf("peak concurrency %d, want 4", peak.Load())
	}
}
