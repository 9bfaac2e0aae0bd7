package registry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Credentials holds the secret hash of every device in memory, loaded
// once at start and kept current by every change this platform makes
// (create, rotate, delete). A login then costs one map lookup and one
// SHA-256 on the connection's own goroutine: no query, no lock shared with
// writers, and nothing deep that would grow the goroutine's stack for the
// rest of the connection's life. A reconnect storm of the whole fleet does
// not touch the database.
//
// The cache is authoritative: the platform is the only writer of its
// store (the data directory is locked), so an id the cache does not know
// is not a device. About 80 bytes per registered device.
//
// With several replicas on one store (Shared), another replica may create,
// rotate or delete a device: every check then reads the store.
type Credentials struct {
	// Shared makes every check read the device's hash from the store
	// given to Load instead of the cache.
	Shared bool

	mu    sync.RWMutex
	m     map[string][sha256.Size]byte
	store outpost.DeviceStore
}

// errWrongSecret and errUnknownDevice are why a login is refused.
var (
	errWrongSecret   = errors.New("wrong secret")
	errUnknownDevice = errors.New("no such device")
)

// Load reads every device's secret hash from the store.
func (c *Credentials) Load(ctx context.Context, store outpost.DeviceStore) error {
	c.mu.Lock()
	c.store = store
	c.mu.Unlock()
	if c.Shared {
		return nil
	}
	m := map[string][sha256.Size]byte{}
	err := store.EachSecretHash(ctx, func(id string, hash []byte) error {
		if len(hash) != sha256.Size {
			return fmt.Errorf("device %s: secret hash of %d bytes", id, len(hash))
		}
		m[id] = [sha256.Size]byte(hash)
		return nil
	})
	if err != nil {
		return fmt.Errorf("load device credentials: %w", err)
	}
	c.mu.Lock()
	c.m = m
	c.mu.Unlock()
	return nil
}

// set records a device's new secret hash (after the store has it).
func (c *Credentials) set(id string, hash []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string][sha256.Size]byte{}
	}
	c.m[id] = [sha256.Size]byte(hash)
}

// forget drops a deleted device.
func (c *Credentials) forget(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// Known reports whether id is a registered device: the same answer a
// login would get about the id (from the store when Shared). A store
// error counts as unknown.
func (c *Credentials) Known(ctx context.Context, id string) bool {
	c.mu.RLock()
	_, ok := c.m[id]
	store := c.store
	c.mu.RUnlock()
	if c.Shared && store != nil {
		h, err := store.SecretHash(ctx, id)
		return err == nil && len(h) == sha256.Size
	}
	return ok
}

// AuthenticateDevice implements the broker's Authenticator: nil if secret
// is the device's secret, in constant time for a known device.
func (c *Credentials) AuthenticateDevice(ctx context.Context, id, secret string) error {
	c.mu.RLock()
	want, ok := c.m[id]
	store := c.store
	c.mu.RUnlock()
	if c.Shared && store != nil {
		h, err := store.SecretHash(ctx, id)
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return errUnknownDevice
		} else if err != nil {
			return fmt.Errorf("read device credentials: %w", err)
		}
		if len(h) != sha256.Size {
			return errUnknownDevice
		}
		want, ok = [sha256.Size]byte(h), true
	}
	if !ok {
		return errUnknownDevice
	}
	got := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return errWrongSecret
	}
	return nil
}
