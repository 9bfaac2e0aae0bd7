// Package device is the Outpost device SDK: it connects a device to the
// platform over MQTT 5, sends telemetry and answers remote procedure calls.
//
//	c, err := device.New(os.Getenv("OUTPOST_DEVICE_URL"))
//	c.Handle("blink", func(ctx context.Context, args json.RawMessage) (any, error) { … })
//	err = c.Connect(ctx)
//	defer c.Close()
//	c.Add("temperature", 21.5)
//	err = c.Publish(ctx)
//
// The client reconnects on its own with exponential backoff. Readings (and
// events and notifications) wait in a durable outbox on disk (see
// WithOutbox and package device/outbox) until Publish has them acknowledged
// by the platform, which acknowledges only what it has committed; a failed
// Publish, a lost connection or a killed process keeps them for the next
// Publish. The client also implements the rest of the device model (feeds,
// feed commands, attributes, parameters, platform time, raw publish) and
// PULL mode (WithPullMode, Pull).
package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// Handler answers one RPC method. args is the caller's JSON (nil when it
// sent none). The result is encoded as JSON; a returned error is sent to
// the caller as its text.
type Handler func(ctx context.Context, args json.RawMessage) (any, error)

// Errors returned by the client.
var (
	// ErrAuth: the platform refused the credentials.
	ErrAuth = errors.New("device: platform refused the credentials")
	// ErrTakenOver: another connection with the same credentials took
	// over this device's session; the client does not reconnect.
	ErrTakenOver = errors.New("device: session taken over by another connection with the same credentials")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("device: client closed")
	// ErrNotConnected: the operation needs a connection and there is none
	// right now (the client keeps trying to reconnect).
	ErrNotConnected = errors.New("device: not connected")
)

// Error is an error a handler can return to choose the code the caller
// sees (see the protocol.Code… constants). Any other error is reported as
// protocol.CodeHandlerError with its text.
type Error = protocol.Error

// Client is a device's connection to the platform. It is safe for
// concurrent use.
type Client struct {
	id, secret string
	server     *url.URL
	opt        options

	hmu      sync.RWMutex
	handlers map[string]Handler

	lifetime context.Context
	stop     context.CancelFunc
	cm       *autopaho.ConnectionManager
	cmReady  chan struct{}  // closed once cm is set (handlers can run before Connect returns)
	wg       sync.WaitGroup // handler and subscription goroutines
	sem      chan struct{}

	started    atomic.Bool
	connected  atomic.Bool
	subscribed chan struct{} // closed after the first subscription
	subOnce    sync.Once
	fatalMu    sync.Mutex
	fatal      error // ErrAuth, ErrTakenOver: no more reconnects
	fatalCh    chan struct{}

	answered *recentIDs
	answers  answers // answers sent, for redelivered requests
	// answeredLog keeps the answered ids next to a durable outbox, so
	// they survive a restart of the device process (nil otherwise).
	answeredLog *answeredLog
	requests    requests // requests from arrival to acknowledged answer
	pulls       pulls

	tele   telemetry
	obOnce sync.Once
	model  modelClient
	acks   downAcks // acknowledgements of queued messages (ack.go)
	limits limits   // what the platform announced (limits.go)
}

