package device

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// This file holds the connection cycle. A run lasts from the Connect that
// starts it until Close, a takeover, refused credentials, or the end of the
// context of a Connect that never got through; within a run autopaho
// connects and reconnects, and each network connection it reports up is a
// link. A link is ready (Connected reports true, and anything may go up)
// once the device is subscribed and the platform has answered a time
// request on it: an MQTT broker that is not the Outpost platform never
// answers, and nothing is published through it.

// run is one connection cycle.
type run struct {
	cm     *autopaho.ConnectionManager
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the sender
	done   chan struct{}  // closed once the cycle and all its goroutines ended
	conn   atomic.Pointer[wireConn]
	// session is the presence tag of the connection being made or made:
	// the same in its will message and its online announcement.
	session atomic.Pointer[string]

	// Guarded by Client.mu.
	err   error         // why the run ended
	fails int           // failed attempts since the last ready link
	delay time.Duration // wait before the next attempt
}

// link is one network connection of a run.
type link struct {
	run    *run
	cm     *autopaho.ConnectionManager
	conn   *wireConn
	ctx    context.Context // ends when the connection goes down
	cancel context.CancelFunc
	ready  bool // guarded by Client.mu
}

// attemptError is why one connection attempt failed: a short cause for
// people (refused, DNS, TLS, bad credentials…) and the error itself.
type attemptError struct {
	cause string
	err   error
}

func (e *attemptError) Error() string {
	if msg := e.err.Error(); !strings.Contains(msg, e.cause) {
		return e.cause + ": " + msg
	}
	return e.err.Error()
}
func (e *attemptError) Unwrap() error { return e.err }

// tlsError marks a failed TLS handshake.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return "tls: " + e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// classify names the cause of a failed connection attempt.
func classify(err error) *attemptError {
	var (
		ce  *autopaho.ConnackError
		dns *net.DNSError
		te  *tlsError
		ne  net.Error
	)
	switch {
	case errors.As(err, &ce):
		switch ce.ReasonCode {
		case 0x85, 0x86, 0x87, 0x8C:
			return &attemptError{"bad credentials", fmt.Errorf("%w (reason code 0x%02x)", ErrAuth, ce.ReasonCode)}
		}
		return &attemptError{"refused by the server", fmt.Errorf("reason code 0x%02x: %w", ce.ReasonCode, err)}
	case errors.As(err, &dns):
		return &attemptError{"DNS lookup failed", err}
	case errors.As(err, &te):
		return &attemptError{"TLS handshake failed", err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &attemptError{"connection refused", err}
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return &attemptError{"network unreachable", err}
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &attemptError{"connection closed by the server", err}
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return &attemptError{"timed out", err}
	}
	return &attemptError{"connection failed", err}
}

// notifyLocked wakes everyone waiting for a change of the connection
// state. Called with c.mu held.
func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Connect connects the client to the platform and returns once the device
// is subscribed and the platform has answered on the connection, or with
// an error:
//
//   - when ctx ends first: the error wraps ctx.Err() and the cause of the
//     last failed attempt (connection refused, DNS, TLS, ErrAuth,
//     ErrNotOutpost…), and the client stops trying; Add keeps working and
//     Connect may be called again later;
//   - ErrAuth when the platform refuses the credentials: retrying with the
//     same ones cannot help, so the client stops for good (Done, Err);
//   - ErrClosed after Close, ErrTakenOver after a takeover.
//
// Every failed attempt is logged at Warn with its cause and the time of the
// next one. Once connected, the client reconnects on its own, with
// exponential backoff, until Close. Connect on a client that is connected
// or reconnecting only waits for the connection. With
// WithRetryOnFailedConnect, Connect does not wait: it starts connecting in
// the background and returns nil.
func (c *Client) Connect(ctx context.Context) error {
	r, started, err := c.startRun()
	if err != nil {
		return err
	}
	if c.opt.retryOnFailedConnect {
		return nil
	}
	for {
		c.mu.Lock()
		if c.run != r {
			err := r.err
			c.mu.Unlock()
			if err == nil {
				err = ErrNotConnected
			}
			return err
		}
		if c.link != nil && c.link.ready {
			c.mu.Unlock()
			return nil
		}
		ch, last := c.changed, c.lastErr
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			err := c.connectError(ctx.Err(), last)
			if started {
				// Nobody asked for background attempts: stop them, so
				// the failure leaves nothing running.
				c.endRun(r, err)
				<-r.done
			}
			return err
		}
	}
}

