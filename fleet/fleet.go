// Package fleet is the Outpost application SDK: it controls a whole fleet
// of devices through the platform's HTTP API, from one Client.
//
//	f, err := fleet.Dial(ctx, "http://127.0.0.1:8080", token, fleet.WithWorkers(4))
//	defer f.Close()
//	devs, err := f.Devices(ctx, fleet.DeviceFilter{Online: new(true)})
//	res, err := f.Call(ctx, devs[0].ID, "blink", map[string]int{"times": 3})
//
// # Synchronous and asynchronous calls
//
// Call waits for the device's answer and returns it, or an error once the
// device has had its time (ErrTimeout). CallAsync queues the call and
// returns at once; the answer, or the error, is handed to a callback
// together with a parameter of the caller's choosing:
//
//	f.CallAsync(ctx, id, "blink", nil, func(res json.RawMessage, err error, param any) {
//		log.Println(param, string(res), err)
//	}, "lamp in the hall")
//
// Callbacks run on a pool of worker goroutines owned by the Client (one by
// default, see WithWorkers), so a slow callback delays the others only
// when the pool is smaller than the number of slow callbacks. Broadcast
// calls one method on many devices and collects every result.
//
// # Live events
//
// Subscribe streams telemetry, presence and the platform's other events
// to a handler. The subscription reconnects on its own and resumes where it
// stopped when the platform still holds the missed events; when it does
// not, the handler gets a KindGap event saying so.
//
// # Options
//
// Dial takes functional options (WithWorkers, WithCallTimeout, …). As in
// package device, an option given a value out of its range makes Dial fail
// with an error naming it; no value is silently replaced by another (this
// changed: options used to clamp such values).
//
// # Errors
//
// Errors from the platform come back typed: errors.Is(err, fleet.ErrOffline),
// fleet.ErrTimeout, fleet.ErrUnknownMethod, fleet.ErrNotFound, and a
// *RemoteError carrying the text of a failed device handler. ErrClosed
// reports work cut short by Close.
package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Errors the platform reports, and ErrClosed; match them with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrOffline       = errors.New("device offline")
	ErrTimeout       = errors.New("device did not answer in time")
	ErrUnknownMethod = errors.New("unknown method")
	ErrNotSupported  = errors.New("not supported by the device")
	ErrUnauthorized  = errors.New("unauthorized: missing or wrong token")
	ErrConflict      = errors.New("conflict")
	ErrInvalid       = errors.New("invalid request")
	// ErrClosed is returned by CallAsync and Subscribe on a closed Client,
	// and handed to the callbacks of asynchronous calls that Close cut
	// short.
	ErrClosed = errors.New("client closed")
)

// APIError is an error response of the platform. Its Is method matches the
// sentinel errors above by code.
type APIError struct {
	Status  int    // HTTP status
	Code    string // platform error code, e.g. "device_offline"
	Message string
}

// Error returns the platform's message and code.
func (e *APIError) Error() string { return e.Message + " (" + e.Code + ")" }

// Is matches the sentinel errors.
func (e *APIError) Is(target error) bool {
	switch e.Code {
	case "not_found":
		return target == ErrNotFound
	case "device_offline":
		return target == ErrOffline
	case "timeout":
		return target == ErrTimeout
	case "unknown_method":
		return target == ErrUnknownMethod
	case "not_supported":
		return target == ErrNotSupported
	case "unauthorized":
		return target == ErrUnauthorized
	case "conflict":
		return target == ErrConflict
	case "invalid":
		return target == ErrInvalid
	}
	return false
}

// RemoteError is returned by Call when the device's handler failed; Message
// is the handler's error text.
//
// A handler that fails only once the call's time is up (typically by
// returning its context's error) did not answer in time: its RemoteError
// also matches ErrTimeout.
type RemoteError struct {
	DeviceID, Method, Message string

	late bool // the failure came when the call's time was up
}

// Error returns the device's error code and message.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s on device %s failed: %s", e.Method, e.DeviceID, e.Message)
}

// Is matches ErrTimeout when the handler failed because the call's time was
// up.
func (e *RemoteError) Is(target error) bool { return e.late && target == ErrTimeout }

