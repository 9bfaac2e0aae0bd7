package device_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// roleEnv makes the test binary play another process: "open-outbox" opens
// the outbox in $OUTPOST_TEST_OUTBOX and reports the error.
const roleEnv = "OUTPOST_DEVICE_TEST_ROLE"

// Every goroutine the SDK (and the in-process platform) starts must be gone
// once the tests have closed what they opened.
func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "open-outbox" {
		c, err := device.New("mqtt://d-lock:secret@127.0.0.1:1", device.WithOutbox(os.Getenv("OUTPOST_TEST_OUTBOX")))
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		c.Close()
		os.Exit(0)
	}
	outposttest.Main(m)
}
