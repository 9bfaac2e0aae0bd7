// Package device is the Outpost device SDK: it connects a device to the
// platform over MQTT 5, sends telemetry and answers remote procedure calls.
//
//	c, err := device.New(os.Getenv("OUTPOST_DEVICE_URL")) // mqtt://ID:PASSWORD@HOST:PORT
//	c.Handle("blink", func(ctx context.Context, args json.RawMessage) (any, error) { … })
//	c.Add("temperature", 21.5) // into the outbox on disk; works before Connect
//	err = c.Connect(ctx)       // returns once the platform answered; may be retried
//	defer c.Close()
//	err = c.Publish(ctx)       // returns once the platform committed every reading
//
// # The outbox
//
// Readings (Add, AddAt, AddReadings), events (SendEvent) and notifications
// (SendNotification) go into a durable outbox (package device/outbox)
// before the call returns, and leave it, in the order they were added,
// only when the platform has acknowledged them, which it does once they
// are committed: a failed Publish, a lost connection or a killed process
// keeps them for later. Publish sends what waits and returns when all of
// it is acknowledged; events and notifications also go by themselves as
// soon as the client is connected; WithAutoPublish sends readings in the
// background too. The outbox lives in WithOutbox(dir), else under a state
// directory ($STATE_DIRECTORY, $XDG_STATE_HOME or ~/.local/state, see
// WithOutbox); a directory serves one client at a time.
//
// # Connecting
//
// Connect returns once the device is subscribed and the platform answered a
// time request on the connection: an MQTT broker that is not the platform
// never answers (ErrNotOutpost), and nothing is published through it. A
// failed Connect leaves the client usable: Add keeps working and Connect
// can be called again; with WithRetryOnFailedConnect it keeps trying in the
// background. Each failed attempt is logged at Warn with its cause and the
// time of the next one. Once connected, the client reconnects on its own
// until Close.
//
// The client also implements the rest of the device model (feeds, feed
// commands, attributes, parameters, platform time, raw publish) and PULL
// mode (WithPullMode, Pull). A message the platform refuses for good, of
// any kind, is reported as a *PublishError.
//
// # Changes in this version
//
//   - The client is safe for concurrent use from New on; a failed Connect
//     no longer closes it, and Connect may be called again.
//   - New: WithRetryOnFailedConnect, ErrNotOutpost, Client.OutboxDir.
//   - SendEvent and SendNotification return once the message is queued
//     (Publish waits for its delivery); they no longer publish the backlog.
//   - PublishError replaces ModelError for refused device-model messages.
//   - HandleParameters returns an error, like Handle and HandleFeed.
//   - Close returns what failed while closing the outbox.
//   - The default outbox directory moved from the user's cache directory
//     to a state directory (an old outbox is moved over), and is locked.
//   - WithReconnectBackoff accepts min == max; outbox options return
//     errors for values out of range instead of keeping their defaults.
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

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// Handler answers one RPC method. args is the caller's JSON (nil when it
// sent none). The result is encoded as JSON; a returned error is sent to
// the caller as its text.
type Handler func(ctx context.Context, args json.RawMessage) (any, error)

// Errors returned by the client.
var (
	// ErrAuth: the platform refused the credentials. Retrying with the
	// same ones cannot help: the client stops for good.
	ErrAuth = errors.New("device: platform refused the credentials")
	// ErrNotOutpost: the server accepted the MQTT connection but did not
	// answer the platform time request that the Outpost platform answers
	// on every connection (docs/protocol.md §16). It is some other MQTT
	// broker (a Mosquitto on the same port?), or a broker whose platform
	// is not running. Nothing is published through such a connection; the
	// client keeps trying.
	ErrNotOutpost = errors.New("device: not an Outpost platform")
	// ErrTakenOver: another connection with the same credentials took
	// over this device's session; the client does not reconnect.
	ErrTakenOver = errors.New("device: session taken over by another connection with the same credentials")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("device: client closed")
	// ErrNotConnected: the operation needs a connection and there is none:
	// Connect was not called or gave up, or (wrapped with the context's
	// error) the connection did not come back before the context ended.
	ErrNotConnected = errors.New("device: not connected")
)