func (c *Client) connectError(ctxErr, last error) error {
	if last == nil {
		return fmt.Errorf("device: connect to %s: %w", c.server.Host, ctxErr)
	}
	return fmt.Errorf("device: connect to %s: %w; last attempt: %w", c.server.Host, ctxErr, last)
}

// startRun starts a connection cycle unless one runs. It reports whether
// it started one.
func (c *Client) startRun() (*run, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, false, ErrClosed
	}
	if err := c.Err(); err != nil {
		return nil, false, err
	}
	if c.run != nil {
		return c.run, false, nil
	}
	r := &run{done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(c.lifetime)
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{c.server},
		TlsCfg:                        c.opt.tls,
		KeepAlive:                     uint16(c.opt.keepAlive / time.Second),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(c.opt.sessionExpiry / time.Second),
		ReconnectBackoff:              func(int) time.Duration { return c.takeDelay(r) },
		ConnectTimeout:                c.opt.connectTimeout,
		AttemptConnection:             c.dialer(r),
		ConnectUsername:               c.id,
		ConnectPassword:               []byte(c.secret),
		OnConnectionUp:                func(cm *autopaho.ConnectionManager, ca *paho.Connack) { c.onUp(r, cm, ca) },
		OnConnectionDown:              func() bool { return c.onDown(r) },
		OnConnectError:                func(err error) { c.onConnectError(r, err) },
		ConnectPacketBuilder: func(p *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if err := c.Err(); err != nil {
				return nil, err // never reconnect after a takeover
			}
			if p.Properties == nil {
				p.Properties = &paho.ConnectProperties{}
			}
			// With Request Problem Information 0 the embedded broker
			// leaves out user properties, the queued message id among
			// them (ack.go).
			p.Properties.RequestProblemInfo = true
			if c.opt.pull {
				p.Properties.User = append(p.Properties.User, paho.UserProperty{Key: protocol.PropMode, Value: protocol.ModePull})
			}
			// The will tells a platform behind an external broker that
			// this connection is gone (docs/protocol.md, "Presence
			// announcements"); the embedded broker sees that itself.
			tag := newSessionTag()
			r.session.Store(&tag)
			p.WillMessage = &paho.WillMessage{QoS: 1, Topic: protocol.UpTopic(c.id, protocol.KindPresence), Payload: c.presence(false, tag)}
			return p, nil
		},
		ClientConfig: paho.ClientConfig{
			ClientID:           c.id,
			OnPublishReceived:  []func(paho.PublishReceived) (bool, error){c.onPublish},
			OnServerDisconnect: func(d *paho.Disconnect) { c.onServerDisconnect(r, d) },
		},
	}
	cm, err := autopaho.NewConnection(r.ctx, cfg)
	if err != nil {
		r.cancel()
		return nil, false, fmt.Errorf("device: %w", err)
	}
	r.cm = cm
	c.run = r
	c.notifyLocked()
	r.wg.Add(1)
	go c.sender(r)
	c.wg.Add(1)
	go c.watch(r)
	return r, true, nil
}

// watch waits for the end of run r and clears it.
func (c *Client) watch(r *run) {
	defer c.wg.Done()
	<-r.cm.Done()
	r.cancel()
	r.wg.Wait()
	c.mu.Lock()
	if c.link != nil && c.link.run == r {
		c.link.cancel()
		c.link = nil
	}
	if c.run == r {
		c.run = nil
	}
	if r.err == nil {
		r.err = c.Err()
	}
	c.notifyLocked()
	c.mu.Unlock()
	close(r.done)
}

