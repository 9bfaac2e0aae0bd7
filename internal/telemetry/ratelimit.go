package telemetry

import (
	"sync"
	"time"
)

// rateLimiter bounds the readings each device may send per second with a
// token bucket per device. A message is let through while the device's
// bucket is not empty, even when it holds fewer tokens than the message
// has readings (the bucket then goes into debt), so a message larger than
// the burst is never refused for ever.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
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

// allow reports whether device may send n readings now, and takes them.
func (l *rateLimiter) allow(device string, n int, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[device]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[device] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if now.Sub(l.sweep) > time.Minute {
		// Forget devices whose buckets are full again: they cost nothing.
		l.sweep = now
		for id, x := range l.buckets {
			if x != b && x.tokens+now.Sub(x.last).Seconds()*l.rate >= l.burst {
				delete(l.buckets, id)
			}
		}
	}
	if b.tokens <= 0 {
		return false
	}
	b.tokens -= float64(n)
	return true
}
