package faulttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
)

// base is the timestamp of every reading. The store orders readings with
// the same timestamp by arrival, so with tied timestamps the order it
// returns is the order it stored them in, and verifyExactlyOnce checks
// that this is the order they were produced in (value j is the j-th).
var base = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func reading(j int) device.Reading {
	return device.Reading{Feed: "seq", Value: j, Time: base}
}

// streamer is an in-process SDK device that produces n readings of feed
// "seq" with values 0..n-1 while a second goroutine keeps publishing.
type streamer struct {
	c        *device.Client
	n        int
	added    atomic.Int64
	produced chan struct{}
	pubErr   error
	done     chan struct{}
}

func startStreamer(t *testing.T, ctx context.Context, url string, n, chunk int, pace func(i int), opts ...device.Option) *streamer {
	t.Helper()
	c, err := device.New(url, append([]device.Option{device.WithOutbox(t.TempDir()), device.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Bounded by the test's deadline only: while the devices started
	// before stream at full speed, a connection can take many seconds on
	// a loaded machine.
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	s := &streamer{c: c, n: n, produced: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { c.Close() })
	go func() {
		defer close(s.produced)
		for i := 0; i < n; i += chunk {
			if pace != nil {
				pace(i)
			}
			rs := make([]device.Reading, 0, chunk)
			for j := i; j < min(n, i+chunk); j++ {
				rs = append(rs, reading(j))
			}
			if err := c.AddReadings(rs...); err != nil {
				s.pubErr = fmt.Errorf("add: %w", err)
				return
			}
			s.added.Store(int64(min(n, i+chunk)))
		}
	}()
	go func() {
		defer close(s.done)
		for {
			err := c.Publish(ctx)
			if ctx.Err() != nil {
				if s.pubErr == nil {
					s.pubErr = ctx.Err()
				}
				return
			}
			if err != nil && !errors.Is(err, device.ErrNotConnected) {
				t.Logf("device %s: publish: %v (retrying)", c.ID(), err)
			}
			select {
			case <-s.produced:
				if c.Pending() == 0 && err == nil {
					return
				}
			default:
			}
			if err != nil {
				time.Sleep(20 * time.Millisecond) // back off before retrying a failed Publish
			}
		}
	}()
	return s
}

// acked is how many readings the streamers' devices have had acknowledged
// so far: a lower bound, as each device's count is read after it added
// more.
func acked(ss []*streamer) int {
	n := 0
	for _, s := range ss {
		added := int(s.added.Load())
		n += added - min(added, s.c.Pending())
	}
	return n
}

// finish waits for every streamer to have published all its readings, then
// closes the clients.
func finish(t *testing.T, ctx context.Context, ss []*streamer) {
	t.Helper()
	for _, s := range ss {
		select {
		case <-s.done:
			if s.pubErr != nil {
				t.Fatalf("device %s: %v", s.c.ID(), s.pubErr)
			}
		case <-ctx.Done():
			t.Fatalf("device %s: %d readings still pending at the deadline", s.c.ID(), s.c.Pending())
		}
	}
	for _, s := range ss {
		s.c.Close()
	}
}

// TestKillPlatformWhileStreaming is fault test 1: the platform process is
// killed with SIGKILL while 10 devices stream 200,000 readings, then
// started again; every reading is stored exactly once.
func TestKillPlatformWhileStreaming(t *testing.T) {
	const devices, perDevice = 10, 20_000
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	pl := startPlatform(t, dir, "127.0.0.1:0", "127.0.0.1:0")
	var ss []*streamer
	var ids []string
	var urls []string
	for i := range devices {
		d := pl.createDevice(t, "streamer-"+strconv.Itoa(i))
		ids = append(ids, d.ID)
		urls = append(urls, pl.url(d))
	}
	// All devices exist before any streams: creating them takes longer than
	// the platform needs for a good part of the readings.
	for _, u := range urls {
		ss = append(ss, startStreamer(t, ctx, u, perDevice, 250, nil))
	}
	// Kill the platform mid-stream, twice: once a quarter of the readings
	// are acknowledged, then once the restarted platform has acknowledged
	// half of what was left (at most another quarter). The devices count
	// acknowledgements across restarts, so the second target is reachable
	// however much the first platform stored (its own counter restarts at
	// zero).
	const total = devices * perDevice
	target := total / 4
	for range 2 {
		for n := acked(ss); n < target; n = acked(ss) {
			if ctx.Err() != nil {
				t.Fatalf("only %d of %d readings acknowledged before the deadline (waiting for %d)", n, total, target)
			}
			time.Sleep(5 * time.Millisecond) // polling the devices' counters
		}
		n := acked(ss)
		t.Logf("SIGKILL to the platform at %d acknowledged readings (it counts %d stored since its start)", n, pl.storedReadings())
		pl.kill()
		pl = pl.restart(t)
		target = n + max(1, min(total/4, (total-n)/2))
	}
	finish(t, ctx, ss)
	pl.stop(t)
	verifyExactlyOnce(t, dir, ids, perDevice)
}

// TestPlatformAwayWhileDevicesProduce is fault test 2: the platform stops
// for a while as devices keep producing; when it is back every reading
// arrives, once, in per-device order.
func TestPlatformAwayWhileDevicesProduce(t *testing.T) {
	const devices, perDevice = 5, 6_000
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	pl := startPlatform(t, dir, "127.0.0.1:0", "127.0.0.1:0")
	// Production is gated: a third before the outage, a third during it,
	// the rest after.
	var gate sync.Mutex
	phase := 1
	cond := sync.NewCond(&gate)
	pace := func(i int) {
		gate.Lock()
		for i >= phase*perDevice/3 && phase < 3 {
			cond.Wait()
		}
		gate.Unlock()
	}
	advance := func() {
		gate.Lock()
		phase++
		cond.Broadcast()
		gate.Unlock()
	}
	var ss []*streamer
	var ids []string
	for i := range devices {
		d := pl.createDevice(t, "producer-"+strconv.Itoa(i))
		ids = append(ids, d.ID)
		ss = append(ss, startStreamer(t, ctx, pl.url(d), perDevice, 100, pace))
	}
	waitAdded := func(n int) {
		for _, s := range ss {
			for s.added.Load() < int64(n) {
				if ctx.Err() != nil {
					t.Fatalf("device %s added only %d readings", s.c.ID(), s.added.Load())
				}
				time.Sleep(5 * time.Millisecond) // polling the producer's counter
			}
		}
	}
	waitAdded(perDevice / 3)
	pl.stop(t) // the platform goes away
	for _, s := range ss {
		for s.c.Connected() {
			if ctx.Err() != nil {
				t.Fatal("devices still connected after the platform stopped")
			}
			time.Sleep(5 * time.Millisecond) // polling the connection state
		}
	}
	advance() // devices keep producing while it is away
	waitAdded(2 * perDevice / 3)
	pl = pl.restart(t)
	advance()
	finish(t, ctx, ss)
	pl.stop(t)
	verifyExactlyOnce(t, dir, ids, perDevice)
}

// runDevice is the device process of fault test 3. OUTPOST_FAULT_STEP says
// what it does:
//
//	produce: open the outbox, add N readings while offline, print
//	         "added N" and wait to be killed
//	deliver: open the same outbox, connect, publish everything, print
//	         "delivered" and exit
func runDevice() int {
	url, dir := os.Getenv("OUTPOST_FAULT_URL"), os.Getenv("OUTPOST_FAULT_OUTBOX")
	n, _ := strconv.Atoi(os.Getenv("OUTPOST_FAULT_N"))
	c, err := device.New(url, device.WithOutbox(dir), device.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		fmt.Fprintln(os.Stderr, "device:", err)
		return 1
	}
	switch os.Getenv("OUTPOST_FAULT_STEP") {
	case "produce":
		for i := 0; i < n; i += 500 {
			rs := make([]device.Reading, 0, 500)
			for j := i; j < min(n, i+500); j++ {
				rs = append(rs, reading(j))
			}
			if err := c.AddReadings(rs...); err != nil {
				fmt.Fprintln(os.Stderr, "device: add:", err)
				return 1
			}
		}
		fmt.Printf("added %d\n", n)
		select {} // wait for SIGKILL
	case "deliver":
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Connect(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "device: connect:", err)
			return 1
		}
		fmt.Printf("pending %d\n", c.Pending())
		if err := c.Publish(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "device: publish:", err)
			return 1
		}
		c.Close()
		fmt.Println("delivered")
		return 0
	}
	fmt.Fprintln(os.Stderr, "device: unknown step")
	return 2
}

// TestKillDeviceWithBufferedReadings is fault test 3: a device process
// buffers 50,000 readings while offline and is killed with SIGKILL;
// started again it delivers all of them, once.
func TestKillDeviceWithBufferedReadings(t *testing.T) {
	const n = 50_000
	dir := t.TempDir()
	pl := startPlatform(t, dir, "127.0.0.1:0", "127.0.0.1:0")
	d := pl.createDevice(t, "buffered")
	outbox := t.TempDir()
	env := []string{"OUTPOST_FAULT_URL=" + pl.url(d), "OUTPOST_FAULT_OUTBOX=" + outbox, "OUTPOST_FAULT_N=" + strconv.Itoa(n)}

	// The platform is down while the device produces.
	pl.stop(t)
	dev := spawn(t, "device", append(env, "OUTPOST_FAULT_STEP=produce")...)
	if got := dev.waitLine(t, "added ", 2*time.Minute); got != strconv.Itoa(n) {
		t.Fatalf("device added %s readings", got)
	}
	dev.kill()

	pl = pl.restart(t)
	dev = spawn(t, "device", append(env, "OUTPOST_FAULT_STEP=deliver")...)
	if got := dev.waitLine(t, "pending ", time.Minute); got != strconv.Itoa(n) {
		t.Errorf("restarted device found %s readings in its outbox, want %d", got, n)
	}
	dev.waitLine(t, "delivered", 2*time.Minute)
	pl.stop(t)
	verifyExactlyOnce(t, dir, []string{d.ID}, n)
}