// endRun ends run r with err (the first reason given wins). It does not
// wait, so autopaho's callbacks may call it.
func (c *Client) endRun(r *run, err error) {
	c.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	c.mu.Unlock()
	r.cancel()
}

// failed records a failed attempt of run r and returns the wait before the
// next one: exponential from the minimum backoff to the maximum, with
// jitter.
func (c *Client) failed(r *run, ae *attemptError) (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.run != r || r.ctx.Err() != nil {
		return 0, false
	}
	c.lastErr = ae
	r.fails++
	d := c.opt.minBackoff
	for i := 1; i < r.fails && d < c.opt.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.opt.maxBackoff)
	d = d/2 + rand.N(d/2+1)
	r.delay = d
	c.notifyLocked()
	return d, true
}

// takeDelay is autopaho's ReconnectBackoff: the wait that the last failure
// chose, once.
func (c *Client) takeDelay(r *run) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := r.delay
	r.delay = 0
	return d
}

// logFailure logs a failed attempt with the time of the next one.
func (c *Client) logFailure(ae *attemptError, d time.Duration, retry bool) {
	args := []any{"device_id", c.id, "server", c.server.Host, "cause", ae.cause, "error", ae.err}
	if retry {
		args = append(args, "retry_in", d.Round(time.Millisecond), "retry_at", time.Now().Add(d).Format(time.RFC3339Nano))
	}
	c.opt.log.Warn("connection attempt failed", args...)
}

func (c *Client) onConnectError(r *run, err error) {
	ae := classify(err)
	if errors.Is(ae, ErrAuth) && !c.everReady.Load() {
		// Never connected with these credentials: they will not fix
		// themselves. (Once connected, a refusal may be the platform
		// restarting; keep trying.)
		c.mu.Lock()
		c.lastErr = ae
		c.mu.Unlock()
		c.logFailure(ae, 0, false)
		c.setFatal(ae)
		c.endRun(r, ae)
		return
	}
	if d, ok := c.failed(r, ae); ok {
		c.logFailure(ae, d, true)
	}
}

// dialer returns the function that opens the network connections of run r
// (autopaho's AttemptConnection).
func (c *Client) dialer(r *run) func(context.Context, autopaho.ClientConfig, *url.URL) (net.Conn, error) {
	return func(ctx context.Context, cfg autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, c.opt.connectTimeout)
		defer cancel()
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		if u.Scheme == "mqtts" {
			tc := &tls.Config{MinVersion: tls.VersionTLS12}
			if cfg.TlsCfg != nil {
				tc = cfg.TlsCfg.Clone()
			}
			if tc.ServerName == "" {
				tc.ServerName = u.Hostname()
			}
			tconn := tls.Client(conn, tc)
			if err := tconn.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, &tlsError{err}
			}
			conn = tconn
		}
		wc := newWireConn(conn, c.tele.wire)
		r.conn.Store(wc)
		return wc, nil
	}
}

func (c *Client) onUp(r *run, cm *autopaho.ConnectionManager, ca *paho.Connack) {
	l := &link{run: r, cm: cm, conn: r.conn.Load()}
	l.ctx, l.cancel = context.WithCancel(r.ctx)
	c.mu.Lock()
	if c.run != r {
		c.mu.Unlock()
		l.cancel()
		return
	}
	c.link = l
	c.notifyLocked()
	c.mu.Unlock()
	c.opt.log.Debug("connected; checking the platform", "device_id", c.id, "server", c.server.Host)
	c.wg.Add(1)
	go c.check(l, ca)
}

