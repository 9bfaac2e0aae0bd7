package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/httpapi"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/rpc"
	"github.com/outpost-iot/outpost/internal/stream"
)

const token = "op_test"

// recordingService answers every call with canned data, or with err when
// set, and keeps the arguments of the last call so tests can check what
// the API parsed from the request.
type recordingService struct {
	err error
	hub *stream.Hub

	mu      sync.Mutex
	calls   int
	name    string
	id      string
	devices outpost.DeviceFilter
	reads   outpost.ReadingFilter
	method  string
	args    json.RawMessage
	timeout time.Duration
	sub     outpost.StreamFilter
	afterID uint64
}

var (
	_ httpapi.Devices     = (*recordingService)(nil)
	_ httpapi.Caller      = (*recordingService)(nil)
	_ httpapi.Readings    = (*recordingService)(nil)
	_ httpapi.EventSource = (*recordingService)(nil)
	_ httpapi.Health      = (*recordingService)(nil)
)

// newAPI returns the API over a test service: v serves every required
// part, and the optional ones it implements.
func newAPI(v any, o httpapi.Options) http.Handler {
	p := httpapi.Parts{Devices: v.(httpapi.Devices), RPC: v.(httpapi.Caller), Readings: v.(httpapi.Readings),
		Events: v.(httpapi.EventSource), Health: v.(httpapi.Health)}
	if m, ok := v.(httpapi.ModelService); ok {
		p.Model = m
	}
	if c, ok := v.(httpapi.CallService); ok {
		p.Calls = c
	}
	return httpapi.New(p, o)
}

var created = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func (s *recordingService) record(f func()) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	f()
	return s.err
}

func (s *recordingService) CreateDevice(ctx context.Context, name string) (*outpost.Device, string, error) {
	if err := s.record(func() { s.name = name }); err != nil {
		return nil, "", err
	}
	return &outpost.Device{ID: "d-new", Name: name, CreatedAt: created}, "s3cret", nil
}

func (s *recordingService) Device(ctx context.Context, id string) (*outpost.Device, error) {
	if err := s.record(func() { s.id = id }); err != nil {
		return nil, err
	}
	return &outpost.Device{ID: id, Name: "pump", CreatedAt: created}, nil
}

func (s *recordingService) Devices(ctx context.Context, f outpost.DeviceFilter) ([]*outpost.Device, error) {
	if err := s.record(func() { s.devices = f }); err != nil {
		return nil, err
	}
	return []*outpost.Device{{ID: "d-1", Name: "pump", CreatedAt: created}}, nil
}

func (s *recordingService) DeleteDevice(ctx context.Context, id string) error {
	return s.record(func() { s.id = id })
}

func (s *recordingService) RotateSecret(ctx context.Context, id string) (string, error) {
	if err := s.record(func() { s.id = id }); err != nil {
		return "", err
	}
	return "rotated", nil
}

func (s *recordingService) Call(ctx context.Context, id, method string, args json.RawMessage, timeout time.Duration) (*rpc.Result, error) {
	if err := s.record(func() { s.id, s.method, s.args, s.timeout = id, method, args, timeout }); err != nil {
		return nil, err
	}
	return &rpc.Result{ID: "r-1", Result: json.RawMessage(`{"ok":true}`), Duration: 1500 * time.Microsecond}, nil
}

func (s *recordingService) Readings(ctx context.Context, f outpost.ReadingFilter) ([]outpost.Reading, error) {
	if err := s.record(func() { s.reads = f }); err != nil {
		return nil, err
	}
	return nil, nil
}

func (s *recordingService) Feeds(ctx context.Context, id string) ([]string, error) {
	if err := s.record(func() { s.id = id }); err != nil {
		return nil, err
	}
	return []string{"temp", "env.humidity"}, nil
}

