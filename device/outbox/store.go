package outbox

import (
	"errors"
	"sync"
)

// Store is the persistence layer under an Outbox: a durable, append-only log
// of opaque records. The Outbox gives every record its meaning; a Store only
// keeps the bytes, in order.
//
// An Outbox calls Load once, then Append, Sync, Checkpoint and Size from
// under its own lock, except Sync, which a background flusher may call at
// any time. Implementations must therefore make Sync safe to call
// concurrently with the others.
type Store interface {
	// Load calls fn with every intact record in log order. The record slice
	// may be reused after fn returns. Damaged data (a torn tail after a power
	// cut, a corrupt record in the middle) is skipped and described in the
	// returned Damage; it is never an error. Load returns an error only when
	// the log cannot be read at all or when fn returns one.
	Load(fn func(rec []byte) error) (Damage, error)
	// Append adds records at the end of the log. It returns once they have
	// been handed to the operating system (a write system call), so they
	// survive the process being killed; surviving a power cut needs Sync.
	Append(recs ...[]byte) error
	// Sync makes everything appended so far durable (fsync).
	Sync() error
	// Checkpoint replaces the whole log with the records that snapshot
	// writes through add, atomically: after a crash at any point, Load
	// returns either the old log or the new one. Later appends follow the
	// snapshot.
	Checkpoint(snapshot func(add func(rec []byte) error) error) error
	// Size returns the bytes the log occupies; the Outbox compacts it with a
	// Checkpoint when it grows well beyond the live data.
	Size() int64
	// Close syncs and releases the log.
	Close() error
}

// Damage describes what Load found damaged and skipped.
type Damage struct {
	// Regions is the number of damaged regions skipped (each may have held
	// one or several records).
	Regions int
	// Bytes is the number of bytes skipped or truncated.
	Bytes int64
	// Err describes every region; nil when the log was intact.
	Err error
}

func (d *Damage) add(bytes int64, err error) {
	d.Regions++
	d.Bytes += bytes
	d.Err = errors.Join(d.Err, err)
}

// MemStore is a Store in memory: nothing survives the process, but a
// MemStore survives the Outbox on top of it, so reopening an Outbox on the
// same MemStore behaves like a restart. It suits tests and devices that do
// not need durability.
type MemStore struct {
	mu   sync.Mutex
	recs [][]byte
	size int64
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{} }

// Load implements Store.
func (m *MemStore) Load(fn func(rec []byte) error) (Damage, error) {
	m.mu.Lock()
	recs := m.recs[:len(m.recs):len(m.recs)]
	m.mu.Unlock()
	for _, r := range recs {
		if err := fn(r); err != nil {
			return Damage{}, err
		}
	}
	return Damage{}, nil
}

// Append implements Store. It copies the records.
func (m *MemStore) Append(recs ...[]byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range recs {
		m.recs = append(m.recs, append([]byte(nil), r...))
		m.size += int64(len(r)) + frameHeader
	}
	return nil
}

// Sync implements Store; it does nothing.
func (m *MemStore) Sync() error { return nil }

// Checkpoint implements Store.
func (m *MemStore) Checkpoint(snapshot func(add func(rec []byte) error) error) error {
	var recs [][]byte
	var size int64
	err := snapshot(func(r []byte) error {
		recs = append(recs, append([]byte(nil), r...))
		size += int64(len(r)) + frameHeader
		return nil
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.recs, m.size = recs, size
	m.mu.Unlock()
	return nil
}

// Size implements Store. It counts what the records would take in a
// FileStore, so that compaction behaves the same on both.
func (m *MemStore) Size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.size
}

// Records returns the number of records held, for tests and diagnostics.
func (m *MemStore) Records() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}

// Close implements Store. The records stay, so a new Outbox can be opened on
// the same MemStore.
func (m *MemStore) Close() error { return nil }
