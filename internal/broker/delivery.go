package broker

import (
	"errors"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// DeliveryHandler learns what the platform's down queue needs to know:
// when a device can receive queued messages, when it can no longer, and
// when its send window has room again. The methods run on the device's
// connection goroutine and must not block.
//
// Whether a device got a queued message is not the broker's business: the
// device says so itself (up/ack, or its answer to a call), which works the
// same with any broker.
type DeliveryHandler interface {
	// DeviceSubscribed is called when session may receive messages: a
	// subscription was granted, or a resumed session inherited some.
	// Which topics it covers, Subscribed tells. pull is set when the
	// device declared PULL mode on CONNECT (user property
	// protocol.PropMode = protocol.ModePull).
	DeviceSubscribed(deviceID string, session outpost.SessionID, pull bool)
	// DeviceGone is called when session ends.
	DeviceGone(deviceID string, session outpost.SessionID)
	// RoomAvailable is called once a slot of the device's send window
	// frees after Room reported less room than wanted.
	RoomAvailable(deviceID string)
}

// SetDeliveryHandler connects the down queue. Call it once, before Start.
func (b *Broker) SetDeliveryHandler(h DeliveryHandler) error {
	if h == nil {
		return errors.New("broker: nil delivery handler")
	}
	b.dh.Store(&h)
	return nil
}

func (b *Broker) delivery() DeliveryHandler {
	if p := b.dh.Load(); p != nil {
		return *p
	}
	return nil
}

// PublishToDevice publishes payload on the device's down/{kind} topic with
// QoS 1, through the device's send window: at once when the window has
// room, otherwise after the messages ahead of it. It never blocks. It
// fails with ErrDeviceBusy when too many messages already wait for the
// device.
func (b *Broker) PublishToDevice(deviceID, kind string, payload []byte) error {
	return b.send(downMsg{deviceID: deviceID, topic: protocol.DownTopic(deviceID, kind), payload: payload})
}

// PublishUntil is PublishToDevice for a message that is useless after
// deadline (an RPC request): if it is still waiting for room in the send
// window then, it is dropped unsent.
func (b *Broker) PublishUntil(deviceID, kind string, payload []byte, deadline time.Time) error {
	return b.send(downMsg{deviceID: deviceID, topic: protocol.DownTopic(deviceID, kind), payload: payload, deadline: deadline})
}

// PublishQueued publishes a queued message on the device's down/{kind}
// topic like PublishToDevice, tagged with its id (MQTT 5 user property
// protocol.PropMessageID). Call Room first: a message published when there
// is room goes out at once.
func (b *Broker) PublishQueued(deviceID, kind, msgID string, payload []byte) error {
	return b.send(downMsg{deviceID: deviceID, topic: protocol.DownTopic(deviceID, kind), payload: payload, msgID: msgID})
}

// Room returns how many QoS 1 messages can be published to the device now
// without waiting: the free slots of its live connection's send window
// that no waiting message claims (0 without a live connection). When that
// is less than want, the DeliveryHandler's RoomAvailable is called once a
// slot frees.
func (b *Broker) Room(deviceID string, want int) int {
	cl, ok := b.srv.Clients.Get(deviceID)
	if !ok || cl.Closed() {
		return 0
	}
	w := b.windowOf(cl)
	if w == nil {
		return 0
	}
	return w.room(want)
}

// Subscribed reports whether a message on the device's down/{kind} topic
// would reach it now: its session holds a granted subscription whose
// filter matches the topic.
func (b *Broker) Subscribed(deviceID, kind string) bool {
	subs := b.srv.Topics.Subscribers(protocol.DownTopic(deviceID, kind))
	_, ok := subs.Subscriptions[deviceID]
	return ok
}

// Packet size limits.
const (
	// MaxPacketSize is the largest MQTT packet a device may send,
	// announced as Maximum Packet Size in the CONNACK of MQTT 5
	// connections: the largest payload plus room for topic and
	// properties.
	MaxPacketSize = protocol.MaxMessageBytes + 4096
	// readLimit is the largest packet the broker reads at all. Packets
	// between MaxPacketSize and readLimit are read and answered (MQTT 5:
	// DISCONNECT 0x95; MQTT 3.1.1: handled, and rejected with too_large);
	// a larger one closes the connection before it is read, so that a
	// device cannot make the platform allocate more.
	readLimit = 2 * MaxPacketSize
)

// tooLarge handles a packet over MaxPacketSize. An MQTT 5 device, which
// was told the limit in its CONNACK, gets DISCONNECT 0x95 (packet too
// large), and tooLarge reports true: the connection ends. MQTT 3.1.1 has
// no such reason code; the packet is processed as usual, and a PUBLISH
// whose payload is over the message limit is rejected for good with
// too_large (acknowledged, with an error reply), so the device does not
// resend it.
func (b *Broker) tooLarge(cl *mqtt.Client, pk packets.Packet) bool {
	size := 1 + varintLen(pk.FixedHeader.Remaining) + pk.FixedHeader.Remaining
	if size <= MaxPacketSize || cl.Properties.ProtocolVersion < 5 {
		return false
	}
	b.stats.Oversize.Add(1)
	b.log.Info("device sent a packet over the maximum packet size; disconnecting with 0x95", "device_id", cl.ID, "bytes", size, "max", MaxPacketSize)
	_ = b.srv.DisconnectClient(cl, packets.ErrPacketTooLarge)
	return true
}

func varintLen(n int) int {
	l := 1
	for n >= 128 {
		n >>= 7
		l++
	}
	return l
}
