package fleet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// Option configures a Client. An option given a value out of its range
// makes Dial fail with an error naming it, as the device package's options
// do; no value is silently replaced by another.
type Option func(*Client) error

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

// WithHTTPClient sets the HTTP client (for TLS settings or proxies); it
// must not be nil. Its Timeout, if any, also cuts live subscriptions, which
// then reconnect; leave it zero and bound calls with contexts instead.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) error {
		if hc == nil {
			return errors.New("nil HTTP client")
		}
		c.hc = hc
		return nil
	}
}

// WithWorkers sets the number of goroutines, at least 1, that run the
// callbacks of asynchronous calls (default DefaultWorkers). With more than
// one, a slow callback no longer holds up the others, and callbacks may run
// concurrently and in any order.
func WithWorkers(n int) Option {
	return func(c *Client) error {
		if n < 1 {
			return fmt.Errorf("workers must be at least 1, not %d", n)
		}
		c.workers = n
		return nil
	}
}

// WithQueueSize bounds the asynchronous calls outstanding at once, at
// least 1 (default DefaultQueueSize). When the bound is reached, CallAsync
// waits for room, which is how a producer faster than the fleet is slowed
// down.
func WithQueueSize(n int) Option {
	return func(c *Client) error {
		if n < 1 {
			return fmt.Errorf("queue size must be at least 1, not %d", n)
		}
		c.queueSize = n
		return nil
	}
}

// WithMaxInFlight sets how many asynchronous calls, and how many calls of
// one Broadcast, may wait for their devices at the same time, at least 1
// (default DefaultMaxInFlight).
func WithMaxInFlight(n int) Option {
	return func(c *Client) error {
		if n < 1 {
			return fmt.Errorf("max in flight must be at least 1, not %d", n)
		}
		c.maxInFlight = n
		return nil
	}
}

// WithCallTimeout sets how long a call waits for its device when its
// context has no deadline: more than 0 and at most 5 minutes, the
// platform's limit (default DefaultCallTimeout).
func WithCallTimeout(d time.Duration) Option {
	return func(c *Client) error {
		if d <= 0 || d > maxCallTimeout {
			return fmt.Errorf("call timeout must be more than 0 and at most %s, not %s", maxCallTimeout, d)
		}
		c.callTimeout = d
		return nil
	}
}

// WithReconnectBackoff sets the shortest and longest wait between two
// attempts of a subscription to reconnect, 0 < min <= max (default 100ms
// and 10s). The wait doubles after each failed attempt, and is never
// shorter than the retry interval the platform asks for.
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(c *Client) error {
		if min <= 0 || max < min {
			return fmt.Errorf("reconnect backoff needs 0 < min <= max, not %s and %s", min, max)
		}
		c.minBackoff, c.maxBackoff = min, max
		return nil
	}
}

// WithLogger sets the logger for events worth knowing about that are not
// errors of a call, such as a subscription losing its connection (default,
// and nil: discard).
func WithLogger(l *slog.Logger) Option {
	return func(c *Client) error {
		if l != nil {
			c.log = l
		}
		return nil
	}
}
