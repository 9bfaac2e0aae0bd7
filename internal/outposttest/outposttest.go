// Package outposttest starts a real platform in-process for tests: embedded
// broker and HTTP API on 127.0.0.1:0, SQLite in a temporary directory.
package outposttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outpost-iot/outpost/internal/server"
)

// Platform is a running platform under test.
type Platform struct {
	*server.Server
	cfg server.Config
}

// Start starts a platform and stops it when the test ends. mod, if given,
// adjusts the configuration.
func Start(tb testing.TB, mod ...func(*server.Config)) *Platform {
	tb.Helper()
	cfg := server.Config{
		DataDir:  tb.TempDir(),
		MQTTAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		Logger:   Logger(tb),
	}
	for _, m := range mod {
		m(&cfg)
	}
	p := &Platform{cfg: cfg}
	p.open(tb)
	AddSecret(p.AdminToken())
	tb.Cleanup(func() { p.Server.Close() })
	return p
}

func (p *Platform) open(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := server.Open(ctx, p.cfg)
	if err != nil {
		tb.Fatalf("start platform: %v", err)
	}
	p.Server = s
}

// Restart closes the platform and opens it again on the same data
// directory and the same ports, as an operator restarting it would.
func (p *Platform) Restart(tb testing.TB) {
	tb.Helper()
	p.cfg.MQTTAddr = p.MQTTAddr()
	p.cfg.HTTPAddr = strings.TrimPrefix(p.HTTPURL(), "http://")
	if err := p.Server.Close(); err != nil {
		tb.Fatalf("close platform: %v", err)
	}
	var err error
	for i := 0; i < 50; i++ { // the old sockets may linger an instant
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var s *server.Server
		s, err = server.Open(ctx, p.cfg)
		cancel()
		if err == nil {
			p.Server = s
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("restart platform: %v", err)
}

// Device is a device created through the API.
type Device struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Password string `json:"password"`
	URL      string `json:"url"`
}

// CreateDevice registers a device through the HTTP API.
func (p *Platform) CreateDevice(tb testing.TB, name string) Device {
	tb.Helper()
	var d Device
	if st := p.Do(tb, "POST", "/api/v1/devices", map[string]string{"name": name}, &d); st != http.StatusCreated {
		tb.Fatalf("create device %q: status %d", name, st)
	}
	if d.URL == "" {
		d.URL = "mqtt://" + d.ID + ":" + d.Password + "@" + p.MQTTAddr()
	}
	return d
}

// Do sends an authenticated API request with a JSON body (nil for none)
// and decodes the JSON response into out (nil to discard). It returns the
// status code.
func (p *Platform) Do(tb testing.TB, method, path string, body, out any) int {
	tb.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			tb.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, p.HTTPURL()+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+p.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	addSecretsFrom(raw)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			tb.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

// Eventually polls cond every 10ms until it holds or timeout passes.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Main runs a test binary's tests with device outboxes in a temporary
// directory (OUTPOST_OUTBOX_DIR, removed afterwards) rather than the user's
// cache directory, then checks that no goroutine outlived the tests.
// Use it as TestMain: func TestMain(m *testing.M) { outposttest.Main(m) }.
func Main(m *testing.M) {
	dir, err := os.MkdirTemp("", "outpost-outbox-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "outposttest:", err)
		os.Exit(1)
	}
	os.Setenv("OUTPOST_OUTBOX_DIR", dir)
	code := m.Run()
	os.RemoveAll(dir)
	if leaks := lateLeaks(); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "outposttest: secrets written to the log after their test ended:\n%s\n", strings.Join(leaks, "\n"))
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
