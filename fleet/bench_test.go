package fleet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// benchDevices is the size of the simulated fleet.
const benchDevices = 100

var benchArgs = json.RawMessage(`{"n":12345}`)

// benchFleet starts a platform with benchDevices devices connected through
// the device SDK, each answering "echo". Benchmarks only run under -bench,
// so plain `go test` never pays for this.
func benchFleet(b *testing.B) (*outposttest.Platform, []string) {
	b.Helper()
	p := outposttest.Start(b)
	ids := make([]string, benchDevices)
	var wg sync.WaitGroup
	for i := range ids {
		d := p.CreateDevice(b, fmt.Sprintf("sim-%03d", i))
		ids[i] = d.ID
		wg.Go(func() {
			c, err := device.New(d.URL)
			if err != nil {
				b.Error(err)
				return
			}
			c.Handle("echo", echo)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := c.Connect(ctx); err != nil {
				b.Error(err)
				return
			}
			b.Cleanup(func() { c.Close() })
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	// Warm up (connections, goroutine stacks, heap size) so the first
	// sub-benchmark is not penalised.
	f := dial(b, p, fleet.WithMaxInFlight(64))
	for range 10 {
		for _, r := range f.Broadcast(context.Background(), ids, "echo", benchArgs) {
			if r.Err != nil {
				b.Fatalf("warm-up: %v", r.Err)
			}
		}
	}
	return p, ids
}

// report records calls/s, p50 and p99 of one run.
func report(b *testing.B, elapsed time.Duration, lat []time.Duration) {
	b.Helper()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "calls/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// run spreads b.N calls over callers goroutines and reports the figures.
func run(b *testing.B, callers int, call func(i int) error) {
	var (
		next atomic.Int64
		mu   sync.Mutex
		lat  = make([]time.Duration, 0, b.N)
		wg   sync.WaitGroup
	)
	b.ResetTimer()
	start := time.Now()
	for range callers {
		wg.Go(func() {
			own := make([]time.Duration, 0, b.N/callers+1)
			defer func() { mu.Lock(); lat = append(lat, own...); mu.Unlock() }()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := call(i); err != nil {
					b.Error(err)
					return
				}
				own = append(own, time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	report(b, elapsed, lat)
}

// BenchmarkCall measures synchronous RPC calls through the fleet SDK to
// benchDevices SDK devices with 1, 8 and 64 callers in flight, and the same
// requests sent with plain net/http as the baseline of what the SDK adds.
//
//	go test -run '^$' -bench BenchmarkCall -benchtime 5000x ./fleet/
func BenchmarkCall(b *testing.B) {
	p, ids := benchFleet(b)
	ctx := context.Background()
	for _, callers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("fleet/callers=%d", callers), func(b *testing.B) {
			f := dial(b, p, fleet.WithMaxInFlight(callers))
			run(b, callers, func(i int) error {
				res, err := f.Call(ctx, ids[i%len(ids)], "echo", benchArgs)
				if err == nil && !bytes.Equal(res, benchArgs) {
					err = fmt.Errorf("echo returned %s", res)
				}
				return err
			})
		})
	}
	for _, callers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("http/callers=%d", callers), func(b *testing.B) {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.MaxIdleConnsPerHost = 64
			hc := &http.Client{Transport: tr}
			b.Cleanup(hc.CloseIdleConnections)
			run(b, callers, func(i int) error {
				req, _ := http.NewRequest("POST", p.HTTPURL()+"/api/v1/devices/"+ids[i%len(ids)]+"/rpc/echo?timeout=5s", bytes.NewReader(benchArgs))
				req.Header.Set("Authorization", "Bearer "+p.AdminToken())
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				var out struct{ Result json.RawMessage }
				raw, err := io.ReadAll(resp.Body)
				if err != nil {
					return err
				}
				if resp.StatusCode != 200 || json.Unmarshal(raw, &out) != nil || !bytes.Equal(out.Result, benchArgs) {
					return fmt.Errorf("status %d: %s", resp.StatusCode, raw)
				}
				return nil
			})
		})
	}
}

// BenchmarkCallAsync measures the same calls made with CallAsync, with 1, 8
// and 64 calls in flight (WithMaxInFlight, and a queue of the same size).
// Latency runs from the moment CallAsync has queued the call to the start
// of its callback, so time the producer spends waiting for room in the
// queue is not counted; the callback's parameter carries the start time.
//
//	go test -run '^$' -bench BenchmarkCallAsync -benchtime 5000x ./fleet/
func BenchmarkCallAsync(b *testing.B) {
	p, ids := benchFleet(b)
	ctx := context.Background()
	for _, inFlight := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("inflight=%d", inFlight), func(b *testing.B) {
			f := dial(b, p, fleet.WithMaxInFlight(inFlight), fleet.WithQueueSize(inFlight))
			lat := make([]time.Duration, 0, b.N)
			var wg sync.WaitGroup
			var failed atomic.Int64
			done := func(res json.RawMessage, err error, param any) {
				defer wg.Done()
				end := time.Now()
				start := param.(*atomic.Int64)
				for start.Load() == 0 { // CallAsync has not returned yet
					runtime.Gosched()
				}
				lat = append(lat, end.Sub(time.Unix(0, start.Load()))) // one worker: no lock needed
				if err != nil || !bytes.Equal(res, benchArgs) {
					failed.Add(1)
				}
			}
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				wg.Add(1)
				queued := new(atomic.Int64)
				if err := f.CallAsync(ctx, ids[i%len(ids)], "echo", benchArgs, done, queued); err != nil {
					b.Fatal(err)
				}
				queued.Store(time.Now().UnixNano())
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d of %d calls failed", n, b.N)
			}
			report(b, elapsed, lat)
		})
	}
}