func (s *recordingService) Follow(f outpost.StreamFilter, afterID uint64) (outpost.Subscription, uint64) {
	s.record(func() { s.sub, s.afterID = f, afterID })
	return s.hub.Subscribe(f, 16, afterID)
}

func (s *recordingService) CreateDevices(ctx context.Context, names []string) ([]*outpost.Device, []string, error) {
	if err := s.record(func() {}); err != nil {
		return nil, nil, err
	}
	ds := make([]*outpost.Device, len(names))
	secrets := make([]string, len(names))
	for i, n := range names {
		ds[i], secrets[i] = &outpost.Device{ID: fmt.Sprintf("d-%d", i), Name: n, CreatedAt: created}, "s3cret"
	}
	return ds, secrets, nil
}

// EachReading hands out the readings Readings returns.
func (s *recordingService) EachReading(ctx context.Context, f outpost.ReadingFilter, fn func(outpost.Reading) error) error {
	rs, err := s.Readings(ctx, f)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func (s *recordingService) Health(ctx context.Context) error {
	return s.record(func() {})
}

func (s *recordingService) Ready(ctx context.Context) error {
	return s.record(func() {})
}

func (s *recordingService) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// MustAPI returns the API over svc with the test token.
func MustAPI(tb testing.TB, svc *recordingService) http.Handler {
	tb.Helper()
	if svc.hub == nil {
		svc.hub = stream.NewHub(16)
	}
	return newAPI(svc, httpapi.Options{
		Token:        token,
		MQTTHostPort: func() string { return "mqtt.example:1883" },
	})
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request with the test token (unless the request sets its own
// Authorization header or auth is false).
func do(tb testing.TB, h http.Handler, method, target, body string, auth bool) response {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	if auth {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return response{rec.Code, rec.Header(), rec.Body.Bytes()}
}

// wantError checks an error response: status, JSON content type and the
// {"error":{"code","message"}} body with exactly those fields.
func wantError(tb testing.TB, r response, status int, code string) httpapi.ErrorBody {
	tb.Helper()
	if r.status != status {
		tb.Errorf("status %d, want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		tb.Errorf("content type %q, want application/json", ct)
	}
	var raw map[string]map[string]any
	if err := json.Unmarshal(r.body, &raw); err != nil {
		tb.Fatalf("error body %s: %v", r.body, err)
	}
	if len(raw) != 1 || len(raw["error"]) != 2 {
		tb.Errorf("error body %s, want exactly {\"error\":{\"code\",\"message\"}}", r.body)
	}
	var b httpapi.ErrorBody
	if err := json.Unmarshal(r.body, &b); err != nil {
		tb.Fatal(err)
	}
	if b.Error.Code != code {
		tb.Errorf("error code %q, want %q", b.Error.Code, code)
	}
	if b.Error.Message == "" {
		tb.Error("error message is empty")
	}
	return b
}

func decode[T any](tb testing.TB, r response) T {
	tb.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		tb.Fatalf("body %s: %v", r.body, err)
	}
	return v
}

func TestAuth(t *testing.T) {
	tests := []struct {
		name   string
		target string
		header string
		want   int
	}{
		{"bearer token", "/api/v1/devices", "Bearer " + token, http.StatusOK},
		{"no token", "/api/v1/devices", "", http.StatusUnauthorized},
		{"wrong token", "/api/v1/devices", "Bearer op_wrong", http.StatusUnauthorized},
		{"token prefix", "/api/v1/devices", "Bearer " + token[:4], http.StatusUnauthorized},
		{"token without scheme", "/api/v1/devices", token, http.StatusUnauthorized},
		{"other scheme", "/api/v1/devices", "Basic " + token, http.StatusUnauthorized},
		// ?access_token= only where EventSource needs it: the stream.
		{"query token off the stream", "/api/v1/devices?access_token=" + token, "", http.StatusUnauthorized},
		{"query token on the stream", "/api/v1/stream?access_token=" + token, "", http.StatusOK},
		{"wrong query token", "/api/v1/stream?access_token=nope", "", http.StatusUnauthorized},
		{"header wins over query", "/api/v1/stream?access_token=" + token, "Bearer op_wrong", http.StatusUnauthorized},
		{"unknown path without token", "/api/v1/nope", "", http.StatusUnauthorized},
		{"health needs no token", "/healthz", "", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &recordingService{}
			h := MustAPI(t, svc)
			req := httptest.NewRequest("GET", tt.target, nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			if strings.HasPrefix(tt.target, "/api/v1/stream") {
				// A stream runs until its client leaves: this one has left.
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				req = req.WithContext(ctx)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			r := response{rec.Code, rec.Header(), rec.Body.Bytes()}
			if tt.want != http.StatusUnauthorized {
				if r.status != tt.want {
					t.Errorf("status %d, want %d (body %s)", r.status, tt.want, r.body)
				}
				return
			}
			wantError(t, r, http.StatusUnauthorized, outpost.EUNAUTHORIZED)
			if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
				t.Errorf("WWW-Authenticate %q, want a Bearer challenge", got)
			}
			if n := svc.callCount(); n != 0 {
				t.Errorf("service called %d times for an unauthorized request", n)
			}
		})
	}
}

func TestNoTokenConfiguredRefusesAll(t *testing.T) {
	h := newAPI(&recordingService{}, httpapi.Options{})
	for _, header := range []string{"", "Bearer ", "Bearer"} {
		req := httptest.NewRequest("GET", "/api/v1/devices", nil)
		req.Header.Set("Authorization", header)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		wantError(t, response{rec.Code, rec.Header(), rec.Body.Bytes()}, http.StatusUnauthorized, outpost.EUNAUTHORIZED)
	}
}

func TestErrorStatus(t *testing.T) {
	tests := []struct {
		err    error
		status int
		code   string
	}{
		{outpost.Errorf(outpost.EINVALID, "bad"), http.StatusBadRequest, outpost.EINVALID},
		{outpost.Errorf(outpost.EUNAUTHORIZED, "who"), http.StatusUnauthorized, outpost.EUNAUTHORIZED},
		{outpost.Errorf(outpost.ENOTFOUND, "device d-1 not found"), http.StatusNotFound, outpost.ENOTFOUND},
		{outpost.Errorf(outpost.ECONFLICT, "taken"), http.StatusConflict, outpost.ECONFLICT},
		{outpost.Errorf(outpost.EOFFLINE, "offline"), http.StatusConflict, outpost.EOFFLINE},
		{outpost.Errorf(outpost.EUNKNOWNMETHOD, "no method"), http.StatusNotImplemented, outpost.EUNKNOWNMETHOD},
		{outpost.Errorf(outpost.ENOTSUPPORTED, "no reset"), http.StatusNotImplemented, outpost.ENOTSUPPORTED},
		{outpost.Errorf(outpost.EREMOTE, "valve stuck"), http.StatusBadGateway, outpost.EREMOTE},
		{outpost.Errorf(outpost.EUNAVAILABLE, "later"), http.StatusServiceUnavailable, outpost.EUNAVAILABLE},
		{outpost.Errorf(outpost.ETIMEOUT, "slow"), http.StatusGatewayTimeout, outpost.ETIMEOUT},
		{outpost.Errorf(outpost.EINTERNAL, "oops"), http.StatusInternalServerError, outpost.EINTERNAL},
		{outpost.Errorf("some_new_code", "?"), http.StatusInternalServerError, "some_new_code"},
		{fmt.Errorf("get device: %w", outpost.Errorf(outpost.ENOTFOUND, "gone")), http.StatusNotFound, outpost.ENOTFOUND},
		{errors.New("sql: database is closed"), http.StatusInternalServerError, outpost.EINTERNAL},
		{fmt.Errorf("query: %w", context.Canceled), http.StatusServiceUnavailable, outpost.EUNAVAILABLE},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.err), func(t *testing.T) {
			h := MustAPI(t, &recordingService{err: tt.err})
			b := wantError(t, do(t, h, "GET", "/api/v1/devices/d-1", "", true), tt.status, tt.code)
			var coded *outpost.Error
			if errors.As(tt.err, &coded) && b.Error.Message != coded.Message {
				t.Errorf("message %q, want %q", b.Error.Message, coded.Message)
			}
			if !errors.As(tt.err, &coded) && strings.Contains(b.Error.Message, "sql") {
				t.Errorf("message %q leaks an internal error", b.Error.Message)
			}
		})
	}
}

func TestUnknownAPIPath(t *testing.T) {
	h := MustAPI(t, &recordingService{})
	for _, target := range []string{"/api/v1/nope", "/api/v2/devices", "/api/v1/devices/d-1/nope"} {
		t.Run(target, func(t *testing.T) {
			b := wantError(t, do(t, h, "GET", target, "", true), http.StatusNotFound, outpost.ENOTFOUND)
			if !strings.Contains(b.Error.Message, target) {
				t.Errorf("message %q does not name the path", b.Error.Message)
			}
		})
	}
}

func TestRPCTimeout(t *testing.T) {
	tests := []struct {
		query string
		want  time.Duration // 0 with bad: rejected
		bad   bool
	}{
		{"", 0, false},
		{"?timeout=1.5", 1500 * time.Millisecond, false},
		{"?timeout=2", 2 * time.Second, false},
		{"?timeout=0.25", 250 * time.Millisecond, false},
		{"?timeout=250ms", 250 * time.Millisecond, false},
		{"?timeout=1m30s", 90 * time.Second, false},
		{"?timeout=0", 0, true},
		{"?timeout=-1", 0, true},
		{"?timeout=0s", 0, true},
		{"?timeout=-5ms", 0, true},
		{"?timeout=soon", 0, true},
		{"?timeout=5parsecs", 0, true},
		{"?timeout=NaN", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			svc := &recordingService{}
			h := MustAPI(t, svc)
			r := do(t, h, "POST", "/api/v1/devices/d-1/rpc/valve.set"+tt.query, "", true)
			if tt.bad {
				wantError(t, r, http.StatusBadRequest, outpost.EINVALID)
				if n := svc.callCount(); n != 0 {
					t.Errorf("service called with a bad timeout")
				}
				return
			}
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if svc.timeout != tt.want {
				t.Errorf("service got timeout %v, want %v", svc.timeout, tt.want)
			}
		})
	}
}

// A timeout too large for a time.Duration must reach the service as a
// large one, which it rejects as above its maximum, not wrap around to a
// negative value that reads as "use the default".
func TestRPCTimeoutTooLarge(t *testing.T) {
	for _, v := range []string{"1e10", "1e300", "Inf"} {
		t.Run(v, func(t *testing.T) {
			svc := &recordingService{}
			h := MustAPI(t, svc)
			r := do(t, h, "POST", "/api/v1/devices/d-1/rpc/ping?timeout="+v, "", true)
			if r.status == http.StatusBadRequest {
				return // rejecting it outright is as good
			}
			if svc.timeout <= rpc.MaxTimeout {
				t.Errorf("service got timeout %v for %s seconds", svc.timeout, v)
			}
		})
	}
}

func TestRPCCall(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		wantArgs string
		bad      bool
	}{
		{"object args", `{"open":true}`, `{"open":true}`, false},
		{"scalar args", `42`, `42`, false},
		{"no body", ``, ``, false},
		{"blank body", " \n", ``, false},
		{"invalid JSON", `{"open":`, ``, true},
		{"not JSON", `open`, ``, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &recordingService{}
			h := MustAPI(t, svc)
			r := do(t, h, "POST", "/api/v1/devices/d-1/rpc/valve.set", tt.body, true)
			if tt.bad {
				wantError(t, r, http.StatusBadRequest, outpost.EINVALID)
				return
			}
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if svc.id != "d-1" || svc.method != "valve.set" || string(svc.args) != tt.wantArgs {
				t.Errorf("service got %s %s(%s), want d-1 valve.set(%s)", svc.id, svc.method, svc.args, tt.wantArgs)
			}
			got := decode[map[string]any](t, r)
			want := map[string]any{"id": "r-1", "device_id": "d-1", "method": "valve.set", "result": map[string]any{"ok": true}, "duration_ms": 1.5}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("response %v, want %v", got, want)
			}
		})
	}
}

