package server_test

// Sessions under stress: reconnects, takeovers, concurrent logins, secret
// rotation. Devices here are bare MQTT connections (outposttest.Raw), so a
// test controls every packet and sees exactly what reaches the wire.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// loginRaw logs in over MQTT version v (4 or 5) and subscribes to the
// device's down/ topics.
func loginRaw(t *testing.T, p *outposttest.Platform, d outposttest.Device, v byte) *outposttest.Raw {
	t.Helper()
	c := outposttest.DialRaw(t, p.MQTTAddr(), v)
	if err := c.Login(d.ID, d.Password); err != nil {
		t.Fatalf("login: %v", err)
	}
	codes, err := c.Subscribe(1, "outpost/v1/"+d.ID+"/down/#")
	if err != nil || len(codes) != 1 || codes[0] != 1 {
		t.Fatalf("subscribe: %v %v", codes, err)
	}
	return c
}

// answerRPC waits for an RPC request on c, acknowledges it and answers it
// with result. It returns false if no request came within d.
func answerRPC(t *testing.T, c *outposttest.Raw, id string, result any, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		pk, err := c.ReadTimeout(time.Until(deadline))
		if err != nil {
			return false
		}
		if pk.FixedHeader.Type != packets.Publish || pk.TopicName != topicOf(id, "down", "rpc") {
			continue
		}
		if pk.FixedHeader.Qos > 0 {
			c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		}
		var req wireRequest
		if err := json.Unmarshal(pk.Payload, &req); err != nil {
			t.Fatalf("rpc request %q: %v", pk.Payload, err)
		}
		b, _ := json.Marshal(map[string]any{"id": req.ID, "result": result})
		if err := c.Publish(topicOf(id, "up", "rpc"), 0, 0, b); err != nil {
			t.Fatalf("answer rpc: %v", err)
		}
		return true
	}
}

// A device that drops its connection and reconnects at once must not end
// up deaf: the end of the old session (mochi removes the session and its
// subscriptions when a clean session ends) must never undo the new one's
// login or subscription. 1,000 rounds, MQTT 3.1.1 and 5 alternating; one
// deaf session fails the test.
func TestReconnectRightAfterDropNeverDeaf(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "flappy")
	rounds := 1000
	if testing.Short() {
		rounds = 100
	}
	var prev *outposttest.Raw
	for i := 0; i < rounds; i++ {
		v := byte(4 + i%2)
		if prev != nil {
			prev.Close() // dropped: no DISCONNECT
		}
		c := loginRaw(t, p, d, v)
		prev = c
		call := make(chan callResult, 1)
		go func() {
			st, b, err := api(p, "POST", "/api/v1/devices/"+d.ID+"/rpc/ping?timeout=3s", "")
			call <- callResult{st, b, err}
		}()
		answered := answerRPC(t, c, d.ID, i, 5*time.Second)
		r := outcome(t, call)
		if !answered || r.status != http.StatusOK {
			t.Fatalf("round %d (MQTT %d): the new session is deaf: request delivered %v, call %d %s", i, v, answered, r.status, r.body)
		}
		if want := fmt.Sprintf(`"result":%d`, i); !bytes.Contains(r.body, []byte(want)) {
			t.Fatalf("round %d: call answered %s", i, r.body)
		}
	}
}

// login dials and logs in over MQTT version v; it returns the connection
// if the CONNACK accepted it, nil otherwise.
func login(p *outposttest.Platform, id, password string, v byte) *outposttest.Raw {
	c, err := net.DialTimeout("tcp", p.MQTTAddr(), 10*time.Second)
	if err != nil {
		return nil
	}
	r := outposttest.NewRaw(c, v)
	if err := r.Login(id, password); err != nil {
		c.Close()
		return nil
	}
	return r
}

// live counts the connections that still answer a PINGREQ; a connection
// the platform closed answers with EOF at once.
func live(conns []*outposttest.Raw) int {
	n := 0
	for _, c := range conns {
		if c != nil && c.Ping(5*time.Second) {
			n++
		}
	}
	return n
}

// At most one live session per device: 20 logins with the same
// credentials at once leave exactly one connection alive, and that one
// gets the device's RPCs. (Before: 5–13 stayed live, and when the extra
// ones ended the real session stopped getting RPCs.)
func TestOneLiveSessionPerDevice(t *testing.T) {
	p := outposttest.Start(t)
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("mqtt%d", v), func(t *testing.T) {
			d := p.CreateDevice(t, fmt.Sprint("crowd-", v))
			for round := 0; round < 10; round++ {
				conns := make([]*outposttest.Raw, 20)
				var wg sync.WaitGroup
				for i := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						conns[i] = login(p, d.ID, d.Password, v)
					}()
				}
				wg.Wait()
				if n := live(conns); n != 1 {
					t.Fatalf("round %d: %d connections of one device live after 20 simultaneous logins, want 1", round, n)
				}
				var survivor *outposttest.Raw
				for _, c := range conns {
					if c != nil && c.Ping(5*time.Second) {
						survivor = c
					}
				}
				for _, c := range conns {
					if c != nil && c != survivor {
						c.Close()
					}
				}
				if codes, err := survivor.Subscribe(1, "outpost/v1/"+d.ID+"/down/#"); err != nil || codes[0] != 1 {
					t.Fatalf("subscribe: %v %v", codes, err)
				}
				call := callRPC(p, d.ID, "who", "")
				if !answerRPC(t, survivor, d.ID, "survivor", 10*time.Second) {
					t.Fatalf("round %d: the live session got no RPC", round)
				}
				if r := outcome(t, call); r.status != http.StatusOK {
					t.Fatalf("round %d: rpc %d %s", round, r.status, r.body)
				}
				survivor.Close()
			}
		})
	}
}

