// Package httpapi serves the platform's REST API under /api/v1, the live
// event stream (server-sent events), /healthz and /metrics.
//
// Errors are JSON bodies {"error":{"code":"…","message":"…"}}; the code is
// the outpost error code and decides the HTTP status (see statusOf). Every
// 500 is logged with its cause.
//
// Request bodies are strict JSON (protocol.Unmarshal): valid UTF-8, no
// duplicate keys, field names exactly as documented, no unknown fields, no
// number longer than protocol.MaxNumberLen bytes and nothing after the
// value.
package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Devices is the device registry.
type Devices interface {
	// CreateDevice registers a device and returns it with its secret
	// (EINVALID, ECONFLICT).
	CreateDevice(ctx context.Context, name string) (*outpost.Device, string, error)
	// CreateDevices registers a device for each name, all or none, and
	// returns them with their secrets (secrets[i] is devices[i]'s).
	// EINVALID (no names, too many, a bad or repeated name), ECONFLICT (a
	// name is taken).
	CreateDevices(ctx context.Context, names []string) (devices []*outpost.Device, secrets []string, err error)
	// Device returns a device with its live presence and model (ENOTFOUND).
	Device(ctx context.Context, id string) (*outpost.Device, error)
	Devices(ctx context.Context, f outpost.DeviceFilter) ([]*outpost.Device, error)
	DeleteDevice(ctx context.Context, id string) error
	RotateSecret(ctx context.Context, id string) (string, error)
}

// Caller makes synchronous calls to devices.
type Caller interface {
	Call(ctx context.Context, id, method string, args json.RawMessage, timeout time.Duration) (*outpost.RPCResult, error)
}

// Readings answers telemetry queries.
type Readings interface {
	// EachReading calls fn for each reading f selects, in order, as the
	// store reads them, so the API writes them out as they come instead
	// of holding the whole page; ENOTFOUND (before any call of fn) for an
	// unknown device.
	EachReading(ctx context.Context, f outpost.ReadingFilter, fn func(outpost.Reading) error) error
	Feeds(ctx context.Context, id string) ([]string, error)
}

// EventSource is the live event stream.
type EventSource interface {
	// Follow subscribes to the events f selects, after afterID when it is
	// not 0 (outpost.ForeignEventID: an id the source did not issue);
	// missed is how many of those the stream no longer holds (or
	// outpost.MissedUnknown).
	Follow(f outpost.StreamFilter, afterID uint64) (sub outpost.Subscription, missed uint64)
}

// Health is the platform's health.
type Health interface {
	// Health is the liveness check behind /healthz: the process serves and
	// its store answers.
	Health(ctx context.Context) error
	// Ready is the readiness check behind /readyz: the store takes a write
	// and reads it back, and every listener accepts connections. The error
	// says what is wrong.
	Ready(ctx context.Context) error
}

// Parts are the parts of the platform the API serves. Devices, RPC,
// Readings, Events and Health are required; the routes of Calls, Model,
// Artifacts and OTA exist only when they are set.
type Parts struct {
	Devices  Devices
	RPC      Caller
	Readings Readings
	Events   EventSource
	Health   Health
	Calls    CallService
	Model    ModelService
	// Artifacts and OTA serve the artifact repository and the file
	// transfer and firmware endpoints (ota.go).
	Artifacts ArtifactService
	OTA       OTAService
	// Gateways serves the gateway endpoints (gateway.go); nil leaves
	// them out.
	Gateways GatewayService
}