func TestTelemetryQuery(t *testing.T) {
	tests := []struct {
		query string
		want  outpost.ReadingFilter // DeviceID is always d-1
		bad   bool
	}{
		{"", outpost.ReadingFilter{Limit: 1000}, false},
		{"?feed=temp", outpost.ReadingFilter{Feed: "temp", Limit: 1000}, false},
		{"?limit=1", outpost.ReadingFilter{Limit: 1}, false},
		{"?limit=100000", outpost.ReadingFilter{Limit: 100000}, false},
		{"?limit=0", outpost.ReadingFilter{}, true},
		{"?limit=-1", outpost.ReadingFilter{}, true},
		{"?limit=100001", outpost.ReadingFilter{}, true},
		{"?limit=ten", outpost.ReadingFilter{}, true},
		{"?since=1700000000000", outpost.ReadingFilter{Since: 1700000000000, Limit: 1000}, false},
		{"?since=0", outpost.ReadingFilter{Limit: 1000}, false},
		{"?since=2024-01-02T03:04:05Z", outpost.ReadingFilter{Since: 1704164645000, Limit: 1000}, false},
		{"?until=2024-01-02T04:04:05.123%2B01:00", outpost.ReadingFilter{Until: 1704164645123, Limit: 1000}, false},
		{"?since=1&until=2&limit=5&feed=a.b", outpost.ReadingFilter{Feed: "a.b", Since: 1, Until: 2, Limit: 5}, false},
		{"?since=yesterday", outpost.ReadingFilter{}, true},
		{"?since=-5", outpost.ReadingFilter{}, true},
		{"?since=1.5", outpost.ReadingFilter{}, true},
		{"?until=2024-01-02", outpost.ReadingFilter{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			svc := &recordingService{}
			h := MustAPI(t, svc)
			r := do(t, h, "GET", "/api/v1/devices/d-1/telemetry"+tt.query, "", true)
			if tt.bad {
				wantError(t, r, http.StatusBadRequest, outpost.EINVALID)
				if n := svc.callCount(); n != 0 {
					t.Error("service called with a bad query")
				}
				return
			}
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			tt.want.DeviceID = "d-1"
			if svc.reads != tt.want {
				t.Errorf("service got %+v, want %+v", svc.reads, tt.want)
			}
			// No readings is an empty array, not null.
			if got := strings.TrimSpace(string(r.body)); got != `{"device_id":"d-1","readings":[]}` {
				t.Errorf("body %s", got)
			}
		})
	}
}

