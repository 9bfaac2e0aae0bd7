package ota_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// roleEnv makes the test binary a device process (see runDevice), so that
// a test can kill it with SIGKILL and start it again on the same
// directory.
const roleEnv = "OUTPOST_OTA_ROLE"

func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "device" {
		os.Exit(runDevice())
	}
	outposttest.Main(m)
}

// runDevice is a device process: OUTPOST_OTA_URL, OUTPOST_OTA_DIR,
// OUTPOST_OTA_METHOD, OUTPOST_OTA_RATE (bytes/s over MQTT) and
// OUTPOST_OTA_WINDOW configure it. It prints "ready" once connected and
// "file NAME" when a file is complete, and runs until killed or SIGTERM.
func runDevice() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rate, _ := strconv.ParseInt(os.Getenv("OUTPOST_OTA_RATE"), 10, 64)
	fopts := []device.FileOption{device.FileMethods(os.Getenv("OUTPOST_OTA_METHOD")), device.FileRate(rate),
		device.FileChunkSize(16 << 10), device.FileTimeout(2 * time.Second),
		device.FileHandler(func(_ context.Context, e device.FileEvent) { fmt.Printf("file %s %s\n", e.State, e.Name) })}
	if w, _ := strconv.Atoi(os.Getenv("OUTPOST_OTA_WINDOW")); w > 0 {
		fopts = append(fopts, device.FileWindow(w))
	}
	c, err := device.New(os.Getenv("OUTPOST_OTA_URL"), device.WithMemoryOutbox(), device.WithFiles(os.Getenv("OUTPOST_OTA_DIR"), fopts...),
		device.WithReconnectBackoff(50*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		fmt.Fprintln(os.Stderr, "device:", err)
		return 1
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Connect(cctx); err != nil {
		fmt.Fprintln(os.Stderr, "device:", err)
		return 1
	}
	fmt.Println("ready")
	<-ctx.Done()
	return 0
}