// Options configure the API.
type Options struct {
	// Token is the bearer token every /api/v1 request must carry. Only the
	// event stream also takes it as ?access_token=, for browsers'
	// EventSource, which cannot set headers.
	Token string
	// Metrics serves /metrics; nil disables it.
	Metrics http.Handler
	// MetricsAuth makes /metrics require the token too; by default it is
	// open (it shows counts, never device ids or secrets).
	MetricsAuth bool
	// TLS tells the API it is served over HTTPS: responses then carry
	// Strict-Transport-Security.
	TLS bool
	// WriteTimeout is the HTTP server's write timeout. A synchronous RPC
	// may wait longer for its device: the API extends the deadline of that
	// response by the call's timeout. The event stream has none.
	WriteTimeout time.Duration
	// MQTTHostPort, when set, lets device creation return a ready-made
	// mqtt://ID:PASSWORD@HOST:PORT url.
	MQTTHostPort func() string
	// Heartbeat is the interval of keep-alive comments on the event stream
	// (default 15s).
	Heartbeat time.Duration
	// StreamTag, when set, prefixes the event stream's ids ("TAG:N"):
	// several replicas number the same events each on their own, and a
	// client that resumes with another replica's id (a load balancer
	// moved it) must be told it missed an unknown number of events, not
	// be replayed this replica's events after a number that means
	// nothing here. The platform sets it to the replica's name.
	StreamTag string
	Logger    *slog.Logger
}

// Limits on requests.
const (
	maxBodyBytes     = 1 << 20
	maxReadingsLimit = 100_000
)

type api struct {
	p        Parts
	opt      Options
	log      *slog.Logger
	idPrefix string // "TAG:" of Options.StreamTag, or empty
}

// New returns the API handler.
func New(p Parts, o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 15 * time.Second
	}
	a := &api{p: p, opt: o, log: o.Logger}
	if o.StreamTag != "" {
		a.idPrefix = o.StreamTag + ":"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", a.health)
	mux.HandleFunc("GET /readyz", a.ready)
	if o.Metrics != nil {
		if o.MetricsAuth {
			mux.HandleFunc("GET /metrics", a.auth(o.Metrics.ServeHTTP))
		} else {
			mux.Handle("GET /metrics", o.Metrics)
		}
	}
	mux.HandleFunc("POST /api/v1/devices", a.auth(a.createDevice))
	mux.HandleFunc("GET /api/v1/devices", a.auth(a.listDevices))
	mux.HandleFunc("GET /api/v1/devices/{id}", a.auth(a.getDevice))
	mux.HandleFunc("DELETE /api/v1/devices/{id}", a.auth(a.deleteDevice))
	mux.HandleFunc("POST /api/v1/devices/{id}/secret", a.auth(a.rotateSecret))
	mux.HandleFunc("POST /api/v1/devices/{id}/rpc/{method}", a.auth(a.callRPC))
	mux.HandleFunc("GET /api/v1/devices/{id}/telemetry", a.auth(a.telemetry))
	mux.HandleFunc("GET /api/v1/devices/{id}/feeds", a.auth(a.feeds))
	mux.HandleFunc("GET /api/v1/stream", a.authQuery(a.stream))
	a.registerModel(mux)
	a.routeCalls(mux)
	a.routeOTA(mux, p.Artifacts, p.OTA)
	a.routeGateways(mux, p.Gateways)
	a.routeBulk(mux)
	mux.HandleFunc("/api/", a.auth(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, outpost.Errorf(outpost.ENOTFOUND, "no endpoint %s %s", r.Method, r.URL.Path))
	}))
	return a.serve(noDotSegments(mux))
}

// auth requires the bearer token in the Authorization header.
func (a *api) auth(next http.HandlerFunc) http.HandlerFunc {
	return a.checkToken(next, false)
}

// authQuery is auth that also takes the token as ?access_token=, for the
// event stream only: browsers' EventSource cannot set headers. Anywhere
// else a token in a URL would end up in logs and browser histories.
func (a *api) authQuery(next http.HandlerFunc) http.HandlerFunc {
	return a.checkToken(next, true)
}

