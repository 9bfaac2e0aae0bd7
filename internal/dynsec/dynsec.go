// Package dynsec manages Outpost devices in an external Mosquitto 2 broker
// through its dynamic security plugin.
//
// The plugin is administered over MQTT: a JSON request published to
// $CONTROL/dynamic-security/v1 is answered on
// $CONTROL/dynamic-security/v1/response. A Client is a privileged MQTT 5
// client (github.com/eclipse/paho.golang) logged in as the plugin's admin;
// it creates, rotates, disables and deletes one Mosquitto client per device
// and gives each its own role, whose ACL is the Outpost device ACL of
// docs/protocol.md §3 (see DeviceACLs).
//
// Every response from the broker goes to every client subscribed to the
// response topic (several platform replicas may be), so each request
// carries a random correlation id and a Client only takes the answers to
// its own requests.
package dynsec

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// Topics of the plugin's control API.
const (
	RequestTopic  = "$CONTROL/dynamic-security/v1"
	ResponseTopic = "$CONTROL/dynamic-security/v1/response"
)

// DeviceRolePrefix starts the name of every device's role: the role of
// device ID is DeviceRolePrefix+ID. A Mosquitto client with such a role is
// an Outpost device; ListDevices reports only those.
const DeviceRolePrefix = "outpost-device-"

// PlatformRole is the role EnsurePlatformClient gives the platform's own
// MQTT client.
const PlatformRole = "outpost-platform"

// MaxPasswordLen bounds a device password, as the embedded broker does.
const MaxPasswordLen = 256

// Errors a caller branches on. An *Error from the plugin matches them with
// errors.Is.
var (
	// ErrNotFound: no such device (or the client is not an Outpost device).
	ErrNotFound = errors.New("not found")
	// ErrExists: the device already exists.
	ErrExists = errors.New("already exists")
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("dynsec client closed")
)

// Error is an error answered by the plugin to one command.
type Error struct {
	Command string // the plugin command, such as "createClient"
	Message string // the plugin's own message, such as "Client already exists"
}

func (e *Error) Error() string { return "dynamic security " + e.Command + ": " + e.Message }

// Is matches ErrNotFound and ErrExists from the plugin's messages.
func (e *Error) Is(target error) bool {
	m := strings.ToLower(e.Message)
	switch target {
	case ErrNotFound:
		return strings.Contains(m, "not found")
	case ErrExists:
		return strings.Contains(m, "already exists")
	}
	return false
}

// ACL is one entry of a dynamic security role.
type ACL struct {
	// Type is publishClientSend, publishClientReceive, subscribeLiteral,
	// subscribePattern, unsubscribeLiteral or unsubscribePattern.
	Type     string `json:"acltype"`
	Topic    string `json:"topic"`
	Allow    bool   `json:"allow"`
	Priority int    `json:"priority"`
}

// DeviceACLs returns the ACL of a device's role, the Outpost device ACL
// (docs/protocol.md §3.2, §3.3; internal/broker's ACL hook):
//
//   - publish only to outpost/v1/{id}/up/{kind}: the bare .../up topic is
//     refused, and everything else is denied by an explicit catch-all;
//   - subscribe only to outpost/v1/{id} itself or filters below it
//     (wildcards included). Mosquitto matches a subscription's wildcards
//     against the ACL's, so outpost/v1/+/down/# or # do not match and are
//     refused by the catch-all;
//   - receive only messages within outpost/v1/{id}.
//
// The catch-alls (priority -1) make the ACL independent of the plugin's
// defaultACLAccess. Mosquitto does not check topic shape, so a publish to
// outpost/v1/{id}/up/a//b (an empty level), which the embedded broker
// refuses, is accepted by Mosquitto; it stays inside the device's own
// namespace and the platform, which parses every topic with
// protocol.ParseTopic, drops it.
func DeviceACLs(deviceID string) []ACL {
	root := protocol.Root + "/" + deviceID
	return []ACL{
		{Type: "publishClientSend", Topic: root + "/" + protocol.Up, Allow: false, Priority: 1},
		{Type: "publishClientSend", Topic: root + "/" + protocol.Up + "/#", Allow: true},
		{Type: "publishClientSend", Topic: "#", Allow: false, Priority: -1},
		{Type: "subscribeLiteral", Topic: root, Allow: true},
		{Type: "subscribePattern", Topic: root + "/#", Allow: true},
		{Type: "subscribePattern", Topic: "#", Allow: false, Priority: -1},
		{Type: "publishClientReceive", Topic: root + "/#", Allow: true},
		{Type: "publishClientReceive", Topic: "#", Allow: false, Priority: -1},
	}
}