func TestListDevicesQuery(t *testing.T) {
	name := func(s string) *string { return &s }
	online := func(b bool) *bool { return &b }
	tests := []struct {
		query string
		want  outpost.DeviceFilter
		bad   bool
	}{
		{"", outpost.DeviceFilter{}, false},
		{"?name=pump", outpost.DeviceFilter{Name: name("pump")}, false},
		{"?online=true", outpost.DeviceFilter{Online: online(true)}, false},
		{"?online=false&limit=3", outpost.DeviceFilter{Online: online(false), Limit: 3}, false},
		{"?limit=0", outpost.DeviceFilter{}, false},
		{"?online=maybe", outpost.DeviceFilter{}, true},
		{"?limit=-1", outpost.DeviceFilter{}, true},
		{"?limit=many", outpost.DeviceFilter{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			svc := &recordingService{}
			h := MustAPI(t, svc)
			r := do(t, h, "GET", "/api/v1/devices"+tt.query, "", true)
			if tt.bad {
				wantError(t, r, http.StatusBadRequest, outpost.EINVALID)
				return
			}
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			got := svc.devices
			if fmt.Sprint(deref(got.Name), deref(got.Online), got.Limit) != fmt.Sprint(deref(tt.want.Name), deref(tt.want.Online), tt.want.Limit) {
				t.Errorf("service got name %v online %v limit %d, want %v %v %d",
					deref(got.Name), deref(got.Online), got.Limit, deref(tt.want.Name), deref(tt.want.Online), tt.want.Limit)
			}
			body := decode[struct {
				Devices []outpost.Device `json:"devices"`
			}](t, r)
			if len(body.Devices) != 1 || body.Devices[0].ID != "d-1" {
				t.Errorf("devices %+v", body.Devices)
			}
		})
	}
}

