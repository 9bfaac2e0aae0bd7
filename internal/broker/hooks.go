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
// acknowledged.
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
	err = h.b.h.HandleMessage(context.Background(), cl.ID, t.Kind, pk.Payload)
	if err == nil {
		h.b.stats.MessagesRouted.Add(1)
		// Acknowledge, but fan out to nobody: device traffic reaches
		// applications through the platform, not through MQTT.
		return pk, packets.CodeSuccessIgnore
	}
	var perr *protocol.Error
	if errors.As(err, &perr) {
		h.b.stats.Rejected.Add(1)
		if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
			return pk, reasonCode(perr.Code)
		}
		return pk, packets.CodeSuccessIgnore
	}
	// Transient failure: do not acknowledge. MQTT 5 devices get "quota
	// exceeded" and retry later; MQTT 3.1.1 has no negative PUBACK, so the
	// session is closed and the device resends on reconnect.
	h.b.stats.Retried.Add(1)
	h.b.log.Warn("device message not handled; device will retry", "device_id", cl.ID, "topic", pk.TopicName, "error", err)
	if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
		return pk, packets.ErrQuotaExceeded
	}
	if pk.FixedHeader.Qos > 0 {
		cl.Stop(err)
	}
	return pk, packets.ErrRejectPacket
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