// Error is an error a handler can return to choose the code the caller
// sees (see the protocol.Code… constants). Any other error is reported as
// protocol.CodeHandlerError with its text.
type Error = protocol.Error

// Client is a device's connection to the platform. It is safe for
// concurrent use, from New on: Add, SendEvent and the handlers work before
// the first connection.
type Client struct {
	id, secret string
	server     *url.URL
	opt        options

	hmu      sync.RWMutex
	handlers map[string]Handler

	// lifetime runs from New to Close; handlers get contexts derived
	// from it.
	lifetime context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup // handler, check and watch goroutines
	sem      chan struct{}

	mu        sync.Mutex    // guards the connection state below
	closed    bool          //
	run       *run          // the connection cycle, nil when not connecting
	link      *link         // the network connection, nil when down
	changed   chan struct{} // closed and replaced when any of the above changes
	lastErr   error         // why the last connection attempt failed
	everReady atomic.Bool   // a connection was ready once

	fatalMu sync.Mutex
	fatal   error // ErrAuth, ErrTakenOver, ErrClosed: no more connections
	fatalCh chan struct{}

	answered *recentIDs
	answers  answers // answers sent, for redelivered requests
	// answeredLog keeps the answered ids next to a durable outbox, so
	// they survive a restart of the device process (nil otherwise).
	answeredLog *answeredLog
	requests    requests // requests from arrival to acknowledged answer
	pulls       pulls

	tele     telemetry
	obOnce   sync.Once
	obCloseE error
	model    modelClient

	files  *fileMgr                // files.go; nil without WithFiles
	gw     atomic.Pointer[Gateway] // gateway.go; nil unless NewGateway
	fwMu   sync.Mutex
	fw     *fwMgr   // firmware.go; nil without HandleFirmware
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
		handlers: map[string]Handler{},
		sem:      make(chan struct{}, o.concurrency),
		changed:  make(chan struct{}),
		fatalCh:  make(chan struct{}),
		answered: newRecentIDs(4096),
	}
	c.model.init()
	if err := c.tele.init(c); err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	c.lifetime, c.stop = context.WithCancel(context.Background())
	c.startAcks()
	if err := c.initFiles(); err != nil {
		c.stop()
		c.closeOutbox()
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

// Err returns why the client stopped for good (ErrAuth, ErrTakenOver,
// ErrClosed), or nil while it is running, reconnecting or not connected.
func (c *Client) Err() error {
	c.fatalMu.Lock()
	defer c.fatalMu.Unlock()
	return c.fatal
}

// Done is closed when the client stops for good: after Close, a takeover
// or refused credentials. The outbox stays usable until Close.
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
// closes the outbox. It returns what went wrong on the way, typically an
// outbox that could not be synced to disk; calls after the first return
// nil. Readings not yet published stay in a durable outbox for the next
// client on the same directory; with WithMemoryOutbox they are lost, so
// call Publish first.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	r := c.run
	c.mu.Unlock()
	if r != nil {
		if c.Connected() {
			// Best effort: the platform resends what is not confirmed.
			fctx, fcancel := context.WithTimeout(context.Background(), time.Second)
			_ = c.flushAcks(fctx)
			c.announceGone(fctx, r)
			fcancel()
		}
		c.endRun(r, ErrClosed)
		<-r.done
	}
	c.stop()
	c.wg.Wait()
	c.files.close()
	c.setFatal(ErrClosed)
	if err := c.closeOutbox(); err != nil {
		return fmt.Errorf("device: close: %w", err)
	}
	return nil
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
		if c.onModelPublish(t.Kind, p.Payload) || c.onFilesPublish(t.Kind, p.Payload) || c.onGatewayPublish(t.Kind, p.Payload) {
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
	if err := c.publishUp(pctx, protocol.KindRPC, payload); err != nil {
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

// closeOutbox closes the outbox once and returns what failed.
func (c *Client) closeOutbox() error {
	c.obOnce.Do(func() {
		c.obCloseE = errors.Join(c.answeredLog.close(), c.tele.ob.Close())
	})
	return c.obCloseE
}