// deref shows a nil pointer as "nil" and any other as its value.
func deref[T any](p *T) any {
	if p == nil {
		return "nil"
	}
	return *p
}

func TestCreateDevice(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		err    error
		status int
		code   string
	}{
		{"created", `{"name":"pump"}`, nil, http.StatusCreated, ""},
		{"unknown field", `{"name":"pump","color":"red"}`, nil, http.StatusBadRequest, outpost.EINVALID},
		{"not JSON", `name=pump`, nil, http.StatusBadRequest, outpost.EINVALID},
		{"empty body", ``, nil, http.StatusBadRequest, outpost.EINVALID},
		{"name taken", `{"name":"pump"}`, outpost.Errorf(outpost.ECONFLICT, "a device named \"pump\" already exists"), http.StatusConflict, outpost.ECONFLICT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &recordingService{err: tt.err}
			r := do(t, MustAPI(t, svc), "POST", "/api/v1/devices", tt.body, true)
			if tt.code != "" {
				wantError(t, r, tt.status, tt.code)
				return
			}
			if r.status != tt.status {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			got := decode[map[string]any](t, r)
			want := map[string]any{
				"id": "d-new", "name": "pump", "created_at": "2025-03-01T12:00:00Z", "online": false,
				"password": "s3cret", "url": "mqtt://d-new:s3cret@mqtt.example:1883",
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("response %v, want %v", got, want)
			}
		})
	}
}

