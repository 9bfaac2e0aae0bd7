package server_test

// Tests of the down path (issue 9): what the platform pushes to devices
// reaches them, and its delivery is confirmed by the device itself. The
// devices here are bare MQTT clients driven as docs/protocol.md says.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

// dial311Session connects over MQTT 3.1.1 like dial311, with the given
// clean-session flag, and reports the CONNACK's session present.
func dial311Session(t *testing.T, p *outposttest.Platform, d outposttest.Device, clean bool) (*bareDevice, bool) {
	t.Helper()
	c := &bareDevice{id: d.ID, lost: make(chan error, 1), arrived: make(chan struct{}, 1)}
	o := mqtt.NewClientOptions().
		AddBroker("tcp://" + p.MQTTAddr()).
		SetProtocolVersion(4).
		SetClientID(d.ID).
		SetUsername(d.ID).
		SetPassword(d.Password).
		SetCleanSession(clean).
		SetKeepAlive(30 * time.Second).
		SetAutoReconnect(false).
		SetOrderMatters(false).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
			select {
			case c.arrived <- struct{}{}:
			default:
			}
		})
	c.Client = mqtt.NewClient(o)
	tok := c.Connect()
	wait(t, tok, "connect")
	t.Cleanup(func() {
		if c.IsConnectionOpen() {
			c.Disconnect(100)
		}
	})
	return c, tok.(*mqtt.ConnectToken).SessionPresent()
}

// waitOffline waits until the platform sees the device offline.
func waitOffline(t *testing.T, p *outposttest.Platform, id string) {
	t.Helper()
	outposttest.Eventually(t, waitFor, "device offline", func() bool {
		var dev struct{ Online bool }
		p.Do(t, "GET", "/api/v1/devices/"+id, nil, &dev)
		return !dev.Online
	})
}

// ack confirms queued messages as docs/protocol.md §21.1 says.
func (c *bareDevice) ack(t *testing.T, ids ...string) {
	t.Helper()
	c.publish(t, topicOf(c.id, "up", "ack"), map[string]any{"ids": ids})
}

// registerSwitch registers an IN_OUT feed "switch" for feed commands.
func (c *bareDevice) registerSwitch(t *testing.T) {
	t.Helper()
	c.publish(t, topicOf(c.id, "up", "feeds"), `{"register":[{"ref":"switch","type":"IN_OUT","data_type":"bool"}]}`)
}

// TestResumedSessionGetsQueue (issue 9, item 3): a device that resumes its
// persistent session (session present = 1) and, as §2.6 says, does not
// subscribe again gets its queue pushed through the subscription its
// session kept.
func TestResumedSessionGetsQueue(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "resumer")
	c, _ := dial311Session(t, p, d, false)
	if code := c.subscribe(t, "outpost/v1/"+d.ID+"/down/#"); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	c.Disconnect(100)
	waitOffline(t, p, d.ID)

	queued := queueCall(t, p, d.ID, "wake", `"up"`, "timeout=30s")
	c2, present := dial311Session(t, p, d, false)
	if !present {
		t.Fatal("session not resumed (session present = 0)")
	}
	var req wireRequest
	if err := json.Unmarshal(c2.next(t, topicOf(d.ID, "down", "rpc")), &req); err != nil || req.ID != queued.ID {
		t.Fatalf("pushed request %+v (%v), want call %s", req, err, queued.ID)
	}
	c2.ack(t, req.ID)
	waitState(t, p, queued.ID, "delivered")
	c2.publish(t, topicOf(d.ID, "up", "rpc"), map[string]any{"id": req.ID, "result": "awake"})
	if got := waitState(t, p, queued.ID, "succeeded"); string(got.Result) != `"awake"` {
		t.Fatalf("call %+v", got)
	}
}

