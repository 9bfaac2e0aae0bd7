package fleet

import (
	"log/slog"
	"time"
)

// Defaults of the asynchronous machinery.
const (
	// DefaultWorkers is the number of goroutines that run callbacks: one,
	// so callbacks run one after another, in the order their answers came.
	DefaultWorkers = 1
	// DefaultQueueSize is how many asynchronous calls may be outstanding
	// (queued, waiting for their device, or waiting for a worker) before
	// CallAsync blocks.
	DefaultQueueSize = 1024
	// DefaultMaxInFlight is how many asynchronous calls, and how many calls
	// of one Broadcast, wait for their devices at the same time.
	DefaultMaxInFlight = 32
)

// WithWorkers sets the number of goroutines that run the callbacks of
// asynchronous calls (default DefaultWorkers; values below 1 mean 1). With
// more than one, a slow callback no longer holds up the others, and
// callbacks may run concurrently and in any order.
func WithWorkers(n int) Option {
	return func(c *Client) { c.workers = max(n, 1) }
}

// WithQueueSize bounds the asynchronous calls outstanding at once (default
// DefaultQueueSize; values below 1 mean 1). When the bound is reached,
// CallAsync waits for room, which is how a producer faster than the fleet
// is slowed down.
func WithQueueSize(n int) Option {
	return func(c *Client) { c.queueSize = max(n, 1) }
}

// WithMaxInFlight sets how many asynchronous calls, and how many calls of
// one Broadcast, may wait for their devices at the same time (default
// DefaultMaxInFlight; values below 1 mean 1).
func WithMaxInFlight(n int) Option {
	return func(c *Client) { c.maxInFlight = max(n, 1) }
}

// WithCallTimeout sets how long a call waits for its device when its
// context has no deadline (default DefaultCallTimeout; at most 5 minutes,
// the platform's limit).
func WithCallTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.callTimeout = min(d, maxCallTimeout)
		}
	}
}

// WithReconnectBackoff sets the shortest and longest wait between two
// attempts of a subscription to reconnect (default 100ms and 10s). The wait
// doubles after each failed attempt, and is never shorter than the retry
// interval the platform asks for.
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(c *Client) {
		if min > 0 {
			c.minBackoff = min
		}
		if max > 0 {
			c.maxBackoff = max
		}
	}
}

// WithLogger sets the logger for events worth knowing about that are not
// errors of a call, such as a subscription losing its connection (default:
// discard).
func WithLogger(l *slog.Logger) Option {
	return func(c *Client) {
		if l != nil {
			c.log = l
		}
	}
}