func TestDeviceEndpoints(t *testing.T) {
	tests := []struct {
		name, method, target string
		status               int
		want                 string // JSON body, "" for none
	}{
		{"get", "GET", "/api/v1/devices/d-1", http.StatusOK,
			`{"id":"d-1","name":"pump","created_at":"2025-03-01T12:00:00Z","online":false}`},
		{"delete", "DELETE", "/api/v1/devices/d-1", http.StatusNoContent, ""},
		{"rotate secret", "POST", "/api/v1/devices/d-1/secret", http.StatusOK,
			`{"id":"d-1","name":"pump","created_at":"2025-03-01T12:00:00Z","online":false,"password":"rotated","url":"mqtt://d-1:rotated@mqtt.example:1883"}`},
		{"feeds", "GET", "/api/v1/devices/d-1/feeds", http.StatusOK, `{"feeds":["temp","env.humidity"]}`},
		{"health", "GET", "/healthz", http.StatusOK, `{"status":"ok"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &recordingService{}
			r := do(t, MustAPI(t, svc), tt.method, tt.target, "", true)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			if got := strings.TrimSpace(string(r.body)); got != tt.want {
				t.Errorf("body %s\nwant %s", got, tt.want)
			}
			if strings.Contains(tt.target, "d-1") && svc.id != "d-1" {
				t.Errorf("service got device %q, want d-1", svc.id)
			}
		})
	}
}

func TestHealthFailing(t *testing.T) {
	r := do(t, MustAPI(t, &recordingService{err: errors.New("database is closed")}), "GET", "/healthz", "", false)
	if r.status != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", r.status)
	}
	if got := decode[map[string]string](t, r); got["status"] != "unavailable" {
		t.Errorf("body %v", got)
	}
}

func TestStream(t *testing.T) {
	hub := stream.NewHub(2) // holds only the last two events
	for i := range 4 {
		hub.Publish(stream.KindTelemetry, "a", map[string]int{"n": i + 1})
	}
	svc := &recordingService{hub: hub}
	srv := httptest.NewServer(MustAPI(t, svc))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/v1/stream?device=a,b&kind=telemetry&access_token="+token, nil)
	req.Header.Set("Last-Event-ID", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "text/event-stream" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, ct)
	}

	lines := bufio.NewScanner(resp.Body)
	want := []string{
		"retry: 1000", "",
		"event: gap", `data: {"missed":1}`, "", // event 2 left the ring
		"id: 3", "event: telemetry", `data: {"n":3}`, "",
		"id: 4", "event: telemetry", `data: {"n":4}`, "",
		"id: 7", "event: telemetry", `data: {"n":5}`, "", // live; 5 and 6 filtered out
	}
	for i, w := range want {
		if i == 13 {
			hub.Publish(stream.KindPresence, "a", map[string]int{"n": 0})  // filtered out by kind
			hub.Publish(stream.KindTelemetry, "c", map[string]int{"n": 0}) // filtered out by device
			hub.Publish(stream.KindTelemetry, "b", map[string]int{"n": 5})
		}
		if !lines.Scan() {
			t.Fatalf("stream ended before line %d (%q): %v", i, w, lines.Err())
		}
		if got := lines.Text(); got != w {
			t.Fatalf("line %d: %q, want %q", i, got, w)
		}
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if svc.afterID != 1 || len(svc.sub.DeviceIDs) != 2 || !svc.sub.DeviceIDs["b"] || !svc.sub.Kinds[stream.KindTelemetry] {
		t.Errorf("service got filter %+v after %d", svc.sub, svc.afterID)
	}
}

// TestStreamTaggedIDs: with a StreamTag (a replica's name) the stream's
// ids carry it, a resume with one of them replays what was missed, and a
// resume with an id of another replica (or an untagged one, or garbage)
// is told it missed an unknown number of events instead of being
// replayed this replica's events after a number that means nothing here.
func TestStreamTaggedIDs(t *testing.T) {
	hub := stream.NewHub(16)
	for i := range 4 {
		hub.Publish(stream.KindTelemetry, "a", map[string]int{"n": i + 1})
	}
	svc := &recordingService{hub: hub}
	srv := httptest.NewServer(newAPI(svc, httpapi.Options{Token: token, StreamTag: "r1"}))
	defer srv.Close()
	read := func(last string, n int) []string {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/v1/stream?access_token="+token, nil)
		req.Header.Set("Last-Event-ID", last)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		lines := bufio.NewScanner(resp.Body)
		var got []string
		for len(got) < n && lines.Scan() {
			if l := lines.Text(); l != "" && l != "retry: 1000" {
				got = append(got, l)
			}
		}
		return got
	}
	if got, want := read("r1:2", 6), []string{"id: r1:3", "event: telemetry", `data: {"n":3}`, "id: r1:4", "event: telemetry", `data: {"n":4}`}; !slices.Equal(got, want) {
		t.Errorf("resume with this replica's id: %q, want %q", got, want)
	}
	for _, foreign := range []string{"r0:2", "2", "r1:x", "r10:2"} {
		if got, want := read(foreign, 2), []string{"event: gap", `data: {"missed":0,"unknown":true}`}; !slices.Equal(got, want) {
			t.Errorf("resume with %q: %q, want %q", foreign, got, want)
		}
	}
}
