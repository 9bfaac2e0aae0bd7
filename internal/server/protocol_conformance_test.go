package server_test

// The tests in this file prove docs/protocol.md: a device built from a
// general-purpose MQTT client and the document alone — no Outpost SDK, no
// protocol package — connects, sends telemetry and answers RPCs. Every
// message is written and read as plain JSON here, in the shapes the
// document gives.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

// Wire shapes, as docs/protocol.md gives them.
type (
	wireReading struct {
		F string `json:"f"`
		V any    `json:"v"`
		T int64  `json:"t,omitempty"`
	}
	wireBatch struct {
		ID string        `json:"id,omitempty"`
		R  []wireReading `json:"r"`
	}
	wireRequest struct {
		ID       string          `json:"id"`
		Method   string          `json:"method"`
		Args     json.RawMessage `json:"args"`
		Deadline int64           `json:"deadline"`
	}
	wireErrorReply struct {
		Kind     string `json:"kind"`
		ID       string `json:"id"`
		Code     string `json:"code"`
		Message  string `json:"message"`
		Rejected int    `json:"rejected"`
	}
	apiReadings struct {
		Readings []struct {
			Feed  string          `json:"feed"`
			TS    int64           `json:"ts"`
			Value json.RawMessage `json:"value"`
		} `json:"readings"`
	}
)

const waitFor = 10 * time.Second

func topicOf(id, dir, kind string) string { return "outpost/v1/" + id + "/" + dir + "/" + kind }

// bareDevice is an MQTT 3.1.1 client (paho.mqtt.golang) with every message
// the broker delivers collected in arrival order.
type bareDevice struct {
	mqtt.Client
	id   string
	lost chan error // receives once when the connection drops

	mu      sync.Mutex
	msgs    []mqtt.Message
	arrived chan struct{} // signalled on every message
}

// dial311 connects over MQTT 3.1.1 with clean session. It returns the
// connect error instead of failing, so tests can check refusals.
func dial311(t *testing.T, p *outposttest.Platform, username, password, clientID string) (*bareDevice, error) {
	t.Helper()
	c := &bareDevice{id: username, lost: make(chan error, 1), arrived: make(chan struct{}, 1)}
	o := mqtt.NewClientOptions().
		AddBroker("tcp://" + p.MQTTAddr()).
		SetProtocolVersion(4).
		SetClientID(clientID).
		SetUsername(username).
		SetPassword(password).
		SetCleanSession(true).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(5 * time.Second).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
			select {
			case c.arrived <- struct{}{}:
			default:
			}
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	c.Client = mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(waitFor) {
		c.Disconnect(0)
		return nil, fmt.Errorf("connect: no CONNACK within %s", waitFor)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if c.IsConnectionOpen() {
			c.Disconnect(100)
		}
	})
	return c, nil
}

func mustDial311(t *testing.T, p *outposttest.Platform, d outposttest.Device) *bareDevice {
	t.Helper()
	c, err := dial311(t, p, d.ID, d.Password, d.ID)
	if err != nil {
		t.Fatalf("connect %s: %v", d.ID, err)
	}
	return c
}

// wait waits for a token with a deadline and checks its error: a bare
// Wait can return early after a reconnect (paho.mqtt.golang #563).
func wait(t *testing.T, tok mqtt.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(waitFor) {
		t.Fatalf("%s: no answer within %s", what, waitFor)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// subscribe subscribes with QoS 1 and returns the granted code from the
// SUBACK (0x00–0x02, or 0x80 for a refusal).
func (c *bareDevice) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, nil) // nil: the default handler collects
	wait(t, tok, "subscribe "+filter)
	// One filter, one result (keyed by the filter, minus any $share/ prefix).
	res := tok.(*mqtt.SubscribeToken).Result()
	if len(res) != 1 {
		t.Fatalf("subscribe %s: SUBACK results %v", filter, res)
	}
	for _, code := range res {
		return code
	}
	panic("unreachable")
}

func (c *bareDevice) publish(t *testing.T, topic string, payload any) {
	t.Helper()
	wait(t, c.Publish(topic, 1, false, encode(t, payload)), "publish to "+topic)
}

