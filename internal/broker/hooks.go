package broker

import (
	"context"
	"errors"
	"net"
	"slices"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/protocol"
)

// authHook authenticates devices, confines each to its own topics and
// bounds its subscriptions.
type authHook struct {
	mqtt.HookBase
	auth Authenticator
	b    *Broker
}

func (h *authHook) ID() string { return "outpost-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnPacketRead || b == mqtt.OnSubscribe
}

// OnPacketRead lets a CONNECT with the password flag set and an empty
// password through to authentication. MQTT allows an empty password, but
// mochi's CONNECT validation refuses it with 0x82 (protocol error), which
// is not a valid MQTT 3.1.1 return code. Without the flag the login is
// refused as bad credentials, like any other: 0x05 on MQTT 3.1.1, 0x86 on
// MQTT 5.
func (h *authHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Connect && pk.Connect.PasswordFlag && len(pk.Connect.Password) == 0 {
		pk.Connect.PasswordFlag = false
	}
	return pk, nil
}

// OnConnectAuthenticate accepts a device whose username is its id and whose
// password is its secret. The session is then keyed by the device id
// whatever client identifier the device sent, so a second login with the
// same credentials always takes over the first. A refused login is
// answered late (authThrottle). An accepted one holds the device's session
// lock from here until its CONNACK (sessions.go).
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	id := string(pk.Connect.Username)
	c := connOf(cl)
	addr := cl.Net.Remote
	if c != nil {
		addr = c.key
	}
	if protocol.ValidID(id) != nil {
		return h.refuse(cl, "(invalid id)", addr, "username is not a device id", true)
	}
	if len(pk.Connect.Password) == 0 || len(pk.Connect.Password) > 256 {
		return h.refuse(cl, id, addr, "missing or over-long password", true)
	}
	if pk.Connect.WillFlag {
		// mochi publishes a will without consulting the ACL, so a will
		// outside the device's own up/ topics would let it write into
		// another device's namespace. Refuse the connection.
		if t, err := protocol.ParseTopic(pk.Connect.WillTopic); err != nil || t.DeviceID != id || t.Dir != protocol.Up || pk.Connect.WillRetain {
			return h.refuse(cl, id, addr, "will message outside its own up/ topics (or retained)", true)
		}
	}
	gen := h.b.sess.generation(id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := h.auth.AuthenticateDevice(ctx, id, string(pk.Connect.Password))
	cancel()
	if err != nil {
		return h.refuse(cl, id, addr, err.Error(), true)
	}
	if c != nil {
		if !h.b.sess.lock(id, h.b.stopc) {
			return h.refuse(cl, id, addr, "session lock not available", false)
		}
		if !h.b.sess.register(id, c, gen) {
			h.b.sess.unlock(id)
			return h.refuse(cl, id, addr, errRevoked.Error(), false)
		}
		c.deviceID, c.lockHeld = id, true
		c.ln.authenticated(c)
	}
	h.b.throttle.succeeded(id)
	cl.ID = id
	return true
}

// refuse counts a refused login and, with delay, answers it only after
// the throttle's delay.
func (h *authHook) refuse(cl *mqtt.Client, id, addr, reason string, delay bool) bool {
	h.b.stats.AuthFailures.Add(1)
	if !delay {
		h.b.log.Info("device login refused", "device_id", id, "remote", addr, "reason", reason)
		return false
	}
	d := h.b.throttle.failed(id, addr, reason, time.Now())
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-h.b.stopc:
	}
	return false
}

// subscriptionLimitFilter replaces, in a SUBSCRIBE, each filter over the
// device's bound; the ACL refuses it like a forbidden filter.
const subscriptionLimitFilter = "$outpost/subscription-limit-reached"

// OnSubscribe bounds a device's subscriptions: a filter that would take
// the device over MaxSubscriptions is refused (0x80 on MQTT 3.1.1, 0x87 on
// MQTT 5); filters it already holds can always be renewed.
func (h *authHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline || h.b.maxSubs <= 0 {
		return pk
	}
	id := string(cl.Properties.Username)
	n := cl.State.Subscriptions.Len()
	var filters packets.Subscriptions
	var added map[string]bool
	refused := 0
	for i, f := range pk.Filters {
		if _, ok := cl.State.Subscriptions.Get(f.Filter); ok || added[f.Filter] || !protocol.FilterAllowed(id, f.Filter) {
			continue
		}
		if n >= h.b.maxSubs {
			if filters == nil {
				filters = slices.Clone(pk.Filters)
			}
			filters[i].Filter = subscriptionLimitFilter
			refused++
			continue
		}
		n++
		if added == nil {
			added = map[string]bool{}
		}
		added[f.Filter] = true
	}
	if refused > 0 {
		pk.Filters = filters
		h.b.stats.SubscriptionsRefused.Add(int64(refused))
		h.b.log.Info("subscriptions refused: device at its limit", "device_id", id, "refused", refused, "limit", h.b.maxSubs)
	}
	return pk
}

