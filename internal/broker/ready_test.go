package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

type refuseAll struct{}

func (refuseAll) AuthenticateDevice(context.Context, string, string) error {
	return errors.New("no")
}

func (refuseAll) DeviceConnected(string, outpost.SessionID)            {}
func (refuseAll) DeviceDisconnected(string, outpost.SessionID, string) {}
func (refuseAll) HandleMessage(context.Context, string, string, []byte) error {
	return nil
}

// TestReadyReportsDeadListener covers the listener half of issue 12 item
// 9: when the accept loop of a listener ends, readiness says so (today
// /healthz kept saying ok while devices could never connect again).
func TestReadyReportsDeadListener(t *testing.T) {
	b, err := New(Config{Addr: "127.0.0.1:0"}, refuseAll{}, refuseAll{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	if err := b.Ready(); err != nil {
		t.Fatalf("ready after start: %v", err)
	}
	// The accept loop ends as on a fatal accept error: its socket goes.
	b.lns[0].l.Close()
	deadline := time.Now().Add(10 * time.Second)
	for b.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatal("readiness still ok 10s after the listener stopped accepting")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.Ready(); !strings.Contains(err.Error(), "mqtt listener mqtt") {
		t.Fatalf("ready error %q does not name the listener", err)
	}
	b.Close()
	if err := b.Ready(); err == nil {
		t.Fatal("ready after close")
	}
}
