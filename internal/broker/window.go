package broker

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/protocol"
)

// The down path. Every QoS 1 message the platform sends to a connected
// device (RPC requests, queued messages, error replies, pull ends, time
// replies, parameter sets) goes through the device connection's send
// window: at most as many messages unacknowledged as the device announced
// in its CONNECT (MQTT 5 Receive Maximum; v3Window for MQTT 3.1.1), the
// rest waiting in a bounded queue in memory and published, in order, as
// the device's PUBACKs come in.
//
// mochi v2.7.9 has a flow control of its own which loses quota: a message
// it parks while the quota is 0 is later sent and dropped from the
// in-flight map, so its PUBACK never gives the quota back, and one packet-id
// map serves both directions, so a device's PUBLISH that reuses the id of a
// message in flight to it erases that message's record. A device with a
// small Receive Maximum then stops receiving QoS 1 messages until it
// reconnects. The window therefore switches mochi's send quota off (a
// maximum of 0 means "no limit" to mochi) so that mochi never parks, counts
// in-flight messages by the packet ids mochi assigns (OnQosPublish) and
// frees them on the device's PUBACKs (OnPacketRead), and puts back an
// outbound record that a device's PUBLISH erased.

const (
	// v3Window is how many QoS 1 messages the platform keeps
	// unacknowledged on an MQTT 3.1.1 connection, which has no way to
	// announce a Receive Maximum. It is Mosquitto's default
	// max_inflight_messages.
	v3Window = 20
	// maxWindow caps the window of an MQTT 5 connection whatever Receive
	// Maximum it announces (65,535 when it announces none): well below
	// mochi's MaximumInflight, past which mochi drops messages.
	maxWindow = 1024
	// maxWaiting and maxWaitingBytes bound the messages waiting for room in
	// one connection's window. Beyond them a send fails with
	// ErrDeviceBusy.
	maxWaiting      = 4096
	maxWaitingBytes = 16 << 20
)

// ErrDeviceBusy is returned when a message cannot even wait for room in a
// device's send window: the device has a full window of messages
// unacknowledged and maxWaiting more (or maxWaitingBytes) waiting.
var ErrDeviceBusy = errors.New("device is not acknowledging what it is sent: too many messages waiting for it")

// ErrTooLargeForDevice is returned for a message whose packet would exceed
// the Maximum Packet Size the device announced in its CONNECT.
var ErrTooLargeForDevice = errors.New("message larger than the device's maximum packet size")

// packetSize is the size of m's PUBLISH packet, a few bytes over rather
// than under: fixed header, topic, packet id, properties, payload.
func packetSize(m downMsg) int {
	n := 5 + 2 + len(m.topic) + 2 + 4 + len(m.payload)
	if m.msgID != "" {
		n += 1 + 2 + len(protocol.PropMessageID) + 2 + len(m.msgID)
	}
	return n
}

// errShuttingDown is returned for sends after Close began.
var errShuttingDown = errors.New("broker is shutting down")

// downMsg is one QoS 1 message for a device.
type downMsg struct {
	deviceID string
	topic    string
	payload  []byte
	// msgID, when set, goes out as the MQTT 5 user property
	// protocol.PropMessageID.
	msgID string
	// deadline, when set, is when the message becomes useless: if it is
	// still waiting for room then, it is dropped unsent.
	deadline time.Time
}

// sendWindow is the flow control of one device connection.
type sendWindow struct {
	cl       *mqtt.Client
	deviceID string
	size     int

	mu        sync.Mutex
	inflight  map[uint16]int // packet id → messages in flight with it (normally 1)
	n         int            // messages in flight
	waiting   []downMsg      // waiting[head:] wait for room, in order
	head      int
	waitBytes int
	wake      bool // tell the delivery handler when room opens
	closed    bool

	// sending is the message being handed to mochi (set under mu): the
	// hooks record the packet id mochi gives it, or that mochi dropped it.
	sending atomic.Pointer[sendAttempt]
	// erased is an outbound in-flight record that mochi deleted because
	// the device's PUBLISH being processed reuses its packet id.
	erased atomic.Pointer[packets.Packet]
}

// The hooks match a sendAttempt to a packet by the window's lock alone:
// while it is set, every publish to the connection is the window's own
// (the topic is no help: mochi blanks it when it uses a topic alias).
type sendAttempt struct {
	queued  atomic.Bool // published with QoS 1: in flight under id
	id      atomic.Uint32
	dropped atomic.Bool // mochi dropped it (client write buffer full)
}

// windowSize returns how many QoS 1 messages may be in flight to cl.
func windowSize(cl *mqtt.Client) int {
	if cl.Properties.ProtocolVersion < 5 {
		return v3Window
	}
	rm := int(cl.Properties.Props.ReceiveMaximum)
	if rm == 0 {
		rm = 65535 // MQTT 5: absent means 65,535
	}
	return min(rm, maxWindow)
}