// Client talks to one platform. It is safe for concurrent use.
//
// A Client owns goroutines: the senders of asynchronous calls, the
// callback workers and one reader per subscription. Close stops them and
// waits for them.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
	log   *slog.Logger

	workers, queueSize, maxInFlight int
	callTimeout                     time.Duration
	minBackoff, maxBackoff          time.Duration

	// lifetime ends when Close starts; its cause is ErrClosed.
	lifetime context.Context
	stop     context.CancelCauseFunc

	mu     sync.RWMutex // guards closed and sends on async.queue
	closed bool

	async     asyncPool
	subsWG    sync.WaitGroup
	closeOnce sync.Once
}

// Dial checks that the platform at serverURL answers and accepts token, and
// starts the client's asynchronous machinery (see CallAsync). An option
// given a value out of its range is an error.
func Dial(ctx context.Context, serverURL, token string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(serverURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("fleet: server URL must look like http://HOST:PORT, got %q", serverURL)
	}
	c := &Client{
		base: u, token: token,
		log:         slog.New(slog.DiscardHandler),
		workers:     DefaultWorkers,
		queueSize:   DefaultQueueSize,
		maxInFlight: DefaultMaxInFlight,
		callTimeout: DefaultCallTimeout,
		minBackoff:  100 * time.Millisecond,
		maxBackoff:  10 * time.Second,
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
	}
	if c.hc == nil {
		// The default transport keeps only two idle connections per host,
		// so concurrent calls would open a new connection each time.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = max(c.maxInFlight, 64)
		c.hc = &http.Client{Transport: tr}
	}
	if err := c.do(ctx, "GET", "/api/v1/devices", url.Values{"limit": {"1"}}, nil, nil); err != nil {
		var te *transportError
		if errors.As(err, &te) {
			// The request's own text would repeat the URL and the prefix.
			return nil, &transportError{op: "dial " + serverURL, err: te.err}
		}
		return nil, fmt.Errorf("fleet: dial %s: %w", serverURL, err)
	}
	c.lifetime, c.stop = context.WithCancelCause(context.Background())
	c.async.start(c)
	return c, nil
}

// Close stops the client and waits for everything it started:
//
//   - CallAsync and Subscribe fail with ErrClosed from now on.
//   - Asynchronous calls that have no answer yet are abandoned; their
//     callbacks run with ErrClosed (the device may still run the method).
//     Calls already answered get their callbacks with the answer. Every
//     CallAsync that returned nil gets exactly one callback, and Close
//     returns after the last one has returned.
//   - Subscriptions end (their Err is ErrClosed) after their handlers return.
//   - Idle HTTP connections are released.
//
// Synchronous methods (Call, Devices, …) do not depend on the client's
// goroutines and keep working after Close. Close must not be called from a
// callback or a subscription handler, since it waits for them. Calling it
// again returns nil.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.stop(ErrClosed) // ends subscriptions and abandons pending calls
		c.async.close()
		c.subsWG.Wait()
	})
	c.hc.CloseIdleConnections()
	return nil
}

