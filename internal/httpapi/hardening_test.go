package httpapi_test

// The HTTP hardening of issue 12: strict bodies (items 15 and 16), the
// token in the query only for the stream and /metrics by flag (15),
// security headers (15), readiness and 500s logged (9), telemetry streamed
// (11).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/httpapi"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/stream"
)

// modelService adds the device-model endpoints to recordingService.
type modelService struct {
	recordingService
	changes map[string]json.RawMessage
	value   json.RawMessage
}

func (s *modelService) FeedDefs(ctx context.Context, id string) ([]outpost.Feed, error) {
	return nil, nil
}

func (s *modelService) SetFeedValue(ctx context.Context, id, ref string, value json.RawMessage, ttl time.Duration) (*outpost.FeedCommand, error) {
	err := s.record(func() { s.value = value })
	return &outpost.FeedCommand{ID: "c"}, err
}

func (s *modelService) Attributes(ctx context.Context, id string) ([]outpost.Attribute, error) {
	return nil, nil
}

func (s *modelService) Parameters(ctx context.Context, id string) (*outpost.Parameters, error) {
	return &outpost.Parameters{}, nil
}

func (s *modelService) UpdateParameters(ctx context.Context, id string, changes map[string]json.RawMessage) (*outpost.Parameters, error) {
	err := s.record(func() { s.changes = changes })
	return &outpost.Parameters{}, err
}

func (s *modelService) Events(ctx context.Context, f outpost.EventFilter) ([]outpost.DeviceEvent, error) {
	return nil, nil
}

var _ httpapi.ModelService = (*modelService)(nil)

// TestStrictRequestBodies: what encoding/json let through (trailing JSON,
// case-insensitive and duplicate keys with the last one winning, invalid
// UTF-8, numbers of any length) is a 400 before the service is called.
func TestStrictRequestBodies(t *testing.T) {
	longNum := "1" + strings.Repeat("0", 200_002)
	tests := []struct {
		name, method, path, body string
		ok                       bool
	}{
		{"create", "POST", "/api/v1/devices", `{"name":"pump"}`, true},
		{"create: trailing JSON", "POST", "/api/v1/devices", `{"name":"pump"}{"name":"other"}`, false},
		{"create: trailing garbage", "POST", "/api/v1/devices", `{"name":"pump"} x`, false},
		{"create: trailing white space", "POST", "/api/v1/devices", "{\"name\":\"pump\"}\n\t ", true},
		{"create: upper-case field", "POST", "/api/v1/devices", `{"NAME":"pump"}`, false},
		{"create: duplicate key", "POST", "/api/v1/devices", `{"name":"a","name":"b"}`, false},
		{"create: invalid UTF-8", "POST", "/api/v1/devices", "{\"name\":\"\xff\xfe\"}", false},
		{"create: lone surrogate", "POST", "/api/v1/devices", `{"name":"\ud800"}`, false},
		{"create: unknown field", "POST", "/api/v1/devices", `{"name":"a","nmae":"b"}`, false},
		{"create: long number in an unknown field", "POST", "/api/v1/devices", `{"name":"a","x":` + longNum + `}`, false},
		{"parameters", "PATCH", "/api/v1/devices/d-1/parameters", `{"rate":5,"Rate":6}`, true},
		{"parameters: 200,003-byte number", "PATCH", "/api/v1/devices/d-1/parameters", `{"rate":` + longNum + `}`, false},
		{"parameters: duplicate key", "PATCH", "/api/v1/devices/d-1/parameters", `{"rate":5,"rate":6}`, false},
		{"parameters: trailing JSON", "PATCH", "/api/v1/devices/d-1/parameters", `{"rate":5}{"rate":6}`, false},
		{"feed value", "POST", "/api/v1/devices/d-1/feeds/t/value", `{"value":21.5}`, true},
		{"feed value: case variant", "POST", "/api/v1/devices/d-1/feeds/t/value", `{"Value":21.5}`, false},
		{"feed value: invalid UTF-8", "POST", "/api/v1/devices/d-1/feeds/t/value", "{\"value\":\"\xc3\"}", false},
		{"rpc args", "POST", "/api/v1/devices/d-1/rpc/m", `{"a":[1,2]}`, true},
		{"rpc args: duplicate key", "POST", "/api/v1/devices/d-1/rpc/m", `{"a":1,"a":2}`, false},
		{"rpc args: invalid UTF-8", "POST", "/api/v1/devices/d-1/rpc/m", "\"\xff\"", false},
		{"rpc args: trailing JSON", "POST", "/api/v1/devices/d-1/rpc/m", `1 2`, false},
		{"rpc args: long number", "POST", "/api/v1/devices/d-1/rpc/m", longNum, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &modelService{}
			svc.hub = stream.NewHub(16)
			h := newAPI(svc, httpapi.Options{Token: token})
			r := do(t, h, tt.method, tt.path, tt.body, true)
			if tt.ok {
				if r.status >= 300 {
					t.Fatalf("status %d: %s", r.status, r.body)
				}
				return
			}
			b := wantError(t, r, http.StatusBadRequest, outpost.EINVALID)
			if len(b.Error.Message) > 300 {
				t.Errorf("error message of %d bytes echoes the body", len(b.Error.Message))
			}
			if n := svc.callCount(); n != 0 {
				t.Errorf("service called %d times for a bad body", n)
			}
		})
	}
}

