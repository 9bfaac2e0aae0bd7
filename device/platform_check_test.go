package device_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// Item 7: a device pointed at an MQTT broker that is not the Outpost
// platform (the README's new user with a Mosquitto on 1883) finds out:
// Connect fails with ErrNotOutpost, nothing is published through the
// broker, and Publish never reports readings as sent.
func TestNotAnOutpostPlatform(t *testing.T) {
	brokers := map[string]func(t *testing.T) string{
		"mochi":     startPlainBroker,
		"mosquitto": mosquitto,
	}
	for name, start := range brokers {
		t.Run(name, func(t *testing.T) {
			addr := start(t)
			px := startProxy(t, addr)
			logs := &logRecorder{}
			c := newClient(t, "mqtt://d-lost:wrong-password@"+px.addr, device.WithMemoryOutbox(),
				device.WithConnectTimeout(300*time.Millisecond),
				device.WithReconnectBackoff(20*time.Millisecond, 100*time.Millisecond),
				device.WithLogger(slog.New(logs)))
			if err := c.Add("temperature", 21.5); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			err := c.Connect(ctx)
			if err == nil {
				t.Fatal("Connect succeeded against a plain MQTT broker")
			}
			if !errors.Is(err, device.ErrNotOutpost) {
				t.Fatalf("Connect = %v, want ErrNotOutpost", err)
			}
			t.Logf("Connect: %v", err)
			recs := logs.find(slog.LevelWarn, "connection attempt failed")
			if len(recs) == 0 || recs[0]["cause"].String() != "not an Outpost platform" {
				t.Errorf("failed checks not logged as such: %v", recs)
			}

			// In the background, too: Publish waits, and never reports
			// success.
			c2 := newClient(t, "mqtt://d-lost2:wrong-password@"+px.addr, device.WithMemoryOutbox(),
				device.WithConnectTimeout(300*time.Millisecond),
				device.WithReconnectBackoff(20*time.Millisecond, 100*time.Millisecond),
				device.WithRetryOnFailedConnect())
			if err := c2.Connect(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := c2.Add("temperature", 21.5); err != nil {
				t.Fatal(err)
			}
			pctx, pcancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
			err = c2.Publish(pctx)
			pcancel()
			if err == nil || !errors.Is(err, device.ErrNotConnected) {
				t.Fatalf("Publish through a plain broker = %v, want ErrNotConnected", err)
			}
			if c2.Pending() != 1 || c2.Connected() {
				t.Fatalf("pending %d, connected %v: the reading must stay, unsent", c2.Pending(), c2.Connected())
			}
			if n := len(px.published("telemetry")); n != 0 {
				t.Fatalf("%d telemetry messages went to the plain broker", n)
			}
		})
	}
}

// mosquitto returns the address of a Mosquitto: $OUTPOST_TEST_MQTT (for
// example the one on 127.0.0.1:1883), or one started on a free port.
func mosquitto(t *testing.T) string {
	t.Helper()
	if addr := os.Getenv("OUTPOST_TEST_MQTT"); addr != "" {
		// .ci/run sets a URL (tcp://127.0.0.1:1883); a bare HOST:PORT works too.
		if u, err := url.Parse(addr); err == nil && u.Host != "" {
			addr = u.Host
		}
		return addr
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Skip("mosquitto not installed and OUTPOST_TEST_MQTT not set")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\nuser root\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	outposttest.Eventually(t, 5*time.Second, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// WithRetryOnFailedConnect: Connect returns at once, the client connects
// when the platform appears, and Publish waits for it.
func TestRetryOnFailedConnect(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "patient")
	px := newProxy(t, p.MQTTAddr())
	c := newClient(t, via(p, d, px.addr), fast(device.WithRetryOnFailedConnect())...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("Connect = %v, want nil at once", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Connect took %s", d)
	}
	if err := c.Add("t", 1); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Publish(ctx) }()
	select {
	case err := <-errc:
		t.Fatalf("Publish returned %v with the platform unreachable", err)
	case <-time.After(200 * time.Millisecond):
	}
	px.start(t)
	if err := <-errc; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if !c.Connected() {
		t.Fatal("not connected after Publish")
	}
	if n := storedReadings(t, p, d.ID, "t"); n != 1 {
		t.Fatalf("%d readings stored", n)
	}
}
