package extbroker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/internal/emqxtest"
	"github.com/outpost-iot/outpost/internal/extbroker"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/presence"
	"github.com/outpost-iot/outpost/protocol"
)

func TestParseEMQXEvent(t *testing.T) {
	const (
		conn5 = `{"username":"dev-1","ts":1625572213873,"sockport":1883,"proto_ver":5,"proto_name":"MQTT","keepalive":60,"ipaddress":"127.0.0.1","expiry_interval":0,"connected_at":1625572213873,"connack":0,"clientid":"dev-1","clean_start":true}`
		disc4 = `{"username":"dev-1","ts":1625572213999,"sockport":1883,"reason":"tcp_closed","proto_ver":4,"proto_name":"MQTT","ipaddress":"127.0.0.1","disconnected_at":1625572213990,"clientid":"dev-1"}`
		disc5 = `{"username":"dev-1","ts":1625572213999,"reason":"takenover","disconnected_at":1625572213990,"connected_at":1625572213873,"clientid":"dev-1"}`
		sub   = `{"clientid":"dev-1","username":"dev-1","protocol":"mqtt","topic":"outpost/v1/dev-1/down/#","subopts":{"qos":1},"ts":1}`
	)
	topic := func(kind string) string { return "$SYS/brokers/emqx@10.0.0.1/clients/dev-1/" + kind }
	for _, tt := range []struct {
		name, topic, payload string
		want                 extbroker.EMQXEvent
		err                  bool
	}{
		{"connected", topic("connected"), conn5, extbroker.EMQXEvent{Kind: "connected", Node: "emqx@10.0.0.1", ClientID: "dev-1", Username: "dev-1", ConnectedAt: 1625572213873, CleanStart: true}, false},
		{"disconnected emqx4", topic("disconnected"), disc4, extbroker.EMQXEvent{Kind: "disconnected", Node: "emqx@10.0.0.1", ClientID: "dev-1", Username: "dev-1", DisconnectedAt: 1625572213990, CleanStart: true, Reason: "tcp_closed"}, false},
		{"disconnected emqx5", topic("disconnected"), disc5, extbroker.EMQXEvent{Kind: "disconnected", Node: "emqx@10.0.0.1", ClientID: "dev-1", Username: "dev-1", ConnectedAt: 1625572213873, DisconnectedAt: 1625572213990, CleanStart: true, Reason: "takenover"}, false},
		{"subscribed", topic("subscribed"), sub, extbroker.EMQXEvent{Kind: "subscribed", Node: "emqx@10.0.0.1", ClientID: "dev-1", Username: "dev-1", CleanStart: true, Topic: "outpost/v1/dev-1/down/#"}, false},
		{"persistent session", topic("connected"), `{"connected_at":5,"clean_start":false}`, extbroker.EMQXEvent{Kind: "connected", Node: "emqx@10.0.0.1", ClientID: "dev-1", ConnectedAt: 5}, false},
		{"no username", topic("connected"), `{"username":null,"connected_at":5}`, extbroker.EMQXEvent{Kind: "connected", Node: "emqx@10.0.0.1", ClientID: "dev-1", ConnectedAt: 5, CleanStart: true}, false},
		{"username undefined", topic("connected"), `{"username":"undefined","connected_at":5}`, extbroker.EMQXEvent{Kind: "connected", Node: "emqx@10.0.0.1", ClientID: "dev-1", ConnectedAt: 5, CleanStart: true}, false},
		{"other clientid", topic("connected"), `{"clientid":"dev-2","connected_at":5}`, extbroker.EMQXEvent{}, true},
		{"connected without connected_at", topic("connected"), `{"clientid":"dev-1"}`, extbroker.EMQXEvent{}, true},
		{"disconnected without times", topic("disconnected"), `{"clientid":"dev-1","reason":"x"}`, extbroker.EMQXEvent{}, true},
		{"subscribed without topic", topic("subscribed"), `{"clientid":"dev-1"}`, extbroker.EMQXEvent{}, true},
		{"negative time", topic("connected"), `{"connected_at":-5}`, extbroker.EMQXEvent{}, true},
		{"string time", topic("connected"), `{"connected_at":"5"}`, extbroker.EMQXEvent{}, true},
		{"numeric username", topic("connected"), `{"username":7,"connected_at":5}`, extbroker.EMQXEvent{}, true},
		{"not an object", topic("connected"), `[1]`, extbroker.EMQXEvent{}, true},
		{"truncated", topic("connected"), `{"connected_at":5`, extbroker.EMQXEvent{}, true},
		{"too large", topic("connected"), `{"connected_at":5,"x":"` + strings.Repeat("a", 9000) + `"}`, extbroker.EMQXEvent{}, true},
		{"other kind", topic("unsubscribed"), sub, extbroker.EMQXEvent{}, true},
		{"stats topic", "$SYS/brokers/emqx@10.0.0.1/stats/connections/count", `1`, extbroker.EMQXEvent{}, true},
		{"no client", "$SYS/brokers/n/clients//connected", `{"connected_at":5}`, extbroker.EMQXEvent{}, true},
		{"no node", "$SYS/brokers//clients/c/connected", `{"connected_at":5}`, extbroker.EMQXEvent{}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := extbroker.ParseEMQXEvent(tt.topic, []byte(tt.payload))
			if tt.err {
				if err == nil {
					t.Fatalf("accepted: %+v", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// TestEMQXEventDeviceID: the username names the device (the client id
// when there is none); what is not a device id names nothing.
func TestEMQXEventDeviceID(t *testing.T) {
	for _, tt := range []struct{ user, client, want string }{
		{"dev-1", "dev-1", "dev-1"},
		{"dev-1", "anything/else", "dev-1"},
		{"", "dev-2", "dev-2"},
		{"", "a/b", ""},
		{"has space", "dev-3", ""},
	} {
		if got := (extbroker.EMQXEvent{Username: tt.user, ClientID: tt.client}).DeviceID(); got != tt.want {
			t.Errorf("username %q client %q: %q, want %q", tt.user, tt.client, got, tt.want)
		}
	}
}

// FuzzParseEMQXEvent: any topic and payload is decoded or refused, never
// a panic; what is decoded is consistent with its topic.
func FuzzParseEMQXEvent(f *testing.F) {
	f.Add("$SYS/brokers/emqx@127.0.0.1/clients/d-1/connected", []byte(`{"username":"d-1","connected_at":1625572213873,"clientid":"d-1","clean_start":true}`))
	f.Add("$SYS/brokers/emqx@127.0.0.1/clients/d-1/disconnected", []byte(`{"username":"d-1","reason":"tcp_closed","disconnected_at":1625572213873,"clientid":"d-1"}`))
	f.Add("$SYS/brokers/n/clients/a/b/subscribed", []byte(`{"topic":"outpost/v1/a/down/#"}`))
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		e, err := extbroker.ParseEMQXEvent(topic, payload)
		if err != nil {
			return
		}
		if topic != "$SYS/brokers/"+e.Node+"/clients/"+e.ClientID+"/"+e.Kind {
			t.Fatalf("event %+v does not match its topic %q", e, topic)
		}
		switch e.Kind {
		case extbroker.EventConnected:
			if e.ConnectedAt <= 0 {
				t.Fatalf("connected at %d", e.ConnectedAt)
			}
		case extbroker.EventDisconnected:
			if e.ConnectedAt <= 0 && e.DisconnectedAt <= 0 {
				t.Fatalf("disconnected without a time: %+v", e)
			}
		case extbroker.EventSubscribed:
			if e.Topic == "" {
				t.Fatal("subscribed without a topic")
			}
		default:
			t.Fatalf("kind %q", e.Kind)
		}
		if id := e.DeviceID(); id != "" && protocol.ValidID(id) != nil {
			t.Fatalf("device id %q", id)
		}
	})
}

// Fakes at the link's seams.

type nopHandler struct{}

func (nopHandler) StartMessage(context.Context, string, string, []byte, func(error)) (bool, error) {
	return false, nil
}
func (nopHandler) HandleMessage(context.Context, string, string, []byte) error { return nil }

type discardStore struct{}

func (discardStore) SetPresences(context.Context, []outpost.Presence) error { return nil }

// recordingDelivery records what the link tells the down queue.
type recordingDelivery struct {
	mu   sync.Mutex
	subs map[outpost.SessionID]int // DeviceSubscribed per session
	gone map[outpost.SessionID]int
}

func newRecordingDelivery() *recordingDelivery {
	return &recordingDelivery{subs: map[outpost.SessionID]int{}, gone: map[outpost.SessionID]int{}}
}

func (r *recordingDelivery) DeviceSubscribed(_ string, s outpost.SessionID, _ bool) {
	r.mu.Lock()
	r.subs[s]++
	r.mu.Unlock()
}
func (r *recordingDelivery) DeviceGone(_ string, s outpost.SessionID) {
	r.mu.Lock()
	r.gone[s]++
	r.mu.Unlock()
}
func (r *recordingDelivery) RoomAvailable(string) {}

func (r *recordingDelivery) owns() []outpost.SessionID {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ss []outpost.SessionID
	for s := range r.subs {
		ss = append(ss, s)
	}
	return ss
}

func (r *recordingDelivery) goneCount(s outpost.SessionID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gone[s]
}

type replica struct {
	link *extbroker.Link
	pres *presence.Tracker
	dh   *recordingDelivery
}

// startReplica links a platform replica to the broker with EMQX's events;
// devices are the registered device ids.
func startReplica(t *testing.T, addr, name string, devices ...string) *replica {
	t.Helper()
	known := map[string]bool{}
	for _, d := range devices {
		known[d] = true
	}
	pres := presence.NewTracker(discardStore{}, nil, nil)
	t.Cleanup(func() { pres.Close() })
	l, err := extbroker.New(extbroker.Config{URL: "mqtt://outpost:secret@" + addr, ClientID: name, Events: extbroker.EventsEMQX,
		Known: func(_ context.Context, id string) bool { return known[id] }}, nopHandler{}, pres)
	if err != nil {
		t.Fatal(err)
	}
	dh := newRecordingDelivery()
	_ = l.SetDeliveryHandler(dh)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &replica{link: l, pres: pres, dh: dh}
}

// connectDevice connects a plain MQTT 3.1.1 client as the device
// (username = client id = id).
func connectDevice(t *testing.T, addr, id string, clean bool) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetUsername(id).SetPassword("x").
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	return c
}

func subscribe(t *testing.T, c paho.Client, filter string) {
	t.Helper()
	if tok := c.Subscribe(filter, 1, func(paho.Client, paho.Message) {}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

// TestEventsOneOwner: two replicas on one broker; for every connection
// of a device exactly one replica owns the deliveries, both follow its
// presence, and both end the session when it goes.
func TestEventsOneOwner(t *testing.T) {
	br := emqxtest.Start(t)
	const dev = "dev-1"
	a := startReplica(t, br.Addr, "outpost-a", dev)
	b := startReplica(t, br.Addr, "outpost-b", dev)
	for i := range 6 {
		c := connectDevice(t, br.Addr, dev, true)
		outposttest.Eventually(t, 10*time.Second, "online at both replicas", func() bool { return a.pres.Online(dev) && b.pres.Online(dev) })
		outposttest.Eventually(t, 10*time.Second, "an owner", func() bool { return len(a.dh.owns())+len(b.dh.owns()) == i+1 })
		c.Disconnect(50)
		outposttest.Eventually(t, 10*time.Second, "offline at both replicas", func() bool { return !a.pres.Online(dev) && !b.pres.Online(dev) })
	}
	sessions := map[outpost.SessionID]bool{}
	for _, r := range []*replica{a, b} {
		for _, s := range r.dh.owns() {
			if sessions[s] {
				t.Fatalf("session %x owned twice", s)
			}
			sessions[s] = true
		}
	}
	if len(sessions) != 6 {
		t.Fatalf("%d sessions owned, want 6 (one per connection)", len(sessions))
	}
	for s := range sessions {
		if a.dh.goneCount(s) != 1 || b.dh.goneCount(s) != 1 {
			t.Fatalf("session %x: gone %d/%d times at the replicas, want once each", s, a.dh.goneCount(s), b.dh.goneCount(s))
		}
	}
}

// TestEventsSubscribed: a connection can take a kind's messages once it
// subscribed to a filter covering that kind's down/ topic; a persistent
// session may hold its subscriptions already; other filters do not
// count.
func TestEventsSubscribed(t *testing.T) {
	br := emqxtest.Start(t)
	r := startReplica(t, br.Addr, "outpost", "dev-1", "dev-2")
	c := connectDevice(t, br.Addr, "dev-1", true)
	defer c.Disconnect(50)
	outposttest.Eventually(t, 10*time.Second, "online", func() bool { return r.pres.Online("dev-1") })
	if r.link.Subscribed("dev-1", protocol.KindRPC) {
		t.Fatal("subscribed before any SUBSCRIBE")
	}
	subscribe(t, c, "outpost/v1/dev-2/down/#") // not its own
	subscribe(t, c, protocol.DownTopic("dev-1", "queue"))
	outposttest.Eventually(t, 10*time.Second, "down/queue subscribed", func() bool { return r.link.Subscribed("dev-1", "queue") })
	if r.link.Subscribed("dev-1", protocol.KindRPC) {
		t.Fatal("down/rpc counted as subscribed after a SUBSCRIBE to down/queue and another device's topics")
	}
	subscribe(t, c, "outpost/v1/+/down/+")
	outposttest.Eventually(t, 10*time.Second, "down/rpc subscribed", func() bool { return r.link.Subscribed("dev-1", protocol.KindRPC) })

	p := connectDevice(t, br.Addr, "dev-2", false)
	defer p.Disconnect(50)
	outposttest.Eventually(t, 10*time.Second, "persistent session online", func() bool { return r.pres.Online("dev-2") })
	if !r.link.Subscribed("dev-2", protocol.KindRPC) {
		t.Fatal("a persistent session (which may hold its subscriptions) does not count as subscribed")
	}
}

// TestEventsMixedSources: a device that announces itself is followed by
// its announcements alone. Its events' session, taken before the
// announcement, is dropped from the queue; its connection's later end in
// the events does not take it offline while its announced session lives;
// the announced end does.
func TestEventsMixedSources(t *testing.T) {
	br := emqxtest.Start(t)
	const dev = "sdk-1"
	r := startReplica(t, br.Addr, "outpost", dev, "sdk-2")
	c := connectDevice(t, br.Addr, dev, true)
	outposttest.Eventually(t, 10*time.Second, "online from the events", func() bool { return r.pres.Online(dev) })
	owned := r.dh.owns()
	if len(owned) != 1 {
		t.Fatalf("%d sessions owned, want 1", len(owned))
	}
	announce := func(online bool) {
		t.Helper()
		msg := fmt.Sprintf(`{"online":%v,"session":"tag-1"}`, online)
		if tok := c.Publish(protocol.Topic(dev, protocol.Up, protocol.KindPresence), 1, false, msg); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	announce(true)
	outposttest.Eventually(t, 10*time.Second, "the events' session dropped", func() bool { return r.dh.goneCount(owned[0]) == 1 })
	announced := extbroker.SessionOf("tag-1")

	// A second connection of a client without announcements would
	// now be online from the events; this device is not followed by them:
	// the end of its event connection changes nothing.
	br.HoldDisconnects()
	c.Disconnect(50)
	outposttest.Eventually(t, 10*time.Second, "the connection's end", func() bool { return br.Held() == 1 })
	br.ReleaseDisconnects()
	// Barrier: another known device's events are handled after it.
	other := startReplicaDevice(t, br, r, "sdk-2")
	defer other.Disconnect(50)
	if !r.pres.Online(dev) {
		t.Fatal("the events' end of an announcing device took it offline")
	}
	// Its announced end (a will, or its last words) does.
	c = connectDevice(t, br.Addr, dev+"-tool", true) // any client may carry it on this open broker
	defer c.Disconnect(50)
	if tok := c.Publish(protocol.Topic(dev, protocol.Up, protocol.KindPresence), 1, false, `{"online":false,"session":"tag-1"}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	outposttest.Eventually(t, 10*time.Second, "offline from the announcement", func() bool { return !r.pres.Online(dev) })
	if r.dh.goneCount(announced) != 1 {
		t.Fatalf("announced session gone %d times", r.dh.goneCount(announced))
	}
}

// startReplicaDevice connects a device that replica r does not know, then
// one it knows, and waits for the known one to show online: every event
// published before is handled by then. The unknown one never shows.
func startReplicaDevice(t *testing.T, br *emqxtest.Broker, r *replica, id string) paho.Client {
	t.Helper()
	u := connectDevice(t, br.Addr, "stranger", true)
	u.Disconnect(50)
	c := connectDevice(t, br.Addr, id, true)
	outposttest.Eventually(t, 10*time.Second, id+" online", func() bool { return r.pres.Online(id) })
	if _, _, ok := r.pres.State("stranger"); ok {
		t.Fatal("a client that is no device has presence")
	}
	if _, _, ok := r.pres.State("outpost"); ok {
		t.Fatal("the platform's own client has presence")
	}
	return c
}
