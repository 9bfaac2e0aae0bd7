package outbox

import (
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

// Option configures an Outbox.
type Option func(*options)

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
// acknowledged); default DefaultCapacity. n <= 0 keeps the default.
func WithCapacity(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.capacity = n
		}
	}
}

// WithMaxBytes bounds the pending payload bytes (reading encodings and
// message payloads); default unbounded. n <= 0 means unbounded.
func WithMaxBytes(n int64) Option {
	return func(o *options) { o.maxBytes = max(n, 0) }
}

// WithDropOldest makes a full Outbox make room for new data by dropping the
// oldest pending messages and readings (counted in Stats) instead of
// refusing the new data with ErrFull.
func WithDropOldest() Option {
	return func(o *options) { o.dropOldest = true }
}

// WithSync sets the fsync policy; default DefaultSync.
func WithSync(p SyncPolicy) Option {
	return func(o *options) { o.sync = p }
}

// WithMessageLimits sets the most readings and the largest payload in bytes
// of a sealed telemetry message; defaults DefaultMessageReadings and
// DefaultMessageBytes. Values <= 0 keep the default. A single reading larger
// than the byte limit still travels, alone. The limits apply when sealing;
// messages sealed before a restart keep the limits they were sealed with.
func WithMessageLimits(readings, bytes int) Option {
	return func(o *options) {
		if readings > 0 {
			o.msgReadings = min(readings, protocol.MaxReadingsPerMessage)
		}
		if bytes > 0 {
			o.msgBytes = bytes
		}
	}
}

// WithCompactThreshold sets the store size below which the Outbox never
// compacts (default DefaultCompactThreshold). Above it, the Outbox rewrites
// its live data and removes old segments once the store holds more than
// twice the live data.
func WithCompactThreshold(n int64) Option {
	return func(o *options) {
		if n > 0 {
			o.compactMin = n
		}
	}
}

// WithLogger sets the logger for damaged data found on Open and for
// background failures; default discards.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// withStartSeq makes a new store number its first message seq (tests).
func withStartSeq(seq uint64) Option {
	return func(o *options) { o.startSeq = seq }
}
