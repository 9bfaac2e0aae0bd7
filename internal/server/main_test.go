package server_test

import (
	"github.com/outpost-iot/outpost/internal/outposttest"
	"testing"
)

// Every goroutine the platform (and the SDK clients of the tests) starts must be gone
// once the tests have closed what they opened.
func TestMain(m *testing.M) {
	outposttest.Main(m)
}
