package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// TestBackupAndRestore covers the backup of issue 12 item 18: outpost
// backup copies the database of a running platform, and a platform
// started on the copy (the restore documented in docs/architecture.md)
// has the devices, their credentials and their readings.
func TestBackupAndRestore(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "pump")
	c, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)), device.WithMemoryOutbox())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 100; i++ {
		if err := c.Add("level", float64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "outpost-backup.db")
	var stdout, stderr syncBuf
	if err := run(ctx, []string{"backup", "--data", p.DataDir(), out}, &stdout, &stderr); err != nil {
		t.Fatalf("backup: %v (%s)", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "1 devices, 100 readings, integrity ok") {
		t.Fatalf("backup output %q", stdout.String())
	}
	if err := run(ctx, []string{"backup", "--data", p.DataDir(), out}, &stdout, &stderr); err == nil {
		t.Fatal("backup overwrote an existing file")
	}
	if err := run(ctx, []string{"backup", "--data", p.DataDir()}, &stdout, &stderr); err == nil {
		t.Fatal("backup without a file")
	}

	// Restore into a fresh data directory: the copy and the admin token.
	restored := t.TempDir()
	if err := os.Rename(out, filepath.Join(restored, "outpost.db")); err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(p.DataDir(), "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(restored, "admin-token"), tok, 0o600); err != nil {
		t.Fatal(err)
	}
	c.Close()
	p.Server.Close()

	q := outposttest.Start(t, func(c *server.Config) { c.DataDir = restored })
	var got struct {
		Readings []struct{ Feed string } `json:"readings"`
	}
	if st := q.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=level", nil, &got); st != 200 || len(got.Readings) != 100 {
		t.Fatalf("restored telemetry: status %d, %d readings", st, len(got.Readings))
	}
	// The device's credentials came along: it connects to the restored
	// platform with the password it had.
	c2, err := device.New("mqtt://"+d.ID+":"+d.Password+"@"+q.MQTTAddr(), device.WithLogger(outposttest.Logger(t)), device.WithMemoryOutbox())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Connect(ctx); err != nil {
		t.Fatalf("device on the restored platform: %v", err)
	}
}