// TestSecurityHeaders: nosniff on every response, HSTS only over TLS, no
// caching of API answers (they carry device secrets).
func TestSecurityHeaders(t *testing.T) {
	for _, tls := range []bool{false, true} {
		h := newAPI(&recordingService{hub: stream.NewHub(16)}, httpapi.Options{Token: token, TLS: tls})
		for _, path := range []string{"/api/v1/devices", "/healthz", "/api/v1/nope"} {
			for _, auth := range []bool{true, false} {
				r := do(t, h, "GET", path, "", auth)
				if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
					t.Errorf("tls %v %s: X-Content-Type-Options %q", tls, path, got)
				}
				hsts := r.header.Get("Strict-Transport-Security")
				if tls != (hsts != "") || (tls && !strings.HasPrefix(hsts, "max-age=")) {
					t.Errorf("tls %v %s: Strict-Transport-Security %q", tls, path, hsts)
				}
				if strings.HasPrefix(path, "/api/") && r.header.Get("Cache-Control") != "no-store" {
					t.Errorf("%s: Cache-Control %q", path, r.header.Get("Cache-Control"))
				}
			}
		}
	}
}

// TestMetricsAuthFlag: /metrics is open by default and needs the token
// with MetricsAuth.
func TestMetricsAuthFlag(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "up 1") })
	for _, tt := range []struct {
		auth, withToken bool
		want            int
	}{
		{false, false, http.StatusOK},
		{true, false, http.StatusUnauthorized},
		{true, true, http.StatusOK},
	} {
		h := newAPI(&recordingService{}, httpapi.Options{Token: token, Metrics: metrics, MetricsAuth: tt.auth})
		if r := do(t, h, "GET", "/metrics", "", tt.withToken); r.status != tt.want {
			t.Errorf("auth %v, token %v: status %d, want %d", tt.auth, tt.withToken, r.status, tt.want)
		}
		if r := do(t, h, "GET", "/metrics?access_token="+token, "", false); tt.auth && r.status != http.StatusUnauthorized {
			t.Errorf("auth %v: a query token opened /metrics", tt.auth)
		}
	}
}

// readyService fails readiness, or any call, as told.
type readyService struct {
	recordingService
	ready error
}

func (s *readyService) Ready(ctx context.Context) error { return s.ready }