// TestSubscriptionsPerKind (issue 9, item 4): any granted filter that
// matches a message's topic counts, not only down/#; a message on a topic
// no filter matches waits until one does.
func TestSubscriptionsPerKind(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "picky")
	queued := queueCall(t, p, d.ID, "first", "", "")
	c := mustDial311(t, p, d)
	c.registerSwitch(t)
	if code := c.subscribe(t, "outpost/v1/"+d.ID+"/down/rpc"); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	var req wireRequest
	if err := json.Unmarshal(c.next(t, topicOf(d.ID, "down", "rpc")), &req); err != nil || req.ID != queued.ID {
		t.Fatalf("request %+v (%v), want call %s", req, err, queued.ID)
	}

	// Not subscribed to down/feed yet: the command waits.
	var cmd struct{ ID, State string }
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/feeds/switch/value", map[string]any{"value": true}, &cmd); st != http.StatusAccepted || cmd.State != "queued" {
		t.Fatalf("feed command to a device not subscribed to down/feed: %d %+v, want queued", st, cmd)
	}
	if code := c.subscribe(t, "outpost/v1/"+d.ID+"/down/feed"); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	var got struct {
		ID string `json:"id"`
		F  string `json:"f"`
		V  bool   `json:"v"`
	}
	if err := json.Unmarshal(c.next(t, topicOf(d.ID, "down", "feed")), &got); err != nil || got.ID != cmd.ID || got.F != "switch" || !got.V {
		t.Fatalf("feed command %+v (%v), want %s", got, err, cmd.ID)
	}
	// Subscribed to both now: a new command goes out at once.
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/feeds/switch/value", map[string]any{"value": false}, &cmd); st != http.StatusAccepted || cmd.State != "sent" {
		t.Fatalf("feed command: %d %+v, want sent", st, cmd)
	}
	c.next(t, topicOf(d.ID, "down", "feed"))
	if left := c.received(); len(left) != 0 {
		t.Fatalf("unexpected messages: %q", left)
	}
}

// TestParametersPushedOnReconnect (issue 9, item 5): parameters changed
// while the device is away reach it when it is back, without a pull.
func TestParametersPushedOnReconnect(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "away")
	c := mustDial311(t, p, d)
	c.subscribe(t, "outpost/v1/"+d.ID+"/down/#")
	c.Disconnect(100)
	waitOffline(t, p, d.ID)

	var pr struct {
		Version  int64  `json:"version"`
		Delivery string `json:"delivery"`
	}
	if st := p.Do(t, "PATCH", "/api/v1/devices/"+d.ID+"/parameters", map[string]any{"interval": 30}, &pr); st != 200 || pr.Delivery != "queued" {
		t.Fatalf("patch while away: %d %+v, want delivery queued", st, pr)
	}
	c2 := mustDial311(t, p, d)
	c2.subscribe(t, "outpost/v1/"+d.ID+"/down/#")
	var u struct {
		ID      string                     `json:"id"`
		Version int64                      `json:"version"`
		Full    bool                       `json:"full"`
		Values  map[string]json.RawMessage `json:"values"`
	}
	if err := json.Unmarshal(c2.next(t, topicOf(d.ID, "down", "parameters")), &u); err != nil || u.Version != pr.Version || u.Full || string(u.Values["interval"]) != "30" || u.ID == "" {
		t.Fatalf("parameters update %+v (%v)", u, err)
	}
	before := p.Queue().Stats().Delivered.Load()
	c2.ack(t, u.ID)
	outposttest.Eventually(t, waitFor, "parameters change delivered", func() bool {
		return p.Queue().Stats().Delivered.Load() == before+1
	})
}

