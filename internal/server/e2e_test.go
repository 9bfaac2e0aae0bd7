package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

type readingsResp struct {
	Readings []struct {
		Feed  string          `json:"feed"`
		TS    int64           `json:"ts"`
		Value json.RawMessage `json:"value"`
	} `json:"readings"`
}

type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func connect(t *testing.T, url string, opts ...device.Option) *device.Client {
	t.Helper()
	c, err := device.New(url, append([]device.Option{device.WithLogger(outposttest.Logger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTelemetryRoundTrip(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "thermo")
	c := connect(t, d.URL)

	base := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for i := 0; i < 1000; i++ {
		var v any = float64(i) + 0.25
		if i%10 == 3 {
			v = i%20 == 3
		}
		if err := c.AddAt("temperature", v, base.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Publish(ctx); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if n := c.Pending(); n != 0 {
		t.Fatalf("pending after publish = %d, want 0", n)
	}

	var got readingsResp
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=temperature&limit=1000", nil, &got); st != 200 {
		t.Fatalf("status %d", st)
	}
	if len(got.Readings) != 1000 {
		t.Fatalf("got %d readings, want 1000", len(got.Readings))
	}
	for i, r := range got.Readings {
		want := fmt.Sprint(float64(i) + 0.25)
		if i%10 == 3 {
			want = fmt.Sprint(i%20 == 3)
		}
		if r.Feed != "temperature" || r.TS != base.Add(time.Duration(i)*time.Second).UnixMilli() || string(r.Value) != want {
			t.Fatalf("reading %d = %+v (value %s), want ts %d value %s", i, r, r.Value, base.Add(time.Duration(i)*time.Second).UnixMilli(), want)
		}
	}

	// Without a feed: recent readings of every feed.
	if err := c.Add("status", "ok"); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	var all readingsResp
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?limit=5", nil, &all)
	if len(all.Readings) != 5 || all.Readings[4].Feed != "status" || string(all.Readings[4].Value) != `"ok"` {
		t.Fatalf("recent readings of all feeds = %+v", all.Readings)
	}
}

func TestRPC(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "rpc-dev")
	resets := make(chan struct{}, 1)
	c, err := device.New(d.URL, device.WithReset(func(context.Context) error { resets <- struct{}{}; return nil }))
	if err != nil {
		t.Fatal(err)
	}
	c.Handle("add", func(ctx context.Context, args json.RawMessage) (any, error) {
		var in struct{ A, B int }
		if err := json.Unmarshal(args, &in); err != nil {
			return nil, fmt.Errorf("bad args: %w", err)
		}
		return map[string]int{"sum": in.A + in.B}, nil
	})
	c.Handle("fail", func(ctx context.Context, args json.RawMessage) (any, error) {
		return nil, errors.New("sensor 3 is not responding")
	})
	c.Handle("slow", func(ctx context.Context, args json.RawMessage) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	t.Run("success", func(t *testing.T) {
		var res struct {
			Result struct{ Sum int } `json:"result"`
		}
		if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/add", `{"a":2,"b":40}`, &res); st != 200 || res.Result.Sum != 42 {
			t.Fatalf("status %d, result %+v", st, res)
		}
	})
	t.Run("rpc_list", func(t *testing.T) {
		var res struct{ Result []string }
		p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/rpc_list", nil, &res)
		if strings.Join(res.Result, ",") != "add,fail,reset,rpc_list,slow" {
			t.Fatalf("rpc_list = %v", res.Result)
		}
	})
	t.Run("reset", func(t *testing.T) {
		if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/reset", nil, nil); st != 200 {
			t.Fatalf("status %d", st)
		}
		select {
		case <-resets:
		case <-time.After(5 * time.Second):
			t.Fatal("reset function not called")
		}
	})
	for _, tc := range []struct {
		name, path string
		status     int
		code, msg  string
	}{
		{"handler error", "/rpc/fail", http.StatusBadGateway, "handler_error", "sensor 3 is not responding"},
		{"unknown method", "/rpc/nope", http.StatusNotImplemented, "unknown_method", "nope"},
		{"timeout", "/rpc/slow?timeout=300ms", http.StatusGatewayTimeout, "timeout", "did not answer"},
		{"bad timeout", "/rpc/slow?timeout=-1", http.StatusBadRequest, "invalid", "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e apiError
			start := time.Now()
			st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+tc.path, nil, &e)
			if st != tc.status || e.Error.Code != tc.code || !strings.Contains(e.Error.Message, tc.msg) {
				t.Fatalf("status %d error %+v, want %d %s containing %q", st, e.Error, tc.status, tc.code, tc.msg)
			}
			if tc.code == "timeout" && time.Since(start) > 3*time.Second {
				t.Fatalf("timeout took %s", time.Since(start))
			}
		})
	}

	t.Run("offline", func(t *testing.T) {
		off := p.CreateDevice(t, "never-connected")
		var e apiError
		if st := p.Do(t, "POST", "/api/v1/devices/"+off.ID+"/rpc/add", `{}`, &e); st != http.StatusConflict || e.Error.Code != "device_offline" {
			t.Fatalf("status %d error %+v", st, e.Error)
		}
	})
	t.Run("unknown device", func(t *testing.T) {
		var e apiError
		if st := p.Do(t, "POST", "/api/v1/devices/d-nope/rpc/add", `{}`, &e); st != http.StatusNotFound || e.Error.Code != "not_found" {
			t.Fatalf("status %d error %+v", st, e.Error)
		}
	})
}

func TestWrongPasswordRefused(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "locked")
	c, err := device.New(strings.Replace(d.URL, d.Password, "wrong-password", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // a failed Connect leaves the client open
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.Connect(ctx)
	if !errors.Is(err, device.ErrAuth) {
		t.Fatalf("connect with wrong password: %v, want ErrAuth", err)
	}
	var dev struct{ Online bool }
	p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
	if dev.Online {
		t.Fatal("device shown online after a refused login")
	}
}

func TestTakeover(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "twin")
	first := connect(t, d.URL)
	// Another process with the same credentials (on another machine: its
	// own outbox directory; the first one's is locked).
	second := connect(t, d.URL, device.WithOutbox(t.TempDir()))
	select {
	case <-first.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("first connection not taken over")
	}
	if !errors.Is(first.Err(), device.ErrTakenOver) {
		t.Fatalf("first.Err() = %v, want ErrTakenOver", first.Err())
	}
	second.Handle("who", func(context.Context, json.RawMessage) (any, error) { return "second", nil })
	var res struct{ Result string }
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/who", nil, &res); st != 200 || res.Result != "second" {
		t.Fatalf("status %d result %q", st, res.Result)
	}
	var dev struct{ Online bool }
	p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
	if !dev.Online {
		t.Fatal("device offline after takeover")
	}
}

