package outbox

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/outpost-iot/outpost/protocol"
)

// Defaults of an Outbox.
const (
	// DefaultCapacity is the number of pending readings an Outbox holds
	// unless WithCapacity says otherwise.
	DefaultCapacity = 500_000
	// DefaultMessageReadings is the most readings sealed into one
	// telemetry message unless WithMessageLimits says otherwise.
	DefaultMessageReadings = 1000
	// DefaultMessageBytes is the largest telemetry payload sealed unless
	// WithMessageLimits says otherwise: what the platform accepts.
	DefaultMessageBytes = protocol.MaxMessageBytes
	// DefaultCompactThreshold is the store size below which an Outbox never
	// compacts.
	DefaultCompactThreshold = 8 << 20
	// DefaultSync is the default fsync policy: once a second.
	DefaultSync = SyncPolicy(time.Second)
)

// SyncPolicy says when an Outbox forces its store to stable storage
// (fsync). Whatever the policy, every Add returns only after its record was
// handed to the operating system, so killing the process loses nothing; the
// policy decides how much a power cut can lose. Close always syncs.
type SyncPolicy time.Duration

const (
	// SyncAlways syncs after every write: nothing is lost on power cut,
	// at the price of an fsync per Add.
	SyncAlways SyncPolicy = 0
	// SyncNever leaves syncing to the operating system (and Close).
	SyncNever SyncPolicy = -1
)

// SyncEvery syncs at most once per interval d, in the background, when
// something was written. A power cut loses at most about d of data.
func SyncEvery(d time.Duration) SyncPolicy {
	if d <= 0 {
		return SyncAlways
	}
	return SyncPolicy(d)
}

// Option configures an Outbox. An option given a value out of its range
// makes Open fail, naming it; no value is silently replaced.
type Option func(*options) error

type options struct {
	capacity    int
	maxBytes    int64
	dropOldest  bool
	sync        SyncPolicy
	msgReadings int
	msgBytes    int
	compactMin  int64
	logger      *slog.Logger
	startSeq    uint64
}

func defaultOptions() options {
	return options{
		capacity:    DefaultCapacity,
		sync:        DefaultSync,
		msgReadings: DefaultMessageReadings,
		msgBytes:    DefaultMessageBytes,
		compactMin:  DefaultCompactThreshold,
		logger:      slog.New(slog.DiscardHandler),
	}
}

// WithCapacity bounds the pending readings (open and sealed, not yet
// acknowledged) to n, at least 1; default DefaultCapacity.
func WithCapacity(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("capacity must be at least 1, not %d", n)
		}
		o.capacity = n
		return nil
	}
}

// WithMaxBytes bounds the pending payload bytes (reading encodings and
// message payloads) to n; 0 means unbounded, the default.
func WithMaxBytes(n int64) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("max bytes must not be negative, not %d", n)
		}
		o.maxBytes = n
		return nil
	}
}

// WithDropOldest makes a full Outbox make room for new data by dropping the
// oldest pending messages and readings (counted in Stats) instead of
// refusing the new data with ErrFull.
func WithDropOldest() Option {
	return func(o *options) error {
		o.dropOldest = true
		return nil
	}
}

// WithSync sets the fsync policy: SyncAlways, SyncNever or SyncEvery(d);
// default DefaultSync.
func WithSync(p SyncPolicy) Option {
	return func(o *options) error {
		if p < SyncNever {
			return fmt.Errorf("sync policy %d is none of SyncAlways, SyncNever and SyncEvery(d)", p)
		}
		o.sync = p
		return nil
	}
}

// WithMessageLimits sets the most readings (at most
// protocol.MaxReadingsPerMessage) and the largest payload in bytes of a
// sealed telemetry message; defaults DefaultMessageReadings and
// DefaultMessageBytes. 0 leaves that limit at its default. A single
// reading larger than the byte limit still travels, alone. The limits
// apply when sealing; messages sealed before a restart keep the limits
// they were sealed with.
func WithMessageLimits(readings, bytes int) Option {
	return func(o *options) error {
		if readings < 0 || readings > protocol.MaxReadingsPerMessage {
			return fmt.Errorf("readings per message must be between 1 and %d (0: default), not %d", protocol.MaxReadingsPerMessage, readings)
		}
		if bytes < 0 {
			return fmt.Errorf("message bytes must be positive (0: default), not %d", bytes)
		}
		if readings > 0 {
			o.msgReadings = readings
		}
		if bytes > 0 {
			o.msgBytes = bytes
		}
		return nil
	}
}

// WithCompactThreshold sets the store size, at least 1, below which the
// Outbox never compacts (default DefaultCompactThreshold). Above it, the
// Outbox rewrites its live data and removes old segments once the store
// holds more than twice the live data.
func WithCompactThreshold(n int64) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("compact threshold must be at least 1, not %d", n)
		}
		o.compactMin = n
		return nil
	}
}

// WithLogger sets the logger for damaged data found on Open and for
// background failures; default (and nil) discards.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l != nil {
			o.logger = l
		}
		return nil
	}
}

// withStartSeq makes a new store number its first message seq (tests).
func withStartSeq(seq uint64) Option {
	return func(o *options) error {
		o.startSeq = seq
		return nil
	}
}