// PlatformACLs returns the ACL of the platform's role: publish to every
// device's down/ topics, subscribe to (and share) every device's up/
// topics, read $SYS, and the replicas' own topics under InternalRoot.
func PlatformACLs() []ACL {
	return []ACL{
		{Type: "publishClientSend", Topic: protocol.Root + "/+/" + protocol.Down + "/#", Allow: true},
		{Type: "subscribePattern", Topic: protocol.Root + "/#", Allow: true},
		{Type: "subscribePattern", Topic: "$share/+/" + protocol.Root + "/#", Allow: true},
		{Type: "subscribePattern", Topic: "$SYS/#", Allow: true},
		{Type: "publishClientReceive", Topic: protocol.Root + "/#", Allow: true},
		{Type: "publishClientReceive", Topic: "$SYS/#", Allow: true},
		// The replicas' notices to one another (internal/extbroker).
		{Type: "publishClientSend", Topic: InternalRoot + "/#", Allow: true},
		{Type: "subscribePattern", Topic: InternalRoot + "/#", Allow: true},
		{Type: "publishClientReceive", Topic: InternalRoot + "/#", Allow: true},
	}
}

// InternalRoot is the root of the topics platform replicas use among
// themselves (extbroker.InternalRoot); only the platform's role has it.
const InternalRoot = "outpost-internal/v1"

// Device is a device as the plugin holds it.
type Device struct {
	ID string `json:"id"`
	// ClientID is the client identifier the device must connect with, or
	// empty when any is accepted.
	ClientID string `json:"client_id,omitempty"`
	Disabled bool   `json:"disabled"`
}

// Option configures a Client.
type Option func(*options)

type options struct {
	log        *slog.Logger
	tls        *tls.Config
	clientID   string
	bindClient bool
	timeout    time.Duration
}

// WithLogger logs connection changes and plugin errors (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithTLS sets the TLS configuration for mqtts:// URLs.
func WithTLS(c *tls.Config) Option { return func(o *options) { o.tls = c } }

// WithClientID sets the admin connection's client identifier (default: a
// random one, so that replicas do not take over each other's session).
func WithClientID(id string) Option { return func(o *options) { o.clientID = id } }

// WithClientIDBinding says whether a device must connect with its id as
// client identifier (default true). Mosquitto keys sessions by client
// identifier, so without the binding a device could take over another
// device's session by using that device's id as its client identifier; the
// embedded broker prevents this by keying sessions by username instead.
// Mosquitto's listener option use_username_as_clientid does the same and
// makes the binding harmless for devices that send another identifier.
func WithClientIDBinding(on bool) Option { return func(o *options) { o.bindClient = on } }

// WithConnectTimeout bounds each connection attempt (default 10 s).
func WithConnectTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// Client administers the dynamic security plugin. Its methods are safe for
// concurrent use; each is bounded by its ctx.
type Client struct {
	opt  options
	cm   *autopaho.ConnectionManager
	log  *slog.Logger
	corr string // random prefix of this client's correlation ids
	seq  atomic.Uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup // the subscriber goroutines

	mu      sync.Mutex
	ready   chan struct{} // closed once subscribed on the current connection
	pending map[string]*call
	closed  bool
}

type call struct {
	want int
	got  []response
	done chan struct{}
}

type response struct {
	Command     string          `json:"command"`
	Error       string          `json:"error"`
	Data        json.RawMessage `json:"data"`
	Correlation string          `json:"correlationData"`
}

