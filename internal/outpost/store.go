package outpost

import (
	"context"
	"io"
	"time"
)

// The store contracts the platform needs of a storage engine. Each is
// small and names one concern; Store composes them for the wiring, which
// opens one engine and hands each part of the platform the piece it uses.
// An engine proves it satisfies them at compile time (var _ outpost.Store
// = (*DB)(nil)) and at run time with the conformance suite in
// internal/outpost/storetest.

// PresenceStore records which devices hold a live session. In a store
// that several platform replicas share, a device's online state belongs
// to the replica that recorded it (the engine's replica name, empty for a
// single node), so that one replica's start or disconnects never mark
// offline a device another replica serves.
type PresenceStore interface {
	// SetPresence records a presence change of a device seen by this
	// replica. Online makes the device online and this replica its owner;
	// offline takes effect only while this replica owns it (a device that
	// moved to another replica stays online). LastSeen only grows. An
	// unknown device is ignored.
	SetPresence(ctx context.Context, id string, online bool, lastSeen time.Time) error
	// SetPresences records the presence of several devices at once, each
	// as SetPresence would; an unknown id is skipped.
	SetPresences(ctx context.Context, ps []Presence) error
	// ResetPresence marks offline every device this replica recorded
	// online, keeping LastSeen. A platform calls it at start, when none of
	// its sessions can have survived; on a single node that is every
	// device.
	ResetPresence(ctx context.Context) error
}

// RetentionStore forgets what the platform keeps only for a while. Each
// method returns how many rows (or, for readings, readings) it removed.
type RetentionStore interface {
	// PruneBatches forgets the ids of telemetry batches received before
	// before; a batch redelivered after that is stored again. A device
	// redelivers only what its outbox still holds, so ids older than any
	// outbox holds data back may go.
	PruneBatches(ctx context.Context, before time.Time) (int64, error)
	// PurgeFinished removes down-queue rows that finished before before:
	// calls that succeeded, failed, timed out or were cancelled, messages
	// that expired, and other messages the device acknowledged. Waiting
	// and in-flight rows are never touched.
	PurgeFinished(ctx context.Context, before time.Time) (int64, error)
	// PruneReadings removes readings whose timestamp is before before. It
	// never removes a reading at or after before. An engine that keeps
	// readings in time partitions may remove whole partitions only: it
	// then keeps the readings of the partition that holds before (at most
	// one partition span, a day, older than before).
	PruneReadings(ctx context.Context, before time.Time) (int64, error)
}

// HealthStore answers the platform's liveness and readiness probes.
type HealthStore interface {
	// Ping checks that the store answers a read.
	Ping(ctx context.Context) error
	// CheckWrite proves the store works end to end: it commits a write and
	// reads it back. It fails while the store cannot be written (a full
	// disk, a database opened read-only, a primary that is down) and says
	// why.
	CheckWrite(ctx context.Context) error
}

// BackupInfo describes a backup a store wrote.
type BackupInfo struct {
	// Path is the backup file.
	Path string
	// Bytes is its size.
	Bytes int64
	// Devices and Readings count what it holds.
	Devices, Readings int64
	// Took is how long the copy and its check took.
	Took time.Duration
}

// BackupStore copies the store while the platform runs.
type BackupStore interface {
	// Backup writes a consistent, checked copy of the store to the file
	// dest, which must not exist. An engine whose backups are made with
	// its own tools (PostgreSQL: pg_dump, base backups and WAL archiving)
	// returns ENOTSUPPORTED, with a message that names them.
	Backup(ctx context.Context, dest string) (*BackupInfo, error)
}

// ReadingScanner streams readings without holding them all.
type ReadingScanner interface {
	// EachReading calls fn with each reading Readings would return for f,
	// in the same order, as it reads them, so a caller that writes each
	// one out holds none. It returns ENOTFOUND for an unknown device
	// (before calling fn), or the first error of fn.
	EachReading(ctx context.Context, f ReadingFilter, fn func(Reading) error) error
}

// Store is every store contract: what the wiring opens from --db and
// closes at the end. Parts of the platform take only the interface they
// use.
type Store interface {
	DeviceStore
	TelemetryStore
	ReadingScanner
	ModelStore
	QueueStore
	RetentionStore
	HealthStore
	BackupStore
	GatewayStore
	// Close releases the store; writes in progress must have finished.
	io.Closer
}
