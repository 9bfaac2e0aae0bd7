package telemetry

import (
	"sync"
	"time"
)

// Exchange carries rate-limit usage between platform replicas that take
// the same devices' traffic (internal/extbroker implements it over the
// external broker). Reports are best effort: a lost one lets a device
// through more than its limit for about one interval, never less than
// its limit.
type Exchange interface {
	// PublishUsage sends the other replicas the readings this replica
	// admitted per device since its last report (an empty map says only
	// that this replica is there). It does not wait for them.
	PublishUsage(usage map[string]int)
	// OnUsage sets the function that takes each report of another
	// replica; origin names that replica.
	OnUsage(f func(origin string, usage map[string]int))
}

// DefaultExchangeInterval is how often a replica reports its usage to the
// others (Options.ExchangeInterval).
const DefaultExchangeInterval = 200 * time.Millisecond

// Figures of the exchange, in report intervals (see docs/deploy.md, "What
// each part guarantees", for the bound they give):
//   - a device's usage on a replica is reported once it reaches
//     rate×interval/(4×replicas), so devices well within their limit cost
//     nothing; usage below that is kept for up to keepPendingIntervals and
//     then forgotten, which lets a device through at most
//     rate/(4×keepPendingIntervals×replicas) more per other replica (under
//     5% of the rate in all);
//   - a replica with nothing to report still reports every
//     heartbeatIntervals, so the others count it among the replicas for
//     peerTTLIntervals.
const (
	keepPendingIntervals = 5
	heartbeatIntervals   = 5
	peerTTLIntervals     = 3 * heartbeatIntervals
	pendingFraction      = 4
)

// rateLimiter bounds the readings each device may send per second with a
// token bucket per device. A message is let through while the device's
// bucket is not empty, even when it holds fewer tokens than the message
// has readings (the bucket then goes into debt), so a message larger than
// the burst is never refused for ever.
//
// With an exchange (withExchange), what other replicas admitted for a
// device is taken from its bucket here too (report, receive), so the
// device's limit holds across the replicas.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time

	// With an exchange only (nil maps without):
	interval time.Duration
	pending  map[string]*usage    // admitted here, not yet reported
	peers    map[string]time.Time // the other replicas, by when last heard
	lastSent time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// usage is what a device was admitted here since its last report.
type usage struct {
	n     int
	since time.Time // the first admission not yet reported
}

// newRateLimiter returns a limiter of perSecond readings per device, or
// nil (no limit) when perSecond is 0. burst defaults to one second's worth.
func newRateLimiter(perSecond, burst int) *rateLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = perSecond
	}
	return &rateLimiter{rate: float64(perSecond), burst: float64(burst), buckets: map[string]*bucket{}}
}

// withExchange makes l record what it admits for reports every interval.
func (l *rateLimiter) withExchange(interval time.Duration) {
	l.interval = interval
	l.pending = map[string]*usage{}
	l.peers = map[string]time.Time{}
}

// allow reports whether device may send n readings now, and takes them.
func (l *rateLimiter) allow(device string, n int, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.sweep) > time.Minute {
		l.sweepLocked(now)
	}
	b := l.refill(device, now)
	if b.tokens <= 0 {
		return false
	}
	b.tokens -= float64(n)
	if l.pending != nil && n > 0 {
		// This replica's usage, for its next report.
		u := l.pending[device]
		if u == nil {
			u = &usage{since: now}
			l.pending[device] = u
		}
		u.n += n
	}
	return true
}

// refill returns device's bucket with the tokens earned since its last
// use. The caller holds l.mu.
func (l *rateLimiter) refill(device string, now time.Time) *bucket {
	b := l.buckets[device]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[device] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	return b
}

// sweepLocked forgets devices whose buckets are full again: they cost
// nothing. The caller holds l.mu.
func (l *rateLimiter) sweepLocked(now time.Time) {
	l.sweep = now
	for id, x := range l.buckets {
		if x.tokens+now.Sub(x.last).Seconds()*l.rate >= l.burst && l.pending[id] == nil {
			delete(l.buckets, id)
		}
	}
}

// report returns the usage to send the other replicas now, and whether
// to send it (an empty report goes out every heartbeat, so the others
// count this replica). A device's usage is reported once it is
// significant; smaller usage waits for more, and is forgotten after
// keepPendingIntervals.
func (l *rateLimiter) report(now time.Time) (map[string]int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	threshold := l.rate * l.interval.Seconds() / float64(pendingFraction*l.replicasLocked(now))
	keep := keepPendingIntervals * l.interval
	out := map[string]int{}
	for id, u := range l.pending {
		switch {
		case float64(u.n) >= threshold:
			out[id] = u.n
			delete(l.pending, id)
		case now.Sub(u.since) >= keep:
			delete(l.pending, id)
		}
	}
	if now.Sub(l.sweep) > time.Minute {
		l.sweepLocked(now)
	}
	if len(out) == 0 && now.Sub(l.lastSent) < heartbeatIntervals*l.interval {
		return nil, false
	}
	l.lastSent = now
	return out, true
}

// receive takes another replica's report: what it admitted comes out of
// the buckets here too, into debt if need be, as the bucket's own
// admissions may.
func (l *rateLimiter) receive(origin string, used map[string]int, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.peers != nil {
		l.peers[origin] = now
	}
	for id, n := range used {
		if n > 0 {
			l.refill(id, now).tokens -= float64(n)
		}
	}
}

// replicasLocked counts the replicas heard lately, this one included.
// The caller holds l.mu.
func (l *rateLimiter) replicasLocked(now time.Time) int {
	n := 1
	for id, t := range l.peers {
		if now.Sub(t) > peerTTLIntervals*l.interval {
			delete(l.peers, id)
			continue
		}
		n++
	}
	return n
}
