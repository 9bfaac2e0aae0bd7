package broker

import (
	"log/slog"
	"sync"
	"time"
)

// authThrottle slows down guessing: a refused login is answered only after
// a delay that doubles with every recent failure of the same device id or
// from the same source address (whichever has more), from a base up to a
// maximum. Successful logins are never delayed, so an attack on a device
// id does not lock the real device out. Failures are forgotten after a
// quiet minute. The delay holds the refused connection, which counts
// against the pending-connection bounds of the listener, so the bounds
// and the delay together cap the rate of guesses per address.
//
// It also logs failures in aggregate: the first few of each minute one by
// one, the rest as a count at the end of the minute.
type authThrottle struct {
	base, max time.Duration
	log       *slog.Logger

	mu     sync.Mutex
	fails  map[string]*failCount // "i:"+device id, "a:"+address
	window time.Time             // start of the current logging window
	logged int                   // failures logged one by one in the window
	count  int                   // failures in the window
	ids    map[string]struct{}   // distinct ids in the window (bounded)
	addrs  map[string]struct{}   // distinct addresses in the window (bounded)
}

type failCount struct {
	n    int
	last time.Time
}

const (
	throttleForget      = time.Minute // failures older than this are forgotten
	throttleMaxKeys     = 100_000     // bound on remembered ids and addresses
	authLogWindow       = time.Minute
	authLogIndividually = 20 // failures per window logged one by one
	authLogDistinct     = 1000
)

func newAuthThrottle(base, maxDelay time.Duration, log *slog.Logger) *authThrottle {
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	if maxDelay <= 0 {
		maxDelay = 50 * base
	}
	maxDelay = max(maxDelay, base)
	return &authThrottle{base: base, max: maxDelay, log: log, fails: map[string]*failCount{}}
}

// failed records a refused login of id from addr and returns how long to
// wait before answering it.
func (t *authThrottle) failed(id, addr string, reason string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.fails) >= throttleMaxKeys {
		for k, f := range t.fails {
			if now.Sub(f.last) > throttleForget {
				delete(t.fails, k)
			}
		}
		if len(t.fails) >= throttleMaxKeys {
			t.fails = map[string]*failCount{} // under a flood of fresh keys: start over
		}
	}
	n := max(t.bump("i:"+id, now), t.bump("a:"+addr, now))
	d := t.base
	for i := 1; i < n && d < t.max; i++ {
		d *= 2
	}
	d = min(d, t.max)
	t.note(id, addr, reason, d, now)
	return d
}

func (t *authThrottle) bump(key string, now time.Time) int {
	f := t.fails[key]
	if f == nil || now.Sub(f.last) > throttleForget {
		f = &failCount{}
		t.fails[key] = f
	}
	f.n++
	f.last = now
	return f.n
}

// succeeded forgets the failures of a device id that logged in.
func (t *authThrottle) succeeded(id string) {
	t.mu.Lock()
	delete(t.fails, "i:"+id)
	t.mu.Unlock()
}

// note logs a failure, in aggregate once a window has more than a few.
// t.mu is held.
func (t *authThrottle) note(id, addr, reason string, delay time.Duration, now time.Time) {
	if now.Sub(t.window) >= authLogWindow {
		t.flushLocked()
		t.window = now
	}
	t.count++
	if len(t.ids) < authLogDistinct {
		if t.ids == nil {
			t.ids, t.addrs = map[string]struct{}{}, map[string]struct{}{}
		}
		t.ids[id] = struct{}{}
	}
	if len(t.addrs) < authLogDistinct {
		t.addrs[addr] = struct{}{}
	}
	if t.logged < authLogIndividually {
		t.logged++
		t.log.Info("device authentication failed", "device_id", id, "remote", addr, "reason", reason, "answer_delay", delay)
		if t.logged == authLogIndividually {
			t.log.Info("more device authentication failures will be counted, not logged one by one, until the end of the minute")
		}
	}
}

// flush logs the count of the current window's failures not logged one by
// one.
func (t *authThrottle) flush() {
	t.mu.Lock()
	t.flushLocked()
	t.mu.Unlock()
}

func (t *authThrottle) flushLocked() {
	if t.count > t.logged {
		t.log.Info("device authentication failures", "failures", t.count, "logged_individually", t.logged,
			"device_ids", len(t.ids), "addresses", len(t.addrs), "since", t.window.Format(time.RFC3339))
	}
	t.count, t.logged = 0, 0
	t.ids, t.addrs = nil, nil
}
