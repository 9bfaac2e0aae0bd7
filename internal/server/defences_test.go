package server_test

// The broker's defences against misbehaving or hostile MQTT clients
// (issue 12), and what devices can make the platform log (issues 11, 12).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// closedSoon reports whether the peer closes c within d (what it sends
// meanwhile is discarded).
func closedSoon(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

// A second CONNECT on a live connection is a protocol error; the broker
// library logs the offending packet, which holds the password. No secret
// ever reaches the log: the test log is checked for the device's password
// (in clear and as the decimal bytes Go prints for a []byte).
func TestSecondConnectNeverLogsPassword(t *testing.T) {
	p := outposttest.Start(t)
	for _, v := range []byte{4, 5} {
		d := p.CreateDevice(t, fmt.Sprint("chatty-", v))
		c := outposttest.DialRaw(t, p.MQTTAddr(), v)
		if err := c.Login(d.ID, d.Password); err != nil {
			t.Fatal(err)
		}
		if err := c.Send(outposttest.ConnectPacket(d.ID, d.Password)); err != nil {
			t.Fatal(err)
		}
		if !closedSoon(c.Conn, 10*time.Second) {
			t.Fatalf("MQTT %d: connection still open after a second CONNECT", v)
		}
	}
	outposttest.Eventually(t, 10*time.Second, "the protocol error in the log", func() bool {
		return strings.Count(outposttest.LogText(t), "device protocol error") >= 2
	})
	if leaks := outposttest.SecretsInLog(t); len(leaks) > 0 {
		t.Fatalf("the password reached the log:\n%s", strings.Join(leaks, "\n"))
	}
}

// What a device gets rejected is not the operator's error: a rejected
// publish is logged at debug level, without its payload, and a device
// sending bad messages as fast as it can writes a few lines per message
// kind, not one per message. (Before: each rejection was an ERROR line with
// the payload as decimal bytes; one 256 KiB message made a 1 MB line.)
func TestRejectedPublishesLogQuietly(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "noisy")
	c := outposttest.DialRaw(t, p.MQTTAddr(), 5)
	if err := c.Login(d.ID, d.Password); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 200<<10)
	const n = 300
	for i := 1; i <= n; i++ {
		topic, payload := topicOf(d.ID, "up", "telemetry"), big
		if i%2 == 0 {
			topic, payload = topicOf(d.ID, "up", "nosuchkind"), []byte(`{}`)
		}
		if err := c.Publish(topic, 1, uint16(i), payload); err != nil {
			t.Fatal(err)
		}
		for {
			pk, err := c.ReadTimeout(10 * time.Second)
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if pk.FixedHeader.Type == packets.Puback {
				if pk.ReasonCode < 0x80 {
					t.Fatalf("message %d accepted (0x%02x)", i, pk.ReasonCode)
				}
				break
			}
		}
	}
	if got := metric(t, p, "outpost_mqtt_messages_rejected_total"); got != n {
		t.Errorf("rejected counter = %v, want %d", got, n)
	}
	logs := outposttest.LogText(t)
	lines := strings.Split(logs, "\n")
	mentions := 0
	for _, l := range lines {
		if len(l) > 4096 {
			t.Fatalf("a log line of %d bytes: %.200s…", len(l), l)
		}
		if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
			t.Errorf("a device's bad message logged as a platform problem: %.300s", l)
		}
		if strings.Contains(l, d.ID) {
			mentions++
		}
	}
	if mentions > 40 {
		t.Fatalf("%d log lines about %d rejected messages of one device; want a few per kind", mentions, n)
	}
}

// Failed logins are logged in aggregate: the first few one by one, the
// rest as a count. (Before: one INFO line per failure.)
func TestFailedLoginsLoggedInAggregate(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.AuthFailureDelay = time.Millisecond })
	outposttest.AddSecret("whatever-password") // wrong, but never to be logged either
	var wg sync.WaitGroup
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				c, err := net.Dial("tcp", p.MQTTAddr())
				if err != nil {
					t.Error(err)
					return
				}
				r := outposttest.NewRaw(c, 4)
				r.Connect(outposttest.ConnectPacket("d-flooder", "whatever-password"))
				c.Close()
			}
		}()
	}
	wg.Wait()
	p.Close() // flushes the counts of what was left out
	logs := outposttest.LogText(t)
	if n := strings.Count(logs, "device authentication failed"); n > 25 {
		t.Fatalf("%d lines for 200 failed logins, want them aggregated", n)
	}
	if !strings.Contains(logs, "device authentication failures") || !strings.Contains(logs, "failures=200") {
		t.Fatalf("no aggregate count of the failures in the log:\n%s", logs)
	}
}

