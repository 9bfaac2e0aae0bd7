package server_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/server"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func open(t *testing.T, cfg server.Config) (*server.Server, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := server.Open(ctx, cfg)
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// hold listens on a free loopback port and returns its address.
func hold(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// When a default port is taken (Mosquitto on 1883), the platform listens
// on another and says so; an address that was given is never moved.
func TestDefaultPortTakenMovesListener(t *testing.T) {
	mqttHeld, httpHeld := hold(t), hold(t)
	defer server.SetDefaultAddrs(mqttHeld, "127.0.0.1:0", httpHeld)()

	var log logBuf
	s, err := open(t, server.Config{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatalf("Open with taken default ports: %v", err)
	}
	if s.MQTTAddr() == mqttHeld || !strings.HasPrefix(s.MQTTAddr(), "127.0.0.1:") {
		t.Errorf("MQTT on %s, want another loopback port than the taken %s", s.MQTTAddr(), mqttHeld)
	}
	if got := strings.TrimPrefix(s.HTTPURL(), "http://"); got == httpHeld || !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("HTTP on %s, want another loopback port than the taken %s", got, httpHeld)
	}
	for _, want := range []string{mqttHeld + " is taken", "Pass --mqtt ADDR", httpHeld + " is taken", "Pass --http ADDR"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log does not say %q:\n%s", want, log.String())
		}
	}
	if strings.Contains(log.String(), "reachable from other machines") {
		t.Errorf("loopback listeners warned about as reachable:\n%s", log.String())
	}

	// Given explicitly, a taken address is an error naming the flag.
	for _, tc := range []struct {
		flag string
		cfg  server.Config
	}{
		{"--mqtt", server.Config{DataDir: t.TempDir(), MQTTAddr: mqttHeld, HTTPAddr: "127.0.0.1:0"}},
		{"--http", server.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPAddr: httpHeld}},
	} {
		_, err := open(t, tc.cfg)
		if err == nil || !strings.HasPrefix(err.Error(), tc.flag+": ") || !strings.Contains(err.Error(), tc.flag+" 127.0.0.1:0") {
			t.Errorf("%s taken: %v, want an error naming the flag and how to pick a free port", tc.flag, err)
		}
	}
}

func TestReachableFromOutside(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want bool
	}{{"127.0.0.1", false}, {"127.0.0.2", false}, {"::1", false}, {"0.0.0.0", true}, {"::", true}, {"192.168.1.10", true}} {
		if got := server.ReachableFromOutside(&net.TCPAddr{IP: net.ParseIP(tc.ip), Port: 1883}); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.ip, got, tc.want)
		}
	}
}

// A running platform writes its addresses into the data directory and
// removes them when it stops; a second platform cannot use the directory
// meanwhile.
func TestRunningFileAndLock(t *testing.T) {
	dir := t.TempDir()
	s, err := open(t, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := server.ReadRunning(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.HTTP != s.HTTPURL() || r.MQTT != s.MQTTURL() || r.PID != os.Getpid() {
		t.Errorf("running file %+v, want %s and %s", r, s.HTTPURL(), s.MQTTURL())
	}
	_, err = open(t, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "in use by another outpost serve") || !strings.Contains(err.Error(), s.HTTPURL()) {
		t.Fatalf("second platform on the same directory: %v", err)
	}
	if r2, err := server.ReadRunning(dir); err != nil || *r2 != *r {
		t.Fatalf("the failed start changed the running file: %+v, %v", r2, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := server.ReadRunning(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("running file after Close: %v", err)
	}
	if _, err := open(t, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}); err != nil {
		t.Fatalf("start after Close: %v", err)
	}
}

// The admin token counts as shown only once it was marked so: a start that
// failed after creating it leaves it unshown.
func TestTokenShown(t *testing.T) {
	dir := t.TempDir()
	busy := hold(t)
	if _, err := open(t, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: busy}); err == nil {
		t.Fatal("start on a busy port succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, server.TokenFile)); err != nil {
		t.Fatalf("the failed start created no token: %v", err)
	}
	s, err := open(t, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if s.TokenIsNew() || s.TokenShown() {
		t.Fatalf("token new %v, shown %v; want an old token never shown", s.TokenIsNew(), s.TokenShown())
	}
	if s.TokenPath() != filepath.Join(dir, server.TokenFile) {
		t.Errorf("TokenPath %q", s.TokenPath())
	}
	if err := s.MarkTokenShown(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = open(t, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if !s.TokenShown() {
		t.Fatal("token not shown after MarkTokenShown")
	}
}