// check makes link l ready: it subscribes and asks the platform for its
// time. When either fails the connection is dropped and the attempt counts
// as failed.
func (c *Client) check(l *link, ca *paho.Connack) {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(l.ctx, c.opt.connectTimeout)
	defer cancel()
	ae := c.subscribe(ctx, l.cm)
	if ae == nil {
		ae = c.probe(ctx, l)
	}
	if ae != nil {
		if l.ctx.Err() != nil {
			return // the connection went down meanwhile
		}
		if d, ok := c.failed(l.run, ae); ok {
			c.logFailure(ae, d, true)
		}
		// Drop this connection: autopaho connects afresh after the delay.
		if l.conn != nil {
			l.conn.Close()
		}
		return
	}
	c.limits.connected(c, ca)
	c.announce(ctx, l)
	c.modelConnected(ctx, l, ca)
	c.mu.Lock()
	if c.link != l || l.ctx.Err() != nil {
		c.mu.Unlock()
		return
	}
	l.ready = true
	l.run.fails = 0
	c.lastErr = nil
	c.notifyLocked()
	c.mu.Unlock()
	c.everReady.Store(true)
	c.opt.log.Info("connected", "device_id", c.id, "server", c.server.Host)
	if c.opt.onUp != nil {
		c.opt.onUp()
	}
	c.tele.kick()
	c.filesConnected()
	if g := c.gw.Load(); g != nil {
		g.connected()
	}
}

// subscribe subscribes to the device's down/ topics, retrying while ctx
// allows. A refusal can be transient: right after a persistent session is
// resumed, the embedded broker answers 0x91 (packet identifier in use)
// while the packet id of the SUBSCRIBE is also that of a message it is
// resending to the device; the next attempt uses another id.
func (c *Client) subscribe(ctx context.Context, cm *autopaho.ConnectionManager) *attemptError {
	pause := 20 * time.Millisecond
	for {
		_, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
			{Topic: protocol.DeviceFilter(c.id), QoS: 1},
		}})
		if err == nil {
			return nil
		}
		c.opt.log.Debug("subscribe refused; retrying", "device_id", c.id, "error", err)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return &attemptError{"subscription refused", fmt.Errorf("subscribe: %w (last attempt: %v)", ctx.Err(), err)}
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}

// probe asks the platform for its time on link l (docs/protocol.md §16).
// The platform answers at once on every connection; a broker without the
// platform behind it never does.
func (c *Client) probe(ctx context.Context, l *link) *attemptError {
	_, err := c.askTime(ctx, "probe", func(ctx context.Context, payload []byte) error {
		_, err := l.cm.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(c.id, protocol.KindTime), QoS: 1, Payload: payload})
		return err
	})
	if err == nil {
		return nil
	}
	if l.ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return &attemptError{"not an Outpost platform", fmt.Errorf("%w: no answer to the platform time request within %s (another MQTT broker, such as a Mosquitto, on %s?)", ErrNotOutpost, c.opt.connectTimeout, c.server.Host)}
	}
	return &attemptError{"platform check failed", err}
}

func (c *Client) onDown(r *run) bool {
	c.mu.Lock()
	var wasReady bool
	if l := c.link; l != nil && l.run == r {
		wasReady = l.ready
		l.cancel()
		c.link = nil
		c.notifyLocked()
	}
	if wasReady && c.run == r {
		// The first attempt after losing a working connection waits a
		// random moment within the minimum backoff: a fleet that lost the
		// platform at once (a restart, a network cut) comes back spread
		// out instead of in lock-step. (A failed attempt has set its own
		// delay already.)
		r.delay = rand.N(c.opt.minBackoff + 1)
	}
	c.mu.Unlock()
	if wasReady {
		c.opt.log.Info("connection lost", "device_id", c.id)
		if c.opt.onDown != nil {
			c.opt.onDown()
		}
	}
	return c.Err() == nil && r.ctx.Err() == nil
}

func (c *Client) onServerDisconnect(r *run, d *paho.Disconnect) {
	if d.ReasonCode == 0x8E { // session taken over
		c.opt.log.Warn("session taken over by another connection", "device_id", c.id)
		c.setFatal(ErrTakenOver)
		c.endRun(r, ErrTakenOver)
		return
	}
	c.opt.log.Info("platform closed the connection", "device_id", c.id, "reason_code", d.ReasonCode)
}

