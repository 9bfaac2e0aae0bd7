//go:build race

package bench_test

// raceEnabled: the race detector's own memory and slowness; connection
// tests use fewer devices under it.
const raceEnabled = true
