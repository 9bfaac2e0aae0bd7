package device_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/device"
)

// Item 5: without WithOutbox the durable outbox lives in a state
// directory, never in a cache: $STATE_DIRECTORY (systemd's StateDirectory=),
// then $XDG_STATE_HOME, then ~/.local/state. With none of them, New fails
// and names the option to use.
func TestDefaultOutboxDirectory(t *testing.T) {
	const id = "d-state"
	url := "mqtt://" + id + ":secret@127.0.0.1:1"
	for _, tc := range []struct {
		name      string
		env       map[string]string // "" unsets
		want      string            // relative to the temporary root
		wantError string
	}{
		{name: "systemd", env: map[string]string{"STATE_DIRECTORY": "{root}/svc:{root}/other", "XDG_STATE_HOME": "{root}/xdg", "HOME": "{root}/home"}, want: "svc/outbox/" + id},
		{name: "xdg", env: map[string]string{"XDG_STATE_HOME": "{root}/xdg", "HOME": "{root}/home"}, want: "xdg/outpost/outbox/" + id},
		{name: "home", env: map[string]string{"HOME": "{root}/home"}, want: "home/.local/state/outpost/outbox/" + id},
		{name: "relative xdg is ignored", env: map[string]string{"XDG_STATE_HOME": "xdg", "HOME": "{root}/home"}, want: "home/.local/state/outpost/outbox/" + id},
		{name: "nothing", env: map[string]string{}, wantError: "WithOutbox"},
		{name: "explicit base", env: map[string]string{"OUTPOST_OUTBOX_DIR": "{root}/base", "HOME": "{root}/home"}, want: "base/" + id},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, k := range []string{"OUTPOST_OUTBOX_DIR", "STATE_DIRECTORY", "XDG_STATE_HOME", "HOME", "XDG_CACHE_HOME"} {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			for k, v := range tc.env {
				t.Setenv(k, strings.ReplaceAll(v, "{root}", root))
			}
			c, err := device.New(url)
			if tc.wantError != "" {
				if err == nil {
					c.Close()
					t.Fatalf("New succeeded with no directory for the outbox")
				}
				if !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("New = %q, want it to name %s", err, tc.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Add("f", 1); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			segs, _ := filepath.Glob(filepath.Join(root, tc.want, "*.seg"))
			if len(segs) == 0 {
				var all []string
				filepath.WalkDir(root, func(p string, _ os.DirEntry, _ error) error {
					all = append(all, strings.TrimPrefix(p, root))
					return nil
				})
				t.Fatalf("no outbox in %s; the tree holds %v", tc.want, all)
			}
		})
	}
}

// Item 5: a directory is locked while a client uses it; a second client,
// in this process or another, gets a clear error instead of corrupting it.
func TestOutboxDirectoryLocked(t *testing.T) {
	dir := t.TempDir()
	url := "mqtt://d-lock:secret@127.0.0.1:1"
	c, err := device.New(url, device.WithOutbox(dir))
	if err != nil {
		t.Fatal(err)
	}
	c2, err := device.New(url, device.WithOutbox(dir))
	if err == nil {
		c2.Close()
		c.Close()
		t.Fatal("a second client opened the outbox directory in use")
	}
	if !strings.Contains(err.Error(), "in use") {
		t.Errorf("second New = %q, want it to say the directory is in use", err)
	}

	// Another process.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=open-outbox", "OUTPOST_TEST_OUTBOX="+dir)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Errorf("another process opening the directory: %v, output %q; want it refused as in use", err, out)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Free again once closed.
	c3, err := device.New(url, device.WithOutbox(dir))
	if err != nil {
		t.Fatalf("New after the first client closed: %v", err)
	}
	c3.Close()
}

// Item 5: an outbox that an earlier version left in the user's cache
// directory moves to the state directory with its readings.
func TestOutboxMovedOutOfCache(t *testing.T) {
	home := t.TempDir()
	for _, k := range []string{"OUTPOST_OUTBOX_DIR", "STATE_DIRECTORY", "XDG_STATE_HOME", "XDG_CACHE_HOME"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	t.Setenv("HOME", home)
	url := "mqtt://d-old:secret@127.0.0.1:1"
	old := filepath.Join(home, ".cache", "outpost", "outbox", "d-old")
	c, err := device.New(url, device.WithOutbox(old))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Add("f", 1); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c, err = device.New(url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if want := filepath.Join(home, ".local", "state", "outpost", "outbox", "d-old"); c.OutboxDir() != want {
		t.Errorf("outbox in %s, want %s", c.OutboxDir(), want)
	}
	if c.Pending() != 1 {
		t.Fatalf("%d readings pending after the move, want 1", c.Pending())
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("old outbox still there: %v", err)
	}
}