// OnACLCheck lets a device publish only to its own up/ topics and subscribe
// only within its own namespace.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if topic == subscriptionLimitFilter {
		return false // counted in OnSubscribe
	}
	id := string(cl.Properties.Username)
	ok := false
	if write {
		t, err := protocol.ParseTopic(topic)
		ok = err == nil && t.DeviceID == id && t.Dir == protocol.Up
	} else {
		ok = protocol.FilterAllowed(id, topic)
	}
	if !ok {
		h.b.stats.ACLDenied.Add(1)
		h.b.log.Debug("acl denied", "device_id", id, "topic", truncate(topic, 256), "write", write)
	}
	return ok
}

// presenceHook reports sessions starting and ending. A new session is
// reported before mochi takes over the device's previous one, with the
// session lock held, so the previous session's end always comes after and
// is recognised as a takeover: a takeover never shows the device offline.
type presenceHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *presenceHook) ID() string { return "outpost-presence" }

func (h *presenceHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnDisconnect
}

func (h *presenceHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	if c := connOf(cl); c != nil {
		c.connected = true
	}
	h.b.h.DeviceConnected(cl.ID, sessionOf(cl))
}

func (h *presenceHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	h.b.acks.forget(cl)
	c := connOf(cl)
	if c != nil {
		if c.ended {
			return
		}
		c.ended = true
	}
	h.b.h.DeviceDisconnected(cl.ID, sessionOf(cl), h.b.endReason(c, cl, err))
}

// endReason says why a session ended.
func (b *Broker) endReason(c *conn, cl *mqtt.Client, err error) string {
	switch {
	case c != nil && c.revoked.Load():
		return "credentials revoked"
	case cl != nil && (cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver)):
		return "taken over"
	case errors.Is(err, packets.ErrServerShuttingDown) || b.closing.Load():
		return "platform shutting down"
	case c != nil && c.g.stalled.Load():
		return "not reading: write stalled"
	case err != nil && (errors.Is(err, packets.ErrKeepAliveTimeout) || isTimeout(err)):
		return "keepalive timeout"
	case err != nil && !errors.Is(err, packets.CodeDisconnect):
		return "connection lost: " + err.Error()
	}
	return "disconnected"
}

// truncate shortens device-chosen strings for the log.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// routeHook hands device messages to the platform before they are
// acknowledged: synchronously inside mochi's read loop, or, for QoS 1
// messages of an AsyncHandler, asynchronously with the PUBACK written by
// the broker once the handler is done (async.go).
type routeHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *routeHook) ID() string { return "outpost-route" }

func (h *routeHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *routeHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	t, err := protocol.ParseTopic(pk.TopicName)
	if err != nil || t.DeviceID != cl.ID || t.Dir != protocol.Up {
		// The ACL hook already refused these; never route them.
		return pk, packets.ErrRejectPacket
	}
	if ah, ok := h.b.h.(AsyncHandler); ok && pk.FixedHeader.Qos == 1 {
		return h.publishAsync(ah, cl, pk, t.Kind)
	}
	err = h.b.h.HandleMessage(context.Background(), cl.ID, t.Kind, pk.Payload)
	if pk.FixedHeader.Qos == 0 {
		h.outcome(cl, pk.TopicName, err) // counts and logs; nothing to acknowledge
		return pk, packets.CodeSuccessIgnore
	}
	return h.finishNow(cl, pk, err)
}

func reasonCode(code string) packets.Code {
	switch code {
	case protocol.CodeInvalid, protocol.CodeTooLarge:
		return packets.ErrPayloadFormatInvalid
	case protocol.CodeUnknownKind:
		return packets.ErrTopicNameInvalid
	default:
		return packets.ErrImplementationSpecificError
	}
}

// isTimeout reports a read deadline passing: the device stayed silent for
// longer than its keep-alive allows.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
