package device_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine the SDK (and the in-process platform) starts must be gone
// once the tests have closed what they opened.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
