package server_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

// maxPacket is the Maximum Packet Size docs/protocol.md §1 gives.
const maxPacket = 266_240

// oversizeBatch is a telemetry message whose packet is over maxPacket.
func oversizeBatch() string {
	var b strings.Builder
	b.WriteString(`{"id":"huge","r":[`)
	for i := 0; b.Len() < 300_000; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"f":"blob","v":"` + strings.Repeat("x", 1000) + `"}`)
	}
	b.WriteString(`]}`)
	return b.String()
}

// TestMaxPacketSizeAnnounced (issue 9, item 6): an MQTT 5 device learns
// the limit from the CONNACK.
func TestMaxPacketSizeAnnounced(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "limits")
	_, ack := dialRaw(t, p, d, nil)
	if ack.ReasonCode != 0 || ack.Properties == nil || ack.Properties.MaximumPacketSize == nil || *ack.Properties.MaximumPacketSize != maxPacket {
		t.Fatalf("CONNACK %v: want Maximum Packet Size %d", ack, maxPacket)
	}
}

// TestOversizePacketDisconnects5 (issue 9, item 6): a packet over the
// announced limit ends an MQTT 5 connection with DISCONNECT 0x95 (packet
// too large), so the device knows not to send it again; before, the
// connection just closed, and a device following §4.3 resent the message
// for ever.
func TestOversizePacketDisconnects5(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "too-big-5")
	r, _ := dialRaw(t, p, d, nil)
	r.publish(t, "telemetry", 1, oversizeBatch())
	pk := r.next(t, "DISCONNECT", func(pk *packets.ControlPacket) bool { return pk.Type == packets.DISCONNECT })
	if pk == nil {
		t.Fatal("connection closed without DISCONNECT")
	}
	if rc := pk.Content.(*packets.Disconnect).ReasonCode; rc != 0x95 {
		t.Fatalf("DISCONNECT reason 0x%02x, want 0x95", rc)
	}
	if got := readings(t, p, d.ID, "?feed=blob"); len(got.Readings) != 0 {
		t.Fatalf("%d readings of the oversized message stored", len(got.Readings))
	}
}

// TestOversizeMessageRejected311 (issue 9, item 6): MQTT 3.1.1 has no
// reason codes; an oversized message is acknowledged and rejected for good
// with an error reply (too_large), as §4.2 describes, so the device drops
// it, and the connection stays.
func TestOversizeMessageRejected311(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "too-big-311")
	c := mustDial311(t, p, d)
	c.subscribe(t, "outpost/v1/"+d.ID+"/down/#")
	c.publish(t, topicOf(d.ID, "up", "telemetry"), oversizeBatch())
	var e wireErrorReply
	if err := json.Unmarshal(c.next(t, topicOf(d.ID, "down", "error")), &e); err != nil || e.Kind != "telemetry" || e.Code != "too_large" {
		t.Fatalf("error reply %+v (%v), want telemetry too_large", e, err)
	}
	select {
	case err := <-c.lost:
		t.Fatalf("connection lost: %v", err)
	default:
	}
	c.publish(t, topicOf(d.ID, "up", "telemetry"), wireBatch{ID: "small", R: []wireReading{{F: "ok", V: 1}}})
	if got := readings(t, p, d.ID, "?feed=ok"); len(got.Readings) != 1 {
		t.Fatalf("readings after the rejection: %+v", got.Readings)
	}
	// Far over the limit (over twice the size), the packet is not read:
	// the connection closes.
	tok := c.Publish(topicOf(d.ID, "up", "telemetry"), 1, false, strings.Repeat("x", 2*maxPacket))
	tok.WaitTimeout(waitFor)
	select {
	case <-c.lost:
	case <-time.After(waitFor):
		t.Fatal("connection still open after a packet of twice the limit")
	}
}

// TestDeviceMaxPacketSizeRespected: a message larger than the Maximum
// Packet Size the device announced is refused at once (the broker would
// drop it on the wire and wait for its PUBACK for ever), and later
// messages still flow, even with Receive Maximum 1.
func TestDeviceMaxPacketSizeRespected(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "small-device")
	one, small := uint16(1), uint32(1024)
	r, _ := dialRaw(t, p, d, func(c *packets.Connect) {
		c.Properties.ReceiveMaximum = &one
		c.Properties.MaximumPacketSize = &small
	})
	sub := packets.NewControlPacket(packets.SUBSCRIBE)
	sub.Content.(*packets.Subscribe).PacketID = 1
	sub.Content.(*packets.Subscribe).Subscriptions = []packets.SubOptions{{Topic: topicOf(d.ID, "down", "#"), QoS: 1}}
	r.send(t, sub)
	r.next(t, "SUBACK", func(pk *packets.ControlPacket) bool { return pk.Type == packets.SUBACK })

	big := callRPC(p, d.ID, "echo", `"`+strings.Repeat("x", 2000)+`"`)
	if res := outcome(t, big); res.status != 503 {
		t.Fatalf("call too large for the device: %d %s, want 503", res.status, res.body)
	}
	for i := range 3 {
		call := callRPC(p, d.ID, "echo", `"small"`)
		pk := r.next(t, "request", isPublishOn("/down/rpc"))
		if pk == nil {
			t.Fatal("connection closed")
		}
		req := pk.Content.(*packets.Publish)
		var m struct{ ID string }
		json.Unmarshal(req.Payload, &m)
		r.puback(t, req.PacketID)
		r.publish(t, "rpc", uint16(100+i), `{"id":"`+m.ID+`","result":"ok"}`)
		r.next(t, "PUBACK of the answer", isPuback(uint16(100+i)))
		if res := outcome(t, call); res.status != 200 {
			t.Fatalf("small call %d: %d %s", i, res.status, res.body)
		}
	}
}