// Dial connects to the broker as the plugin's admin, with the credentials
// in brokerURL (mqtt://ADMIN:PASSWORD@HOST:PORT or mqtts://…). It makes
// one attempt and returns its error (a refused login says so, with the
// broker's reason code); once connected, the Client reconnects by itself
// until Close.
func Dial(ctx context.Context, brokerURL string, opts ...Option) (*Client, error) {
	o := options{log: slog.New(slog.NewTextHandler(io.Discard, nil)), bindClient: true, timeout: 10 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	u, err := url.Parse(brokerURL)
	if err != nil {
		return nil, fmt.Errorf("dynsec: broker url: %w", err)
	}
	switch u.Scheme {
	case "mqtt", "tcp", "mqtts", "ssl", "tls":
	default:
		return nil, fmt.Errorf("dynsec: broker url: scheme %q is not mqtt or mqtts", u.Scheme)
	}
	if u.User == nil || u.User.Username() == "" {
		return nil, errors.New("dynsec: broker url has no admin user (mqtt://ADMIN:PASSWORD@HOST:PORT)")
	}
	user := u.User.Username()
	pass, _ := u.User.Password()
	redacted := *u
	redacted.User = url.User(user)
	server := *u
	server.User = nil
	if o.clientID == "" {
		o.clientID = "outpost-dynsec-" + randomHex(6)
	}
	c := &Client{
		opt:     o,
		log:     o.log.With("broker", redacted.Redacted()),
		corr:    randomHex(8),
		ready:   make(chan struct{}),
		pending: map[string]*call{},
	}
	first := make(chan error, 1)
	report := func(err error) {
		select {
		case first <- err:
		default:
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{&server},
		TlsCfg:                        o.tls,
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                o.timeout,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(100*time.Millisecond, 5*time.Second, 200*time.Millisecond, 2),
		ConnectUsername:               user,
		ConnectPassword:               []byte(pass),
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			c.mu.Lock()
			ready := c.ready // this connection's; OnConnectionDown makes the next one
			c.mu.Unlock()
			c.wg.Add(1)
			go func() { // owned: ends when subscribed or runCtx is cancelled; Close waits
				defer c.wg.Done()
				if err := c.subscribe(runCtx, cm, ready); err != nil {
					report(err)
					return
				}
				report(nil)
			}()
		},
		OnConnectionDown: func() bool {
			c.mu.Lock()
			c.ready = make(chan struct{})
			c.mu.Unlock()
			c.log.Warn("dynamic security admin connection lost; reconnecting")
			return true
		},
		OnConnectError: func(err error) {
			c.log.Warn("dynamic security admin connection failed", "err", err)
			report(err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID:          o.clientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){c.received},
		},
	}
	cm, err := autopaho.NewConnection(runCtx, cfg)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("dynsec: %w", err)
	}
	c.cm = cm
	select {
	case err = <-first:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("dynsec: connect to %s as %q: %w", server.Host, user, describeConnectError(err))
	}
	return c, nil
}

// describeConnectError names a refused login's reason.
func describeConnectError(err error) error {
	var ce *autopaho.ConnackError
	if !errors.As(err, &ce) {
		return err
	}
	why := "refused"
	switch ce.ReasonCode {
	case 0x86, 0x04:
		why = "bad user name or password"
	case 0x87, 0x05:
		// Mosquitto 2 answers a wrong password with 0x87.
		why = "not authorized: wrong user name or password, or the user may not log in"
	}
	if ce.Reason != "" {
		why += " (" + ce.Reason + ")"
	}
	return &connectError{msg: fmt.Sprintf("%s (CONNACK 0x%02x)", why, ce.ReasonCode), err: err}
}

// connectError is a refused login, described, wrapping autopaho's error.
type connectError struct {
	msg string
	err error
}

func (e *connectError) Error() string { return e.msg }
func (e *connectError) Unwrap() error { return e.err }

func (c *Client) subscribe(ctx context.Context, cm *autopaho.ConnectionManager, ready chan struct{}) error {
	sa, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: ResponseTopic, QoS: 1}}})
	if sa != nil && (len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80) {
		return fmt.Errorf("subscribe %s refused (SUBACK %x): the user is not the plugin's admin", ResponseTopic, sa.Reasons)
	}
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", ResponseTopic, err)
	}
	close(ready)
	c.log.Debug("dynamic security admin connected")
	return nil
}

