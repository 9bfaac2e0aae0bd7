package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/hooks/auth"
	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/internal/broker"
)

// rawBroker is a plain mochi-mqtt broker with no platform logic: every
// client may connect, publish and subscribe; no hook touches a message.
//
// Two mochi v2.7.9 pitfalls shape it:
//
//   - mochi drops a QoS 1 message for a subscriber whose in-flight count has
//     reached Capabilities.MaximumInflight (and, past
//     MaximumClientWritesPending, any message that does not fit the
//     subscriber's write queue), logging only "client store quota reached".
//     The raw broker raises both limits to their maximum, and the raw
//     benchmarks also bound the messages in flight end to end (a credit is
//     taken before publishing and returned when the subscriber has the
//     message), so neither limit is ever reached. Every raw run then checks
//     that each message arrived exactly once and that mochi's
//     InflightDropped and MessagesDropped counters are zero.
//   - A client that announces a Receive Maximum in its CONNECT gets a send
//     quota, and then, after each packet it sends, mochi's processPacket
//     calls Inflight.NextImmediate, which takes the in-flight map's read
//     lock twice (NextImmediate → GetAll). A publisher adding a message for
//     that client (Inflight.Set, write lock) between the two read locks
//     deadlocks the client's connection and every publisher routing to it;
//     seen here with one subscriber and ten publishers. The raw clients
//     therefore do not announce a Receive Maximum (the MQTT 5 default is
//     65535, which mochi treats as "no quota"), like the device SDK.
type rawBroker struct {
	srv     *mqtt.Server
	ln      *broker.Listener
	address string
}

// startRawBroker starts the raw broker with an optional extra hook.
func startRawBroker(extra mqtt.Hook) (*rawBroker, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumInflight = 65535
	caps.MaximumClientWritesPending = 65536
	caps.MaximumPacketSize = 0
	srv := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 slog.New(slog.DiscardHandler),
		SysTopicResendInterval: 0,
	})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	if extra != nil {
		if err := srv.AddHook(extra, nil); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: raw broker listener: %w", err)
	}
	ln := broker.NewListener("raw", l, nil, nil)
	if err := ln.AddTo(srv); err != nil {
		l.Close()
		return nil, err
	}
	if err := srv.Serve(); err != nil {
		l.Close()
		return nil, err
	}
	return &rawBroker{srv: srv, ln: ln, address: l.Addr().String()}, nil
}

func (b *rawBroker) addr() string { return b.address }

// dropped returns mochi's counts of messages it dropped.
func (b *rawBroker) dropped() (inflight, writes int64) {
	return atomic.LoadInt64(&b.srv.Info.InflightDropped), atomic.LoadInt64(&b.srv.Info.MessagesDropped)
}

// Close stops the broker after the clients have gone. The listener is the
// platform's own broker.Listener, because mochi's TCP listener races with
// connections being established (mochi issues #488 and #541).
func (b *rawBroker) Close() {
	closeWithin(10*time.Second, func() {
		b.ln.Stop()
		_ = b.srv.Close()
		b.ln.Shutdown()
	})
}

// countHook hands every published payload to onMsg inside mochi's
// OnPublish, which runs before the PUBACK is written; nothing else.
type countHook struct {
	mqtt.HookBase
	onMsg func(payload []byte)
}

func (h *countHook) ID() string           { return "bench-count" }
func (h *countHook) Provides(b byte) bool { return b == mqtt.OnPublish }
func (h *countHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.onMsg(pk.Payload)
	return pk, nil
}

// rawClient is a plain MQTT 5 client (paho.golang, no reconnect, no
// platform protocol).
type rawClient struct {
	c *paho.Client
}

// dialRaw connects a paho client to addr. onMsg, when set, receives every
// PUBLISH; it runs on the client's single delivery goroutine and the
// message is acknowledged after it returns.
func dialRaw(ctx context.Context, addr, clientID string, onMsg func(paho.PublishReceived)) (*rawClient, error) {
	return dialRawAuth(ctx, addr, clientID, "", "", onMsg)
}

// dialRawAuth is dialRaw with a user name and password (none when empty).
func dialRawAuth(ctx context.Context, addr, clientID, user, password string, onMsg func(paho.PublishReceived)) (*rawClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bench: raw client %s: %w", clientID, err)
	}
	cfg := paho.ClientConfig{
		ClientID: clientID,
		// Publishers write from many goroutines.
		Conn:          pahopackets.NewThreadSafeConn(countConn{conn}),
		PacketTimeout: 30 * time.Second,
	}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			onMsg(pr)
			return true, nil
		}}
	} else {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(paho.PublishReceived) (bool, error) { return true, nil }}
	}
	c := paho.NewClient(cfg)
	// No Receive Maximum property: see rawBroker.
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 60, CleanStart: true}
	if user != "" {
		cp.Username, cp.UsernameFlag = user, true
		cp.Password, cp.PasswordFlag = []byte(password), true
	}
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("bench: raw client %s: connect: %w", clientID, err)
	}
	if ca.ReasonCode != 0 {
		conn.Close()
		return nil, fmt.Errorf("bench: raw client %s: connect refused with reason code 0x%02x", clientID, ca.ReasonCode)
	}
	return &rawClient{c: c}, nil
}

func (r *rawClient) subscribe(ctx context.Context, filter string) error {
	sa, err := r.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil {
		return fmt.Errorf("bench: subscribe %s: %w", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] != 1 {
		return fmt.Errorf("bench: subscribe %s: not granted QoS 1 (%v)", filter, sa.Reasons)
	}
	return nil
}

// publish sends one QoS 1 message and waits for its PUBACK.
func (r *rawClient) publish(ctx context.Context, topic string, payload []byte) error {
	resp, err := r.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
	if err != nil {
		return err
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		return fmt.Errorf("publish refused with reason code 0x%02x", resp.ReasonCode)
	}
	return nil
}

func (r *rawClient) Close() {
	done := r.c.Done()
	_ = r.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	if done != nil {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
}

func closeRaw(cs []*rawClient) {
	for _, c := range cs {
		if c != nil {
			c.Close()
		}
	}
}

var errStalled = errors.New("no progress")

// loopbackBytes counts the bytes the benchmark's own clients write to and
// read from their connections. Everything runs in one process over
// loopback, so these are also the bytes the platform's side wrote and
// read: subtracted from the process's wchar, they leave what went to
// files.
var loopbackBytes atomic.Int64

// countConn counts a client connection's bytes in loopbackBytes.
type countConn struct{ net.Conn }

func (c countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	loopbackBytes.Add(int64(n))
	return n, err
}

func (c countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	loopbackBytes.Add(int64(n))
	return n, err
}

// closeWithin runs fn and gives up waiting after d, so a broker that hangs
// on close cannot keep a benchmark from ending (its goroutines are then
// left behind; the benchmark reports its own error).
func closeWithin(d time.Duration, fn func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
