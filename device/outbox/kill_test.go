package outbox_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"

	"github.com/outpost-iot/outpost/device/outbox"
)

// TestKill9 runs a process that adds readings and reports each one Add
// returned for, kills it with SIGKILL in the middle, and checks that a new
// Outbox on the same directory holds every reported reading, in order.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$")
	cmd.Env = append(os.Environ(), "OUTBOX_KILL_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const target = 20_000
	confirmed := -1
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		n, err := strconv.Atoi(sc.Text())
		if err != nil {
			continue // test framework output
		}
		confirmed = n
		if n >= target {
			break
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if confirmed < target {
		t.Fatalf("child reported only %d readings", confirmed)
	}

	ob := mustOpen(t, mustStore(t, dir))
	if ob.Recovery() != nil {
		t.Logf("recovery: %v", ob.Recovery()) // a kill cannot tear a write, but tolerate it
	}
	v := values(t, drain(t, ob))
	if len(v) <= confirmed || !slices.Equal(v, seq(len(v))) {
		t.Fatalf("after kill -9: %d readings (confirmed %d), in order: %v", len(v), confirmed+1, slices.Equal(v, seq(len(v))))
	}
}

// TestKill9Child is the process TestKill9 kills.
func TestKill9Child(t *testing.T) {
	dir := os.Getenv("OUTBOX_KILL_DIR")
	if dir == "" {
		t.Skip("run by TestKill9")
	}
	ob, err := outbox.OpenDir(dir, outbox.WithMessageLimits(100, 0))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if err := ob.AddReadings(reading(i)); err != nil {
			t.Fatal(err)
		}
		if i%250 == 0 {
			if err := ob.Seal(); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Println(i)
	}
}
