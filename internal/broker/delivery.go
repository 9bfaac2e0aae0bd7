package broker

import (
	"errors"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/outpost-iot/outpost/protocol"
)

// DeliveryHandler learns what the platform's down queue needs to know:
// when a device can receive queued messages, when it can no longer, and
// when it acknowledged one. The methods run on the device's connection
// goroutine and must not block.
type DeliveryHandler interface {
	// DeviceSubscribed is called when conn subscribed to a filter that
	// covers all of the device's down/ topics; from then on messages
	// published to it reach it. pull is set when the device declared PULL
	// mode on CONNECT (user property protocol.PropMode = protocol.ModePull).
	DeviceSubscribed(deviceID string, conn any, pull bool)
	// DeviceGone is called when conn ends.
	DeviceGone(deviceID string, conn any)
	// Acknowledged is called when the device's PUBACK for the queued
	// message msgID arrives.
	Acknowledged(deviceID, msgID string)
}

// SetDeliveryHandler connects the down queue. Call it once, before Start.
func (b *Broker) SetDeliveryHandler(h DeliveryHandler) error {
	cl := b.srv.NewClient(nil, "local", "outpost-queue", true)
	b.queueClient = cl
	return b.srv.AddHook(&deliveryHook{h: h}, nil)
}

// PublishQueued publishes a queued message on the device's down/{kind}
// topic with QoS 1, tagged with its id (MQTT 5 user property
// protocol.PropMessageID) so that the device's PUBACK can be matched to it.
// It reports nothing about delivery: that comes through
// DeliveryHandler.Acknowledged.
func (b *Broker) PublishQueued(deviceID, kind, msgID string, payload []byte) error {
	if b.closing.Load() {
		return errors.New("broker is shutting down")
	}
	if b.queueClient == nil {
		return errors.New("broker: no delivery handler set")
	}
	return b.srv.InjectPacket(b.queueClient, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DownTopic(deviceID, kind),
		Payload:     payload,
		PacketID:    1, // required by validation; the subscriber gets its own
		Properties:  packets.Properties{User: []packets.UserProperty{{Key: protocol.PropMessageID, Val: msgID}}},
	})
}

// deliveryHook reports subscriptions, ends of sessions and the PUBACKs of
// queued messages.
type deliveryHook struct {
	mqtt.HookBase
	h DeliveryHandler
}

func (h *deliveryHook) ID() string { return "outpost-delivery" }

func (h *deliveryHook) Provides(b byte) bool {
	return b == mqtt.OnSubscribed || b == mqtt.OnPacketRead || b == mqtt.OnDisconnect
}

func (h *deliveryHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 && coversDown(cl.ID, f.Filter) {
			h.h.DeviceSubscribed(cl.ID, cl, pullMode(cl))
			return
		}
	}
}

// coversDown reports whether filter matches every down/ topic of the
// device.
func coversDown(id, filter string) bool {
	return filter == protocol.DeviceFilter(id) || filter == protocol.Root+"/"+id+"/#"
}

func pullMode(cl *mqtt.Client) bool {
	for _, p := range cl.Properties.Props.User {
		if p.Key == protocol.PropMode && p.Val == protocol.ModePull {
			return true
		}
	}
	return false
}

func (h *deliveryHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	h.h.DeviceGone(cl.ID, cl)
}

// OnPacketRead sees a device's PUBACK before mochi drops the acknowledged
// message from the session, which is the one moment the message (and the
// id it carries) can still be looked up. (OnQosComplete gets only the
// PUBACK, and is also called for the device's own publishes.)
func (h *deliveryHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Puback || pk.ReasonCode >= 0x80 {
		return pk, nil
	}
	sent, ok := cl.State.Inflight.Get(pk.PacketID)
	if !ok || sent.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	for _, p := range sent.Properties.User {
		if p.Key == protocol.PropMessageID {
			h.h.Acknowledged(cl.ID, p.Val)
			break
		}
	}
	return pk, nil
}
