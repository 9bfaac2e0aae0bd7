package broker

import (
	"context"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

type nopHandler struct{}

func (nopHandler) DeviceConnected(string, outpost.SessionID)                   {}
func (nopHandler) DeviceDisconnected(string, outpost.SessionID, string)        {}
func (nopHandler) HandleMessage(context.Context, string, string, []byte) error { return nil }

type allow struct{}

func (allow) AuthenticateDevice(context.Context, string, string) error { return nil }

// Issue 16: with any message retained, mochi scans its topic tree on every
// SUBSCRIBE, recursively in 4 KiB frames, and the goroutine of every
// subscribing device grew to a 64 KiB stack. mochi retains its own $SYS
// values when it publishes them; the platform removes them, and retains
// nothing else: not what devices send either (docs/protocol.md §2.8).
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
	// A device's publish with the retain flag is handled, not retained.
	id := "d-aaaaaaaaaaaaaaaa"
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + b.Addr().String()).
		SetClientID(id).SetUsername(id).SetPassword("x").SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	tok := c.Publish(protocol.Root+"/"+id+"/up/telemetry", 1, true, `{"r":[]}`)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	if n := b.srv.Topics.Retained.Len(); n != 0 {
		t.Errorf("a device's publish was retained: %v", b.srv.Topics.Retained.GetAll())
	}
}
