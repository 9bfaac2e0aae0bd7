package memtrim_test

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/memtrim"
)

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var sink atomic.Int64

//go:noinline
func deep(n int, park <-chan struct{}) {
	var pad [512]byte
	pad[n%len(pad)] = byte(n)
	if n > 0 {
		deep(n-1, park)
		sink.Add(int64(pad[(n*7)%len(pad)]))
		return
	}
	<-park
}

func stackInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.StackInuse
}

// A trim shrinks the stacks of goroutines that grew and went idle: one
// collection, as the runtime would run on its own, halves them once; a
// trim takes them down to what they use.
func TestTrimShrinksIdleStacks(t *testing.T) {
	const n = 2000
	before := stackInuse()
	stop := parkedGrown(n)
	defer stop()
	grown := stackInuse() - before
	if grown < n*16<<10 {
		t.Fatalf("stacks grew by %d bytes for %d goroutines, want at least 16 KiB each", grown, n)
	}
	runtime.GC()
	once := stackInuse() - before
	memtrim.Trim()
	trimmed := stackInuse() - before
	t.Logf("stack bytes per goroutine: grown %d, after one collection %d, after a trim %d", grown/n, once/n, trimmed/n)
	if trimmed > n*8<<10 {
		t.Errorf("after a trim the stacks hold %d bytes per goroutine, want at most 8 KiB", trimmed/n)
	}
	if trimmed*2 > once {
		t.Errorf("a trim (%d) did not at least halve what one collection left (%d)", trimmed, once)
	}
}

// parkedGrown starts n goroutines whose stacks grow to 32 KiB on a path
// that returns, and that then wait in a shallow frame, as a connection's
// goroutine does after its CONNECT and SUBSCRIBE.
func parkedGrown(n int) (stop func()) {
	park := make(chan struct{})
	closed := make(chan struct{})
	close(closed)
	var grown, wg sync.WaitGroup
	for range n {
		grown.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			deep(48, closed)
			grown.Done()
			<-park
		}()
	}
	grown.Wait()
	return func() { close(park); wg.Wait() }
}

// After a storm of connections, once they stop arriving, the Trimmer
// trims once; while they keep arriving it does not.
func TestStormTrimsOnceCalm(t *testing.T) {
	var connects, looks atomic.Int64
	var storming atomic.Bool
	storming.Store(true)
	tr := memtrim.Start(memtrim.Options{
		Connects: func() int64 {
			looks.Add(1)
			if storming.Load() {
				return connects.Add(500) // a storm: 500 more at every look
			}
			return connects.Load()
		},
		Storm: 1000, Every: time.Millisecond, MinGap: time.Millisecond, Drift: -1,
	})
	defer tr.Close()
	eventually(t, 10*time.Second, "20 looks", func() bool { return looks.Load() >= 20 })
	if n := tr.Trims(); n != 0 {
		t.Fatalf("%d trims while connections kept arriving, want 0", n)
	}
	storming.Store(false)
	eventually(t, 10*time.Second, "a trim once the storm stopped", func() bool { return tr.Trims() == 1 })
	at := looks.Load()
	eventually(t, 10*time.Second, "20 more looks", func() bool { return looks.Load() >= at+20 })
	if n := tr.Trims(); n != 1 {
		t.Errorf("%d trims without new connections since the first, want 1", n)
	}
}

// Memory freed but kept by the runtime beyond the drift allowance is
// returned.
func TestDriftTrims(t *testing.T) {
	held := memtrim.Held()
	// 64 MiB in small pieces, then dropped: the collector frees them and
	// the runtime keeps the pages.
	var keep [][]byte
	for range 64 << 10 {
		keep = append(keep, make([]byte, 1024))
	}
	if memtrim.Held() < held+32<<20 {
		t.Skipf("the runtime holds %d MiB after 64 MiB of allocations: nothing to trim", memtrim.Held()>>20)
	}
	keep = nil
	runtime.GC()
	tr := memtrim.Start(memtrim.Options{Every: time.Millisecond, MinGap: time.Millisecond,
		Drift: 0.25, Slack: 8 << 20, DriftEvery: time.Millisecond})
	defer tr.Close()
	eventually(t, 10*time.Second, "a drift trim", func() bool { return tr.Trims() >= 1 })
	if h := memtrim.Held(); h > held+16<<20 {
		t.Errorf("the runtime still holds %d MiB, %d more than before the allocations", h>>20, (h-held)>>20)
	}
	_ = keep
}