// A secret rotation ends every session that logged in with the old
// secret, including logins in flight while the rotation runs: once POST
// …/secret has answered, no connection authenticated with the old secret
// answers anything. Devices hammer the platform with logins under the old
// secret while it is rotated; 15 rounds per MQTT version. The new secret
// then works and its session gets RPCs.
func TestRotationEndsEveryOldSession(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.AuthFailureDelay = time.Millisecond })
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("mqtt%d", v), func(t *testing.T) {
			d := p.CreateDevice(t, fmt.Sprint("rotating-", v))
			secret := d.Password
			for round := 0; round < 15; round++ {
				var mu sync.Mutex
				var old []*outposttest.Raw
				rotated := make(chan struct{})
				var wg sync.WaitGroup
				for range 8 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; ; i++ {
							select {
							case <-rotated:
								if i > 0 {
									return
								}
							default:
							}
							if c := login(p, d.ID, secret, v); c != nil {
								mu.Lock()
								old = append(old, c)
								mu.Unlock()
							}
						}
					}()
				}
				// Rotate while logins with the old secret are in flight.
				for {
					mu.Lock()
					n := len(old)
					mu.Unlock()
					if n >= 4 {
						break
					}
					time.Sleep(time.Millisecond)
				}
				var out struct{ Password string }
				if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/secret", nil, &out); st != http.StatusOK || out.Password == "" {
					t.Fatalf("rotate: %d", st)
				}
				close(rotated)
				wg.Wait() // every login started before the answer has ended
				if n := live(old); n != 0 {
					t.Fatalf("round %d: %d of %d connections authenticated with the old secret still answer after the rotation", round, n, len(old))
				}
				for _, c := range old {
					c.Close()
				}
				secret = out.Password
			}
			c := login(p, d.ID, secret, v)
			if c == nil {
				t.Fatal("the new secret does not log in")
			}
			defer c.Close()
			if codes, err := c.Subscribe(1, "outpost/v1/"+d.ID+"/down/#"); err != nil || codes[0] != 1 {
				t.Fatalf("subscribe: %v %v", codes, err)
			}
			call := callRPC(p, d.ID, "who", "")
			if !answerRPC(t, c, d.ID, "new", 10*time.Second) {
				t.Fatal("the session with the new secret gets no RPC")
			}
			if r := outcome(t, call); r.status != http.StatusOK {
				t.Fatalf("rpc: %d %s", r.status, r.body)
			}
		})
	}
}

// Deleting a device ends its sessions and refuses logins in flight, like a
// rotation.
func TestDeleteEndsSessions(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "doomed")
	c := login(p, d.ID, d.Password, 5)
	if c == nil {
		t.Fatal("login")
	}
	if st := p.Do(t, "DELETE", "/api/v1/devices/"+d.ID, nil, nil); st != http.StatusNoContent && st != http.StatusOK {
		t.Fatalf("delete: %d", st)
	}
	if c.Ping(5 * time.Second) {
		t.Fatal("the session of a deleted device still answers")
	}
	if login(p, d.ID, d.Password, 5) != nil {
		t.Fatal("a deleted device logs in")
	}
}

// A takeover never shows the device offline: in 30 takeovers (a new login
// while the previous session is open) the presence stream shows the device
// online once and offline only when the last session ends. (Before: 13
// offline events in 29 takeovers.)
func TestTakeoverNeverFlapsPresence(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "twin")
	events := openStream(t, p, "?kind=presence&device="+d.ID)
	var conns []*outposttest.Raw
	for i := 0; i < 30; i++ {
		c := login(p, d.ID, d.Password, byte(4+i%2))
		if c == nil {
			t.Fatalf("login %d refused", i)
		}
		conns = append(conns, c)
		if i == 0 {
			if e := next(t, events); !bytes.Contains(e.data, []byte(`"online":true`)) {
				t.Fatalf("first event %s, want online", e.data)
			}
		}
	}
	last := conns[len(conns)-1]
	last.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	e := next(t, events)
	var pres struct {
		Online bool
		Reason string
	}
	json.Unmarshal(e.data, &pres)
	if pres.Online || pres.Reason != "disconnected" {
		t.Fatalf("presence event after a takeover: %s; want no event until the last session ends, then offline (disconnected)", e.data)
	}
}