// New prepares a client for endpoint, a URL of the form
// mqtt://ID:PASSWORD@HOST:PORT (mqtts:// for TLS; the port defaults to 1883
// and 8883). It does not connect; register handlers, then call Connect.
func New(endpoint string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, fn := range opts {
		if err := fn(&o); err != nil {
			return nil, fmt.Errorf("device: %w", err)
		}
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("device: endpoint: %w", err)
	}
	switch u.Scheme {
	case "mqtt", "tcp":
		u.Scheme = "mqtt"
		if u.Port() == "" {
			u.Host += ":1883"
		}
	case "mqtts", "ssl", "tls":
		u.Scheme = "mqtts"
		if u.Port() == "" {
			u.Host += ":8883"
		}
	default:
		return nil, fmt.Errorf("device: endpoint scheme must be mqtt or mqtts, not %q", u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, errors.New("device: endpoint has no host")
	}
	id, secret := o.id, o.secret
	if u.User != nil {
		id = u.User.Username()
		secret, _ = u.User.Password()
	}
	if err := protocol.ValidID(id); err != nil {
		return nil, fmt.Errorf("device: endpoint user: %w", err)
	}
	if secret == "" {
		return nil, errors.New("device: no password in the endpoint or WithCredentials")
	}
	u.User = nil
	c := &Client{
		id: id, secret: secret, server: u, opt: o,
		handlers:   map[string]Handler{},
		sem:        make(chan struct{}, o.concurrency),
		subscribed: make(chan struct{}),
		fatalCh:    make(chan struct{}),
		answered:   newRecentIDs(4096),
		cmReady:    make(chan struct{}),
	}
	c.model.init()
	if err := c.tele.init(c); err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	return c, nil
}

// ID returns the device id.
func (c *Client) ID() string { return c.id }

// Handle registers h for RPC method name, replacing any previous handler.
// The built-in methods rpc_list and reset cannot be replaced (use WithReset
// for reset).
func (c *Client) Handle(name string, h Handler) error {
	if err := protocol.ValidMethod(name); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if name == "rpc_list" || name == "reset" {
		return fmt.Errorf("device: %s is built in", name)
	}
	if h == nil {
		return errors.New("device: nil handler")
	}
	c.hmu.Lock()
	c.handlers[name] = h
	c.hmu.Unlock()
	return nil
}

// Methods returns the names of all RPC methods the device answers, sorted,
// built-ins included.
func (c *Client) Methods() []string {
	c.hmu.RLock()
	names := make([]string, 0, len(c.handlers)+2)
	for n := range c.handlers {
		names = append(names, n)
	}
	c.hmu.RUnlock()
	names = append(names, "reset", "rpc_list")
	sort.Strings(names)
	return names
}

// Connect starts the connection and returns once the device is connected
// and subscribed, or with an error when ctx ends first or the platform
// refuses the credentials (ErrAuth). After a successful Connect the client
// keeps reconnecting on its own until Close.
func (c *Client) Connect(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("device: Connect called twice")
	}
	c.lifetime, c.stop = context.WithCancel(context.Background())
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{c.server},
		TlsCfg:                        c.opt.tls,
		KeepAlive:                     uint16(c.opt.keepAlive / time.Second),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(c.opt.sessionExpiry / time.Second),
		ReconnectBackoff:              autopaho.NewExponentialBackoff(c.opt.minBackoff, c.opt.maxBackoff, min(c.opt.minBackoff*4, c.opt.maxBackoff), 2),
		ConnectTimeout:                c.opt.connectTimeout,
		AttemptConnection:             c.dial,
		ConnectUsername:               c.id,
		ConnectPassword:               []byte(c.secret),
		OnConnectionUp:                c.onUp,
		OnConnectionDown:              c.onDown,
		OnConnectError:                c.onConnectError,
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
			return p, nil
		},
		ClientConfig: paho.ClientConfig{
			ClientID:           c.id,
			OnPublishReceived:  []func(paho.PublishReceived) (bool, error){c.onPublish},
			OnServerDisconnect: c.onServerDisconnect,
		},
	}
	if c.server.Scheme == "mqtts" && cfg.TlsCfg == nil {
		cfg.TlsCfg = nil // system roots; autopaho builds a default config
	}
	cm, err := autopaho.NewConnection(c.lifetime, cfg)
	if err != nil {
		c.stop()
		return fmt.Errorf("device: %w", err)
	}
	c.cm = cm
	c.startAcks()
	if c.opt.autoPublish > 0 {
		c.wg.Add(1)
		go c.autoPublish(c.opt.autoPublish)
	}
	close(c.cmReady)
	select {
	case <-c.subscribed:
		return nil
	case <-c.fatalCh:
		err := c.Err()
		c.Close()
		return err
	case <-ctx.Done():
		c.Close()
		return fmt.Errorf("device: connect to %s: %w", c.server.Host, ctx.Err())
	}
}

// Connected reports whether the client is connected right now.
func (c *Client) Connected() bool { return c.connected.Load() }

// Err returns why the client stopped for good (ErrAuth, ErrTakenOver), or
// nil while it is running or reconnecting.
func (c *Client) Err() error {
	c.fatalMu.Lock()
	defer c.fatalMu.Unlock()
	return c.fatal
}

// Done is closed when the client stops for good: after Close, a takeover
// or refused credentials.
func (c *Client) Done() <-chan struct{} { return c.fatalCh }

func (c *Client) setFatal(err error) {
	c.fatalMu.Lock()
	defer c.fatalMu.Unlock()
	if c.fatal == nil {
		c.fatal = err
		close(c.fatalCh)
	}
}

