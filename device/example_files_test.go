package device_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/protocol"
)

// A device that takes files from the platform into a directory of its
// own.
func ExampleWithFiles() {
	f, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created, _ := f.CreateDevice(ctx, "kiosk-1")
	dir, _ := os.MkdirTemp("", "kiosk-files")
	defer os.RemoveAll(dir)

	// On the device: files land in dir; the handler hears of each.
	arrived := make(chan device.FileEvent, 1)
	c, err := device.New(created.URL, device.WithMemoryOutbox(), device.WithFiles(dir,
		device.FileHandler(func(_ context.Context, e device.FileEvent) { arrived <- e })))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.Connect(ctx); err != nil {
		log.Fatal(err)
	}

	// On the application side: upload once, send to the device.
	a, _ := f.UploadArtifact(ctx, strings.NewReader(`{"welcome":"hello"}`), -1, fleet.ArtifactMeta{Name: "screen.json"}, nil)
	f.SendFile(ctx, created.ID, a.ID, fleet.SendOptions{})

	e := <-arrived
	b, _ := os.ReadFile(filepath.Join(dir, e.Name))
	fmt.Println(e.State, e.Name, string(b))
	// Output: FILE_READY screen.json {"welcome":"hello"}
}

// firmware is a firmware handler for the example: it "installs" by
// remembering the image.
type firmware struct{ version string }

func (fw *firmware) Version() string { return fw.version }
func (fw *firmware) Install(ctx context.Context, path string) error {
	_, err := os.Stat(path) // a real device writes the image to its boot partition here
	return err
}

// A firmware update: the client checks the image's signature, installs
// it and restarts the device (WithReset); the platform counts the update
// a success once the device is back with the new version.
func ExampleClient_HandleFirmware() {
	f, stop := startPlatform()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	created, _ := f.CreateDevice(ctx, "gateway-3")
	dir, _ := os.MkdirTemp("", "gateway-files")
	defer os.RemoveAll(dir)
	key, _ := f.SigningKey(ctx) // what `outpost keys` prints, configured on the device
	pub, _ := protocol.ParsePublicKey(key)

	restart := make(chan struct{}, 1)
	start := func(version string) *device.Client {
		c, err := device.New(created.URL, device.WithMemoryOutbox(), device.WithFiles(dir),
			device.WithReset(func(context.Context) error { restart <- struct{}{}; return nil }))
		if err != nil {
			log.Fatal(err)
		}
		if err := c.HandleFirmware(&firmware{version}, device.FirmwareKey(pub)); err != nil {
			log.Fatal(err)
		}
		if err := c.Connect(ctx); err != nil {
			log.Fatal(err)
		}
		return c
	}
	c := start("1.0")
	for st, _ := f.Firmware(ctx, created.ID); st.Version != "1.0"; st, _ = f.Firmware(ctx, created.ID) {
		time.Sleep(10 * time.Millisecond) // the version report is on its way
	}

	img, _ := f.UploadArtifact(ctx, strings.NewReader("image bytes"), -1, fleet.ArtifactMeta{Name: "fw.bin", Version: "1.1"}, nil)
	job, _ := f.UpdateFirmware(ctx, created.ID, img.ID, fleet.UpdateOptions{})

	<-restart // the device restarts into 1.1: here, a new client
	c.Close()
	c = start("1.1")
	defer c.Close()

	job, _ = f.WaitFirmware(ctx, job.ID, nil)
	fmt.Println(job.FromVersion, "→", job.ReportedVersion, job.State)
	// Output: 1.0 → 1.1 SUCCESS
}
