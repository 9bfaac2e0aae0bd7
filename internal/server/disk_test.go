package server_test

// A full disk (issue 12, items 9 and 10): the platform starts on one,
// says what is wrong on /readyz while /healthz stays live, shows free
// space on /metrics, does not acknowledge what it cannot store, and
// recovers when space returns.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// smallDisk mounts a tmpfs of size bytes on a fresh directory and
// unmounts it when the test ends. It skips the test where mounting is not
// allowed (not root, no tmpfs).
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size)); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the file system is full and
// returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
	}
	// Whatever is left in partial blocks.
	for _, n := range []int{4096, 512, 1} {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	return path
}

func readyz(t *testing.T, p *outposttest.Platform, path string) (int, string) {
	t.Helper()
	st, b, err := api(p, "GET", path, "")
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return st, string(b)
}

// copyFiles copies the named files of dir into a new directory next to it
// (on the same file system), as they are: the image kill -9 leaves.
func copyFiles(t *testing.T, dir string, names ...string) string {
	t.Helper()
	dst := dir + "-crashed"
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatalf("copy %s: %v", n, err)
		}
		if err := os.WriteFile(filepath.Join(dst, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// reopen starts the platform again on data, on the same ports.
func reopen(t *testing.T, p *outposttest.Platform, data, mqtt, http string) {
	t.Helper()
	var err error
	for i := 0; ; i++ { // the old sockets may linger an instant
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var s *server.Server
		s, err = server.Open(ctx, server.Config{DataDir: data, MQTTAddr: mqtt, HTTPAddr: http, Logger: outposttest.Logger(t)})
		cancel()
		if err == nil {
			p.Server = s
			return
		}
		if i == 50 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("start on a full disk: %v", err)
}

// TestStartOnFullDisk covers issue 12 items 9 and 10. After a crash with
// the disk full, the platform could not start at all ("reset presence:
// database or disk is full"), and /healthz had said ok while every commit
// failed. Now it starts, /healthz (liveness) stays 200 while /readyz says
// what is wrong, free space shows on /metrics, telemetry is not
// acknowledged while nothing can be stored, and it recovers when space
// returns.
func TestStartOnFullDisk(t *testing.T) {
	t.Run("after a crash", func(t *testing.T) { testStartOnFullDisk(t, true) })
	t.Run("after a clean stop", func(t *testing.T) { testStartOnFullDisk(t, false) })
}

func testStartOnFullDisk(t *testing.T, crash bool) {
	dir := smallDisk(t, 8<<20)
	data := filepath.Join(dir, "data")
	p := outposttest.Start(t, func(c *server.Config) { c.DataDir = data })
	d := p.CreateDevice(t, "pump")
	if st, body := readyz(t, p, "/readyz"); st != 200 {
		t.Fatalf("readyz on a healthy platform: %d %s", st, body)
	}
	m := metricsText(t, p)
	if !strings.Contains(m, "outpost_data_dir_free_bytes") || !strings.Contains(m, "outpost_data_dir_size_bytes 8.388608e+06") {
		t.Fatalf("no free-space metrics for an 8 MiB data directory:\n%s", grepLines(m, "outpost_data_dir"))
	}
	// The device is online when the platform goes down.
	c := mustDial311(t, p, d)
	c.publish(t, topicOf(d.ID, "up", "telemetry"), `{"id":"b-0","r":[{"f":"t","v":0}]}`)
	outposttest.Eventually(t, 10*time.Second, "device online in the store", func() bool {
		var dev struct{ Online bool }
		p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
		return dev.Online
	})
	addr, httpAddr := p.MQTTAddr(), httpHostPort(p)
	if crash {
		// What kill -9 leaves: the database with its WAL and index, the
		// device still marked online.
		data = copyFiles(t, data, "outpost.db", "outpost.db-wal", "outpost.db-shm", "outpost.db.running", "admin-token")
	}
	c.Disconnect(0)
	if err := p.Server.Close(); err != nil {
		t.Fatal(err)
	}
	filler := fillDisk(t, dir)

	reopen(t, p, data, addr, httpAddr)
	if st, body := readyz(t, p, "/healthz"); st != 200 {
		t.Fatalf("liveness on a full disk: %d %s", st, body)
	}
	st, body := readyz(t, p, "/readyz")
	if st != 503 || !(strings.Contains(body, "full") || strings.Contains(body, "read-only")) {
		t.Fatalf("readyz on a full disk: %d %s, want 503 saying what is wrong", st, body)
	}
	t.Logf("readyz on a full disk: %s", body)
	var dev struct {
		Online bool `json:"online"`
	}
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev); st != 200 || dev.Online {
		t.Fatalf("device after the restart: status %d, online %v; want offline", st, dev.Online)
	}
	if got := readings(t, p, d.ID, ""); len(got.Readings) != 1 {
		t.Fatalf("readings on a full disk: %+v", got.Readings)
	}
	if m := metricsText(t, p); !strings.Contains(m, "outpost_data_dir_free_bytes 0") {
		t.Errorf("free space on a full disk:\n%s", grepLines(m, "outpost_data_dir_free_bytes"))
	}

	// Telemetry is not acknowledged while it cannot be stored.
	c = mustDial311(t, p, d)
	tok := c.Publish(topicOf(d.ID, "up", "telemetry"), 1, false, `{"id":"b-full","r":[{"f":"t","v":1}]}`)
	if tok.WaitTimeout(time.Second) && tok.Error() == nil {
		if got := readings(t, p, d.ID, ""); len(got.Readings) != 2 {
			t.Fatalf("telemetry acknowledged on a full disk but not stored")
		}
	}
	c.Disconnect(0)

	// Space comes back: after a crash the running platform recovers by
	// itself; a read-only start needs a restart, as /readyz said.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if !crash {
		if err := p.Server.Close(); err != nil {
			t.Fatal(err)
		}
		reopen(t, p, data, addr, httpAddr)
	}
	outposttest.Eventually(t, 20*time.Second, "ready once space returns", func() bool {
		st, _ := readyz(t, p, "/readyz")
		return st == 200
	})
	c = mustDial311(t, p, d)
	c.publish(t, topicOf(d.ID, "up", "telemetry"), `{"id":"b-after","r":[{"f":"t","v":2}]}`)
	got := readings(t, p, d.ID, "")
	if n := len(got.Readings); n < 2 || string(got.Readings[n-1].Value) != "2" {
		t.Fatalf("telemetry after space returned: %+v", got.Readings)
	}
}
