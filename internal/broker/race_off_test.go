//go:build !race

package broker_test

// raceEnabled: the race detector makes frames larger.
const raceEnabled = false
