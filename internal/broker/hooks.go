package broker

import (
	"context"
	"errors"
	"net"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/outpost-iot/outpost/protocol"
)

// authHook authenticates devices and confines each to its own topics.
type authHook struct {
	mqtt.HookBase
	auth Authenticator
	b    *Broker
}

func (h *authHook) ID() string { return "outpost-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// OnConnectAuthenticate accepts a device whose username is its id and whose
// password is its secret. The session is then keyed by the device id
// whatever client identifier the device sent, so a second login with the
// same credentials always takes over the first.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	id := string(pk.Connect.Username)
	if protocol.ValidID(id) != nil || len(pk.Connect.Password) == 0 || len(pk.Connect.Password) > 256 {
		h.b.stats.AuthFailures.Add(1)
		return false
	}
	if pk.Connect.WillFlag {
		// mochi publishes a will without consulting the ACL, so a will
		// outside the device's own up/ topics would let it write into
		// another device's namespace. Refuse the connection.
		if t, err := protocol.ParseTopic(pk.Connect.WillTopic); err != nil || t.DeviceID != id || t.Dir != protocol.Up || pk.Connect.WillRetain {
			h.b.stats.AuthFailures.Add(1)
			h.b.log.Info("device refused: will message outside its own up/ topics (or retained)", "device_id", id, "will_topic", pk.Connect.WillTopic)
			return false
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.auth.AuthenticateDevice(ctx, id, string(pk.Connect.Password)); err != nil {
		h.b.stats.AuthFailures.Add(1)
		h.b.log.Info("device authentication failed", "device_id", id, "remote", cl.Net.Remote, "error", err)
		return false
	}
	cl.ID = id
	return true
}

// OnACLCheck lets a device publish only to its own up/ topics and subscribe
// only within its own namespace.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
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
		h.b.log.Debug("acl denied", "device_id", id, "topic", topic, "write", write)
	}
	return ok
}

// presenceHook reports sessions starting and ending.
type presenceHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *presenceHook) ID() string { return "outpost-presence" }

func (h *presenceHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablished || b == mqtt.OnDisconnect
}

func (h *presenceHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	h.b.h.DeviceConnected(cl.ID, cl)
}

func (h *presenceHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	h.b.acks.forget(cl)
	reason := "disconnected"
	switch {
	case cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver):
		reason = "taken over"
	case errors.Is(err, packets.ErrServerShuttingDown) || h.b.closing.Load():
		reason = "platform shutting down"
	case err != nil && (errors.Is(err, packets.ErrKeepAliveTimeout) || isTimeout(err)):
		reason = "keepalive timeout"
	case err != nil && !errors.Is(err, packets.CodeDisconnect):
		reason = "connection lost: " + err.Error()
	}
	h.b.h.DeviceDisconnected(cl.ID, cl, reason)
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
