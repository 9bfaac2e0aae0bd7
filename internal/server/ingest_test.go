package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// metric reads one counter from /metrics.
func metric(t *testing.T, p *outposttest.Platform, name string) float64 {
	t.Helper()
	req, _ := http.NewRequest("GET", p.HTTPURL()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+p.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// storedValues returns the values of feed n of a device, oldest first.
func storedValues(t *testing.T, p *outposttest.Platform, id string) []int {
	t.Helper()
	var got apiReadings
	p.Do(t, "GET", "/api/v1/devices/"+id+"/telemetry?feed=n&since=1&limit=100000", nil, &got)
	out := make([]int, len(got.Readings))
	for i, r := range got.Readings {
		if err := json.Unmarshal(r.Value, &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// checkExactlyOnce checks that values are 0..n-1, each once, in order.
func checkExactlyOnce(t *testing.T, who string, vals []int, n int) {
	t.Helper()
	if len(vals) != n {
		t.Fatalf("%s: %d readings stored, want %d", who, len(vals), n)
	}
	for i, v := range vals {
		if v != i {
			t.Fatalf("%s: reading %d is %d (lost, duplicated or out of order)", who, i, v)
		}
	}
}

// With an ingest queue of one batch, devices with many messages in flight
// overflow it: they get 0x97, back off and resend, and every reading is
// stored exactly once. Publish returning means committed: the readings are
// there at once.
func TestIngestBackPressure(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.IngestQueue = 1 })
	const devices, n = 3, 150
	ds := make([]outposttest.Device, devices)
	cs := make([]*device.Client, devices)
	base := time.UnixMilli(1_700_000_000_000)
	for d := range ds {
		ds[d] = p.CreateDevice(t, fmt.Sprintf("bp-%d", d))
		c, err := device.New(ds[d].URL, device.WithMaxBatch(1), device.WithMaxInFlight(32))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		defer c.Close()
		for i := range n {
			if err := c.AddAt("n", i, base.Add(time.Duration(i)*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
		}
		cs[d] = c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, devices)
	for d, c := range cs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[d] = c.Publish(ctx) }()
	}
	wg.Wait()
	for d, err := range errs {
		if err != nil {
			t.Fatalf("device %d: Publish: %v", d, err)
		}
	}
	for d := range ds {
		checkExactlyOnce(t, ds[d].Name, storedValues(t, p, ds[d].ID), n)
	}
	if got := metric(t, p, "outpost_ingest_overloaded_total"); got == 0 {
		t.Error("no message was refused as overloaded: the test did not exercise back-pressure")
	}
	if got := metric(t, p, "outpost_batches_duplicate_total"); got != 0 {
		t.Errorf("%v duplicate batches: a refused message must not have been stored", got)
	}
}

// An MQTT 3.1.1 device may pipeline QoS 1 telemetry too: each PUBACK comes
// after the commit, in order.
func TestMQTT311PipelinedTelemetry(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "v3-pipelined")
	c := mustDial311(t, p, d)
	const n = 100
	toks := make([]mqtt.Token, n)
	for i := range n {
		b := wireBatch{ID: fmt.Sprintf("b-%d", i), R: []wireReading{{F: "n", V: i, T: 1_700_000_000_000 + int64(i)}}}
		toks[i] = c.Publish(topicOf(d.ID, "up", "telemetry"), 1, false, encode(t, b))
	}
	for i, tok := range toks {
		wait(t, tok, fmt.Sprintf("publish %d", i))
	}
	checkExactlyOnce(t, d.Name, storedValues(t, p, d.ID), n)
}

// A device over its rate limit is told to retry later (MQTT 5 0x97); it
// backs off and resends, so every reading is stored exactly once and the
// platform counts the refusals.
func TestDeviceRateLimit(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.DeviceRate, c.DeviceBurst = 400, 100 })
	d := p.CreateDevice(t, "chatty")
	c, err := device.New(d.URL, device.WithMaxBatch(50), device.WithMemoryOutbox())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 600
	base := time.UnixMilli(1_700_000_000_000)
	for i := range n {
		if err := c.AddAt("n", i, base.Add(time.Duration(i)*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, "rate-limited device", storedValues(t, p, d.ID), n)
	if got := metric(t, p, "outpost_telemetry_rate_limited_total"); got < 1 {
		t.Fatalf("outpost_telemetry_rate_limited_total = %v, want refusals counted", got)
	}
}