// MQTT allows an empty password. The platform refuses it as bad
// credentials, with the codes docs/protocol.md gives: 0x05 on MQTT 3.1.1,
// 0x86 on MQTT 5. (Before: 0x82, which is not a 3.1.1 code at all.)
func TestEmptyPasswordRefusedAsBadCredentials(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.AuthFailureDelay = time.Millisecond })
	d := p.CreateDevice(t, "empty")
	for v, want := range map[byte]byte{4: 0x05, 5: 0x86} {
		c := outposttest.DialRaw(t, p.MQTTAddr(), v)
		pk := outposttest.ConnectPacket(d.ID, "")
		pk.Connect.PasswordFlag = true
		ack, err := c.Connect(pk)
		if err != nil {
			t.Fatalf("MQTT %d: %v", v, err)
		}
		if ack.ReasonCode != want {
			t.Errorf("MQTT %d: CONNACK 0x%02x, want 0x%02x", v, ack.ReasonCode, want)
		}
	}
}

// Guessing is slow: a refused login is answered after a delay that
// doubles with every recent failure of the same id or address; a correct
// login is not delayed by an attack on its id.
func TestFailedLoginsAnsweredLate(t *testing.T) {
	const base = 40 * time.Millisecond
	p := outposttest.Start(t, func(c *server.Config) { c.AuthFailureDelay = base })
	outposttest.AddSecret("not-the-password")
	d := p.CreateDevice(t, "guessed")
	want := base
	for i := 0; i < 5; i++ {
		c := outposttest.DialRaw(t, p.MQTTAddr(), 4)
		start := time.Now()
		ack, err := c.Connect(outposttest.ConnectPacket(d.ID, "not-the-password"))
		took := time.Since(start)
		if err != nil || ack.ReasonCode != 0x05 {
			t.Fatalf("attempt %d: %v 0x%02x", i, err, ack.ReasonCode)
		}
		if took < want {
			t.Fatalf("failure %d answered after %v, want at least %v", i+1, took, want)
		}
		want *= 2
	}
	// The address's failures slow another id down too, and the id's
	// failures slow down guesses from another address.
	other := p.CreateDevice(t, "bystander")
	for _, tc := range []struct{ id, from string }{{other.ID, "127.0.0.1"}, {d.ID, "127.0.0.2"}} {
		dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.from)}, Timeout: 10 * time.Second}
		nc, err := dl.Dial("tcp", p.MQTTAddr())
		if err != nil {
			t.Fatal(err)
		}
		c := outposttest.NewRaw(nc, 4)
		start := time.Now()
		ack, err := c.Connect(outposttest.ConnectPacket(tc.id, "not-the-password"))
		took := time.Since(start)
		nc.Close()
		if err != nil || ack.ReasonCode != 0x05 {
			t.Fatalf("%s from %s: %v 0x%02x", tc.id, tc.from, err, ack.ReasonCode)
		}
		if want := 32 * base; took < want {
			t.Fatalf("failure of %s from %s answered after %v, want at least %v", tc.id, tc.from, took, want)
		}
	}
	if c := login(p, d.ID, d.Password, 5); c == nil {
		t.Fatal("the right password is refused after failures")
	} else {
		c.Close()
	}
}

