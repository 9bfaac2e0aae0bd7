package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

// Issue 16: devices are registered in bulk, from arguments and from a
// file of names, each request all or nothing.
func TestDeviceCreateMany(t *testing.T) {
	p := outposttest.Start(t)
	file := filepath.Join(t.TempDir(), "names")
	if err := os.WriteFile(file, []byte("pump-3\n\n  pump-4  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, p, "device", "create", "pump-1", "pump-2", "--names-from", file)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Devices []struct{ ID, Name, Password, URL string } `json:"devices"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("device create printed %q: %v", out, err)
	}
	var names []string
	for _, d := range got.Devices {
		if d.ID == "" || len(d.Password) < 30 || !strings.Contains(d.URL, d.ID+":"+d.Password+"@") {
			t.Errorf("device without credentials: %+v", d)
		}
		names = append(names, d.Name)
	}
	if strings.Join(names, ",") != "pump-1,pump-2,pump-3,pump-4" {
		t.Errorf("names %v, want pump-1…4 in order", names)
	}

	// A taken name fails the whole request: pump-5 is not registered.
	if _, _, err := runCLI(t, p, "device", "create", "pump-5", "pump-2"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("bulk create with a taken name: %v", err)
	}
	if _, _, err := runCLI(t, p, "device", "show", "pump-5"); err == nil {
		t.Error("pump-5 registered although its request failed")
	}
	if _, _, err := runCLI(t, p, "device", "create"); err == nil || !strings.Contains(err.Error(), "at least one NAME") {
		t.Errorf("device create without a name: %v", err)
	}
}