// TestEveryPushedMessageDelivered (issue 9, item 2): while a device keeps
// 16 telemetry messages in flight (its packet ids run into those of the
// messages pushed to it), every one of 300 pushed messages ends delivered.
// The broker's packet-id bookkeeping lost some of them; the device's own
// acknowledgement (up/ack) does not depend on it.
func TestEveryPushedMessageDelivered(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "busy-both-ways")
	conn, err := net.DialTimeout("tcp", p.MQTTAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ids := make(chan string, 1000)
	var acks sync.WaitGroup
	// ackMu and stopped keep acks.Add (on paho's goroutine) from racing
	// acks.Wait at the end of the test.
	var ackMu sync.Mutex
	stopped := false
	cl := paho.NewClient(paho.ClientConfig{
		Conn: conn,
		// The device takes its time with each command before its PUBACK,
		// so the messages stay in flight while its telemetry goes out.
		EnableManualAcknowledgment: true,
		SendAcksInterval:           time.Millisecond,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			var m struct {
				ID string `json:"id"`
			}
			if strings.HasSuffix(pr.Packet.Topic, "/down/feed") && json.Unmarshal(pr.Packet.Payload, &m) == nil {
				ids <- m.ID
			}
			ackMu.Lock()
			defer ackMu.Unlock()
			if stopped {
				return true, nil
			}
			acks.Add(1)
			go func() {
				defer acks.Done()
				time.Sleep(20 * time.Millisecond)
				_ = pr.Client.Ack(pr.Packet)
			}()
			return true, nil
		}},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cctx, ccancel := context.WithTimeout(ctx, waitFor)
	defer ccancel()
	if _, err := cl.Connect(cctx, &paho.Connect{ClientID: d.ID, KeepAlive: 30, CleanStart: true,
		Username: d.ID, UsernameFlag: true, Password: []byte(d.Password), PasswordFlag: true}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		ackMu.Lock()
		stopped = true
		ackMu.Unlock()
		acks.Wait()
		_ = cl.Disconnect(&paho.Disconnect{})
		conn.Close()
	}()
	if _, err := cl.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topicOf(d.ID, "down", "#"), QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Publish(cctx, &paho.Publish{Topic: topicOf(d.ID, "up", "feeds"), QoS: 1,
		Payload: []byte(`{"register":[{"ref":"switch","type":"IN_OUT","data_type":"bool"},{"ref":"load","data_type":"number"}]}`)}); err != nil {
		t.Fatal(err)
	}
	// The device acknowledges what it gets, a few ids at a time.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			var batch []string
			select {
			case <-ctx.Done():
				return
			case id := <-ids:
				batch = append(batch, id)
			}
		more:
			for len(batch) < 20 {
				select {
				case id := <-ids:
					batch = append(batch, id)
				default:
					break more
				}
			}
			b, _ := json.Marshal(map[string]any{"ids": batch})
			if _, err := cl.Publish(ctx, &paho.Publish{Topic: topicOf(d.ID, "up", "ack"), QoS: 1, Payload: b}); err != nil && ctx.Err() == nil {
				t.Errorf("ack: %v", err)
			}
		}
	}()
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				b := fmt.Sprintf(`{"id":"g%d-%d","r":[{"f":"load","v":%d}]}`, g, n, n)
				if _, err := cl.Publish(ctx, &paho.Publish{Topic: topicOf(d.ID, "up", "telemetry"), QoS: 1, Payload: []byte(b)}); err != nil && ctx.Err() == nil {
					t.Errorf("telemetry: %v", err)
					return
				}
			}
		}()
	}
	before := p.Queue().Stats().Delivered.Load()
	var pushers sync.WaitGroup
	for g := range 4 {
		pushers.Add(1)
		go func() {
			defer pushers.Done()
			for i := range 75 {
				st, body, err := api(p, "POST", "/api/v1/devices/"+d.ID+"/feeds/switch/value", fmt.Sprintf(`{"value":%v}`, (g+i)%2 == 0))
				if err != nil || st != http.StatusAccepted {
					t.Errorf("feed command: %d %s %v", st, body, err)
					return
				}
			}
		}()
	}
	pushers.Wait()
	outposttest.Eventually(t, 30*time.Second, "all 300 pushed messages delivered", func() bool {
		return p.Queue().Stats().Delivered.Load()-before == 300
	})
}

// rawDevice speaks MQTT 5 packet by packet (paho.golang's packet codec, no
// client logic), so a test can choose packet ids and the moment of every
// acknowledgement.
type rawDevice struct {
	conn net.Conn
	id   string
	in   chan *packets.ControlPacket
	held []*packets.ControlPacket // read, not yet taken
}

// dialRaw connects with the CONNECT edit sets and returns the CONNACK.
func dialRaw(t *testing.T, p *outposttest.Platform, d outposttest.Device, edit func(*packets.Connect)) (*rawDevice, *packets.Connack) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.MQTTAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cp := packets.NewControlPacket(packets.CONNECT)
	c := cp.Content.(*packets.Connect)
	c.ClientID, c.Username, c.Password = d.ID, d.ID, []byte(d.Password)
	c.UsernameFlag, c.PasswordFlag, c.CleanStart, c.KeepAlive = true, true, true, 30
	if edit != nil {
		edit(c)
	}
	if _, err := cp.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(waitFor))
	ack, err := packets.ReadPacket(conn)
	if err != nil || ack.Type != packets.CONNACK {
		t.Fatalf("CONNACK: %v %v", ack, err)
	}
	conn.SetReadDeadline(time.Time{})
	r := &rawDevice{conn: conn, id: d.ID, in: make(chan *packets.ControlPacket, 1000)}
	go func() {
		defer close(r.in)
		for {
			pk, err := packets.ReadPacket(conn)
			if err != nil {
				return
			}
			r.in <- pk
		}
	}()
	return r, ack.Content.(*packets.Connack)
}

func (r *rawDevice) send(t *testing.T, cp *packets.ControlPacket) {
	t.Helper()
	if _, err := cp.WriteTo(r.conn); err != nil {
		t.Fatalf("write %s: %v", cp.PacketType(), err)
	}
}

// publish sends a QoS 1 PUBLISH with the given packet id.
func (r *rawDevice) publish(t *testing.T, kind string, id uint16, payload string) {
	t.Helper()
	cp := packets.NewControlPacket(packets.PUBLISH)
	pb := cp.Content.(*packets.Publish)
	pb.Topic, pb.QoS, pb.PacketID, pb.Payload = topicOf(r.id, "up", kind), 1, id, []byte(payload)
	r.send(t, cp)
}

