package server_test

// Isolation between devices: what docs/protocol.md promises under "Access
// control". Device A is an attacker with valid credentials of its own; B is
// an honest device. Nothing A does may reach B, B's stored data, or show A
// anything of B's traffic.

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

// quiet is how long a test waits for messages that must not come, after a
// positive control has shown that the path works.
const quiet = 300 * time.Millisecond

// forbiddenFilters returns subscription filters device a must be refused
// because they would match b's (or anyone's) topics.
func forbiddenFilters(a, b string) []string {
	return []string{
		"#",
		"+",
		"+/#",
		"outpost/#",
		"outpost/v1/#",
		"outpost/v1/+",
		"outpost/v1/+/#",
		"outpost/v1/+/down/#",
		"outpost/v1/+/up/#",
		"outpost/v1/+/down/rpc",
		"outpost/+/" + a + "/#",
		"+/v1/" + b + "/#",
		"outpost/v1/" + b,
		"outpost/v1/" + b + "/#",
		"outpost/v1/" + b + "/down/#",
		"outpost/v1/" + b + "/down/rpc",
		"outpost/v1/" + b + "/up/telemetry",
		"outpost/v1/" + a + "x/#",
		"outpost/v1/" + a[:len(a)-1] + "/#",
		"$share/g/outpost/v1/" + b + "/down/#",
		"$share/g/#",
		"$SYS/#",
	}
}

// forgedRequest is an RPC request as the platform would send it.
const forgedRequest = `{"id":"forged-by-a","method":"reset"}`

// bTraffic makes B publish telemetry and answer an RPC, and checks both
// through the API: the positive control that B's traffic flowed while A was
// listening.
func bTraffic(t *testing.T, p *outposttest.Platform, b *bareDevice, feed string) {
	t.Helper()
	b.publish(t, topicOf(b.id, "up", "telemetry"), wireBatch{ID: "b-" + feed, R: []wireReading{{F: feed, V: 1}}})
	if got := readings(t, p, b.id, "?feed="+feed); len(got.Readings) != 1 {
		t.Fatalf("B's reading of %s not stored: %+v", feed, got.Readings)
	}
	call := callRPC(p, b.id, "status", `{"q":1}`)
	var req wireRequest
	if err := json.Unmarshal(b.next(t, topicOf(b.id, "down", "rpc")), &req); err != nil {
		t.Fatal(err)
	}
	if req.ID == "forged-by-a" {
		t.Fatal("B received A's forged RPC request")
	}
	b.publish(t, topicOf(b.id, "up", "rpc"), map[string]any{"id": req.ID, "result": "fine"})
	if r := outcome(t, call); r.status != http.StatusOK {
		t.Fatalf("rpc to B: %d %s", r.status, r.body)
	}
	// And an error reply on B's down/error.
	b.publish(t, topicOf(b.id, "up", "telemetry"), `not json`)
	b.next(t, topicOf(b.id, "down", "error"))
}

// onlyOwn fails if c collected any message outside its own namespace.
func onlyOwn(t *testing.T, c *bareDevice) {
	t.Helper()
	for _, m := range c.received() {
		if !strings.HasPrefix(m, "outpost/v1/"+c.id+"/") {
			t.Errorf("%s received a message of someone else: %s", c.id, m)
		}
	}
}

// bFeeds returns the feeds stored for device b.
func bFeeds(t *testing.T, p *outposttest.Platform, id string) []string {
	t.Helper()
	var f struct{ Feeds []string }
	if st := p.Do(t, "GET", "/api/v1/devices/"+id+"/feeds", nil, &f); st != http.StatusOK {
		t.Fatalf("feeds: status %d", st)
	}
	return f.Feeds
}