// Close disconnects, waits for every goroutine the client started and
// closes the outbox. Readings not yet published stay in a durable outbox
// for the next client on the same directory; with WithMemoryOutbox they are
// lost, so call Publish first.
func (c *Client) Close() error {
	defer c.closeOutbox()
	if !c.started.Load() || c.stop == nil {
		return nil
	}
	if c.cm != nil {
		if c.Connected() {
			// Best effort: the platform resends what is not confirmed.
			fctx, fcancel := context.WithTimeout(context.Background(), time.Second)
			_ = c.flushAcks(fctx)
			fcancel()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.cm.Disconnect(ctx)
		cancel()
	}
	c.stop()
	if c.cm != nil {
		<-c.cm.Done()
	}
	c.wg.Wait()
	c.setFatal(ErrClosed)
	c.connected.Store(false)
	return nil
}

func (c *Client) onUp(cm *autopaho.ConnectionManager, ca *paho.Connack) {
	c.opt.log.Info("connected", "device_id", c.id, "server", c.server.Host)
	c.limits.connected(c, ca)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.lifetime, c.opt.connectTimeout)
		defer cancel()
		if err := c.subscribe(ctx, cm); err != nil {
			// Without the subscription the device hears nothing: drop
			// the connection so that autopaho connects afresh.
			c.opt.log.Warn("subscribe failed; reconnecting", "device_id", c.id, "error", err)
			dctx, dcancel := context.WithTimeout(c.lifetime, time.Second)
			_ = cm.Disconnect(dctx)
			dcancel()
			return
		}
		c.connected.Store(true)
		c.modelConnected(cm, ca)
		c.subOnce.Do(func() { close(c.subscribed) })
		if c.opt.onUp != nil {
			c.opt.onUp()
		}
		c.tele.kick()
	}()
}

// subscribe subscribes to the device's down/ topics, retrying while ctx
// allows. A refusal can be transient: right after a persistent session is
// resumed, the embedded broker answers 0x91 (packet identifier in use)
// while the packet id of the SUBSCRIBE is also that of a message it is
// resending to the device; the next attempt uses another id.
func (c *Client) subscribe(ctx context.Context, cm *autopaho.ConnectionManager) error {
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
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}

func (c *Client) onDown() bool {
	c.connected.Store(false)
	c.opt.log.Info("connection lost", "device_id", c.id)
	if c.opt.onDown != nil {
		c.opt.onDown()
	}
	return c.Err() == nil
}

func (c *Client) onConnectError(err error) {
	var ce *autopaho.ConnackError
	if errors.As(err, &ce) && (ce.ReasonCode == 0x86 || ce.ReasonCode == 0x87 || ce.ReasonCode == 0x85) {
		if !c.connected.Load() && !isClosed(c.subscribed) {
			// Never connected: wrong credentials will not fix themselves.
			c.setFatal(fmt.Errorf("%w (reason code 0x%02x)", ErrAuth, ce.ReasonCode))
			return
		}
	}
	c.opt.log.Debug("connect attempt failed", "device_id", c.id, "error", err)
}

func (c *Client) onServerDisconnect(d *paho.Disconnect) {
	if d.ReasonCode == 0x8E { // session taken over
		c.opt.log.Warn("session taken over by another connection", "device_id", c.id)
		c.setFatal(ErrTakenOver)
		c.stop()
		return
	}
	c.opt.log.Info("platform closed the connection", "device_id", c.id, "reason_code", d.ReasonCode)
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (c *Client) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	t, err := protocol.ParseTopic(p.Topic)
	if err != nil || t.DeviceID != c.id || t.Dir != protocol.Down {
		return false, nil
	}
	defer c.ackQueued(p) // once taken in below
	switch t.Kind {
	case protocol.KindRPC:
		req, err := protocol.DecodeRPCRequest(p.Payload)
		if err != nil {
			c.opt.log.Warn("bad rpc request", "device_id", c.id, "error", err)
			return true, nil
		}
		done := c.requests.track(req.ID)
		c.wg.Add(1)
		go c.serveRPC(req, done)
	case protocol.KindPull:
		c.pullEnded(p.Payload)
	case protocol.KindError:
		e, err := protocol.DecodeErrorReply(p.Payload)
		if err != nil {
			return true, nil
		}
		c.opt.log.Warn("platform rejected a message", "device_id", c.id, "kind", e.Kind, "id", e.ID, "code", e.Code, "message", e.Message, "rejected", e.Rejected)
		if c.opt.onError != nil {
			c.opt.onError(e)
		}
	default:
		if c.onModelPublish(t.Kind, p.Payload) {
			break
		}
		c.opt.log.Debug("ignoring message of unknown kind", "device_id", c.id, "kind", t.Kind)
	}
	return true, nil
}