func encode(t *testing.T, payload any) []byte {
	t.Helper()
	switch p := payload.(type) {
	case []byte:
		return p
	case string:
		return []byte(p)
	}
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// next returns the first collected message on topic, waiting for it; the
// messages before it stay collected.
func (c *bareDevice) next(t *testing.T, topic string) []byte {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		for i, m := range c.msgs {
			if m.Topic() == topic {
				c.msgs = append(c.msgs[:i:i], c.msgs[i+1:]...)
				c.mu.Unlock()
				return m.Payload()
			}
		}
		c.mu.Unlock()
		select {
		case <-c.arrived:
		case <-deadline.C:
			t.Fatalf("%s: nothing arrived on %s within %s", c.id, topic, waitFor)
		}
	}
}

// received returns the topics of every message collected so far.
func (c *bareDevice) received() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ts []string
	for _, m := range c.msgs {
		ts = append(ts, m.Topic()+" "+string(m.Payload()))
	}
	return ts
}

// api sends an authenticated API request and returns status and body. It
// does not touch t, so it may run in a goroutine.
func api(p *outposttest.Platform, method, path, body string) (int, []byte, error) {
	req, err := http.NewRequest(method, p.HTTPURL()+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+p.AdminToken())
	cl := &http.Client{Timeout: 30 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

type callResult struct {
	status int
	body   []byte
	err    error
}

// callRPC starts POST /api/v1/devices/{id}/rpc/{method}; receive the
// outcome from the returned channel.
func callRPC(p *outposttest.Platform, id, method, args string) <-chan callResult {
	ch := make(chan callResult, 1)
	go func() {
		st, b, err := api(p, "POST", "/api/v1/devices/"+id+"/rpc/"+method+"?timeout=10s", args)
		ch <- callResult{st, b, err}
	}()
	return ch
}

func outcome(t *testing.T, ch <-chan callResult) callResult {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("rpc call: %v", r.err)
		}
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("rpc call did not return")
	}
	panic("unreachable")
}

func readings(t *testing.T, p *outposttest.Platform, id, query string) apiReadings {
	t.Helper()
	var r apiReadings
	if st := p.Do(t, "GET", "/api/v1/devices/"+id+"/telemetry"+query, nil, &r); st != http.StatusOK {
		t.Fatalf("GET telemetry of %s: status %d", id, st)
	}
	return r
}

