package device_test

import (
	"github.com/outpost-iot/outpost/internal/outposttest"
	"testing"
)

// Every goroutine the SDK (and the in-process platform) starts must be gone
// once the tests have closed what they opened.
func TestMain(m *testing.M) {
	outposttest.Main(m)
}
