// Package emqxtest runs, for tests, an MQTT broker that publishes EMQX's
// client events: an in-process mochi broker (anonymous, every topic
// allowed) whose hook publishes, on a client's connect, disconnect and
// subscribe, the JSON EMQX publishes on
// $SYS/brokers/{node}/clients/{clientid}/connected, disconnected and
// subscribed. No EMQX runs in this repository's tests; this is as close
// to its wire as the platform's external-broker mode can be tested
// without one.
//
// The events go out through the server's own Publish (a client cannot
// publish under $SYS), QoS 0 as EMQX's do, in the order the hook sees
// them.
package emqxtest

import (
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/hooks/auth"
	"github.com/outpost-iot/outpost/internal/mochi/listeners"
	"github.com/outpost-iot/outpost/internal/mochi/packets"
)

// Node is the node name in the event topics.
const Node = "emqx@127.0.0.1"

// Option configures the broker.
type Option func(*Broker)

// EMQX4 makes disconnected events carry no connected_at, as EMQX 4's do
// (EMQX 5 repeats it).
func EMQX4() Option { return func(b *Broker) { b.emqx4 = true } }

// Broker is the running broker.
type Broker struct {
	// Addr is its HOST:PORT on loopback.
	Addr string

	srv   *mqtt.Server
	emqx4 bool

	mu        sync.Mutex
	connected map[*mqtt.Client]int64 // connected_at of each live connection
	last      int64                  // the last connected_at given
	hold      bool                   // keep disconnected events back
	held      []held
	counts    map[string]int // kind/clientid → events published
}

type held struct {
	topic   string
	payload []byte
}

// Start starts the broker on 127.0.0.1:0 and stops it in tb.Cleanup.
func Start(tb testing.TB, opts ...Option) *Broker {
	tb.Helper()
	b := &Broker{connected: map[*mqtt.Client]int64{}, counts: map[string]int{}}
	for _, o := range opts {
		o(b)
	}
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	b.srv = srv
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		tb.Fatal(err)
	}
	if err := srv.AddHook(&eventHook{b: b}, nil); err != nil {
		tb.Fatal(err)
	}
	ln := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := srv.AddListener(ln); err != nil {
		tb.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		tb.Fatal(err)
	}
	b.Addr = ln.Address()
	tb.Cleanup(func() { _ = srv.Close() })
	return b
}

// HoldDisconnects keeps the disconnected events back from now on, until
// ReleaseDisconnects: a test makes the end of an old connection arrive
// late.
func (b *Broker) HoldDisconnects() {
	b.mu.Lock()
	b.hold = true
	b.mu.Unlock()
}

// ReleaseDisconnects publishes the disconnected events held back, in
// order, and stops holding them. It returns how many there were.
func (b *Broker) ReleaseDisconnects() int {
	b.mu.Lock()
	hs := b.held
	b.hold, b.held = false, nil
	b.mu.Unlock()
	for _, h := range hs {
		b.Inject(h.topic, h.payload)
	}
	return len(hs)
}

// Held returns how many disconnected events are held back.
func (b *Broker) Held() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.held)
}

// Published returns how many events of kind ("connected", …) the broker
// published (or held) for clientID.
func (b *Broker) Published(kind, clientID string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.counts[kind+"/"+clientID]
}

// Inject publishes payload on topic from the broker itself, QoS 0.
func (b *Broker) Inject(topic string, payload []byte) {
	_ = b.srv.Publish(topic, payload, false, 0)
}

// Topic is the event topic of kind for clientID.
func Topic(clientID, kind string) string {
	return "$SYS/brokers/" + Node + "/clients/" + clientID + "/" + kind
}

func (b *Broker) publish(kind, clientID string, payload map[string]any) {
	data, _ := json.Marshal(payload)
	topic := Topic(clientID, kind)
	b.mu.Lock()
	b.counts[kind+"/"+clientID]++
	if kind == "disconnected" && b.hold {
		b.held = append(b.held, held{topic, data})
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	b.Inject(topic, data)
}

// eventHook publishes the events.
type eventHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *eventHook) ID() string { return "emqx-events" }

func (h *eventHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablished || b == mqtt.OnDisconnect || b == mqtt.OnSubscribed
}

func username(cl *mqtt.Client) any {
	if len(cl.Properties.Username) == 0 {
		return nil
	}
	return string(cl.Properties.Username)
}

func (h *eventHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	b := h.b
	b.mu.Lock()
	// Milliseconds, strictly growing: a reconnect within the same
	// millisecond is still another connection.
	at := max(time.Now().UnixMilli(), b.last+1)
	b.last = at
	b.connected[cl] = at
	b.mu.Unlock()
	b.publish("connected", cl.ID, map[string]any{
		"username": username(cl), "ts": at, "sockport": 1883,
		"proto_ver": cl.Properties.ProtocolVersion, "proto_name": "MQTT",
		"keepalive": cl.State.Keepalive, "ipaddress": "127.0.0.1",
		"expiry_interval": 0, "connected_at": at, "connack": 0,
		"clientid": cl.ID, "clean_start": cl.Properties.Clean,
	})
}

func (h *eventHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	b := h.b
	b.mu.Lock()
	at, ok := b.connected[cl]
	delete(b.connected, cl)
	b.mu.Unlock()
	if !ok {
		return // never established
	}
	reason := "normal"
	if err != nil {
		reason = "tcp_closed"
	}
	if cl.IsTakenOver() {
		reason = "takenover"
	}
	now := time.Now().UnixMilli()
	p := map[string]any{
		"username": username(cl), "ts": now, "sockport": 1883, "reason": reason,
		"proto_ver": cl.Properties.ProtocolVersion, "proto_name": "MQTT",
		"ipaddress": "127.0.0.1", "disconnected_at": max(now, at), "clientid": cl.ID,
	}
	if !b.emqx4 {
		p["connected_at"] = at
	}
	b.publish("disconnected", cl.ID, p)
}

func (h *eventHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if cl.Net.Inline {
		return
	}
	for i, f := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] >= 0x80 {
			continue
		}
		h.b.publish("subscribed", cl.ID, map[string]any{
			"clientid": cl.ID, "username": username(cl), "protocol": "mqtt",
			"topic": f.Filter, "subopts": map[string]any{"qos": f.Qos},
			"ts": time.Now().UnixMilli(),
		})
	}
}