// received hands the plugin's answers to their callers.
func (c *Client) received(pr paho.PublishReceived) (bool, error) {
	if pr.Packet.Topic != ResponseTopic {
		return false, nil
	}
	var msg struct {
		Responses []response `json:"responses"`
	}
	if err := json.Unmarshal(pr.Packet.Payload, &msg); err != nil {
		c.log.Warn("dynamic security: unreadable response", "err", err)
		return true, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range msg.Responses {
		id, _, _ := strings.Cut(r.Correlation, "/")
		cl := c.pending[id]
		if cl == nil {
			continue // another client's, or one given up on
		}
		cl.got = append(cl.got, r)
		if len(cl.got) == cl.want {
			delete(c.pending, id)
			close(cl.done)
		}
	}
	return true, nil
}

// command is one plugin command: its name and its fields.
type command map[string]any

// do sends commands in one request and returns their answers, in order.
// An answer carrying an error is returned as *Error in errs[i].
func (c *Client) do(ctx context.Context, cmds ...command) (data []json.RawMessage, errs []error, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil, ErrClosed
	}
	ready := c.ready
	c.mu.Unlock()
	select {
	case <-ready:
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("not connected to the broker: %w", ctx.Err())
	}
	id := c.corr + "-" + strconv.FormatUint(c.seq.Add(1), 10)
	for i, cmd := range cmds {
		cmd["correlationData"] = id + "/" + strconv.Itoa(i)
	}
	payload, err := json.Marshal(map[string]any{"commands": cmds})
	if err != nil {
		return nil, nil, err
	}
	cl := &call{want: len(cmds), done: make(chan struct{})}
	c.mu.Lock()
	c.pending[id] = cl
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	if _, err := c.cm.Publish(ctx, &paho.Publish{Topic: RequestTopic, QoS: 1, Payload: payload}); err != nil {
		return nil, nil, fmt.Errorf("publish request: %w", err)
	}
	select {
	case <-cl.done:
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("waiting for the plugin's answer: %w", ctx.Err())
	}
	data, errs = make([]json.RawMessage, len(cmds)), make([]error, len(cmds))
	for _, r := range cl.got {
		_, idx, _ := strings.Cut(r.Correlation, "/")
		i, err := strconv.Atoi(idx)
		if err != nil || i < 0 || i >= len(cmds) {
			continue
		}
		data[i] = r.Data
		if r.Error != "" {
			errs[i] = &Error{Command: r.Command, Message: r.Error}
			c.log.Debug("dynamic security command failed", "command", r.Command, "err", r.Error)
		}
	}
	return data, errs, nil
}

// do1 sends one command and returns its data or its error.
func (c *Client) do1(ctx context.Context, cmd command) (json.RawMessage, error) {
	data, errs, err := c.do(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return data[0], errs[0]
}

// Close disconnects and stops the Client's goroutines. Calls in progress
// fail with their ctx or ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	if c.cm != nil {
		<-c.cm.Done()
	}
	c.wg.Wait()
	return nil
}

func validDevice(id string) error {
	if err := protocol.ValidID(id); err != nil {
		return fmt.Errorf("dynsec: %w", err)
	}
	return nil
}

func validPassword(p string) error {
	if p == "" || len(p) > MaxPasswordLen {
		return fmt.Errorf("dynsec: password must be 1 to %d bytes", MaxPasswordLen)
	}
	return nil
}

// EnsureDeviceRole creates the device's role, or brings an existing one's
// ACL to DeviceACLs (adding what is missing and removing what is not
// there), so that running it again after the ACL rules change updates old
// devices.
func (c *Client) EnsureDeviceRole(ctx context.Context, deviceID string) error {
	if err := validDevice(deviceID); err != nil {
		return err
	}
	if err := c.ensureRole(ctx, DeviceRolePrefix+deviceID, "outpost device "+deviceID, DeviceACLs(deviceID)); err != nil {
		return fmt.Errorf("ensure role of device %s: %w", deviceID, err)
	}
	return nil
}