// A device holds at most --max-subscriptions subscriptions: filters beyond
// are refused (0x80 on MQTT 3.1.1, 0x87 on MQTT 5); renewing one it holds
// always works, and an unsubscribe makes room. (Before: one device held
// 647,500 subscriptions.)
func TestSubscriptionsBoundedPerDevice(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.MaxSubscriptions = 4 })
	for v, refused := range map[byte]byte{4: 0x80, 5: 0x87} {
		d := p.CreateDevice(t, fmt.Sprint("greedy-", v))
		c := outposttest.DialRaw(t, p.MQTTAddr(), v)
		if err := c.Login(d.ID, d.Password); err != nil {
			t.Fatal(err)
		}
		f := func(k string) string { return "outpost/v1/" + d.ID + "/down/" + k }
		codes, err := c.Subscribe(1, f("a"), f("b"), f("c"), f("a"), f("d"), f("e"), f("f"))
		if err != nil {
			t.Fatal(err)
		}
		if want := []byte{1, 1, 1, 1, 1, refused, refused}; !bytes.Equal(codes, want) {
			t.Fatalf("MQTT %d: SUBACK %x, want %x", v, codes, want)
		}
		codes, _ = c.Subscribe(2, f("b"), f("g"))
		if want := []byte{1, refused}; !bytes.Equal(codes, want) {
			t.Fatalf("MQTT %d: renewal: SUBACK %x, want %x", v, codes, want)
		}
		if err := c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: 3,
			Filters: packets.Subscriptions{{Filter: f("c")}}}); err != nil {
			t.Fatal(err)
		}
		codes, _ = c.Subscribe(4, f("g"))
		if !bytes.Equal(codes, []byte{1}) {
			t.Fatalf("MQTT %d: after an unsubscribe: SUBACK %x", v, codes)
		}
		// Many SUBSCRIBEs with many filters still leave four.
		for i := 0; i < 50; i++ {
			var fs []string
			for j := 0; j < 100; j++ {
				fs = append(fs, f(fmt.Sprint("x", i, "-", j)))
			}
			codes, err := c.Subscribe(uint16(10+i), fs...)
			if err != nil || bytes.Count(codes, []byte{refused}) != 100 {
				t.Fatalf("MQTT %d: bulk SUBSCRIBE %d: %v, %d refused", v, i, err, bytes.Count(codes, []byte{refused}))
			}
		}
	}
	if got := metric(t, p, "outpost_mqtt_subscriptions_refused_total"); got != 2*(2+1+5000) {
		t.Errorf("subscriptions refused counter = %v", got)
	}
}

// A connection that never sends CONNECT is closed after the connect
// timeout. (Before: held for as long as the client liked.)
func TestConnectTimeout(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.MQTTConnectTimeout = 300 * time.Millisecond })
	idle, err := net.Dial("tcp", p.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	slow, err := net.Dial("tcp", p.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// Half a CONNECT, then nothing.
	var buf bytes.Buffer
	outposttest.Encode(&buf, 4, outposttest.ConnectPacket("d-slowloris", "password-password"))
	slow.Write(buf.Bytes()[:10])
	for _, c := range []net.Conn{idle, slow} {
		if !closedSoon(c, 10*time.Second) {
			t.Fatal("a connection without CONNECT is still open 10s later")
		}
	}
	outposttest.Eventually(t, 10*time.Second, "connect timeouts counted", func() bool {
		return metric(t, p, "outpost_mqtt_connect_timeouts_total") == 2
	})
}

// Connections that have not logged in are bounded in total and per
// source address; over a bound, a new connection is closed at once, and a
// device from elsewhere still gets in while one address holds its share.
// (Before: 10,200 idle connections locked every device out.)
func TestPendingConnectionsBounded(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) {
		c.MaxPendingPerAddress = 5
		c.MaxPendingConnections = 8
	})
	d := p.CreateDevice(t, "patient")
	dialFrom := func(ip string) net.Conn {
		dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
		c, err := dl.Dial("tcp", p.MQTTAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// Make sure each idle connection is accepted (counted) before the next.
	settle := func(want float64) {
		t.Helper()
		outposttest.Eventually(t, 10*time.Second, "pending connections counted", func() bool {
			return metric(t, p, "outpost_mqtt_connections_pending") == want
		})
	}
	for i := 0; i < 5; i++ {
		dialFrom("127.0.0.2")
		settle(float64(i + 1))
	}
	if c := dialFrom("127.0.0.2"); !closedSoon(c, 5*time.Second) {
		t.Fatal("a 6th pending connection from one address was kept")
	}
	// Another address still gets in, and a device logs in from it.
	if c := login(p, d.ID, d.Password, 5); c == nil {
		t.Fatal("a device from another address is locked out by one address's idle connections")
	} else {
		c.Close()
	}
	for i := 0; i < 3; i++ {
		dialFrom("127.0.0.3")
		settle(float64(6 + i))
	}
	if c := dialFrom("127.0.0.4"); !closedSoon(c, 5*time.Second) {
		t.Fatal("a 9th pending connection was kept")
	}
	if metric(t, p, `outpost_mqtt_connections_refused_total{bound="max_pending_per_address"}`) != 1 ||
		metric(t, p, `outpost_mqtt_connections_refused_total{bound="max_pending"}`) != 1 {
		t.Error("refusals not counted by bound")
	}
}

// --max-connections bounds the open MQTT connections: one more is closed
// at once, and a place freed is taken again.
func TestMaxConnections(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.MaxConnections = 3 })
	var conns []*outposttest.Raw
	for i := 0; i < 3; i++ {
		d := p.CreateDevice(t, fmt.Sprint("full-", i))
		c := login(p, d.ID, d.Password, 4)
		if c == nil {
			t.Fatalf("login %d refused", i)
		}
		conns = append(conns, c)
	}
	extra, err := net.Dial("tcp", p.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !closedSoon(extra, 5*time.Second) {
		t.Fatal("a 4th connection was kept with --max-connections 3")
	}
	if got := metric(t, p, `outpost_mqtt_connections_refused_total{bound="max_connections"}`); got != 1 {
		t.Errorf("refusals counted: %v", got)
	}
	conns[0].Close()
	d := p.CreateDevice(t, "next")
	outposttest.Eventually(t, 10*time.Second, "a freed place taken again", func() bool {
		c := login(p, d.ID, d.Password, 4)
		if c != nil {
			c.Close()
		}
		return c != nil
	})
	for _, c := range conns[1:] {
		c.Close()
	}
}

