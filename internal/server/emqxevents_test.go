package server_test

import (
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/internal/emqxtest"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
	"github.com/outpost-iot/outpost/internal/server"
	"github.com/outpost-iot/outpost/protocol"
)

// plainDevice is a third-party device: a plain MQTT 3.1.1 client (paho,
// not the device SDK) that never announces itself. It subscribes to its
// down/ topics and answers every RPC request with its arguments.
type plainDevice struct {
	c     paho.Client
	calls atomic.Int64
	mu    sync.Mutex
	args  map[string]int // arguments of the requests run
}

func (pd *plainDevice) ran(args string) int {
	pd.mu.Lock()
	defer pd.mu.Unlock()
	return pd.args[args]
}

func connectPlain(t *testing.T, addr string, d outposttest.Device) *plainDevice {
	t.Helper()
	pd := &plainDevice{args: map[string]int{}}
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(d.ID).
		SetUsername(d.ID).SetPassword(d.Password).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("plain device connect: %v", tok.Error())
	}
	rpcTopic := protocol.DownTopic(d.ID, protocol.KindRPC)
	tok := c.Subscribe(protocol.DeviceFilter(d.ID), 1, func(c paho.Client, m paho.Message) {
		if m.Topic() != rpcTopic {
			return
		}
		var req struct {
			ID   string          `json:"id"`
			Args json.RawMessage `json:"args"`
		}
		if json.Unmarshal(m.Payload(), &req) != nil {
			return
		}
		pd.calls.Add(1)
		pd.mu.Lock()
		pd.args[string(req.Args)]++
		pd.mu.Unlock()
		resp, _ := json.Marshal(map[string]any{"id": req.ID, "result": req.Args})
		c.Publish(protocol.Topic(d.ID, protocol.Up, protocol.KindRPC), 1, false, resp)
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("plain device subscribe: %v", tok.Error())
	}
	pd.c = c
	return pd
}

func (pd *plainDevice) Close() { pd.c.Disconnect(100) }

func waitOnline(t *testing.T, p *outposttest.Platform, id string, want bool) {
	t.Helper()
	outposttest.Eventually(t, 10*time.Second, id+" online="+map[bool]string{true: "true", false: "false"}[want], func() bool {
		return isOnline(t, p, id) == want
	})
}

func isOnline(t *testing.T, p *outposttest.Platform, id string) bool {
	var dev struct {
		Online bool `json:"online"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+id, nil, &dev)
	return dev.Online
}

// TestExternalBrokerEMQXEvents runs the platform against a broker that
// publishes EMQX's client events (internal/emqxtest, EMQX 5 and EMQX 4
// payloads) with --broker-events emqx. A third-party device that never
// announces itself shows online when it connects and offline when it
// leaves; a call queued while it was away is delivered once when it
// connects (after its SUBSCRIBE, not before); a reconnect whose old
// connection's end arrives late stays online; malformed events and the
// platform's own connection change nothing.
func TestExternalBrokerEMQXEvents(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []emqxtest.Option
	}{
		{"emqx5", nil},
		{"emqx4", []emqxtest.Option{emqxtest.EMQX4()}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			br := emqxtest.Start(t, tt.opts...)
			p := outposttest.Start(t, func(c *server.Config) {
				c.Broker = "mqtt://outpost:secret@" + br.Addr
				c.BrokerEvents = "emqx"
				c.QueueSweep = 20 * time.Millisecond
			})
			d := p.CreateDevice(t, "plain")
			other := p.CreateDevice(t, "barrier")

			// Garbage on the event topics is dropped.
			for _, bad := range []string{`{`, `[]`, `{"clientid":"x"}`, `{"connected_at":"soon"}`, `{"connected_at":-1}`} {
				br.Inject(emqxtest.Topic(d.ID, "connected"), []byte(bad))
				br.Inject(emqxtest.Topic(d.ID, "disconnected"), []byte(bad))
			}

			// A call queued while the device is away reaches it once it
			// connects and subscribes.
			q := queueCall(t, p, d.ID, "echo", `{"q":1}`, "ttl=1m")
			if q.State != "queued" {
				t.Fatalf("call to an offline device: state %s, want queued", q.State)
			}
			if isOnline(t, p, d.ID) {
				t.Fatal("online before connecting (malformed events counted?)")
			}
			dev := connectPlain(t, br.Addr, d)
			waitOnline(t, p, d.ID, true)
			waitState(t, p, q.ID, "succeeded")
			if n := dev.calls.Load(); n != 1 {
				t.Fatalf("the queued call ran %d times, want once", n)
			}
			dev.Close()
			waitOnline(t, p, d.ID, false)

			// A reconnect (a take-over) whose old end arrives late: still
			// online.
			c1 := connectPlain(t, br.Addr, d)
			waitOnline(t, p, d.ID, true)
			br.HoldDisconnects()
			connects := br.Published("connected", d.ID)
			c2 := connectPlain(t, br.Addr, d)
			defer c2.Close()
			outposttest.Eventually(t, 10*time.Second, "the old connection's end held back", func() bool { return br.Held() == 1 })
			if br.Published("connected", d.ID) != connects+1 {
				t.Fatal("no connected event for the new connection")
			}
			br.ReleaseDisconnects() // after the new connection's start
			// The events are handled in order: once another device's
			// connection shows, the late end has been handled.
			b := connectPlain(t, br.Addr, other)
			waitOnline(t, p, other.ID, true)
			b.Close()
			if !isOnline(t, p, d.ID) {
				t.Fatal("a late disconnected event of the old connection took the device offline")
			}
			_ = c1 // taken over by c2
			c2.Close()
			waitOnline(t, p, d.ID, false)
		})
	}
}

// TestReplicasEMQXEvents runs two replicas (--replica, PostgreSQL) on a
// broker with EMQX's events: both show the third-party device online, and
// a call queued while it was away is delivered by exactly one replica.
func TestReplicasEMQXEvents(t *testing.T) {
	dbURL, _ := pgtest.MustSchema(t) // skips without OUTPOST_TEST_POSTGRES
	br := emqxtest.Start(t)
	replica := func(name string) *outposttest.Platform {
		return outposttest.Start(t, func(c *server.Config) {
			c.DB, c.Broker, c.Replica = dbURL, "mqtt://outpost:secret@"+br.Addr, name
			c.BrokerEvents = "emqx"
			c.QueueSweep = 20 * time.Millisecond
		})
	}
	a, b := replica("a"), replica("b")
	for i := range 4 {
		d := a.CreateDevice(t, "plain-"+strings.Repeat("x", i+1))
		q := queueCall(t, b, d.ID, "echo", `{"q":1}`, "ttl=1m")
		dev := connectPlain(t, br.Addr, d)
		waitOnline(t, a, d.ID, true)
		waitOnline(t, b, d.ID, true)
		waitState(t, a, q.ID, "succeeded")
		// A second call through the other replica: by its answer, a
		// second owner's copy of the first (sent at the same moment as
		// the first copy) has long arrived.
		waitState(t, b, queueCall(t, a, d.ID, "echo", `{"q":2}`, "ttl=1m").ID, "succeeded")
		if n := dev.ran(`{"q":1}`); n != 1 {
			t.Fatalf("device %d: the queued call ran %d times, want once", i, n)
		}
		dev.Close()
		waitOnline(t, a, d.ID, false)
		waitOnline(t, b, d.ID, false)
	}
}