// Connected reports whether the client is connected to the platform right
// now: connected, subscribed, and the platform answered on the connection.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.link != nil && c.link.ready
}

// waitReady returns the ready link, waiting for one while a run is going
// and ctx allows. Without a run it returns ErrNotConnected at once (or why
// the client stopped for good).
func (c *Client) waitReady(ctx context.Context) (*link, error) {
	for {
		c.mu.Lock()
		if c.run == nil {
			c.mu.Unlock()
			if err := c.Err(); err != nil {
				return nil, err
			}
			return nil, ErrNotConnected
		}
		if l := c.link; l != nil && l.ready {
			c.mu.Unlock()
			return l, nil
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNotConnected, ctx.Err())
		}
	}
}

// onLink returns a context that ends with ctx or when link l goes down,
// whichever comes first.
func onLink(ctx context.Context, l *link) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// publishUp publishes one QoS 1 message that is not in the outbox (an RPC
// answer, a device-model message, a raw message) and waits for the
// platform's acknowledgement, riding out reconnects until ctx ends.
func (c *Client) publishUp(ctx context.Context, kind string, payload []byte) error {
	if err := c.checkSize(kind, payload); err != nil {
		return err
	}
	for {
		l, err := c.waitReady(ctx)
		if err != nil {
			return err
		}
		pctx, cancel := onLink(ctx, l)
		resp, err := l.cm.Publish(pctx, &paho.Publish{Topic: protocol.UpTopic(c.id, kind), QoS: 1, Payload: payload})
		cancel()
		if err == nil {
			return nil
		}
		if resp != nil && refusedForGood(resp.ReasonCode) {
			return &PublishError{Kind: kind, ReasonCode: resp.ReasonCode}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("device: %s: %w", kind, ctx.Err())
		}
		if l.ctx.Err() != nil {
			continue // resend on the next connection
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("device: %s: %w", kind, ctx.Err())
		}
	}
}

// refusedForGood reports whether a PUBACK reason code means that resending
// cannot help (docs/protocol.md §4.2).
func refusedForGood(code byte) bool {
	switch code {
	case 0x87, 0x90, 0x99, 0x83:
		return true
	}
	return false
}

// probeID numbers the time requests of the platform check.
func probeID(prefix string, n uint64) string { return prefix + "-" + strconv.FormatUint(n, 10) }

// newSessionTag returns a random tag for a connection's presence
// announcements.
func newSessionTag() string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// presence encodes a presence announcement of this client.
func (c *Client) presence(online bool, tag string) []byte {
	p := protocol.Presence{Online: online, Session: tag}
	if c.opt.pull {
		p.Mode = protocol.ModePull
	}
	b, _ := json.Marshal(p)
	return b
}

// announce tells the platform that link l is up and subscribed
// (docs/protocol.md, "Presence announcements"). A platform behind an
// external broker learns from it that the device is online and can take
// queued messages; the embedded broker only acknowledges it. A failure
// is logged: the platform then learns of the device from its first
// message instead.
func (c *Client) announce(ctx context.Context, l *link) {
	tag := l.run.session.Load()
	if tag == nil {
		return
	}
	if _, err := l.cm.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(c.id, protocol.KindPresence), QoS: 1, Payload: c.presence(true, *tag)}); err != nil {
		c.opt.log.Debug("presence announcement not sent", "device_id", c.id, "error", err)
	}
}

// announceGone tells the platform that the device leaves (Close): a
// normal DISCONNECT does not send the will.
func (c *Client) announceGone(ctx context.Context, r *run) {
	tag := r.session.Load()
	if tag == nil {
		return
	}
	_, _ = r.cm.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(c.id, protocol.KindPresence), QoS: 1, Payload: c.presence(false, *tag)})
}