// Device is a device as the platform reports it.
type Device struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Online    bool      `json:"online"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	// Attributes the device registered (set by Device, not by Devices).
	Attributes []Attribute `json:"attributes,omitempty"`
	// Rejected counts what the platform rejected from the device since
	// it started, by "kind/code" (set by Device, not by Devices).
	Rejected map[string]int64 `json:"rejected,omitempty"`
	// Gateway is set for a child: the gateway it is reached through and
	// its address there (set by Device, not by Devices).
	Gateway *GatewayRef `json:"gateway,omitempty"`
}

// GatewayRef names a child's gateway and its address there.
type GatewayRef struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

// NewDevice is a freshly created device with its credentials, which the
// platform shows only once.
type NewDevice struct {
	Device
	Password string `json:"password"`
	// URL is the ready-made endpoint mqtt://ID:PASSWORD@HOST:PORT.
	URL string `json:"url,omitempty"`
}

// CreateDevice registers a device. Names are unique (ErrConflict).
func (c *Client) CreateDevice(ctx context.Context, name string) (*NewDevice, error) {
	var d NewDevice
	if err := c.do(ctx, "POST", "/api/v1/devices", nil, map[string]string{"name": name}, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// MaxCreateBatch is how many devices the platform registers in one
// request; CreateDevices splits longer lists.
const MaxCreateBatch = 5000

// CreateDevices registers a device for each name, MaxCreateBatch at a time,
// each batch in one request and all or nothing (ErrConflict when a name
// is taken, ErrInvalid for a bad or repeated name). On an error it returns
// the devices of the batches registered before it, in the order of names.
func (c *Client) CreateDevices(ctx context.Context, names []string) ([]NewDevice, error) {
	out := make([]NewDevice, 0, len(names))
	for len(names) > 0 {
		batch := names[:min(len(names), MaxCreateBatch)]
		names = names[len(batch):]
		var resp struct {
			Devices []NewDevice `json:"devices"`
		}
		if err := c.do(ctx, "POST", "/api/v1/devices/bulk", nil, map[string][]string{"names": batch}, &resp); err != nil {
			return out, err
		}
		if len(resp.Devices) != len(batch) {
			return out, fmt.Errorf("fleet: create devices: asked for %d, the platform returned %d", len(batch), len(resp.Devices))
		}
		out = append(out, resp.Devices...)
	}
	return out, nil
}

// DeviceFilter selects devices; zero fields match all. (The platform has
// no device attributes yet, so there is no attribute filter.)
type DeviceFilter struct {
	// Name matches the device with exactly this name.
	Name string
	// Online, when set, keeps only devices that are online (true) or
	// offline (false) right now; new(true) is a handy way to set it.
	Online *bool
	// Limit caps the number of devices returned; 0 means no limit.
	Limit int
}

// Devices lists devices in the order they were created.
func (c *Client) Devices(ctx context.Context, f DeviceFilter) ([]Device, error) {
	q := url.Values{}
	if f.Name != "" {
		q.Set("name", f.Name)
	}
	if f.Online != nil {
		q.Set("online", strconv.FormatBool(*f.Online))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Devices []Device `json:"devices"`
	}
	if err := c.do(ctx, "GET", "/api/v1/devices", q, nil, &out); err != nil {
		return nil, err
	}
	return out.Devices, nil
}

// Device returns one device (ErrNotFound).
func (c *Client) Device(ctx context.Context, id string) (*Device, error) {
	var d Device
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(id), nil, nil, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// DeleteDevice removes a device and its data, and disconnects it.
func (c *Client) DeleteDevice(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/devices/"+url.PathEscape(id), nil, nil, nil)
}

// DefaultCallTimeout is how long Call waits for a device when ctx has no
// deadline (unless WithCallTimeout sets another default).
const DefaultCallTimeout = 5 * time.Second

// maxCallTimeout is the longest wait the platform accepts.
const maxCallTimeout = 5 * time.Minute

// Call invokes method on a device with args (anything that encodes to JSON;
// nil for none; json.RawMessage is sent as is) and returns the device's JSON
// result. The device gets until ctx's deadline to answer (at most 5
// minutes), or without one the client's call timeout (DefaultCallTimeout
// unless set by WithCallTimeout). Errors: ErrOffline, ErrTimeout,
// ErrUnknownMethod, ErrNotFound, *RemoteError. When ctx's deadline passes
// first, the error matches both ErrTimeout and context.DeadlineExceeded.
func (c *Client) Call(ctx context.Context, deviceID, method string, args any) (json.RawMessage, error) {
	timeout := c.callTimeout
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(time.Until(dl)-50*time.Millisecond, maxCallTimeout) // leave time for the answer to travel
		if timeout <= 0 {
			return nil, fmt.Errorf("fleet: call %s on %s: %w (%w)", method, deviceID, ErrTimeout, context.DeadlineExceeded)
		}
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout+5*time.Second)
		defer cancel()
	}
	var body any
	if args != nil {
		body = args
	}
	var out struct {
		Result json.RawMessage `json:"result"`
	}
	q := url.Values{"timeout": {timeout.String()}}
	start := time.Now()
	err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(deviceID)+"/rpc/"+url.PathEscape(method), q, bodyOrEmpty(body), &out)
	var ae *APIError
	if errors.As(err, &ae) && ae.Code == "handler_error" {
		// The device's deadline is the platform's, to the millisecond, so a
		// handler that gives up at its deadline can answer a hair before the
		// platform's own timeout fires.
		late := time.Since(start) >= timeout-5*time.Millisecond
		return nil, &RemoteError{DeviceID: deviceID, Method: method, Message: ae.Message, late: late}
	}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && !errors.Is(err, ErrTimeout) {
		// The platform's own timeout answer did not make it back before
		// the caller's deadline: the outcome is the same.
		return nil, fmt.Errorf("fleet: call %s on %s: %w (%w)", method, deviceID, ErrTimeout, context.DeadlineExceeded)
	}
	if err != nil {
		return nil, err
	}
	return out.Result, nil
}

type emptyBody struct{}

func bodyOrEmpty(v any) any {
	if v == nil {
		return emptyBody{}
	}
	return v
}

// Reading is one stored value.
type Reading struct {
	Feed  string          `json:"feed"`
	TS    int64           `json:"ts"` // milliseconds since the Unix epoch
	Value json.RawMessage `json:"value"`
}

// Time returns the reading's timestamp.
func (r Reading) Time() time.Time { return time.UnixMilli(r.TS) }

// TelemetryQuery selects readings. Zero fields: every feed, the most recent
// 1000 readings.
type TelemetryQuery struct {
	Feed         string
	Since, Until time.Time
	Limit        int
}

// Telemetry returns a device's readings in ascending time order.
func (c *Client) Telemetry(ctx context.Context, deviceID string, q TelemetryQuery) ([]Reading, error) {
	v := url.Values{}
	if q.Feed != "" {
		v.Set("feed", q.Feed)
	}
	if !q.Since.IsZero() {
		v.Set("since", strconv.FormatInt(q.Since.UnixMilli(), 10))
	}
	if !q.Until.IsZero() {
		v.Set("until", strconv.FormatInt(q.Until.UnixMilli(), 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out struct {
		Readings []Reading `json:"readings"`
	}
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/telemetry", v, nil, &out); err != nil {
		return nil, err
	}
	return out.Readings, nil
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	u := *c.base
	u.Path += path
	if q != nil {
		u.RawQuery = q.Encode()
	}
	var rd io.Reader
	if body != nil {
		var raw []byte
		switch b := body.(type) {
		case emptyBody:
		case json.RawMessage:
			raw = b
		default:
			var err error
			if raw, err = json.Marshal(b); err != nil {
				return fmt.Errorf("fleet: encode request: %w", err)
			}
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return &transportError{op: method + " " + c.base.Scheme + "://" + c.base.Host + u.Path, err: ue}
		}
		return fmt.Errorf("fleet: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("fleet: %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return apiError(resp.StatusCode, raw)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("fleet: decode %s %s: %w", method, path, err)
		}
	}
	return nil
}

// transportError is a request that got no HTTP answer: the platform could
// not be reached, or the context ended first. Its text names the request
// once ("fleet: GET http://127.0.0.1:8080/api/v1/devices: dial tcp …:
// connection refused"); it unwraps to the *url.Error, so errors.Is and
// errors.As reach the network and context errors underneath.
type transportError struct {
	op  string
	err *url.Error
}

func (e *transportError) Error() string { return "fleet: " + e.op + ": " + e.err.Err.Error() }

func (e *transportError) Unwrap() error { return e.err }

// apiError decodes the platform's JSON error body.
func apiError(status int, raw []byte) *APIError {
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(raw, &eb) != nil || eb.Error.Code == "" {
		return &APIError{Status: status, Code: "http_" + strconv.Itoa(status), Message: strings.TrimSpace(string(raw))}
	}
	return &APIError{Status: status, Code: eb.Error.Code, Message: eb.Error.Message}
}

// RotateSecret gives a device a new password and disconnects it; the old
// password stops working at once.
func (c *Client) RotateSecret(ctx context.Context, id string) (*NewDevice, error) {
	var d NewDevice
	if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(id)+"/secret", nil, emptyBody{}, &d); err != nil {
		return nil, err
	}
	return &d, nil
}
