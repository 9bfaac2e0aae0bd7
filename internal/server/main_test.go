package server_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine the platform (and the SDK clients of the tests) starts must be gone
// once the tests have closed what they opened.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