// A connect storm from one address gets through with the default bounds:
// 3,000 devices logging in at once from 127.0.0.1, each retrying (as a
// device does) if its connection is refused. (500 under the race
// detector.)
func TestConnectStormFromOneAddress(t *testing.T) {
	if testing.Short() {
		t.Skip("connect storm")
	}
	p := outposttest.Start(t)
	n := 3000
	if raceEnabled {
		n = 500
	}
	type cred struct{ id, password string }
	creds := make([]cred, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range creds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st, body, err := api(p, "POST", "/api/v1/devices", fmt.Sprintf(`{"name":"storm-%d"}`, i))
			if err != nil || st != http.StatusCreated {
				t.Errorf("create device %d: %d %v", i, st, err)
				return
			}
			var d outposttest.Device
			json.Unmarshal(body, &d)
			outposttest.AddSecret(d.Password)
			creds[i] = cred{d.ID, d.Password}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	start := time.Now()
	conns := make([]*outposttest.Raw, n)
	for i := range creds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			backoff := 10 * time.Millisecond
			for time.Since(start) < 2*time.Minute {
				if c := login(p, creds[i].id, creds[i].password, byte(4+i%2)); c != nil {
					conns[i] = c
					return
				}
				time.Sleep(backoff)
				backoff = min(2*backoff, time.Second)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i, c := range conns {
		if c == nil {
			t.Fatalf("device %d never got in", i)
		}
	}
	t.Logf("%d devices logged in from one address in %v (%v connections refused on the pending bounds)", n, took.Round(time.Millisecond),
		metric(t, p, `outpost_mqtt_connections_refused_total{bound="max_pending_per_address"}`)+metric(t, p, `outpost_mqtt_connections_refused_total{bound="max_pending"}`))
}

// stuckDevice logs in over MQTT 5 with a tiny receive window, subscribes,
// and stops reading; then RPC calls with large arguments fill its socket,
// so that the broker's writer for it blocks. It returns when the calls
// are under way; wait on the returned group for them to end.
func stuckDevice(t *testing.T, p *outposttest.Platform, d outposttest.Device) *sync.WaitGroup {
	t.Helper()
	dl := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := dl.Dial("tcp", p.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := outposttest.NewRaw(conn, 5)
	if err := c.Login(d.ID, d.Password); err != nil {
		t.Fatal(err)
	}
	if codes, err := c.Subscribe(1, "outpost/v1/"+d.ID+"/down/#"); err != nil || codes[0] != 1 {
		t.Fatalf("subscribe: %v %v", codes, err)
	}
	// About 5 MB: more than the kernel's socket buffers take (some 3 MB
	// here), less than the broker's write backlog bound.
	args := `{"blob":"` + strings.Repeat("b", 200<<10) + `"}`
	var wg sync.WaitGroup
	for range 25 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			api(p, "POST", "/api/v1/devices/"+d.ID+"/rpc/fill?timeout=1s", args)
		}()
	}
	// Let the calls reach the broker.
	outposttest.Eventually(t, 10*time.Second, "calls pending", func() bool {
		return metric(t, p, "outpost_rpc_pending") >= 1
	})
	time.Sleep(200 * time.Millisecond) // a non-reading device cannot be observed; give the writes time to block
	return &wg
}

// A device that stops reading blocks nobody: its takeover, a secret
// rotation, its deletion and the platform's shutdown all finish promptly
// although a write to it is stuck, and with a short write timeout the
// device is disconnected by itself. (Before: all four hung, for more than
// 15 s and 40 s; a write had no deadline and held the client's lock.)
func TestStalledDeviceBlocksNobody(t *testing.T) {
	const prompt = 5 * time.Second
	within := func(t *testing.T, what string, f func()) {
		t.Helper()
		done := make(chan struct{})
		go func() { defer close(done); f() }()
		select {
		case <-done:
		case <-time.After(prompt):
			t.Fatalf("%s hangs behind a device that does not read", what)
		}
	}
	long := func(c *server.Config) { c.MQTTWriteTimeout = time.Minute }
	t.Run("takeover", func(t *testing.T) {
		p := outposttest.Start(t, long)
		d := p.CreateDevice(t, "stuck")
		calls := stuckDevice(t, p, d)
		within(t, "a takeover", func() {
			if c := login(p, d.ID, d.Password, 5); c == nil {
				t.Error("takeover refused")
			} else {
				c.Close()
			}
		})
		calls.Wait()
	})
	t.Run("rotate", func(t *testing.T) {
		p := outposttest.Start(t, long)
		d := p.CreateDevice(t, "stuck")
		calls := stuckDevice(t, p, d)
		within(t, "POST …/secret", func() { api(p, "POST", "/api/v1/devices/"+d.ID+"/secret", "") })
		calls.Wait()
	})
	t.Run("delete", func(t *testing.T) {
		p := outposttest.Start(t, long)
		d := p.CreateDevice(t, "stuck")
		calls := stuckDevice(t, p, d)
		within(t, "DELETE …/devices/{id}", func() { api(p, "DELETE", "/api/v1/devices/"+d.ID, "") })
		calls.Wait()
	})
	t.Run("shutdown", func(t *testing.T) {
		p := outposttest.Start(t, long)
		d := p.CreateDevice(t, "stuck")
		calls := stuckDevice(t, p, d)
		within(t, "shutdown", func() { p.Close() })
		calls.Wait()
	})
	t.Run("write-timeout", func(t *testing.T) {
		p := outposttest.Start(t, func(c *server.Config) { c.MQTTWriteTimeout = 300 * time.Millisecond })
		d := p.CreateDevice(t, "stuck")
		events := openStream(t, p, "?kind=presence&device="+d.ID)
		calls := stuckDevice(t, p, d)
		if e := next(t, events); !bytes.Contains(e.data, []byte(`"online":true`)) {
			t.Fatalf("presence: %s, want online", e.data)
		}
		e := next(t, events)
		if !bytes.Contains(e.data, []byte(`"online":false`)) || !bytes.Contains(e.data, []byte("write stalled")) {
			t.Fatalf("presence: %s, want offline because a write stalled", e.data)
		}
		if got := metric(t, p, "outpost_mqtt_write_stalls_total"); got != 1 {
			t.Errorf("write stalls counter = %v, want 1", got)
		}
		calls.Wait()
	})
}

// A malformed MQTT 5 SUBSCRIBE (a filter without its options byte) made
// the packet decoder index past the packet and panic, which ended the
// whole platform: any device could take every other one down. Found by
// FuzzDecodeInbound (internal/mochi/packets). The connection is now
// refused and the platform goes on serving.
func TestMalformedSubscribeDoesNotCrash(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "malformed")
	c := outposttest.DialRaw(t, p.MQTTAddr(), 5)
	if err := c.Login(d.ID, d.Password); err != nil {
		t.Fatal(err)
	}
	// SUBSCRIBE, remaining length 10: packet id, no properties, the
	// filter "outpo" (5 bytes) and then nothing: no options byte.
	if _, err := c.Conn.Write([]byte{0x82, 10, 0, 1, 0, 0, 5, 'o', 'u', 't', 'p', 'o'}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := c.ReadTimeout(10 * time.Second); err != nil {
			break // the connection ended, the process did not
		}
	}
	other := p.CreateDevice(t, "after")
	c2 := outposttest.DialRaw(t, p.MQTTAddr(), 5)
	if err := c2.Login(other.ID, other.Password); err != nil {
		t.Fatalf("the platform stopped serving after a malformed SUBSCRIBE: %v", err)
	}
}