func (c *Client) ensureRole(ctx context.Context, role, text string, want []ACL) error {
	data, err := c.do1(ctx, command{"command": "getRole", "rolename": role})
	if errors.Is(err, ErrNotFound) {
		_, err = c.do1(ctx, command{"command": "createRole", "rolename": role, "textname": text, "acls": want})
		return err
	}
	if err != nil {
		return err
	}
	var got struct {
		Role struct {
			ACLs []ACL `json:"acls"`
		} `json:"role"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		return fmt.Errorf("getRole answer: %w", err)
	}
	key := func(a ACL) string { return a.Type + "\x00" + a.Topic }
	wantBy := map[string]ACL{}
	for _, a := range want {
		wantBy[key(a)] = a
	}
	var cmds []command
	have := map[string]bool{}
	for _, a := range got.Role.ACLs {
		if w, ok := wantBy[key(a)]; ok && w == a {
			have[key(a)] = true
			continue
		}
		cmds = append(cmds, command{"command": "removeRoleACL", "rolename": role, "acltype": a.Type, "topic": a.Topic})
	}
	for _, a := range want {
		if !have[key(a)] {
			cmds = append(cmds, command{"command": "addRoleACL", "rolename": role, "acltype": a.Type, "topic": a.Topic, "allow": a.Allow, "priority": a.Priority})
		}
	}
	if len(cmds) == 0 {
		return nil
	}
	_, errs, err := c.do(ctx, cmds...)
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// CreateDevice creates the device's role (EnsureDeviceRole) and a
// Mosquitto client whose username is the device id, with the password
// and, unless WithClientIDBinding(false), the device id as its only
// allowed client identifier. It returns an error matching ErrExists when
// the device exists.
func (c *Client) CreateDevice(ctx context.Context, deviceID, password string) error {
	if err := validDevice(deviceID); err != nil {
		return err
	}
	if err := validPassword(password); err != nil {
		return err
	}
	if err := c.EnsureDeviceRole(ctx, deviceID); err != nil {
		return fmt.Errorf("create device %s: %w", deviceID, err)
	}
	cmd := command{
		"command":  "createClient",
		"username": deviceID,
		"password": password,
		"textname": "outpost device",
		"roles":    []map[string]any{{"rolename": DeviceRolePrefix + deviceID, "priority": 0}},
	}
	if c.opt.bindClient {
		cmd["clientid"] = deviceID
	}
	if _, err := c.do1(ctx, cmd); err != nil {
		return fmt.Errorf("create device %s: %w", deviceID, err)
	}
	return nil
}

// DeleteDevice deletes the device's client and role. Mosquitto disconnects
// the device's live connection. It returns an error matching ErrNotFound
// when there was no such device.
func (c *Client) DeleteDevice(ctx context.Context, deviceID string) error {
	if err := validDevice(deviceID); err != nil {
		return err
	}
	_, errs, err := c.do(ctx,
		command{"command": "deleteClient", "username": deviceID},
		command{"command": "deleteRole", "rolename": DeviceRolePrefix + deviceID})
	if err == nil {
		err = errs[0]
		if errs[1] != nil && !errors.Is(errs[1], ErrNotFound) {
			err = errors.Join(err, errs[1])
		}
	}
	if err != nil {
		return fmt.Errorf("delete device %s: %w", deviceID, err)
	}
	return nil
}

// SetPassword replaces the device's password (rotation). Mosquitto
// disconnects the connection that logged in with the old one.
func (c *Client) SetPassword(ctx context.Context, deviceID, password string) error {
	if err := validDevice(deviceID); err != nil {
		return err
	}
	if err := validPassword(password); err != nil {
		return err
	}
	if _, err := c.GetDevice(ctx, deviceID); err != nil {
		return fmt.Errorf("set password of device %s: %w", deviceID, err)
	}
	if _, err := c.do1(ctx, command{"command": "setClientPassword", "username": deviceID, "password": password}); err != nil {
		return fmt.Errorf("set password of device %s: %w", deviceID, err)
	}
	return nil
}

// DisableDevice refuses the device's logins (and ends its connection)
// until EnableDevice, keeping its password.
func (c *Client) DisableDevice(ctx context.Context, deviceID string) error {
	return c.toggle(ctx, deviceID, "disableClient")
}

// EnableDevice lets a disabled device log in again.
func (c *Client) EnableDevice(ctx context.Context, deviceID string) error {
	return c.toggle(ctx, deviceID, "enableClient")
}

func (c *Client) toggle(ctx context.Context, deviceID, cmd string) error {
	if err := validDevice(deviceID); err != nil {
		return err
	}
	if _, err := c.GetDevice(ctx, deviceID); err != nil {
		return fmt.Errorf("%s %s: %w", cmd, deviceID, err)
	}
	if _, err := c.do1(ctx, command{"command": cmd, "username": deviceID}); err != nil {
		return fmt.Errorf("%s %s: %w", cmd, deviceID, err)
	}
	return nil
}

// pluginClient is a client as getClient and listClients describe it.
type pluginClient struct {
	Username string `json:"username"`
	ClientID string `json:"clientid"`
	Disabled bool   `json:"disabled"`
	Roles    []struct {
		Rolename string `json:"rolename"`
	} `json:"roles"`
}

// device returns the client as a Device, or false when it is not an
// Outpost device (no role of its own).
func (p pluginClient) device() (Device, bool) {
	for _, r := range p.Roles {
		if r.Rolename == DeviceRolePrefix+p.Username {
			return Device{ID: p.Username, ClientID: p.ClientID, Disabled: p.Disabled}, true
		}
	}
	return Device{}, false
}

// GetDevice returns the device, or an error matching ErrNotFound when
// there is none (or the Mosquitto client of that name is not a device).
func (c *Client) GetDevice(ctx context.Context, deviceID string) (Device, error) {
	if err := validDevice(deviceID); err != nil {
		return Device{}, err
	}
	data, err := c.do1(ctx, command{"command": "getClient", "username": deviceID})
	if err != nil {
		return Device{}, fmt.Errorf("get device %s: %w", deviceID, err)
	}
	var got struct {
		Client pluginClient `json:"client"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		return Device{}, fmt.Errorf("get device %s: getClient answer: %w", deviceID, err)
	}
	d, ok := got.Client.device()
	if !ok {
		return Device{}, fmt.Errorf("get device %s: %w (a Mosquitto client without the device role)", deviceID, ErrNotFound)
	}
	return d, nil
}