// openWindow creates cl's window once its session is established. The
// messages mochi resent from a resumed session count as in flight.
func (b *Broker) openWindow(cl *mqtt.Client) *sendWindow {
	w := &sendWindow{cl: cl, deviceID: cl.ID, size: windowSize(cl), inflight: map[uint16]int{}}
	w.mu.Lock()
	cl.State.Inflight.ResetSendQuota(0) // mochi: no limit, never park
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish {
			w.inflight[pk.PacketID]++
			w.n++
		}
	}
	w.mu.Unlock()
	b.windows.Store(cl, w)
	return w
}

func (b *Broker) windowOf(cl *mqtt.Client) *sendWindow {
	if v, ok := b.windows.Load(cl); ok {
		return v.(*sendWindow)
	}
	return nil
}

// closeWindow ends cl's window. Messages still waiting are handed on as
// if sent anew: to the device's next connection if one has taken over,
// otherwise to mochi, which keeps them in a persistent session (and drops
// them with a clean one).
func (b *Broker) closeWindow(cl *mqtt.Client) {
	v, ok := b.windows.LoadAndDelete(cl)
	if !ok {
		return
	}
	w := v.(*sendWindow)
	w.mu.Lock()
	w.closed = true
	left := w.waiting[w.head:]
	w.waiting, w.head, w.waitBytes = nil, 0, 0
	w.mu.Unlock()
	now := time.Now()
	for _, m := range left {
		if !m.deadline.IsZero() && now.After(m.deadline) {
			continue
		}
		if err := b.send(m); err != nil {
			b.log.Debug("message waiting for a closed connection not handed on", "device_id", m.deviceID, "topic", m.topic, "error", err)
		}
	}
}

// send publishes m with QoS 1 through the device's send window, or, when
// the device has no live connection with a window, straight to mochi (a
// persistent session keeps it). It never blocks.
func (b *Broker) send(m downMsg) error {
	if b.closing.Load() {
		return errShuttingDown
	}
	cl, ok := b.srv.Clients.Get(m.deviceID)
	if ok {
		if max := cl.Properties.Props.MaximumPacketSize; max > 0 && packetSize(m) > int(max) {
			// mochi would drop it when writing, after counting it in
			// flight, and its PUBACK would never come.
			return fmt.Errorf("%w: %d bytes, the device takes at most %d", ErrTooLargeForDevice, packetSize(m), max)
		}
		if w := b.windowOf(cl); w != nil {
			if handled, err := w.send(b, m); handled {
				return err
			}
		}
		cl.State.Inflight.ResetSendQuota(0)
	}
	return b.inject(m)
}

// inject hands m to mochi, which publishes it to the subscribers of its
// topic (only the device itself may subscribe there).
func (b *Broker) inject(m downMsg) error {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   m.topic,
		Payload:     m.payload,
		PacketID:    1, // required by validation; the subscriber gets its own
	}
	if m.msgID != "" {
		pk.Properties.User = []packets.UserProperty{{Key: protocol.PropMessageID, Val: m.msgID}}
	}
	return b.srv.InjectPacket(b.downClient, pk)
}

// send publishes m now if the window has room and nothing waits before it,
// or queues it. handled is false when the window is closed.
func (w *sendWindow) send(b *Broker, m downMsg) (handled bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false, nil
	}
	if w.head == len(w.waiting) && w.n < w.size {
		return true, w.publish(b, m)
	}
	if len(w.waiting)-w.head >= maxWaiting || w.waitBytes+len(m.payload) > maxWaitingBytes {
		return true, ErrDeviceBusy
	}
	w.waiting = append(w.waiting, m)
	w.waitBytes += len(m.payload)
	return true, nil
}

// publish hands m to mochi and counts it in flight if mochi sent it with
// QoS 1. w.mu is held, so the hooks can tell this message apart.
func (w *sendWindow) publish(b *Broker, m downMsg) error {
	w.cl.State.Inflight.ResetSendQuota(0)
	a := &sendAttempt{}
	w.sending.Store(a)
	err := b.inject(m)
	w.sending.Store(nil)
	if a.dropped.Load() {
		return errors.Join(err, errors.New("device's write buffer is full"))
	}
	if a.queued.Load() {
		w.inflight[uint16(a.id.Load())]++
		w.n++
	}
	return err
}

// drain publishes waiting messages while there is room; w.mu is held.
func (w *sendWindow) drain(b *Broker) {
	now := time.Time{}
	for w.head < len(w.waiting) && w.n < w.size {
		m := w.waiting[w.head]
		w.waiting[w.head] = downMsg{}
		w.head++
		w.waitBytes -= len(m.payload)
		if !m.deadline.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			if now.After(m.deadline) {
				continue // its sender gave up: do not act on it late
			}
		}
		if err := w.publish(b, m); err != nil {
			b.log.Debug("publish to device", "device_id", w.deviceID, "topic", m.topic, "error", err)
		}
	}
	if w.head == len(w.waiting) {
		w.waiting, w.head = w.waiting[:0], 0
	} else if w.head > 1024 && w.head*2 > len(w.waiting) {
		n := copy(w.waiting, w.waiting[w.head:])
		clear(w.waiting[n:])
		w.waiting, w.head = w.waiting[:n], 0
	}
}