func TestACLIsolationMQTT311(t *testing.T) {
	p := outposttest.Start(t)
	da, db := p.CreateDevice(t, "attacker"), p.CreateDevice(t, "victim")
	b := mustDial311(t, p, db)
	if code := b.subscribe(t, "outpost/v1/"+db.ID+"/down/#"); code != 1 {
		t.Fatalf("B's own subscription: SUBACK 0x%02x", code)
	}
	a := mustDial311(t, p, da)

	t.Run("subscriptions outside the own namespace are refused", func(t *testing.T) {
		for _, f := range forbiddenFilters(da.ID, db.ID) {
			if code := a.subscribe(t, f); code != 0x80 {
				t.Errorf("A subscribing to %q: SUBACK 0x%02x, want 0x80", f, code)
			}
		}
		// The refusals do not end the connection, and A's own namespace
		// is fine.
		if code := a.subscribe(t, "outpost/v1/"+da.ID+"/#"); code != 1 {
			t.Fatalf("A's own namespace: SUBACK 0x%02x", code)
		}
	})

	t.Run("QoS 0 publishes outside the own up/ are dropped", func(t *testing.T) {
		forged := wireBatch{ID: "forged", R: []wireReading{{F: "forged", V: 666}}}
		for _, topic := range []string{
			topicOf(db.ID, "up", "telemetry"),
			topicOf(db.ID, "up", "rpc"),
			topicOf(db.ID, "down", "rpc"),
			topicOf(db.ID, "down", "error"),
			topicOf(da.ID, "down", "rpc"), // even A's own down topics
			"outpost/v1/" + db.ID,
			"elsewhere/topic",
		} {
			payload := encode(t, forged)
			if strings.Contains(topic, "/down/rpc") {
				payload = []byte(forgedRequest)
			}
			wait(t, a.Publish(topic, 0, false, payload), "QoS 0 publish to "+topic)
		}
		// Positive control: A's own QoS 1 batch is acknowledged after the
		// QoS 0 messages before it were handled, on the same connection.
		a.publish(t, topicOf(da.ID, "up", "telemetry"), wireBatch{ID: "own", R: []wireReading{{F: "own", V: 1}}})
		if got := readings(t, p, da.ID, "?feed=own"); len(got.Readings) != 1 {
			t.Fatalf("A's own reading: %+v", got.Readings)
		}
		if !a.IsConnectionOpen() {
			t.Fatal("QoS 0 refusals closed the connection")
		}
	})

	t.Run("A sees nothing of B's traffic", func(t *testing.T) {
		bTraffic(t, p, b, "b1")
		// Positive control for A's subscription: A's own RPC arrives.
		call := callRPC(p, da.ID, "mine", "")
		var req wireRequest
		json.Unmarshal(a.next(t, topicOf(da.ID, "down", "rpc")), &req)
		a.publish(t, topicOf(da.ID, "up", "rpc"), map[string]any{"id": req.ID, "result": 1})
		if r := outcome(t, call); r.status != http.StatusOK {
			t.Fatalf("rpc to A: %d %s", r.status, r.body)
		}
		time.Sleep(quiet) // bounded wait for messages that must not come
		onlyOwn(t, a)
		onlyOwn(t, b)
		if left := b.received(); len(left) != 0 {
			t.Fatalf("B received more than its own traffic: %q", left)
		}
		if fs := bFeeds(t, p, db.ID); len(fs) != 1 || fs[0] != "b1" {
			t.Fatalf("B's feeds = %q, want only b1", fs)
		}
	})

	t.Run("QoS 1 publishes outside the own up/ close the connection", func(t *testing.T) {
		for _, topic := range []string{
			topicOf(db.ID, "up", "telemetry"),
			topicOf(db.ID, "down", "rpc"),
			topicOf(da.ID, "down", "rpc"),
		} {
			t.Run(topic, func(t *testing.T) {
				c := mustDial311(t, p, da)
				payload := encode(t, wireBatch{ID: "forged-1", R: []wireReading{{F: "forged1", V: 666}}})
				if strings.Contains(topic, "/down/") {
					payload = []byte(forgedRequest)
				}
				tok := c.Publish(topic, 1, false, payload)
				select {
				case <-c.lost:
				case <-time.After(waitFor):
					t.Fatal("connection still open")
				}
				if tok.WaitTimeout(waitFor) && tok.Error() == nil {
					t.Fatal("forged publish acknowledged")
				}
			})
		}
		time.Sleep(quiet)
		if left := b.received(); len(left) != 0 {
			t.Fatalf("B received: %q", left)
		}
		if fs := bFeeds(t, p, db.ID); len(fs) != 1 || fs[0] != "b1" {
			t.Fatalf("B's feeds = %q, want only b1", fs)
		}
	})

	t.Run("A's client id cannot take over B", func(t *testing.T) {
		// The session is keyed by the username: A logging in with B's
		// id as its MQTT client id takes over A (if anything), never B.
		c, err := dial311(t, p, da.ID, da.Password, db.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Disconnect(100)
		bTraffic(t, p, b, "b2")
		select {
		case err := <-b.lost:
			t.Fatalf("B lost its connection: %v", err)
		default:
		}
	})
}

func TestACLIsolationMQTT5(t *testing.T) {
	p := outposttest.Start(t)
	da, db := p.CreateDevice(t, "attacker5"), p.CreateDevice(t, "victim5")
	b := mustDial311(t, p, db)
	if code := b.subscribe(t, "outpost/v1/"+db.ID+"/down/#"); code != 1 {
		t.Fatalf("B's own subscription: SUBACK 0x%02x", code)
	}
	a, _, msgs, disc, err := dial5(t, p, da.ID, da.Password, da.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, f := range forbiddenFilters(da.ID, db.ID) {
		sa, err := a.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: f, QoS: 1}}})
		if sa == nil {
			t.Fatalf("subscribe %q: %v", f, err)
		}
		if sa.Reasons[0] != 0x87 {
			t.Errorf("A subscribing to %q: SUBACK 0x%02x, want 0x87 (not authorized)", f, sa.Reasons[0])
		}
	}
	if sa, err := a.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "outpost/v1/" + da.ID + "/#", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("A's own namespace: %v %+v", err, sa)
	}

	for _, topic := range []string{
		topicOf(db.ID, "up", "telemetry"),
		topicOf(db.ID, "up", "rpc"),
		topicOf(db.ID, "down", "rpc"),
		topicOf(db.ID, "down", "error"),
		topicOf(da.ID, "down", "rpc"),
		"elsewhere/topic",
	} {
		payload := `{"id":"forged","r":[{"f":"forged","v":666}]}`
		if strings.HasSuffix(topic, "/down/rpc") {
			payload = forgedRequest
		}
		pr, err := a.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
		if pr == nil {
			t.Fatalf("publish to %s: %v", topic, err)
		}
		if pr.ReasonCode != 0x87 {
			t.Errorf("A publishing to %s: PUBACK 0x%02x, want 0x87 (not authorized)", topic, pr.ReasonCode)
		}
	}
	// The connection stays up on MQTT 5, and A's own messages still work.
	if pr, err := a.Publish(ctx, &paho.Publish{Topic: topicOf(da.ID, "up", "telemetry"), QoS: 1, Payload: []byte(`{"r":[{"f":"own","v":1}]}`)}); err != nil || pr.ReasonCode != 0 {
		t.Fatalf("A's own publish after refusals: %v %+v", err, pr)
	}

	bTraffic(t, p, b, "b1")
	time.Sleep(quiet)
	for len(msgs) > 0 {
		m := <-msgs
		if !strings.HasPrefix(m.Topic, "outpost/v1/"+da.ID+"/") {
			t.Errorf("A received %s %s", m.Topic, m.Payload)
		}
	}
	if left := b.received(); len(left) != 0 {
		t.Fatalf("B received: %q", left)
	}
	if fs := bFeeds(t, p, db.ID); len(fs) != 1 || fs[0] != "b1" {
		t.Fatalf("B's feeds = %q, want only b1", fs)
	}
	select {
	case d := <-disc:
		t.Fatalf("A was disconnected: 0x%02x", d.ReasonCode)
	default:
	}
}