func TestProtocolConformanceMQTT311(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "bare-311")
	c := mustDial311(t, p, d)
	up := func(kind string) string { return topicOf(d.ID, "up", kind) }
	down := func(kind string) string { return topicOf(d.ID, "down", kind) }

	// Subscribe first: RPC requests and error replies are not kept for a
	// device that has not subscribed yet.
	if code := c.subscribe(t, "outpost/v1/"+d.ID+"/down/#"); code != 1 {
		t.Fatalf("SUBACK for own down/# = 0x%02x, want 0x01", code)
	}

	t.Run("telemetry", func(t *testing.T) {
		ts := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC).UnixMilli()
		batch := wireBatch{ID: "conformance-1", R: []wireReading{
			{F: "temperature", V: 21.5, T: ts},
			{F: "temperature", V: 22, T: ts + 1000},
			{F: "door", V: true, T: ts},
			{F: "status", V: "ok", T: ts},
			{F: "uptime", V: 42}, // no timestamp: stamped on receipt
		}}
		before := time.Now().UnixMilli()
		c.publish(t, up("telemetry"), batch)
		after := time.Now().UnixMilli()

		// The PUBACK came after the commit, so the readings are there
		// now, without polling.
		got := readings(t, p, d.ID, "?feed=temperature")
		if len(got.Readings) != 2 || got.Readings[0].TS != ts || string(got.Readings[0].Value) != "21.5" ||
			got.Readings[1].TS != ts+1000 || string(got.Readings[1].Value) != "22" {
			t.Fatalf("temperature readings = %+v", got.Readings)
		}
		for feed, want := range map[string]string{"door": "true", "status": `"ok"`, "uptime": "42"} {
			r := readings(t, p, d.ID, "?feed="+feed)
			if len(r.Readings) != 1 || string(r.Readings[0].Value) != want {
				t.Fatalf("feed %s readings = %+v, want one of value %s", feed, r.Readings, want)
			}
			if feed == "uptime" && (r.Readings[0].TS < before || r.Readings[0].TS > after) {
				t.Fatalf("uptime stamped %d, want between %d and %d (receipt)", r.Readings[0].TS, before, after)
			} else if feed != "uptime" && r.Readings[0].TS != ts {
				t.Fatalf("feed %s ts = %d, want %d", feed, r.Readings[0].TS, ts)
			}
		}

		// Redelivery: the same batch id again (as after a lost PUBACK) is
		// acknowledged and stored once. Different content under a used id
		// is dropped too: ids must not be reused.
		c.publish(t, up("telemetry"), batch)
		batch.R = []wireReading{{F: "temperature", V: 99, T: ts + 2000}}
		c.publish(t, up("telemetry"), batch)
		if got := readings(t, p, d.ID, "?feed=temperature"); len(got.Readings) != 2 {
			t.Fatalf("after redelivery: %d temperature readings, want 2: %+v", len(got.Readings), got.Readings)
		}
		// A batch without an id is stored every time it arrives.
		noID := wireBatch{R: []wireReading{{F: "counter", V: 1, T: ts}}}
		c.publish(t, up("telemetry"), noID)
		c.publish(t, up("telemetry"), noID)
		if got := readings(t, p, d.ID, "?feed=counter"); len(got.Readings) != 2 {
			t.Fatalf("batch without id sent twice: %d readings, want 2", len(got.Readings))
		}
	})

	t.Run("malformed telemetry", func(t *testing.T) {
		// Rejected for good: MQTT 3.1.1 acknowledges (so the device does
		// not resend) and the reason arrives on down/error.
		c.publish(t, up("telemetry"), `{"id":"broken","r":[{"f":"temperature","v":`)
		var e wireErrorReply
		if err := json.Unmarshal(c.next(t, down("error")), &e); err != nil {
			t.Fatal(err)
		}
		if e.Kind != "telemetry" || e.Code != "invalid" || e.Message == "" || e.Rejected != 0 {
			t.Fatalf("error reply = %+v, want kind telemetry, code invalid", e)
		}
	})

	t.Run("partly bad batch", func(t *testing.T) {
		c.publish(t, up("telemetry"), `{"id":"partly","r":[{"f":"good","v":1,"t":1700000000000},{"f":"bad feed","v":1},{"f":"nothing","v":null},{"f":"obj","v":{"a":1}}]}`)
		var e wireErrorReply
		if err := json.Unmarshal(c.next(t, down("error")), &e); err != nil {
			t.Fatal(err)
		}
		if e.Kind != "telemetry" || e.ID != "partly" || e.Code != "invalid" || e.Rejected != 3 {
			t.Fatalf("error reply = %+v, want kind telemetry, id partly, code invalid, rejected 3", e)
		}
		if got := readings(t, p, d.ID, "?feed=good"); len(got.Readings) != 1 {
			t.Fatalf("the valid reading of a partly bad batch was not stored: %+v", got.Readings)
		}
	})

	t.Run("too large string", func(t *testing.T) {
		c.publish(t, up("telemetry"), wireBatch{ID: "big", R: []wireReading{{F: "s", V: strings.Repeat("x", 4095)}}})
		var e wireErrorReply
		json.Unmarshal(c.next(t, down("error")), &e)
		if e.Code != "too_large" || e.ID != "big" || e.Rejected != 1 {
			t.Fatalf("error reply = %+v, want too_large for batch big", e)
		}
	})

	t.Run("unknown kind", func(t *testing.T) {
		c.publish(t, up("bogus"), `{}`)
		var e wireErrorReply
		json.Unmarshal(c.next(t, down("error")), &e)
		if e.Kind != "bogus" || e.Code != "unknown_kind" {
			t.Fatalf("error reply = %+v, want kind bogus, code unknown_kind", e)
		}
	})

	t.Run("rpc", func(t *testing.T) {
		call := callRPC(p, d.ID, "add", `{"a":2,"b":40}`)
		var req wireRequest
		if err := json.Unmarshal(c.next(t, down("rpc")), &req); err != nil {
			t.Fatal(err)
		}
		if req.ID == "" || req.Method != "add" || string(req.Args) != `{"a":2,"b":40}` {
			t.Fatalf("request = %+v", req)
		}
		if now := time.Now().UnixMilli(); req.Deadline < now || req.Deadline > now+11_000 {
			t.Fatalf("deadline %d is not about 10s after %d", req.Deadline, now)
		}
		var args struct{ A, B int }
		json.Unmarshal(req.Args, &args)
		c.publish(t, up("rpc"), map[string]any{"id": req.ID, "result": map[string]int{"sum": args.A + args.B}})
		r := outcome(t, call)
		var res struct {
			ID     string `json:"id"`
			Result struct{ Sum int }
		}
		json.Unmarshal(r.body, &res)
		if r.status != http.StatusOK || res.Result.Sum != 42 || res.ID != req.ID {
			t.Fatalf("rpc add: status %d body %s", r.status, r.body)
		}

		// A duplicate or late answer is acknowledged and ignored: no
		// error reply. (Checked at the end of the test.)
		c.publish(t, up("rpc"), map[string]any{"id": req.ID, "result": 0})
	})

	t.Run("rpc errors", func(t *testing.T) {
		for _, tc := range []struct {
			method string
			reply  string
			status int
			code   string
			msg    string
		}{
			{"fail", `{"code":"handler_error","message":"sensor 3 is not responding"}`, http.StatusBadGateway, "handler_error", "sensor 3 is not responding"},
			{"nosuch", `{"code":"unknown_method","message":"no method \"nosuch\""}`, http.StatusNotImplemented, "unknown_method", "nosuch"},
			{"reset", `{"code":"not_supported","message":"reset is not supported by this device"}`, http.StatusNotImplemented, "not_supported", "reset is not supported"},
			{"nocode", `{"message":"no code given"}`, http.StatusBadGateway, "handler_error", "no code given"},
		} {
			t.Run(tc.method, func(t *testing.T) {
				call := callRPC(p, d.ID, tc.method, "")
				var req wireRequest
				json.Unmarshal(c.next(t, down("rpc")), &req)
				if req.Method != tc.method || req.Args != nil {
					t.Fatalf("request = %+v (args %s), want method %s without args", req, req.Args, tc.method)
				}
				c.publish(t, up("rpc"), `{"id":"`+req.ID+`","error":`+tc.reply+`}`)
				r := outcome(t, call)
				var e struct {
					Error struct{ Code, Message string }
				}
				json.Unmarshal(r.body, &e)
				if r.status != tc.status || e.Error.Code != tc.code || !strings.Contains(e.Error.Message, tc.msg) {
					t.Fatalf("status %d body %s, want %d %s %q", r.status, r.body, tc.status, tc.code, tc.msg)
				}
			})
		}
	})

	t.Run("malformed rpc response", func(t *testing.T) {
		c.publish(t, up("rpc"), `{"result":1}`)
		var e wireErrorReply
		json.Unmarshal(c.next(t, down("error")), &e)
		if e.Kind != "rpc" || e.Code != "invalid" {
			t.Fatalf("error reply = %+v, want kind rpc, code invalid", e)
		}
	})

	t.Run("queued call and ack", func(t *testing.T) {
		// §21: a queued message carries its id in the payload; the device
		// confirms it on up/ack (MQTT 3.1.1 has no user properties), and
		// its answer settles the call.
		c1 := queueCall(t, p, d.ID, "later", `{"n":1}`, "timeout=30s")
		var req wireRequest
		if err := json.Unmarshal(c.next(t, down("rpc")), &req); err != nil || req.ID != c1.ID || req.Deadline == 0 {
			t.Fatalf("queued request %+v (%v), want id %s with a deadline", req, err, c1.ID)
		}
		c.publish(t, up("ack"), map[string]any{"ids": []string{req.ID}})
		waitState(t, p, c1.ID, "delivered")
		c.publish(t, up("rpc"), map[string]any{"id": req.ID, "result": 1})
		waitState(t, p, c1.ID, "succeeded")

		// An answer alone confirms delivery too.
		c2 := queueCall(t, p, d.ID, "later", `{"n":2}`, "timeout=30s")
		json.Unmarshal(c.next(t, down("rpc")), &req)
		c.publish(t, up("rpc"), map[string]any{"id": req.ID, "result": 2})
		waitState(t, p, c2.ID, "succeeded")

		// Acks for unknown ids are accepted and ignored; a malformed ack
		// is rejected like any message.
		c.publish(t, up("ack"), map[string]any{"ids": []string{"no-such-message"}})
		c.publish(t, up("ack"), `{"ids":[]}`)
		var e wireErrorReply
		json.Unmarshal(c.next(t, down("error")), &e)
		if e.Kind != "ack" || e.Code != "invalid" {
			t.Fatalf("error reply = %+v, want kind ack, code invalid", e)
		}
	})

	// Nothing else arrived: no error replies for the valid messages, the
	// redelivered batch or the duplicate RPC answer.
	if left := c.received(); len(left) != 0 {
		t.Fatalf("unexpected messages: %q", left)
	}
}

