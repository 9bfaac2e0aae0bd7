package fleet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

func TestFileWireTypesMatchThePlatform(t *testing.T) {
	pair[outpost.Artifact, fleet.Artifact](t)
	pair[outpost.Transfer, fleet.Transfer](t)
	pair[outpost.FirmwareJob, fleet.FirmwareJob](t)
	pair[outpost.DeviceFiles, fleet.DeviceFiles](t)
	pair[outpost.FirmwareState, fleet.FirmwareState](t)
	pair[outpost.FileCommand, fleet.FileCommand](t)
}

type fw struct{ version string }

func (f fw) Version() string                             { return f.version }
func (f fw) Install(ctx context.Context, _ string) error { return nil }

// Upload, send, follow on the stream and in the device's file list, then
// update the firmware to SUCCESS, all through the fleet client.
func TestFilesAndFirmware(t *testing.T) {
	p := outposttest.Start(t)
	f := dial(t, p)
	ctx := testCtx(t)
	d, err := f.CreateDevice(ctx, "files")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		states []string
		lists  int
	)
	sub, err := f.Subscribe(ctx, fleet.StreamFilter{DeviceIDs: []string{d.ID}, Kinds: []string{fleet.KindTransfer, fleet.KindFiles, fleet.KindFirmware}}, func(e fleet.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch e.Kind {
		case fleet.KindTransfer:
			if tr, err := e.Transfer(); err == nil {
				states = append(states, tr.State)
			}
		case fleet.KindFiles:
			if _, err := e.DeviceFiles(); err == nil {
				lists++
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	dir := t.TempDir()
	restarted := make(chan struct{}, 1)
	c, err := device.New(d.URL, device.WithMemoryOutbox(), device.WithFiles(dir), device.WithLogger(outposttest.Logger(t)),
		device.WithReset(func(context.Context) error { restarted <- struct{}{}; return nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key, err := f.SigningKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := protocol.ParsePublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.HandleFirmware(fw{"1"}, device.FirmwareKey(pub)); err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}

	data := bytes.Repeat([]byte("0123456789abcdef"), 20_000)
	path := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(path, data, 0o600)
	var seen int64
	a, err := f.UploadFile(ctx, path, fleet.ArtifactMeta{}, func(sent, total int64) { seen = sent })
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if a.Name != "notes.txt" || a.Size != int64(len(data)) || a.SHA256 != hex.EncodeToString(sum[:]) || seen != a.Size {
		t.Fatalf("artifact %+v, progress %d", a, seen)
	}
	tr, err := f.SendFile(ctx, d.ID, a.ID, fleet.SendOptions{Name: "notes-v2.txt"})
	if err != nil {
		t.Fatal(err)
	}
	fin, err := f.WaitTransfer(ctx, tr.ID, nil)
	if err != nil || fin.State != fleet.TransferReady || fin.Percent != 100 {
		t.Fatalf("transfer %+v, %v", fin, err)
	}
	outposttest.Eventually(t, 10*time.Second, "file listed", func() bool {
		fs, err := f.DeviceFiles(ctx, d.ID)
		return err == nil && len(fs.Files) == 1 && fs.Files[0].Name == "notes-v2.txt" && fs.Files[0].SHA256 == a.SHA256
	})
	outposttest.Eventually(t, 10*time.Second, "stream events", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) > 0 && states[len(states)-1] == fleet.TransferReady && lists > 0
	})
	if _, err := f.DeleteDeviceFile(ctx, d.ID, "../notes-v2.txt"); !errors.Is(err, fleet.ErrInvalid) {
		t.Errorf("delete ../x: %v", err)
	}
	if _, err := f.DeleteDeviceFile(ctx, d.ID, "notes-v2.txt"); err != nil {
		t.Fatal(err)
	}
	outposttest.Eventually(t, 10*time.Second, "file deleted", func() bool {
		fs, err := f.DeviceFiles(ctx, d.ID)
		return err == nil && len(fs.Files) == 0
	})
	if _, err := os.Stat(filepath.Join(dir, "notes-v2.txt")); !os.IsNotExist(err) {
		t.Errorf("file still on the device: %v", err)
	}

	img, err := f.UploadArtifact(ctx, bytes.NewReader(data[:5000]), 5000, fleet.ArtifactMeta{Name: "fw.bin", Version: "2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteArtifact(ctx, a.ID); err != nil {
		t.Errorf("delete a delivered artifact: %v", err)
	}
	j, err := f.UpdateFirmware(ctx, d.ID, img.ID, fleet.UpdateOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if j.FromVersion != "1" || j.TargetVersion != "2" || j.TimeoutSeconds != 60 {
		t.Errorf("job %+v", j)
	}
	if _, err := f.UpdateFirmware(ctx, d.ID, img.ID, fleet.UpdateOptions{}); !errors.Is(err, fleet.ErrConflict) {
		t.Errorf("a second update while one runs: %v", err)
	}
	select {
	case <-restarted:
	case <-ctx.Done():
		t.Fatal("no restart")
	}
	c.Close()
	c2, err := device.New(d.URL, device.WithMemoryOutbox(), device.WithFiles(dir), device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.HandleFirmware(fw{"2"}, device.FirmwareKey(pub)); err != nil {
		t.Fatal(err)
	}
	if err := c2.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	done, err := f.WaitFirmware(ctx, j.ID, nil)
	if err != nil || done.State != fleet.FirmwareSuccess || done.ReportedVersion != "2" {
		t.Fatalf("update %+v, %v", done, err)
	}
	st, err := f.Firmware(ctx, d.ID)
	if err != nil || st.Version != "2" || st.Job == nil || st.Job.ID != j.ID {
		t.Errorf("firmware state %+v, %v", st, err)
	}
	if jobs, err := f.FirmwareJobs(ctx, d.ID); err != nil || len(jobs) != 1 {
		t.Errorf("jobs %v, %v", jobs, err)
	}
	if _, err := f.AbortFirmware(ctx, j.ID); !errors.Is(err, fleet.ErrConflict) {
		t.Errorf("abort a finished update: %v", err)
	}
}
