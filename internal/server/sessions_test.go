package server_test

// Sessions under stress: reconnects, takeovers, concurrent logins, secret
// rotation. Devices here are bare MQTT connections (outposttest.Raw), so a
// test controls every packet and sees exactly what reaches the wire.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

// rawDevice logs in over MQTT version v (4 or 5) and subscribes to the
// device's down/ topics.
func rawDevice(t *testing.T, p *outposttest.Platform, d outposttest.Device, v byte) *outposttest.Raw {
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
		c := rawDevice(t, p, d, v)
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
		if want := fmt.Sprintf(`"result":%d`, i); !json.Valid(r.body) || !contains(r.body, want) {
			t.Fatalf("round %d: call answered %s", i, r.body)
		}
	}
}

func contains(b []byte, s string) bool { return len(s) == 0 || indexOf(string(b), s) >= 0 }

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}
