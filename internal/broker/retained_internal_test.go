package broker

import (
	"context"
	"testing"
)

type nopHandler struct{}

func (nopHandler) DeviceConnected(string, any)                                 {}
func (nopHandler) DeviceDisconnected(string, any, string)                      {}
func (nopHandler) HandleMessage(context.Context, string, string, []byte) error { return nil }

type allow struct{}

func (allow) AuthenticateDevice(context.Context, string, string) error { return nil }

// Issue 16: with any message retained, mochi scans its topic tree on every
// SUBSCRIBE, recursively in 4 KiB frames, and the goroutine of every
// subscribing device grew to a 64 KiB stack. mochi retains its own $SYS
// values when it publishes them; the platform removes them, and retains
// nothing else.
func TestNothingRetained(t *testing.T) {
	b, err := New(Config{Addr: "127.0.0.1:0"}, allow{}, nopHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	if n := b.srv.Topics.Retained.Len(); n != 0 {
		t.Errorf("%d messages retained after start: %v", n, b.srv.Topics.Retained.GetAll())
	}
	if b.srv.Options.Capabilities.RetainAvailable != 0 {
		t.Error("mochi retains publishes")
	}
}