func (r *rawDevice) puback(t *testing.T, id uint16) {
	t.Helper()
	cp := packets.NewControlPacket(packets.PUBACK)
	cp.Content.(*packets.Puback).PacketID = id
	r.send(t, cp)
}

// next returns the first packet (held or new) that match accepts; error
// replies are acknowledged and skipped. It returns nil when the
// connection ends.
func (r *rawDevice) next(t *testing.T, what string, match func(*packets.ControlPacket) bool) *packets.ControlPacket {
	t.Helper()
	for i, pk := range r.held {
		if match(pk) {
			r.held = append(r.held[:i:i], r.held[i+1:]...)
			return pk
		}
	}
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	for {
		select {
		case pk, ok := <-r.in:
			if !ok {
				return nil
			}
			if pb, isPub := pk.Content.(*packets.Publish); isPub && strings.HasSuffix(pb.Topic, "/down/error") {
				r.puback(t, pb.PacketID)
				continue
			}
			if match(pk) {
				return pk
			}
			r.held = append(r.held, pk)
		case <-timer.C:
			t.Fatalf("%s: nothing within %s", what, waitFor)
		}
	}
}

func isPuback(id uint16) func(*packets.ControlPacket) bool {
	return func(pk *packets.ControlPacket) bool {
		a, ok := pk.Content.(*packets.Puback)
		return ok && a.PacketID == id
	}
}

func isPublishOn(suffix string) func(*packets.ControlPacket) bool {
	return func(pk *packets.ControlPacket) bool {
		p, ok := pk.Content.(*packets.Publish)
		return ok && strings.HasSuffix(p.Topic, suffix)
	}
}

// TestPacketIDReuseKeepsDelivery (issue 9, items 1 and 2): a device may
// publish with the packet id of a message in flight to it (the two
// directions are separate in MQTT). The embedded broker keeps one map for
// both, so that PUBLISH erased the outbound record: the device's PUBACK
// then counted for nothing, neither for delivery nor for its send quota.
// With Receive Maximum 1 every command must still go out and every one
// end delivered.
func TestPacketIDReuseKeepsDelivery(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "reuser")
	one := uint16(1)
	r, _ := dialRaw(t, p, d, func(c *packets.Connect) { c.Properties.ReceiveMaximum = &one })
	sub := packets.NewControlPacket(packets.SUBSCRIBE)
	sub.Content.(*packets.Subscribe).PacketID = 1
	sub.Content.(*packets.Subscribe).Subscriptions = []packets.SubOptions{{Topic: topicOf(d.ID, "down", "#"), QoS: 1}}
	r.send(t, sub)
	r.next(t, "SUBACK", func(pk *packets.ControlPacket) bool { return pk.Type == packets.SUBACK })
	r.publish(t, "feeds", 2, `{"register":[{"ref":"switch","type":"IN_OUT","data_type":"bool"},{"ref":"load","data_type":"number"}]}`)
	r.next(t, "PUBACK of feeds", isPuback(2))

	before := p.Queue().Stats().Delivered.Load()
	const n = 20
	for i := range n {
		go api(p, "POST", "/api/v1/devices/"+d.ID+"/feeds/switch/value", `{"value":true}`)
		pk := r.next(t, fmt.Sprintf("command %d", i), isPublishOn("/down/feed"))
		if pk == nil {
			t.Fatalf("connection closed before command %d", i)
		}
		cmd := pk.Content.(*packets.Publish)
		var m struct{ ID string }
		json.Unmarshal(cmd.Payload, &m)
		// Telemetry under the packet id of the command in flight to us.
		r.publish(t, "telemetry", cmd.PacketID, fmt.Sprintf(`{"id":"reuse-%d","r":[{"f":"load","v":%d}]}`, i, i))
		if a := r.next(t, "PUBACK of telemetry", isPuback(cmd.PacketID)); a == nil || a.Content.(*packets.Puback).ReasonCode != 0 {
			t.Fatalf("telemetry %d: PUBACK %v", i, a)
		}
		r.puback(t, cmd.PacketID) // now the command's own PUBACK
		r.publish(t, "ack", 60000+uint16(i), `{"ids":["`+m.ID+`"]}`)
		r.next(t, "PUBACK of ack", isPuback(60000+uint16(i)))
	}
	outposttest.Eventually(t, waitFor, "every command delivered", func() bool {
		return p.Queue().Stats().Delivered.Load()-before == n
	})
}
