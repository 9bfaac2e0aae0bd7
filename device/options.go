package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/outpost-iot/outpost/device/outbox"
	"github.com/outpost-iot/outpost/protocol"
)

// Option configures a Client.
type Option func(*options) error

type options struct {
	id, secret     string
	tls            *tls.Config
	keepAlive      time.Duration
	sessionExpiry  time.Duration
	connectTimeout time.Duration
	minBackoff     time.Duration
	maxBackoff     time.Duration
	concurrency    int
	maxBatch       int
	maxInFlight    int
	reset          func(ctx context.Context) error
	onError        func(protocol.ErrorReply)
	onUp, onDown   func()
	log            *slog.Logger
	pull           bool // PULL mode (WithPullMode)
	outboxDir      string
	outboxMem      bool
	outboxQueue    outbox.Queue
	outboxOpts     []outbox.Option
	autoPublish    time.Duration
	// retryOnFailedConnect: Connect returns at once and the client keeps
	// trying in the background.
	retryOnFailedConnect bool
	files                *fileConfig // WithFiles (files.go)
	lowResource          bool        // WithLowResource
}

func defaultOptions() options {
	return options{
		keepAlive:      30 * time.Second,
		sessionExpiry:  5 * time.Minute,
		connectTimeout: 10 * time.Second,
		minBackoff:     250 * time.Millisecond,
		maxBackoff:     30 * time.Second,
		concurrency:    8,
		maxBatch:       1000,
		maxInFlight:    32,
		log:            slog.New(slog.DiscardHandler),
	}
}

// WithCredentials sets the device id and password when the endpoint URL
// does not carry them.
func WithCredentials(id, password string) Option {
	return func(o *options) error {
		if err := protocol.ValidID(id); err != nil {
			return err
		}
		o.id, o.secret = id, password
		return nil
	}
}

// WithCAFile trusts the PEM certificates in path for mqtts:// endpoints
// (for a platform with a self-signed or private CA).
func WithCAFile(path string) Option {
	return func(o *options) error {
		pem, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("CA file %s holds no PEM certificate", path)
		}
		if o.tls == nil {
			o.tls = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.tls.RootCAs = pool
		return nil
	}
}

// WithTLSConfig sets the TLS configuration for mqtts:// endpoints.
func WithTLSConfig(c *tls.Config) Option {
	return func(o *options) error {
		if c == nil {
			return errors.New("nil TLS config")
		}
		o.tls = c.Clone()
		return nil
	}
}

// WithKeepAlive sets the MQTT keep-alive interval (default 30s).
func WithKeepAlive(d time.Duration) Option {
	return func(o *options) error {
		if d < time.Second || d > 18*time.Hour {
			return errors.New("keep-alive must be between 1s and 18h")
		}
		o.keepAlive = d
		return nil
	}
}

// WithRetryOnFailedConnect makes Connect return at once and keep trying
// in the background, like nats.go's RetryOnFailedConnect: a device that
// boots with no network runs as usual, its readings and events wait in the
// outbox, and Publish waits for the connection (within its context). Each
// failed attempt is logged at Warn; refused credentials end the client
// (Done, Err), as without the option.
func WithRetryOnFailedConnect() Option {
	return func(o *options) error {
		o.retryOnFailedConnect = true
		return nil
	}
}

// WithReconnectBackoff bounds the wait between connection attempts,
// 0 < min <= max; the wait doubles from min to max while attempts fail,
// with jitter (default 250ms to 30s). The first attempt after a working
// connection is lost waits a random moment up to min, so that a fleet
// that lost the platform together comes back spread out.
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(o *options) error {
		if min <= 0 || max < min {
			return fmt.Errorf("reconnect backoff needs 0 < min <= max, not %s and %s", min, max)
		}
		o.minBackoff, o.maxBackoff = min, max
		return nil
	}
}

// WithConnectTimeout bounds one connection attempt (default 10s).
func WithConnectTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return errors.New("connect timeout must be positive")
		}
		o.connectTimeout = d
		return nil
	}
}

// WithConcurrency sets how many RPC handlers may run at once (default 8).
// Further requests wait for a free slot.
func WithConcurrency(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return errors.New("concurrency must be at least 1")
		}
		o.concurrency = n
		return nil
	}
}