// TestReadyz: /readyz reports the service's readiness, /healthz stays
// liveness.
func TestReadyz(t *testing.T) {
	svc := &readyService{}
	h := newAPI(svc, httpapi.Options{Token: token})
	if r := do(t, h, "GET", "/readyz", "", false); r.status != http.StatusOK || !strings.Contains(string(r.body), `"ready"`) {
		t.Fatalf("ready: %d %s", r.status, r.body)
	}
	svc.ready = errors.New("store write: database or disk is full")
	r := do(t, h, "GET", "/readyz", "", false)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "disk is full") {
		t.Fatalf("not ready: %d %s", r.status, r.body)
	}
	if r := do(t, h, "GET", "/healthz", "", false); r.status != http.StatusOK {
		t.Fatalf("liveness while not ready: %d %s", r.status, r.body)
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServerErrorsLogged: every 500 is logged with its cause (the client
// only sees a generic message), errors of the client are not.
func TestServerErrorsLogged(t *testing.T) {
	for _, tt := range []struct {
		err    error
		status int
		logged bool
	}{
		{errors.New("sql: database is closed"), http.StatusInternalServerError, true},
		{fmt.Errorf("append readings: %w", errors.New("database or disk is full")), http.StatusInternalServerError, true},
		{outpost.Errorf(outpost.EUNAVAILABLE, "shutting down"), http.StatusServiceUnavailable, true},
		{outpost.Errorf(outpost.ENOTFOUND, "device d-1 not found"), http.StatusNotFound, false},
		{outpost.Errorf(outpost.ETIMEOUT, "device d-1 did not answer"), http.StatusGatewayTimeout, false},
	} {
		var logs syncBuffer
		h := newAPI(&recordingService{err: tt.err}, httpapi.Options{Token: token, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		r := do(t, h, "GET", "/api/v1/devices/d-1?secret=x", "", true)
		if r.status != tt.status {
			t.Fatalf("%v: status %d", tt.err, r.status)
		}
		got := logs.String()
		if logged := strings.Contains(got, tt.err.Error()); logged != tt.logged {
			t.Errorf("%v: logged %v, want %v: %q", tt.err, logged, tt.logged, got)
		}
		if tt.logged && (!strings.Contains(got, "/api/v1/devices/d-1") || strings.Contains(got, "secret=x")) {
			t.Errorf("log line %q: want the path without the query", got)
		}
	}
}

// streamingService hands out readings one by one; after the first
// `before` it waits until the test says the client has seen the start of
// the response.
type streamingService struct {
	recordingService
	before, total int
	seen          chan struct{}
}

func (s *streamingService) EachReading(ctx context.Context, f outpost.ReadingFilter, fn func(outpost.Reading) error) error {
	if f.DeviceID != "d-1" {
		return outpost.Errorf(outpost.ENOTFOUND, "device %s not found", f.DeviceID)
	}
	for i := 0; i < s.total; i++ {
		if i == s.before {
			select {
			case <-s.seen:
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Second):
				return errors.New("the client saw nothing of the response before the store was done: it is buffered")
			}
		}
		if err := fn(outpost.Reading{Feed: "f", TS: int64(i + 1), Value: json.RawMessage(`"` + strings.Repeat("x", 100) + `"`)}); err != nil {
			return err
		}
	}
	return nil
}

var _ httpapi.Readings = (*streamingService)(nil)

// TestTelemetryStreamed covers issue 12 item 11 at the API: the response is
// written while the store reads, so a request holds one reading and a
// buffer, not its whole page. The service stops half-way until the
// client has received the first bytes; a buffering handler never sends
// them, and the service gives up.
func TestTelemetryStreamed(t *testing.T) {
	svc := &streamingService{before: 5_000, total: 10_000, seen: make(chan struct{})}
	srv := httptest.NewServer(newAPI(svc, httpapi.Options{Token: token}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/devices/d-1/telemetry?limit=10000", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	head := make([]byte, 64)
	if _, err := br.Read(head); err != nil {
		t.Fatal(err)
	}
	close(svc.seen)
	var body struct {
		DeviceID string `json:"device_id"`
		Readings []struct {
			Feed  string          `json:"feed"`
			TS    int64           `json:"ts"`
			Value json.RawMessage `json:"value"`
		} `json:"readings"`
	}
	rest := new(bytes.Buffer)
	rest.Write(head)
	if _, err := rest.ReadFrom(br); err != nil {
		t.Fatalf("read the rest (the handler gave up?): %v", err)
	}
	if err := json.Unmarshal(rest.Bytes(), &body); err != nil {
		t.Fatalf("response is not JSON: %v (%d bytes)", err, rest.Len())
	}
	if body.DeviceID != "d-1" || len(body.Readings) != svc.total || body.Readings[svc.total-1].TS != int64(svc.total) {
		t.Fatalf("got %s with %d readings", body.DeviceID, len(body.Readings))
	}

	// An unknown device is still a 404, an empty page still a page.
	wantError(t, do(t, newAPI(svc, httpapi.Options{Token: token}), "GET", "/api/v1/devices/d-2/telemetry", "", true), http.StatusNotFound, outpost.ENOTFOUND)
	empty := &streamingService{seen: make(chan struct{})}
	r := do(t, newAPI(empty, httpapi.Options{Token: token}), "GET", "/api/v1/devices/d-1/telemetry", "", true)
	if r.status != http.StatusOK || strings.TrimSpace(string(r.body)) != `{"device_id":"d-1","readings":[]}` {
		t.Fatalf("empty page: %d %s", r.status, r.body)
	}
}
