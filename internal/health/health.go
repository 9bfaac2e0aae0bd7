// Package health answers the platform's liveness and readiness checks
// (/healthz and /readyz) and logs each change of readiness once, with its
// cause.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
)

// Store is the store's side of health (outpost.HealthStore).
type Store interface {
	// Ping checks that the store answers.
	Ping(ctx context.Context) error
	// CheckWrite checks that a write commits and reads back.
	CheckWrite(ctx context.Context) error
}

// Check is one more readiness check (a listener that accepts
// connections, …); nil means ready.
type Check func(ctx context.Context) error

// Checker is the platform's health. It is safe for concurrent use.
type Checker struct {
	store   Store
	dataDir string
	checks  []Check
	log     *slog.Logger

	mu   sync.Mutex
	last string // the last readiness failure, to log changes only
}

// New returns a checker of store and checks; dataDir, when not empty, is
// where a failure looks for a full disk, to say so.
func New(store Store, dataDir string, log *slog.Logger, checks ...Check) *Checker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Checker{store: store, dataDir: dataDir, checks: checks, log: log}
}

// Health is liveness: the process serves and its store answers.
func (c *Checker) Health(ctx context.Context) error { return c.store.Ping(ctx) }

// Ready is readiness: a write to the store commits and reads back, and
// every check passes. Changes are logged, with the cause, once each.
func (c *Checker) Ready(ctx context.Context) error {
	var errs []error
	if err := c.store.CheckWrite(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, check := range c.checks {
		if err := check(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 && c.dataDir != "" {
		if free, _, ok := DiskSpace(c.dataDir); ok && free < 1<<20 {
			errs = append(errs, fmt.Errorf("data directory %s: %d bytes free", c.dataDir, free))
		}
	}
	err := errors.Join(errs...)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	c.mu.Lock()
	changed := msg != c.last
	c.last = msg
	c.mu.Unlock()
	if changed && err != nil {
		c.log.Error("not ready", "error", err)
	} else if changed {
		c.log.Info("ready again")
	}
	return err
}
