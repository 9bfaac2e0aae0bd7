// Command firmware is an Outpost device that updates itself over the air.
// Its "firmware" is its own binary: an update replaces the executable with
// the new build and re-executes it, and the platform counts the update a
// success only when the restarted process connects and reports the new
// version.
//
// Build two versions, upload the second, and order the update:
//
//	go build -ldflags "-X main.version=1.0.0" -o fwdemo ./examples/firmware
//	go build -ldflags "-X main.version=1.1.0" -o fwdemo-1.1.0 ./examples/firmware
//	export OUTPOST_FIRMWARE_KEY=$(outpost keys)
//	OUTPOST_DEVICE_URL=mqtt://ID:PASSWORD@127.0.0.1:1883 ./fwdemo &
//	outpost file upload fwdemo-1.1.0 --version 1.1.0      # prints the artifact id
//	outpost firmware update ID ARTIFACT --wait
//
// The device fetches the image (over MQTT chunks, or by URL with
// -method url), checks its SHA-256 and the platform's signature with the
// key in OUTPOST_FIRMWARE_KEY, installs it next to itself (keeping the
// old binary as NAME.previous), and restarts into it. Files and the
// update's record live in OUTPOST_FILES_DIR (default ./firmware-files).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/protocol"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "1.0.0"

func main() {
	method := flag.String("method", "mqtt", "how to fetch images: mqtt or url")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *method, os.Stdout, log); err != nil {
		fmt.Fprintln(os.Stderr, "firmware:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, method string, stdout io.Writer, log *slog.Logger) error {
	endpoint := os.Getenv("OUTPOST_DEVICE_URL")
	if endpoint == "" {
		return errors.New("set OUTPOST_DEVICE_URL to mqtt://ID:PASSWORD@HOST:PORT")
	}
	key, err := protocol.ParsePublicKey(os.Getenv("OUTPOST_FIRMWARE_KEY"))
	if err != nil {
		return fmt.Errorf("OUTPOST_FIRMWARE_KEY: %w (set it to what `outpost keys` prints)", err)
	}
	dir := os.Getenv("OUTPOST_FILES_DIR")
	if dir == "" {
		dir = "firmware-files"
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	c, err := device.New(endpoint,
		device.WithFiles(dir, device.FileMethods(method)),
		device.WithLogger(log),
		// The restart into the new binary: the same process, the new
		// program (file descriptors close on exec, so the platform sees
		// the old connection go).
		device.WithReset(func(context.Context) error {
			fmt.Fprintln(stdout, "restarting into the new version")
			return syscall.Exec(exe, os.Args, os.Environ())
		}))
	if err != nil {
		return err
	}
	defer c.Close()
	err = c.HandleFirmware(selfUpdate{exe: exe}, device.FirmwareKey(key),
		device.FirmwareStages(func(_ context.Context, s device.FirmwareStage, u device.FirmwareUpdate) bool {
			fmt.Fprintf(stdout, "update %s to %s: stage %s\n", u.Job, u.Version, s)
			return true // a device with work that must not be interrupted would say no here
		}))
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Connect(cctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "running version %s (pid %d)\n", version, os.Getpid())
	<-ctx.Done()
	return nil
}

// selfUpdate installs a new build of this program over its own binary.
type selfUpdate struct{ exe string }

func (s selfUpdate) Version() string { return version }

// Install copies the verified image next to the executable, makes it
// executable and renames it over the old one (atomically), keeping the
// old one as NAME.previous. The client restarts the device afterwards
// (WithReset).
func (s selfUpdate) Install(ctx context.Context, path string) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp := s.exe + ".new"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		os.Remove(tmp)
		return err
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		os.Remove(tmp)
		return err
	}
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := ctx.Err(); err != nil {
		os.Remove(tmp)
		return err // aborted
	}
	prev := s.exe + ".previous"
	os.Remove(prev)
	if err := os.Link(s.exe, prev); err != nil {
		return fmt.Errorf("keep the old binary: %w", err)
	}
	if err := os.Rename(tmp, s.exe); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(s.exe)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
