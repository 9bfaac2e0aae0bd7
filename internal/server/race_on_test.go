//go:build race

package server_test

// raceEnabled: the race detector slows everything down some tenfold, so
// the heaviest tests do less.
const raceEnabled = true