// TestProtocolConformanceTakeover311: a second login with the same
// credentials takes over; the first connection is closed. The client id
// does not matter, the username does.
func TestProtocolConformanceTakeover311(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "twin-311")
	first := mustDial311(t, p, d)
	second, err := dial311(t, p, d.ID, d.Password, "some-other-client-id")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.lost:
	case <-time.After(waitFor):
		t.Fatal("first connection still open after a second login")
	}
	if code := second.subscribe(t, "outpost/v1/"+d.ID+"/down/#"); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	call := callRPC(p, d.ID, "who", "")
	var req wireRequest
	json.Unmarshal(second.next(t, topicOf(d.ID, "down", "rpc")), &req)
	second.publish(t, topicOf(d.ID, "up", "rpc"), map[string]any{"id": req.ID, "result": "second"})
	if r := outcome(t, call); r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"result":"second"`)) {
		t.Fatalf("rpc after takeover: %d %s", r.status, r.body)
	}
}

func TestProtocolConformanceBadCredentials311(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "locked-311")
	for _, tc := range []struct{ name, user, pass string }{
		{"wrong password", d.ID, "wrong"},
		{"unknown device", "d-doesnotexist", d.Password},
		{"empty password", d.ID, ""},
		{"bad username", "no/such+id", d.Password},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, err := dial311(t, p, tc.user, tc.pass, tc.user); err == nil {
				c.Disconnect(0)
				t.Fatal("connected")
			} else if !strings.Contains(err.Error(), "not Authorized") && !strings.Contains(err.Error(), "bad user name or password") {
				t.Fatalf("connect error %v, want CONNACK 0x05 not authorized", err)
			}
		})
	}
}

// dial5 connects over MQTT 5 with paho.golang's low-level client. The
// returned channel receives every PUBLISH; disc receives a server
// DISCONNECT.
func dial5(t *testing.T, p *outposttest.Platform, username, password, clientID string, will *paho.WillMessage) (*paho.Client, net.Conn, <-chan *paho.Publish, <-chan *paho.Disconnect, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.MQTTAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan *paho.Publish, 100)
	disc := make(chan *paho.Disconnect, 1)
	c := paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case disc <- d:
			default:
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cp := &paho.Connect{
		ClientID: clientID, KeepAlive: 30, CleanStart: true,
		Username: username, UsernameFlag: true,
		Password: []byte(password), PasswordFlag: password != "",
		WillMessage: will,
	}
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		if ack != nil {
			return nil, nil, nil, nil, fmt.Errorf("connack 0x%02x: %w", ack.ReasonCode, err)
		}
		return nil, nil, nil, nil, err
	}
	t.Cleanup(func() {
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		conn.Close()
		select {
		case <-c.Done():
		case <-time.After(waitFor):
			t.Errorf("paho client did not stop")
		}
	})
	return c, conn, msgs, disc, nil
}

func TestProtocolConformanceMQTT5(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "bare-5")
	c, _, msgs, disc, err := dial5(t, p, d.ID, d.Password, d.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "outpost/v1/" + d.ID + "/down/#", QoS: 1}}})
	if err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %+v", err, sa)
	}
	pub := func(kind string, payload string) byte {
		t.Helper()
		pr, err := c.Publish(ctx, &paho.Publish{Topic: topicOf(d.ID, "up", kind), QoS: 1, Payload: []byte(payload)})
		if pr == nil {
			t.Fatalf("publish on %s: %v", kind, err)
		}
		return pr.ReasonCode
	}
	nextError := func() wireErrorReply {
		t.Helper()
		select {
		case m := <-msgs:
			var e wireErrorReply
			if m.Topic != topicOf(d.ID, "down", "error") || json.Unmarshal(m.Payload, &e) != nil {
				t.Fatalf("got %s %s, want an error reply", m.Topic, m.Payload)
			}
			return e
		case <-time.After(waitFor):
			t.Fatal("no error reply")
		}
		panic("unreachable")
	}

	if rc := pub("telemetry", `{"id":"v5-1","r":[{"f":"t","v":1.5,"t":1700000000000}]}`); rc != 0x00 {
		t.Fatalf("valid batch: PUBACK 0x%02x", rc)
	}
	if got := readings(t, p, d.ID, "?feed=t"); len(got.Readings) != 1 {
		t.Fatalf("readings after PUBACK: %+v", got.Readings)
	}
	if rc := pub("telemetry", `{"id":"v5-1","r":[{"f":"t","v":1.5,"t":1700000000000}]}`); rc != 0x00 {
		t.Fatalf("redelivered batch: PUBACK 0x%02x", rc)
	}
	for _, tc := range []struct {
		kind, payload string
		rc            byte
		code          string
	}{
		{"telemetry", `not json`, 0x99, "invalid"},
		{"telemetry", `{"r":[{"f":"x","v":null}]}`, 0x99, "invalid"},
		{"telemetry", `{"r":[{"f":"s","v":"` + strings.Repeat("x", 4095) + `"}]}`, 0x99, "too_large"},
		{"bogus", `{}`, 0x90, "unknown_kind"},
		{"rpc", `{"result":1}`, 0x99, "invalid"},
	} {
		if rc := pub(tc.kind, tc.payload); rc != tc.rc {
			t.Errorf("%s %.30s: PUBACK 0x%02x, want 0x%02x", tc.kind, tc.payload, rc, tc.rc)
		}
		if e := nextError(); e.Code != tc.code || e.Kind != tc.kind {
			t.Errorf("%s %.30s: error reply %+v, want code %s", tc.kind, tc.payload, e, tc.code)
		}
	}
	// A batch with one good reading is stored: success, plus an error
	// reply for the rest.
	if rc := pub("telemetry", `{"id":"v5-2","r":[{"f":"t","v":2,"t":1700000001000},{"f":"","v":1}]}`); rc != 0x00 {
		t.Fatalf("partly bad batch: PUBACK 0x%02x", rc)
	}
	if e := nextError(); e.ID != "v5-2" || e.Rejected != 1 {
		t.Fatalf("error reply %+v", e)
	}
	if got := readings(t, p, d.ID, "?feed=t"); len(got.Readings) != 2 {
		t.Fatalf("readings: %+v", got.Readings)
	}
	// A batch whose every reading breaks a feed rule is rejected for good
	// with the reason code of its error code (§4.2, §5.5): 0x83 for
	// unknown_feed and wrong_type, where invalid readings get 0x99.
	if rc := pub("feeds", `{"register":[{"ref":"t","data_type":"number"}]}`); rc != 0x00 {
		t.Fatalf("register feed t: PUBACK 0x%02x", rc)
	}
	for _, tc := range []struct {
		payload string
		rc      byte
		code    string
	}{
		{`{"id":"v5-3","r":[{"f":"nope","v":1},{"f":"other","v":2}]}`, 0x83, "unknown_feed"},
		{`{"id":"v5-4","r":[{"f":"t","v":"text"}]}`, 0x83, "wrong_type"},
		{`{"id":"v5-5","r":[{"f":"t","v":null}]}`, 0x99, "invalid"},
	} {
		if rc := pub("telemetry", tc.payload); rc != tc.rc {
			t.Errorf("%s: PUBACK 0x%02x, want 0x%02x", tc.payload, rc, tc.rc)
		}
		if e := nextError(); e.Code != tc.code || e.Kind != "telemetry" {
			t.Errorf("%s: error reply %+v, want code %s", tc.payload, e, tc.code)
		}
	}

	// RPC over MQTT 5.
	call := callRPC(p, d.ID, "ping", `"hello"`)
	var req wireRequest
	select {
	case m := <-msgs:
		json.Unmarshal(m.Payload, &req)
	case <-time.After(waitFor):
		t.Fatal("no rpc request")
	}
	if req.Method != "ping" || string(req.Args) != `"hello"` {
		t.Fatalf("request %+v", req)
	}
	if rc := pub("rpc", `{"id":"`+req.ID+`","result":"pong"}`); rc != 0 {
		t.Fatalf("rpc response: PUBACK 0x%02x", rc)
	}
	if r := outcome(t, call); r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"result":"pong"`)) {
		t.Fatalf("rpc: %d %s", r.status, r.body)
	}

	// Takeover: a second login gets the session, the first gets
	// DISCONNECT 0x8E (session taken over).
	if _, _, _, _, err := dial5(t, p, d.ID, d.Password, "another-client-id", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case dp := <-disc:
		if dp.ReasonCode != 0x8E {
			t.Fatalf("DISCONNECT reason 0x%02x, want 0x8E", dp.ReasonCode)
		}
	case <-time.After(waitFor):
		t.Fatal("first session got no DISCONNECT")
	}
}

func TestProtocolConformanceBadCredentials5(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "locked-5")
	if _, _, _, _, err := dial5(t, p, d.ID, "wrong", d.ID, nil); err == nil || !strings.Contains(err.Error(), "0x86") {
		t.Fatalf("wrong password: %v, want CONNACK 0x86", err)
	}
}