func (c *Client) serveRPC(req protocol.RPCRequest, done func()) {
	defer c.wg.Done()
	defer done()
	if !c.answered.add(req.ID) {
		c.answerAgain(req) // a redelivery: never run twice
		return
	}
	if err := c.answeredLog.add(req.ID); err != nil {
		c.opt.log.Warn("record answered rpc request", "device_id", c.id, "id", req.ID, "error", err)
	}
	ctx := c.lifetime
	var cancel context.CancelFunc
	if req.Deadline > 0 {
		dl := time.UnixMilli(req.Deadline)
		if time.Now().After(dl) {
			c.opt.log.Info("skipping expired rpc request", "device_id", c.id, "method", req.Method, "id", req.ID)
			return
		}
		ctx, cancel = context.WithDeadline(ctx, dl)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	select {
	case c.sem <- struct{}{}:
		defer func() { <-c.sem }()
	case <-ctx.Done():
		return
	}
	var after func()
	resp := protocol.RPCResponse{ID: req.ID}
	result, err := c.call(ctx, req, &after)
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		// The caller has stopped waiting and reports a timeout; an answer
		// now would only race it.
		c.opt.log.Info("rpc handler ran past the caller's deadline", "device_id", c.id, "method", req.Method, "id", req.ID)
		return
	}
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			resp.Error = &protocol.Error{Code: pe.Code, Message: pe.Message}
		} else {
			resp.Error = &protocol.Error{Code: protocol.CodeHandlerError, Message: err.Error()}
		}
	} else {
		raw, err := json.Marshal(result)
		if err != nil {
			resp.Error = &protocol.Error{Code: protocol.CodeHandlerError, Message: "encode result: " + err.Error()}
		} else {
			resp.Result = raw
		}
	}
	payload, _ := json.Marshal(resp)
	if len(payload) > protocol.MaxMessageBytes || c.checkSize(protocol.KindRPC, payload) != nil {
		payload, _ = json.Marshal(protocol.RPCResponse{ID: req.ID, Error: &protocol.Error{Code: protocol.CodeTooLarge, Message: "result exceeds " + strconv.Itoa(protocol.MaxMessageBytes) + " bytes"}})
	}
	c.answers.remember(req.ID, payload)
	pctx, pcancel := context.WithTimeout(c.lifetime, 10*time.Second)
	defer pcancel()
	if _, err := c.manager().Publish(pctx, &paho.Publish{Topic: protocol.UpTopic(c.id, protocol.KindRPC), QoS: 1, Payload: payload}); err != nil {
		c.opt.log.Warn("rpc response not delivered", "device_id", c.id, "method", req.Method, "error", err)
	}
	if after != nil {
		after()
	}
}

// call runs the handler for req, or a built-in. after, when set, runs once
// the response has been sent (reset answers before resetting).
func (c *Client) call(ctx context.Context, req protocol.RPCRequest, after *func()) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	switch req.Method {
	case "rpc_list":
		return c.Methods(), nil
	case "reset":
		if c.opt.reset == nil {
			return nil, &protocol.Error{Code: protocol.CodeNotSupported, Message: "reset is not supported by this device"}
		}
		*after = func() {
			if err := c.opt.reset(c.lifetime); err != nil {
				c.opt.log.Error("reset failed", "device_id", c.id, "error", err)
			}
		}
		return "resetting", nil
	}
	c.hmu.RLock()
	h := c.handlers[req.Method]
	c.hmu.RUnlock()
	if h == nil {
		return nil, &protocol.Error{Code: protocol.CodeUnknownMethod, Message: "no method " + strconv.Quote(req.Method)}
	}
	return h(ctx, req.Args)
}

// recentIDs remembers the last n request ids, so a request redelivered
// after a reconnect is not executed twice.
type recentIDs struct {
	mu   sync.Mutex
	set  map[string]struct{}
	ring []string
	next int
}

func newRecentIDs(n int) *recentIDs {
	return &recentIDs{set: make(map[string]struct{}, n), ring: make([]string, n)}
}

// add records id and reports whether it was new.
func (r *recentIDs) add(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[id]; ok {
		return false
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.set, old)
	}
	r.ring[r.next] = id
	r.next = (r.next + 1) % len(r.ring)
	r.set[id] = struct{}{}
	return true
}

// closeOutbox closes the outbox once.
func (c *Client) closeOutbox() {
	c.obOnce.Do(func() {
		c.answeredLog.close()
		if err := c.tele.ob.Close(); err != nil {
			c.opt.log.Warn("close outbox", "device_id", c.id, "error", err)
		}
	})
}
