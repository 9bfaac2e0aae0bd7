package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runCLI(t *testing.T, p *outposttest.Platform, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	args = append(args, "--server", p.HTTPURL(), "--token", p.AdminToken())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := run(ctx, args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestServePrintsEndpointsAndToken(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuf
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--data", dir, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warn"}, &out, &errb)
	}()
	outposttest.Eventually(t, 10*time.Second, "serve output", func() bool { return strings.Contains(out.String(), "admin token: ") })
	s := out.String()
	for _, re := range []string{`(?m)^mqtt: tcp://127\.0\.0\.1:[1-9][0-9]*$`, `(?m)^http: http://127\.0\.0\.1:[1-9][0-9]*$`, `(?m)^admin token: op_[a-z0-9]+$`} {
		if !regexp.MustCompile(re).MatchString(s) {
			t.Errorf("serve output %q does not match %s", s, re)
		}
	}
	// Issue 16: how many devices the open-file limit allows.
	if lim, err := server.RaiseFileLimit(); err == nil && lim > 1024 && lim < 1<<30 {
		want := fmt.Sprintf("devices: up to %d connected at once: the open-file limit is %d,", lim-512, lim)
		if !strings.Contains(s, want) {
			t.Errorf("serve output %q does not say %q", s, want)
		}
	} else if !strings.Contains(s, "\ndevices: ") {
		t.Errorf("serve output %q does not say how many devices can connect", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}

	// A second start on the same data directory reuses the token and does
	// not print it.
	ctx, cancel = context.WithCancel(context.Background())
	var out2 syncBuf
	go func() {
		done <- run(ctx, []string{"serve", "--data", dir, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warn"}, &out2, &errb)
	}()
	outposttest.Eventually(t, 10*time.Second, "second serve output", func() bool { return strings.Contains(out2.String(), "data: ") })
	if strings.Contains(out2.String(), "admin token:") {
		t.Errorf("token printed again for an existing data directory: %q", out2.String())
	}
	cancel()
	<-done
}

func TestServePortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, flag := range []string{"--mqtt", "--http"} {
		args := []string{"serve", "--data", t.TempDir(), "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"}
		for i := range args {
			if args[i] == flag {
				args[i+1] = l.Addr().String()
			}
		}
		err := run(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.HasPrefix(err.Error(), flag+":") || !strings.Contains(err.Error(), "address already in use") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s on a busy port: err = %v, want one line naming the flag", flag, err)
		}
	}
}

func TestDeviceCommandsAndRPC(t *testing.T) {
	p := outposttest.Start(t)
	out, _, err := runCLI(t, p, "device", "create", "boiler")
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ ID, Password, URL string }
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID == "" || len(created.Password) < 30 {
		t.Fatalf("device create printed %q (%v)", out, err)
	}
	if _, _, err := runCLI(t, p, "device", "create", "boiler"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate name: %v", err)
	}

	c, err := device.New(created.URL)
	if err != nil {
		t.Fatal(err)
	}
	c.Handle("echo", func(ctx context.Context, args json.RawMessage) (any, error) { return args, nil })
	c.Handle("fail", func(ctx context.Context, args json.RawMessage) (any, error) { return nil, errors.New("valve stuck") })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	out, _, err = runCLI(t, p, "rpc", "boiler", "echo", `{"x":[1,2]}`, "--timeout", "3s")
	if err != nil || strings.Join(strings.Fields(out), "") != `{"x":[1,2]}` {
		t.Fatalf("rpc echo by name: %q, %v", out, err)
	}
	if _, _, err := runCLI(t, p, "rpc", created.ID, "fail"); err == nil || !strings.Contains(err.Error(), "valve stuck") {
		t.Fatalf("rpc fail: %v", err)
	}
	if _, _, err := runCLI(t, p, "rpc", created.ID, "nope"); err == nil || !strings.Contains(err.Error(), "unknown_method") {
		t.Fatalf("rpc unknown: %v", err)
	}
	if _, _, err := runCLI(t, p, "rpc", created.ID, "echo", "{not json"); !errors.As(err, new(usageError)) {
		t.Fatalf("rpc with bad JSON args: %v, want a usage error", err)
	}

	c.Add("temp", 71.5)
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, p, "telemetry", "boiler", "--feed", "temp", "-o", "json")
	if err != nil || !strings.Contains(out, `"value": 71.5`) {
		t.Fatalf("telemetry: %q, %v", out, err)
	}
	out, _, err = runCLI(t, p, "device", "list", "--online=true")
	if err != nil || !strings.Contains(out, created.ID) || !strings.Contains(out, "true") {
		t.Fatalf("device list: %q, %v", out, err)
	}
	if _, _, err := runCLI(t, p, "device", "delete", "boiler"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, p, "device", "show", created.ID); err == nil || !strings.Contains(err.Error(), "not_found") && !strings.Contains(err.Error(), "no device") {
		t.Fatalf("show after delete: %v", err)
	}
	outposttest.Eventually(t, 5*time.Second, "deleted device disconnected", func() bool { return !c.Connected() })
}

func TestWrongTokenIsAClearError(t *testing.T) {
	p := outposttest.Start(t)
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"device", "list", "--server", p.HTTPURL(), "--token", "wrong"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestCLIQueuedCall(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "napping")
	out, _, err := runCLI(t, p, "rpc", "napping", "echo", `{"x":1}`, "--queue", "--ttl", "10m", "--timeout", "3s")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		ID        string `json:"id"`
		State     string `json:"state"`
		TimeoutMS int64  `json:"timeout_ms"`
	}
	if err := json.Unmarshal([]byte(out), &c); err != nil || c.State != "queued" || c.TimeoutMS != 3000 {
		t.Fatalf("rpc --queue printed %q (%v)", out, err)
	}
	out, _, err = runCLI(t, p, "call", "show", c.ID)
	if err != nil || !strings.Contains(out, `"state": "queued"`) || !strings.Contains(out, d.ID) {
		t.Fatalf("call show: %q, %v", out, err)
	}
	if out, _, err = runCLI(t, p, "call", "list", "napping", "--state", "queued"); err != nil || !strings.Contains(out, c.ID) {
		t.Fatalf("call list: %q, %v", out, err)
	}
	if out, _, err = runCLI(t, p, "call", "cancel", c.ID); err != nil || !strings.Contains(out, `"cancelled"`) {
		t.Fatalf("call cancel: %q, %v", out, err)
	}
	if _, _, err = runCLI(t, p, "call", "show", "nope"); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Fatalf("call show unknown: %v", err)
	}
}
