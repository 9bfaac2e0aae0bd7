// Package memtrim gives memory back to the operating system when the Go
// runtime would keep it for no use: after a storm of new connections, and
// when what the process holds has drifted well above what it uses.
//
// Two habits of the runtime make an idle platform hold far more than it
// uses (issue 16, docs/benchmarks.md "Where the bytes go"):
//
//   - A goroutine's stack grows while the goroutine does deep work (a
//     device's CONNECT and SUBSCRIBE) and shrinks only by half per garbage
//     collection. An idle process collects rarely, so after a connect storm
//     every idle connection keeps a 16–32 KiB stack for minutes, where 4 KiB
//     would do.
//   - Memory freed by a collection is returned to the operating system only
//     above the collector's goal, which with GOGC=100 is twice the live
//     memory. An idle platform therefore sits anywhere between its live
//     memory and twice that.
//
// A Trimmer watches for both and runs a trim: collections until the stacks
// are down (each halves them) and then debug.FreeOSMemory. A trim costs a
// few collections of the live heap (at 19,000 devices about 0.1 s of CPU);
// it runs at most once per MinGap.
package memtrim

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Trimmer. Zero fields take the defaults.
type Options struct {
	// Connects returns how many connections were established so far
	// (monotonic). Nil: no storm rule.
	Connects func() int64
	// Storm is how many new connections since the last trim make one
	// worthwhile once they stop arriving (default 1,000).
	Storm int64
	// Every is how often the Trimmer looks (default 2 s). A storm has
	// stopped when a look finds fewer than Storm/10 new connections since
	// the one before.
	Every time.Duration
	// MinGap is the least time between two trims (default 20 s).
	MinGap time.Duration
	// Drift trims when the memory the runtime holds beyond what is in use
	// (free pages it kept, garbage not yet collected: Excess) is more than
	// this fraction of what is in use, plus Slack (default 0.25; negative:
	// no drift rule). Checked at most every DriftEvery (default 2 min).
	Drift      float64
	Slack      uint64 // default 32 MiB
	DriftEvery time.Duration
	Logger     *slog.Logger
}

func (o *Options) fill() {
	if o.Storm <= 0 {
		o.Storm = 1000
	}
	if o.Every <= 0 {
		o.Every = 2 * time.Second
	}
	if o.MinGap <= 0 {
		o.MinGap = 20 * time.Second
	}
	if o.Drift == 0 {
		o.Drift = 0.25
	}
	if o.Slack == 0 {
		o.Slack = 32 << 20
	}
	if o.DriftEvery <= 0 {
		o.DriftEvery = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Trimmer runs trims in a goroutine of its own until Close.
type Trimmer struct {
	o     Options
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
	trims atomic.Int64
}

// Start starts a Trimmer.
func Start(o Options) *Trimmer {
	o.fill()
	t := &Trimmer{o: o, stop: make(chan struct{}), done: make(chan struct{})}
	go t.run()
	return t
}

// Close stops the Trimmer and waits for a trim in progress.
func (t *Trimmer) Close() {
	t.once.Do(func() { close(t.stop) })
	<-t.done
}

// Trims returns how many trims ran.
func (t *Trimmer) Trims() int64 { return t.trims.Load() }

func (t *Trimmer) run() {
	defer close(t.done)
	tick := time.NewTicker(t.o.Every)
	defer tick.Stop()
	connects := t.o.Connects
	if connects == nil {
		connects = func() int64 { return 0 }
	}
	var (
		lastTrim  time.Time // zero: none yet
		lastDrift = time.Now()
		trimmedAt = connects() // connects at the last trim
		seen      = trimmedAt  // connects at the last look
	)
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		c := connects()
		calm := c-seen < max(1, t.o.Storm/10)
		seen = c
		storm := c-trimmedAt >= t.o.Storm
		if !lastTrim.IsZero() && now.Sub(lastTrim) < t.o.MinGap {
			continue
		}
		reason := ""
		switch {
		case storm && calm:
			reason = "connect storm"
		case t.o.Drift > 0 && now.Sub(lastDrift) >= t.o.DriftEvery:
			lastDrift = now
			if excess, held := Excess(), Held(); excess > uint64(t.o.Drift*float64(held-min(held, excess)))+t.o.Slack {
				reason = "drift"
			}
		}
		if reason == "" {
			continue
		}
		before := Held()
		start := time.Now()
		Trim()
		after := Held()
		lastTrim, lastDrift, trimmedAt = time.Now(), time.Now(), c
		t.trims.Add(1)
		t.o.Logger.Info("memory trimmed", "reason", reason, "held_before_mib", before>>20, "held_after_mib", after>>20, "took", time.Since(start))
	}
}

// Trim collects until idle goroutine stacks have shrunk as far as they will
// (each collection halves a stack that uses under a quarter of it; from
// 32 KiB to 4 KiB takes three) and returns the freed memory to the
// operating system.
func Trim() {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory() // a third collection, then everything free goes back
}

// Excess returns what the Go runtime holds beyond what is in use: free
// heap pages it kept from the operating system and objects that are no
// longer reachable but not yet collected. A trim returns it.
func Excess() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	free, objects, live := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64()
	return free + objects - min(objects, live)
}

// Held returns the memory the Go runtime holds from the operating system:
// everything it mapped minus what it released. It is what a trim can lower
// and close to the process's resident set.
func Held() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	total, released := s[0].Value.Uint64(), s[1].Value.Uint64()
	if released > total {
		return 0
	}
	return total - released
}