func TestRestartKeepsDevicesAndData(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "survivor")
	c := connect(t, d.URL, device.WithReconnectBackoff(50*time.Millisecond, 500*time.Millisecond))
	for i := 0; i < 10; i++ {
		c.Add("n", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}

	p.Restart(t)

	var dev struct {
		Name string
	}
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev); st != 200 || dev.Name != "survivor" {
		t.Fatalf("after restart: status %d device %+v", st, dev)
	}
	// The device reconnects by itself and keeps publishing.
	for i := 10; i < 20; i++ {
		c.Add("n", i)
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	var got readingsResp
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=n", nil, &got)
	if len(got.Readings) != 20 {
		t.Fatalf("got %d readings after restart, want 20", len(got.Readings))
	}
	for i, r := range got.Readings {
		if string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("reading %d = %s", i, r.Value)
		}
	}
	outposttest.Eventually(t, 10*time.Second, "device online again", func() bool {
		var dev struct{ Online bool }
		p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
		return dev.Online
	})
}

// The online filter applies before the limit: listing online devices with
// limit=N returns the first N online devices, however many offline ones
// were created before them.
func TestListOnlineDevicesWithLimit(t *testing.T) {
	p := outposttest.Start(t)
	var online []string
	for i := range 5 {
		d := p.CreateDevice(t, fmt.Sprintf("dev-%d", i))
		if i >= 3 {
			connect(t, d.URL)
			online = append(online, d.ID)
		}
	}
	list := func(query string) []string {
		t.Helper()
		var body struct {
			Devices []struct {
				ID     string `json:"id"`
				Online bool   `json:"online"`
			} `json:"devices"`
		}
		if st := p.Do(t, "GET", "/api/v1/devices"+query, nil, &body); st != http.StatusOK {
			t.Fatalf("GET %s: status %d", query, st)
		}
		var ids []string
		for _, d := range body.Devices {
			ids = append(ids, d.ID)
		}
		return ids
	}
	outposttest.Eventually(t, 5*time.Second, "two devices online", func() bool { return len(list("?online=true")) == 2 })
	if got := list("?online=true&limit=1"); len(got) != 1 || got[0] != online[0] {
		t.Errorf("online=true&limit=1: %v, want [%s]", got, online[0])
	}
	if got := list("?online=true&limit=10"); strings.Join(got, ",") != strings.Join(online, ",") {
		t.Errorf("online=true&limit=10: %v, want %v", got, online)
	}
	if got := list("?online=false&limit=2"); len(got) != 2 {
		t.Errorf("online=false&limit=2: %v, want 2 devices", got)
	}
	if got := list("?limit=4"); len(got) != 4 {
		t.Errorf("limit=4: %v, want 4 devices", got)
	}
}