// TestACLWillMessage: a device must not be able to reach another device
// through its will message, which the broker publishes for it when its
// connection drops.
//
// mochi-mqtt publishes a will (and retains it, with the retain flag)
// without calling OnACLCheck or OnPublish, so internal/broker refuses, at
// CONNECT, a will whose topic is not under the device's own up/.
func TestACLWillMessage(t *testing.T) {
	p := outposttest.Start(t)
	da, db := p.CreateDevice(t, "will-attacker"), p.CreateDevice(t, "will-victim")
	b := mustDial311(t, p, db)
	if code := b.subscribe(t, "outpost/v1/"+db.ID+"/down/#"); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	for _, retain := range []bool{false, true} {
		_, conn, _, _, err := dial5(t, p, da.ID, da.Password, da.ID, &paho.WillMessage{
			Topic: topicOf(db.ID, "down", "rpc"), QoS: 1, Retain: retain, Payload: []byte(forgedRequest),
		})
		if err != nil {
			// Refusing such a connection is one right answer.
			t.Logf("connection with a will on another device's topic refused: %v", err)
			continue
		}
		conn.Close() // drop without DISCONNECT: the broker sends the will
		outposttest.Eventually(t, waitFor, "A offline", func() bool {
			var dev struct{ Online bool }
			p.Do(t, "GET", "/api/v1/devices/"+da.ID, nil, &dev)
			return !dev.Online
		})
	}
	// A retained will would reach B on its next subscription.
	if code := b.subscribe(t, "outpost/v1/"+db.ID+"/down/rpc"); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	time.Sleep(quiet)
	if left := b.received(); len(left) != 0 {
		t.Fatalf("B received A's will message: %q", left)
	}
}