// acked frees the slot of the message in flight under packet id, if the
// window has one, and publishes what waits. It reports whether the
// delivery handler asked to hear that there is room.
func (w *sendWindow) acked(b *Broker, id uint16) (wake bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.inflight[id]
	if c == 0 {
		return false
	}
	if c == 1 {
		delete(w.inflight, id)
	} else {
		w.inflight[id] = c - 1
	}
	w.n--
	w.drain(b)
	if w.wake && w.head == len(w.waiting) && w.n < w.size {
		w.wake = false
		return true
	}
	return false
}

// room returns the free slots not claimed by waiting messages; below want
// it asks to be told when a slot frees.
func (w *sendWindow) room(want int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0
	}
	free := 0
	if w.head == len(w.waiting) {
		free = max(w.size-w.n, 0)
	}
	if free < want {
		w.wake = true
	}
	return free
}

// downHook runs the send windows and tells the delivery handler when a
// device can receive queued messages.
type downHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *downHook) ID() string { return "outpost-down" }

func (h *downHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed,
		mqtt.OnPacketRead, mqtt.OnPacketProcessed, mqtt.OnQosPublish,
		mqtt.OnPublishDropped, mqtt.OnPacketEncode:
		return true
	}
	return false
}

// OnSessionEstablished opens the connection's window. It runs before the
// presence hook, so nothing is sent to the device around the window. A
// resumed session that inherited subscriptions can receive queued
// messages at once: it need not subscribe again.
func (h *downHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	h.b.openWindow(cl)
	if dh := h.b.delivery(); dh != nil && cl.State.Subscriptions.Len() > 0 {
		dh.DeviceSubscribed(cl.ID, sessionOf(cl), pullMode(cl))
	}
}

func (h *downHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	if dh := h.b.delivery(); dh != nil {
		dh.DeviceGone(cl.ID, sessionOf(cl))
	}
	h.b.closeWindow(cl)
}

// OnSubscribed tells the delivery handler that the device may now receive
// messages on the topics some granted filter matches (which ones, the
// handler asks with Broker.Subscribed).
func (h *downHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	dh := h.b.delivery()
	if dh == nil {
		return
	}
	for i := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 {
			dh.DeviceSubscribed(cl.ID, sessionOf(cl), pullMode(cl))
			return
		}
	}
}

func pullMode(cl *mqtt.Client) bool {
	for _, p := range cl.Properties.Props.User {
		if p.Key == protocol.PropMode && p.Val == protocol.ModePull {
			return true
		}
	}
	return false
}

// OnPacketRead frees a window slot on every PUBACK the device sends (a
// device's PUBACK is always for a message sent to it), refuses packets over
// the announced Maximum Packet Size, and keeps the outbound record a
// device's PUBLISH is about to erase.
func (h *downHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if h.b.tooLarge(cl, pk) {
		return pk, packets.ErrRejectPacket
	}
	switch pk.FixedHeader.Type {
	case packets.Puback:
		if w := h.b.windowOf(cl); w != nil && w.acked(h.b, pk.PacketID) {
			if dh := h.b.delivery(); dh != nil {
				dh.RoomAvailable(cl.ID)
			}
		}
	case packets.Publish:
		if pk.FixedHeader.Qos == 0 {
			break
		}
		if sent, ok := cl.State.Inflight.Get(pk.PacketID); ok && sent.FixedHeader.Type == packets.Publish {
			if w := h.b.windowOf(cl); w != nil {
				w.erased.Store(&sent)
			}
		}
	}
	return pk, nil
}

// OnPacketProcessed puts back an outbound in-flight record that mochi
// deleted while processing a device's PUBLISH with the same packet id, so
// that mochi resends it to a resumed session and does not reuse its id.
func (h *downHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish {
		return
	}
	w := h.b.windowOf(cl)
	if w == nil {
		return
	}
	sent := w.erased.Swap(nil)
	if sent == nil || sent.PacketID != pk.PacketID {
		return
	}
	w.mu.Lock() // no publish of ours picks an id meanwhile
	defer w.mu.Unlock()
	if _, ok := cl.State.Inflight.Get(sent.PacketID); !ok {
		cl.State.Inflight.Set(*sent)
		atomic.AddInt64(&h.b.srv.Info.Inflight, 1)
	}
}

// OnQosPublish learns the packet id of a message the window publishes.
func (h *downHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Dup {
		return
	}
	if w := h.b.windowOf(cl); w != nil {
		if a := w.sending.Load(); a != nil {
			a.id.Store(uint32(pk.PacketID))
			a.queued.Store(true)
		}
	}
}

// OnPublishDropped learns that mochi dropped a message the window
// publishes (the client's write buffer was full).
func (h *downHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	if w := h.b.windowOf(cl); w != nil {
		if a := w.sending.Load(); a != nil {
			a.dropped.Store(true)
		}
	}
}

// OnPacketEncode announces the platform's Maximum Packet Size in the
// CONNACK of MQTT 5 connections (mochi does not).
func (h *downHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && cl.Properties.ProtocolVersion == 5 && pk.ReasonCode < 0x80 {
		pk.Properties.MaximumPacketSize = MaxPacketSize
	}
	return pk
}