// ListDevices returns every device, in the plugin's order.
func (c *Client) ListDevices(ctx context.Context) ([]Device, error) {
	const page = 1000
	var out []Device
	for offset := 0; ; offset += page {
		data, err := c.do1(ctx, command{"command": "listClients", "verbose": true, "count": page, "offset": offset})
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		var got struct {
			TotalCount int            `json:"totalCount"`
			Clients    []pluginClient `json:"clients"`
		}
		if err := json.Unmarshal(data, &got); err != nil {
			return nil, fmt.Errorf("list devices: listClients answer: %w", err)
		}
		for _, p := range got.Clients {
			if d, ok := p.device(); ok {
				out = append(out, d)
			}
		}
		if len(got.Clients) < page || offset+page >= got.TotalCount {
			return out, nil
		}
	}
}

// EnsurePlatformClient creates or updates the Mosquitto client the
// platform itself logs in with (PlatformACLs through PlatformRole). The
// plugin's admin may only administer the plugin, so the platform needs
// this second identity for device traffic.
func (c *Client) EnsurePlatformClient(ctx context.Context, username, password string) error {
	if username == "" || strings.HasPrefix(username, DeviceRolePrefix) {
		return fmt.Errorf("dynsec: platform username %q is empty or looks like a device role", username)
	}
	if err := validPassword(password); err != nil {
		return err
	}
	if err := c.ensureRole(ctx, PlatformRole, "outpost platform", PlatformACLs()); err != nil {
		return fmt.Errorf("ensure platform role: %w", err)
	}
	roles := []map[string]any{{"rolename": PlatformRole, "priority": 0}}
	_, err := c.do1(ctx, command{"command": "createClient", "username": username, "password": password, "textname": "outpost platform", "roles": roles})
	if errors.Is(err, ErrExists) {
		_, err = c.do1(ctx, command{"command": "modifyClient", "username": username, "password": password, "roles": roles})
	}
	if err != nil {
		return fmt.Errorf("ensure platform client %s: %w", username, err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
