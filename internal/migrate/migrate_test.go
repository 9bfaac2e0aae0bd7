package migrate_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/internal/migrate"
)

// memoryEngine keeps the applied scripts in memory; fail makes the script
// with that text fail.
type memoryEngine struct {
	applied []string
	fail    string
	locked  bool
	locks   int
}

func (e *memoryEngine) Lock(context.Context) (func(), error) {
	if e.locked {
		return nil, errors.New("locked twice")
	}
	e.locked = true
	e.locks++
	return func() { e.locked = false }, nil
}

func (e *memoryEngine) Version(context.Context) (int, error) { return len(e.applied), nil }

func (e *memoryEngine) Apply(_ context.Context, v int, script string) error {
	if !e.locked {
		return errors.New("applied without the lock")
	}
	if v != len(e.applied)+1 {
		return errors.New("out of order")
	}
	if script == e.fail {
		return errors.New("syntax error")
	}
	e.applied = append(e.applied, script)
	return nil
}

func TestRun(t *testing.T) {
	ctx := context.Background()
	e := &memoryEngine{}
	res, err := migrate.Run(ctx, "mem", e, []string{"one", "two"})
	if err != nil || res != (migrate.Result{From: 0, To: 2}) || !slices.Equal(e.applied, []string{"one", "two"}) {
		t.Fatalf("first run: %+v, %v, applied %v", res, err, e.applied)
	}
	// A later binary adds a migration; only it runs.
	res, err = migrate.Run(ctx, "mem", e, []string{"one", "two", "three"})
	if err != nil || res != (migrate.Result{From: 2, To: 3}) || !slices.Equal(e.applied, []string{"one", "two", "three"}) {
		t.Fatalf("second run: %+v, %v, applied %v", res, err, e.applied)
	}
	// Nothing to do.
	if res, err = migrate.Run(ctx, "mem", e, []string{"one", "two", "three"}); err != nil || res != (migrate.Result{From: 3, To: 3}) {
		t.Fatalf("third run: %+v, %v", res, err)
	}
	if e.locked || e.locks != 3 {
		t.Errorf("lock held %v after %d runs", e.locked, e.locks)
	}
}

func TestRunStopsAtFailure(t *testing.T) {
	e := &memoryEngine{fail: "bad"}
	res, err := migrate.Run(context.Background(), "mem", e, []string{"one", "bad", "three"})
	if err == nil || !strings.Contains(err.Error(), "mem: migration 2: syntax error") {
		t.Fatalf("error %v", err)
	}
	if res != (migrate.Result{From: 0, To: 1}) || !slices.Equal(e.applied, []string{"one"}) || e.locked {
		t.Fatalf("after the failure: %+v, applied %v, locked %v", res, e.applied, e.locked)
	}
}

func TestRunRefusesNewerDatabase(t *testing.T) {
	e := &memoryEngine{applied: []string{"one", "two", "three"}}
	_, err := migrate.Run(context.Background(), "mem", e, []string{"one", "two"})
	if err == nil || !strings.Contains(err.Error(), "newer than this binary knows") {
		t.Fatalf("error %v", err)
	}
	if len(e.applied) != 3 {
		t.Errorf("applied %v", e.applied)
	}
}

func TestCheck(t *testing.T) {
	ctx := context.Background()
	version := func(v int) func(context.Context) (int, error) {
		return func(context.Context) (int, error) { return v, nil }
	}
	ms := []string{"one", "two"}
	if err := migrate.Check(ctx, "mem", version(2), ms); err != nil {
		t.Errorf("current: %v", err)
	}
	if err := migrate.Check(ctx, "mem", version(1), ms); err == nil || !strings.Contains(err.Error(), "needs migrating to 2") {
		t.Errorf("older: %v", err)
	}
	if err := migrate.Check(ctx, "mem", version(3), ms); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("newer: %v", err)
	}
}