// WithMaxBatch sets how many readings Publish packs into one message
// (default 1000, at most protocol.MaxReadingsPerMessage).
func WithMaxBatch(n int) Option {
	return func(o *options) error {
		if n < 1 || n > protocol.MaxReadingsPerMessage {
			return fmt.Errorf("max batch must be between 1 and %d", protocol.MaxReadingsPerMessage)
		}
		o.maxBatch = n
		return nil
	}
}

// WithMaxInFlight sets how many telemetry messages Publish keeps waiting
// for their acknowledgement at once (default 32; 1 sends one at a time).
// The platform's Receive Maximum, announced when connecting, caps it too.
func WithMaxInFlight(n int) Option {
	return func(o *options) error {
		if n < 1 || n > 65535 {
			return errors.New("max in flight must be between 1 and 65535")
		}
		o.maxInFlight = n
		return nil
	}
}

// WithReset sets the function behind the built-in "reset" RPC. It runs
// after the caller has been answered. Without it, "reset" answers with a
// not_supported error.
func WithReset(fn func(ctx context.Context) error) Option {
	return func(o *options) error {
		o.reset = fn
		return nil
	}
}

// WithErrorHandler receives the platform's error replies (for example a
// reading it rejected). They are also logged.
func WithErrorHandler(fn func(protocol.ErrorReply)) Option {
	return func(o *options) error {
		o.onError = fn
		return nil
	}
}

// WithConnectionHandlers sets functions called when the connection comes
// up and goes down. They must not block.
func WithConnectionHandlers(up, down func()) Option {
	return func(o *options) error {
		o.onUp, o.onDown = up, down
		return nil
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l != nil {
			o.log = l
		}
		return nil
	}
}

// WithOutbox keeps readings waiting for the platform in a durable outbox in
// dir (created if needed): a reading is written to the outbox before Add
// returns and leaves it only once the platform has acknowledged (committed)
// it, so readings survive the device process being killed and the network
// being down for hours. A directory serves one client at a time: it is
// locked while the client is open, and New fails for a second one, in this
// process or another.
//
// Without WithOutbox, WithMemoryOutbox or WithOutboxQueue, the client uses
// a durable outbox in $OUTPOST_OUTBOX_DIR/{device id} when that is set, or
// else in a state directory, never in a cache that may be purged:
// $STATE_DIRECTORY/outbox/{device id} (set by systemd's StateDirectory=),
// $XDG_STATE_HOME/outpost/outbox/{device id}, or
// ~/.local/state/outpost/outbox/{device id}. When none of them can be
// found (no $HOME, as under some service managers), New fails and asks for
// WithOutbox. An outbox left in the user's cache directory by an earlier
// version is moved to the new place.
func WithOutbox(dir string) Option {
	return func(o *options) error {
		if dir == "" {
			return errors.New("outbox directory is empty")
		}
		o.outboxDir, o.outboxMem, o.outboxQueue = dir, false, nil
		return nil
	}
}

// WithMemoryOutbox keeps waiting readings in memory only: they are lost when
// the process ends. Meant for tests and for devices that cannot write.
func WithMemoryOutbox() Option {
	return func(o *options) error {
		o.outboxDir, o.outboxMem, o.outboxQueue = "", true, nil
		return nil
	}
}

// WithOutboxQueue plugs in a queue of one's own (for example an outbox.Outbox
// over a custom outbox.Store). The client closes it on Close.
func WithOutboxQueue(q outbox.Queue) Option {
	return func(o *options) error {
		if q == nil {
			return errors.New("nil outbox queue")
		}
		o.outboxDir, o.outboxMem, o.outboxQueue = "", false, q
		return nil
	}
}

// WithOutboxOptions tunes the built-in outbox (a value out of range makes
// New fail): its bound (outbox.WithCapacity,
// default 500,000 readings; outbox.WithMaxBytes), what happens when it is
// full (default: Add fails with ErrOutboxFull; outbox.WithDropOldest drops
// the oldest readings instead) and how often it syncs to disk
// (outbox.WithSync, default every second; writes reach the operating system
// before Add returns either way).
func WithOutboxOptions(opts ...outbox.Option) Option {
	return func(o *options) error {
		o.outboxOpts = append(o.outboxOpts, opts...)
		return nil
	}
}

// WithAutoPublish publishes waiting readings every interval while connected
// (and at once after each reconnect), so Add alone is enough. Publish may
// still be called to flush at a moment of one's choosing.
func WithAutoPublish(interval time.Duration) Option {
	return func(o *options) error {
		if interval <= 0 {
			return errors.New("auto-publish interval must be positive")
		}
		o.autoPublish = interval
		return nil
	}
}
