package device_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/hooks/auth"
	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/protocol"
)

// smallPacketBroker is a plain mochi broker that announces a small
// Maximum Packet Size, reads packets of any size, and records the largest
// it got and every telemetry reading.
type smallPacketBroker struct {
	mqtt.HookBase
	limit uint32
	srv   *mqtt.Server

	mu       sync.Mutex
	largest  int
	readings map[string]bool
}

func (h *smallPacketBroker) ID() string { return "small-packets" }

func (h *smallPacketBroker) Provides(b byte) bool {
	return b == mqtt.OnPacketEncode || b == mqtt.OnPacketRead
}

func (h *smallPacketBroker) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack {
		pk.Properties.MaximumPacketSize = h.limit
	}
	return pk
}

func (h *smallPacketBroker) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.largest = max(h.largest, pk.FixedHeader.Remaining+5)
	if pk.FixedHeader.Type == packets.Publish && strings.HasSuffix(pk.TopicName, "/up/time") {
		// Answer as the platform does, or the SDK takes the broker for
		// one that is not Outpost and sends nothing.
		if req, err := protocol.DecodeTimeRequest(pk.Payload); err == nil {
			reply, _ := json.Marshal(protocol.TimeReply{ID: req.ID, Sent: req.Sent, T: time.Now().UnixMilli()})
			topic := strings.TrimSuffix(pk.TopicName, "/up/time") + "/down/time"
			go func() { _ = h.srv.Publish(topic, reply, false, 1) }()
		}
	}
	if pk.FixedHeader.Type == packets.Publish && strings.HasSuffix(pk.TopicName, "/up/telemetry") {
		if t, err := protocol.DecodeTelemetry(pk.Payload); err == nil {
			for _, r := range t.Readings {
				h.readings[string(r.Value)] = true
			}
		}
	}
	return pk, nil
}

func startSmallPacketBroker(t *testing.T, limit uint32) (*smallPacketBroker, string) {
	t.Helper()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 0 // read anything, to see what the device sends
	srv := mqtt.New(&mqtt.Options{Capabilities: caps, InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	h := &smallPacketBroker{limit: limit, srv: srv, readings: map[string]bool{}}
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := broker.NewListener("small", l, nil, nil)
	if err := ln.AddTo(srv); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ln.Stop()
		_ = srv.Close()
		ln.Shutdown()
	})
	return h, l.Addr().String()
}

// TestNeverSendsOverMaxPacketSize (issue 9, item 6): the SDK never sends a
// message larger than the Maximum Packet Size the platform announces (a
// platform disconnects for one with 0x95, and resending it would never
// work). Readings sealed into larger messages before the limit was known
// are split, not lost.
func TestNeverSendsOverMaxPacketSize(t *testing.T) {
	const limit = 16 << 10
	h, addr := startSmallPacketBroker(t, limit)
	c, err := device.New("mqtt://d-small:secret@"+addr, device.WithMemoryOutbox())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Sealed before the platform's limit is known: 1,000 readings of
	// about 130 bytes make a message of over 100 KB.
	const n = 3000
	for i := range n {
		if err := c.Add("blob", strings.Repeat("x", 100)+"-"+itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// And some after.
	for i := n; i < n+500; i++ {
		c.Add("blob", strings.Repeat("x", 100)+"-"+itoa(i))
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.largest > limit {
		t.Errorf("the device sent a packet of %d bytes, over the announced %d", h.largest, limit)
	}
	if len(h.readings) != n+500 {
		t.Errorf("%d readings arrived, want %d", len(h.readings), n+500)
	}
}

func itoa(i int) string {
	var b [20]byte
	p := len(b)
	for {
		p--
		b[p] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[p:])
		}
	}
}
