package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

type cliFW struct{ v string }

func (f cliFW) Version() string                     { return f.v }
func (cliFW) Install(context.Context, string) error { return nil }

// upload, list, send --wait, device files, rm, keys, firmware update
// --wait: the file and firmware commands against a real platform and an
// SDK device.
func TestFileAndFirmwareCommands(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "cli-files")
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, bytes.Repeat([]byte(`{"k":1}`), 10_000), 0o600)

	out, _, err := runCLI(t, p, "file", "upload", path)
	if err != nil {
		t.Fatal(err)
	}
	var a struct{ ID, Name, SHA256 string }
	if err := json.Unmarshal([]byte(out), &a); err != nil || a.Name != "config.json" {
		t.Fatalf("upload printed %q: %v", out, err)
	}
	if out, _, err := runCLI(t, p, "file", "list"); err != nil || !strings.Contains(out, a.ID) || !strings.Contains(out, "config.json") {
		t.Errorf("file list: %q %v", out, err)
	}

	stdout, _, err := runCLI(t, p, "keys")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := protocol.ParsePublicKey(strings.TrimSpace(stdout))
	if err != nil {
		t.Fatalf("keys printed %q: %v", stdout, err)
	}
	if out, _, err := runCLI(t, p, "keys", "--pem"); err != nil || !strings.Contains(out, "BEGIN PUBLIC KEY") {
		t.Errorf("keys --pem: %q %v", out, err)
	}

	dir := t.TempDir()
	restarted := make(chan struct{}, 1)
	c, err := device.New(d.URL, device.WithMemoryOutbox(), device.WithFiles(dir),
		device.WithReset(func(context.Context) error { restarted <- struct{}{}; return nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.HandleFirmware(cliFW{"1.0"}, device.FirmwareKey(pub)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}

	out, _, err = runCLI(t, p, "file", "send", "cli-files", a.ID, "--name", "settings.json", "--wait")
	if err != nil {
		t.Fatalf("send --wait: %v (%s)", err, out)
	}
	if !strings.Contains(out, `"FILE_READY"`) {
		t.Errorf("send --wait printed %q", out)
	}
	outposttest.Eventually(t, 10*time.Second, "file on the device", func() bool {
		out, _, err := runCLI(t, p, "file", "device", "cli-files")
		return err == nil && strings.Contains(out, "settings.json") && strings.Contains(out, a.SHA256)
	})
	if out, _, err := runCLI(t, p, "file", "transfers", "cli-files"); err != nil || !strings.Contains(out, "FILE_READY") {
		t.Errorf("transfers: %q %v", out, err)
	}
	if _, _, err := runCLI(t, p, "file", "rm", "cli-files", "../settings.json"); err == nil {
		t.Error("rm ../x accepted")
	}
	if _, _, err := runCLI(t, p, "file", "rm", "cli-files", "settings.json"); err != nil {
		t.Fatal(err)
	}
	outposttest.Eventually(t, 10*time.Second, "file deleted on the device", func() bool {
		_, err := os.Stat(filepath.Join(dir, "settings.json"))
		return os.IsNotExist(err)
	})

	fwPath := filepath.Join(t.TempDir(), "fw.bin")
	os.WriteFile(fwPath, bytes.Repeat([]byte{0xAA}, 3000), 0o600)
	out, _, err = runCLI(t, p, "file", "upload", fwPath, "--version", "1.1")
	if err != nil {
		t.Fatal(err)
	}
	var img struct{ ID string }
	json.Unmarshal([]byte(out), &img)
	done := make(chan error, 1)
	var updOut string
	go func() {
		var err error
		updOut, _, err = runCLI(t, p, "firmware", "update", "cli-files", img.ID, "--timeout", "1m", "--wait")
		done <- err
	}()
	select {
	case <-restarted:
	case <-ctx.Done():
		t.Fatal("the device was not restarted")
	}
	c.Close()
	c2, err := device.New(d.URL, device.WithMemoryOutbox(), device.WithFiles(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.HandleFirmware(cliFW{"1.1"}, device.FirmwareKey(pub))
	if err := c2.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || !strings.Contains(updOut, `"SUCCESS"`) {
		t.Fatalf("firmware update --wait: %v %q", err, updOut)
	}
	if out, _, err := runCLI(t, p, "firmware", "status", "cli-files"); err != nil || !strings.Contains(out, `"version": "1.1"`) {
		t.Errorf("firmware status: %q %v", out, err)
	}
	if out, _, err := runCLI(t, p, "firmware", "jobs", "cli-files"); err != nil || !strings.Contains(out, "SUCCESS") {
		t.Errorf("firmware jobs: %q %v", out, err)
	}
}
