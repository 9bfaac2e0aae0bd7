package broker

import (
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/packets"
)

// KeepAlive bounds the keep-alive interval the platform dictates.
type KeepAlive struct {
	// Min and Max bound the interval a device may propose (defaults 5s
	// and 10m); Default applies when it proposes none (default 60s).
	Min, Max, Default time.Duration
}

func (k *KeepAlive) fill() {
	if k.Min <= 0 {
		k.Min = 5 * time.Second
	}
	if k.Max <= 0 {
		k.Max = 10 * time.Minute
	}
	if k.Max > 18*time.Hour {
		k.Max = 18 * time.Hour // what the 16-bit MQTT field holds
	}
	if k.Min > k.Max {
		k.Min = k.Max
	}
	if k.Default <= 0 {
		k.Default = 60 * time.Second
	}
	k.Default = min(max(k.Default, k.Min), k.Max)
}

// Dictate returns the interval in seconds the platform grants a device
// that proposed proposed seconds (0: none).
func (k KeepAlive) Dictate(proposed uint16) uint16 {
	d := time.Duration(proposed) * time.Second
	if proposed == 0 {
		d = k.Default
	}
	d = min(max(d, k.Min), k.Max)
	s := uint16((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// keepaliveHook makes the platform dictate the keep-alive and drops a
// device that stays silent for two intervals.
//
// MQTT 5 devices learn the interval from the CONNACK's Server Keep Alive;
// MQTT 3.1.1 has no such field, so the clamped value only sets how long the
// platform waits. mochi closes a connection that stays silent for 1.5
// times the keep-alive; once the CONNACK is out, the hook raises the
// internal value so the deadline becomes two intervals.
type keepaliveHook struct {
	mqtt.HookBase
	k KeepAlive
}

func (h *keepaliveHook) ID() string { return "outpost-keepalive" }

func (h *keepaliveHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnSessionEstablished
}

// OnConnect runs before the CONNACK is written.
func (h *keepaliveHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Net.Inline {
		return nil
	}
	cl.State.Keepalive = h.k.Dictate(pk.Connect.Keepalive)
	cl.State.ServerKeepalive = cl.Properties.ProtocolVersion == 5
	return nil
}

// OnSessionEstablished runs after the CONNACK, on the connection's own
// goroutine before it starts reading, so the change is not racy.
func (h *keepaliveHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	cl.State.Keepalive = deadlineKeepalive(cl.State.Keepalive)
}

// deadlineKeepalive returns the smallest value v for which mochi's read
// deadline, v + v/2 seconds, is at least two intervals of k seconds.
func deadlineKeepalive(k uint16) uint16 {
	want := 2 * uint32(k)
	v := (want*2 + 2) / 3
	for v > 0 && v+v/2 > want {
		v--
	}
	for v+v/2 < want {
		v++
	}
	if v > 0xffff {
		return 0xffff
	}
	return uint16(v)
}