func (a *api) checkToken(next http.HandlerFunc, query bool) http.HandlerFunc {
	want := []byte("Bearer " + a.opt.Token)
	return func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get("Authorization")
		if query && got == "" && r.URL.Query().Get("access_token") != "" {
			got = "Bearer " + r.URL.Query().Get("access_token")
		}
		if a.opt.Token == "" || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="outpost"`)
			writeError(w, outpost.Errorf(outpost.EUNAUTHORIZED, "missing or wrong bearer token"))
			return
		}
		next(w, r)
	}
}

func (a *api) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.p.Health.Health(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// ready serves /readyz: 200 when the platform can take traffic, 503 with
// the reason when it cannot (store not writable, a listener down).
func (a *api) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := a.p.Health.Ready(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// createdDevice is a device with the credentials shown once, at creation.
type createdDevice struct {
	*outpost.Device
	Password string `json:"password"`
	URL      string `json:"url,omitempty"`
}

func (a *api) withURL(d *outpost.Device, secret string) createdDevice {
	c := createdDevice{Device: d, Password: secret}
	if a.opt.MQTTHostPort != nil {
		if hp := a.opt.MQTTHostPort(); hp != "" {
			c.URL = "mqtt://" + d.ID + ":" + secret + "@" + hp
		}
	}
	return c
}

func (a *api) createDevice(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	d, secret, err := a.p.Devices.CreateDevice(r.Context(), req.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, a.withURL(d, secret))
}

func (a *api) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f outpost.DeviceFilter
	if v := q.Get("name"); v != "" {
		f.Name = &v
	}
	if v := q.Get("online"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, outpost.Errorf(outpost.EINVALID, "online must be true or false"))
			return
		}
		f.Online = &b
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, outpost.Errorf(outpost.EINVALID, "limit must be a non-negative integer"))
			return
		}
		f.Limit = n
	}
	ds, err := a.p.Devices.Devices(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": ds})
}

func (a *api) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := a.p.Devices.Device(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (a *api) deleteDevice(w http.ResponseWriter, r *http.Request) {
	if err := a.p.Devices.DeleteDevice(r.Context(), r.PathValue("id")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) rotateSecret(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	secret, err := a.p.Devices.RotateSecret(r.Context(), id)
	if err != nil {
		writeError(w, err)
		return
	}
	d, err := a.p.Devices.Device(r.Context(), id)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.withURL(d, secret))
}

type rpcResponse struct {
	ID         string          `json:"id"`
	DeviceID   string          `json:"device_id"`
	Method     string          `json:"method"`
	Result     json.RawMessage `json:"result"`
	DurationMS float64         `json:"duration_ms"`
}

func (a *api) callRPC(w http.ResponseWriter, r *http.Request) {
	queued, err := parseQueue(r.URL.Query().Get("queue"))
	if err != nil {
		writeError(w, err)
		return
	}
	timeout, err := parseTimeout(r.URL.Query().Get("timeout"))
	if err != nil && !queued {
		writeError(w, err)
		return
	}
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	var args json.RawMessage
	if len(bytes.TrimSpace(body)) > 0 {
		if err := protocol.CheckJSON(body); err != nil {
			writeError(w, outpost.Errorf(outpost.EINVALID, "arguments must be JSON: %s", err.(*protocol.Error).Message))
			return
		}
		args = body
	}
	if queued {
		a.queueRPC(w, r, args)
		return
	}
	// The device may take up to the call's timeout to answer: the response
	// gets that much longer than the server's write timeout.
	if a.opt.WriteTimeout > 0 {
		t := timeout
		if t <= 0 || t > outpost.MaxRPCTimeout {
			t = outpost.DefaultRPCTimeout
		}
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(t + a.opt.WriteTimeout))
	}
	id, method := r.PathValue("id"), r.PathValue("method")
	res, err := a.p.RPC.Call(r.Context(), id, method, args, timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rpcResponse{ID: res.ID, DeviceID: id, Method: method, Result: res.Result,
		DurationMS: float64(res.Duration.Microseconds()) / 1000})
}

// parseTimeout accepts a Go duration ("1.5s", "250ms") or a number of
// seconds.
func parseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if !(f > 0) { // also NaN
			return 0, outpost.Errorf(outpost.EINVALID, "timeout must be positive")
		}
		// Seconds beyond what a Duration holds would convert to a negative
		// value, which Call takes for "use the default"; saturate instead so
		// the caller's maximum rejects them.
		if ns := f * float64(time.Second); ns < math.MaxInt64 {
			return time.Duration(ns), nil
		}
		return math.MaxInt64, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, outpost.Errorf(outpost.EINVALID, "timeout must be a positive duration such as 5s or 1500ms")
	}
	return d, nil
}

func (a *api) telemetry(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := outpost.ReadingFilter{DeviceID: r.PathValue("id"), Feed: q.Get("feed"), Limit: 1000}
	var err error
	if v := q.Get("limit"); v != "" {
		if f.Limit, err = strconv.Atoi(v); err != nil || f.Limit < 1 || f.Limit > maxReadingsLimit {
			writeError(w, outpost.Errorf(outpost.EINVALID, "limit must be between 1 and %d", maxReadingsLimit))
			return
		}
	}
	if f.Since, err = parseTime(q.Get("since")); err != nil {
		writeError(w, err)
		return
	}
	if f.Until, err = parseTime(q.Get("until")); err != nil {
		writeError(w, err)
		return
	}
	a.streamReadings(w, r, a.p.Readings, f)
}

// streamReadings writes the telemetry response as the store reads it: the
// memory a request holds is one reading and a write buffer, whatever its
// limit. An error after the first reading was sent can no longer become an
// error status: the response is cut off, so the client sees a truncated
// body rather than a short but valid-looking page.
func (a *api) streamReadings(w http.ResponseWriter, r *http.Request, st Readings, f outpost.ReadingFilter) {
	var bw *bufio.Writer
	begin := func() {
		id, _ := json.Marshal(f.DeviceID)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		bw = bufio.NewWriterSize(w, 32<<10)
		bw.WriteString(`{"device_id":`)
		bw.Write(id)
		bw.WriteString(`,"readings":[`)
	}
	n := 0
	err := st.EachReading(r.Context(), f, func(rd outpost.Reading) error {
		b, err := json.Marshal(rd)
		if err != nil {
			return fmt.Errorf("encode reading: %w", err)
		}
		if bw == nil {
			begin()
		}
		if n > 0 {
			bw.WriteByte(',')
		}
		n++
		_, err = bw.Write(b)
		return err
	})
	if err != nil {
		if bw == nil {
			writeError(w, err)
			return
		}
		if r.Context().Err() == nil {
			a.log.Error("telemetry response cut off", "device_id", f.DeviceID, "readings_sent", n, "error", err)
		}
		panic(http.ErrAbortHandler)
	}
	if bw == nil {
		begin()
	}
	bw.WriteString("]}\n")
	bw.Flush()
}

// parseTime accepts milliseconds since the epoch or RFC 3339.
func parseTime(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
		return n, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, outpost.Errorf(outpost.EINVALID, "time %q must be milliseconds since 1970 or RFC 3339", s)
	}
	return t.UnixMilli(), nil
}

func (a *api) feeds(w http.ResponseWriter, r *http.Request) {
	fs, err := a.p.Readings.Feeds(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"feeds": fs})
}

// stream serves live events as server-sent events. Filters: device=ID[,ID…]
// and kind=KIND[,KIND…]. A client that reconnects with Last-Event-ID gets
// the events it missed, if the server still holds them; otherwise it first
// receives a "gap" event saying how many were lost.
func (a *api) stream(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errors.New("streaming unsupported"))
		return
	}
	q := r.URL.Query()
	f := outpost.StreamFilter{DeviceIDs: set(q["device"]), Kinds: set(q["kind"])}
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = q.Get("last_event_id")
	}
	sub, missed := a.p.Events.Follow(f, a.eventAfter(v))
	defer sub.Close()
	// The stream outlives the server's write timeout by design; its
	// heartbeat finds clients that went away.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "retry: 1000\n\n")
	if missed == outpost.MissedUnknown {
		// The platform restarted since the client's last event.
		fmt.Fprint(w, "event: gap\ndata: {\"missed\":0,\"unknown\":true}\n\n")
	} else if missed > 0 {
		fmt.Fprintf(w, "event: gap\ndata: {\"missed\":%d}\n\n", missed)
	}
	fl.Flush()

	tick := time.NewTicker(a.opt.Heartbeat)
	defer tick.Stop()
	events := sub.Events()
	var dropped uint64
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			if d := sub.Dropped(); d > dropped {
				fmt.Fprintf(w, "event: gap\ndata: {\"missed\":%d}\n\n", d-dropped)
				dropped = d
			}
			if _, err := fmt.Fprintf(w, ": ping\n\n"); err != nil {
				return
			}
			fl.Flush()
		case e, ok := <-events:
			if !ok {
				return
			}
			if _, err := fmt.Fprintf(w, "id: %s%d\nevent: %s\ndata: %s\n\n", a.idPrefix, e.ID, e.Kind, e.Data); err != nil {
				return
			}
			// Flush when the burst is over, not per event.
			if len(events) == 0 {
				fl.Flush()
			}
		}
	}
}

// eventAfter turns a client's last event id into the hub's id to resume
// after: 0 for none; outpost.ForeignEventID for an id this platform
// (this replica, with Options.StreamTag) did not issue or cannot read.
func (a *api) eventAfter(v string) uint64 {
	if v == "" {
		return 0
	}
	if a.idPrefix != "" {
		rest, ok := strings.CutPrefix(v, a.idPrefix)
		if !ok {
			return outpost.ForeignEventID // another replica's id, or an untagged one
		}
		v = rest
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return outpost.ForeignEventID
	}
	return n
}

func set(vals []string) map[string]bool {
	var m map[string]bool
	for _, v := range vals {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				if m == nil {
					m = map[string]bool{}
				}
				m[p] = true
			}
		}
	}
	return m
}

// readBody reads a request body of at most maxBodyBytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, outpost.Errorf(outpost.EINVALID, "request body exceeds %d bytes", maxBodyBytes)
		}
		return nil, outpost.Errorf(outpost.EINVALID, "read request body: %v", err)
	}
	return body, nil
}

// decodeBody decodes a strict JSON request body into v (see the package
// comment).
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return outpost.Errorf(outpost.EINVALID, "request body is empty: want a JSON object")
	}
	if err := protocol.Unmarshal(body, v); err != nil {
		return outpost.Errorf(outpost.EINVALID, "request body: %s", err.(*protocol.Error).Message)
	}
	// Unlike device messages, API bodies have no future fields to skip:
	// an unknown field is a mistake worth reporting.
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return outpost.Errorf(outpost.EINVALID, "request body: %v", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

// statusOf maps an outpost error code to an HTTP status.
func statusOf(code string) int {
	switch code {
	case outpost.EINVALID:
		return http.StatusBadRequest
	case outpost.EUNAUTHORIZED:
		return http.StatusUnauthorized
	case outpost.ENOTFOUND:
		return http.StatusNotFound
	case outpost.ECONFLICT, outpost.EOFFLINE:
		return http.StatusConflict
	case outpost.EUNKNOWNMETHOD, outpost.ENOTSUPPORTED:
		return http.StatusNotImplemented
	case outpost.EREMOTE:
		return http.StatusBadGateway
	case outpost.EUNAVAILABLE:
		return http.StatusServiceUnavailable
	case outpost.ETIMEOUT:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// ErrorBody is the JSON shape of every API error.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, err error) {
	code := outpost.ErrorCode(err)
	if errors.Is(err, context.Canceled) {
		code = outpost.EUNAVAILABLE
	}
	if rec, ok := w.(*recorder); ok {
		rec.cause = err // logged by serve
	}
	var b ErrorBody
	b.Error.Code, b.Error.Message = code, outpost.ErrorMessage(err)
	writeJSON(w, statusOf(code), b)
}
