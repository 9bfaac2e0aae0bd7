package device_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// via returns the device URL of d pointed at addr instead of the platform.
func via(p *outposttest.Platform, d outposttest.Device, addr string) string {
	return strings.Replace(d.URL, p.MQTTAddr(), addr, 1)
}

// fast are options that make connection attempts quick to fail and to
// retry, for tests.
func fast(opts ...device.Option) []device.Option {
	return append([]device.Option{
		device.WithMemoryOutbox(),
		device.WithConnectTimeout(time.Second),
		device.WithReconnectBackoff(20*time.Millisecond, 100*time.Millisecond),
	}, opts...)
}

func newClient(t *testing.T, url string, opts ...device.Option) *device.Client {
	t.Helper()
	c, err := device.New(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// storedReadings returns how many readings of feed the platform stored for
// the device.
func storedReadings(t *testing.T, p *outposttest.Platform, id, feed string) int {
	t.Helper()
	var out struct {
		Readings []struct {
			Feed string `json:"feed"`
		} `json:"readings"`
	}
	if st := p.Do(t, "GET", "/api/v1/devices/"+id+"/telemetry?feed="+feed+"&limit=1000", nil, &out); st != http.StatusOK {
		t.Fatalf("telemetry: status %d", st)
	}
	return len(out.Readings)
}

// storedEvents returns the names (events) and titles (notifications) the
// platform stored for the device, oldest first.
func storedEvents(t *testing.T, p *outposttest.Platform, id string) []string {
	t.Helper()
	var out struct {
		Events []struct {
			Name  string `json:"name"`
			Title string `json:"title"`
			Seq   int64  `json:"seq"`
		} `json:"events"`
	}
	if st := p.Do(t, "GET", "/api/v1/devices/"+id+"/events?limit=1000", nil, &out); st != http.StatusOK {
		t.Fatalf("events: status %d", st)
	}
	names := make([]string, 0, len(out.Events))
	for _, e := range out.Events {
		names = append(names, e.Name+e.Title)
	}
	return names
}

// Item 1: Publish, Pull and the other calls may run while Connect does;
// the client is safe for concurrent use from the start (go test -race).
func TestPublishWhileConnecting(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "racer")
	c := newClient(t, d.URL, device.WithMemoryOutbox())
	if err := c.Add("n", 1); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				_ = c.Publish(ctx)
				_, _ = c.Pull(ctx)
				_ = c.PublishRaw(ctx, "x", []byte("1"))
				_ = c.Connected()
				cancel()
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.Connect(ctx)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if n := storedReadings(t, p, d.ID, "n"); n != 1 {
		t.Fatalf("%d readings stored, want 1", n)
	}
}

// Item 2: a device that boots with no network keeps its client: Add works
// before the first connection and after a failed Connect, and Connect can
// be called again once the platform is reachable.
func TestConnectAgainAfterFailure(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "late")
	px := newProxy(t, p.MQTTAddr()) // nothing listens there yet
	c := newClient(t, via(p, d, px.addr), fast()...)
	if err := c.Add("t", 1); err != nil {
		t.Fatalf("Add before the first connection: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := c.Connect(ctx)
	cancel()
	if err == nil {
		t.Fatal("Connect to an address where nothing listens succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Connect = %v, want it to wrap context.DeadlineExceeded", err)
	}
	if err := c.Add("t", 2); err != nil {
		t.Fatalf("Add after a failed Connect: %v", err)
	}
	if c.Connected() {
		t.Fatal("Connected after a failed Connect")
	}

	px.start(t) // the network comes up
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("second Connect: %v", err)
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if n := storedReadings(t, p, d.ID, "t"); n != 2 {
		t.Fatalf("%d readings stored, want 2", n)
	}
	// Connect on a connected client is a no-op.
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("Connect while connected: %v", err)
	}
}

// Item 6: SendEvent and SendNotification return once the message is in the
// outbox, connected or not; the client delivers it as soon as it can, and
// Publish waits for its delivery.
func TestSendEventReturnsOnceQueued(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "sender")
	px := newProxy(t, p.MQTTAddr())
	c := newClient(t, via(p, d, px.addr), fast()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Never connected.
	if err := c.SendEvent(ctx, "boot", map[string]int{"n": 1}); err != nil {
		t.Fatalf("SendEvent before the first connection: %v", err)
	}
	// Connecting, but the platform cannot be reached.
	cctx, ccancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_ = c.Connect(cctx)
	ccancel()
	short, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := c.SendNotification(short, "Offline", "queued while away")
	scancel()
	if err != nil {
		t.Fatalf("SendNotification while the platform is away: %v", err)
	}
	if n := c.OutboxStats().PendingMessages; n != 2 {
		t.Fatalf("%d messages waiting in the outbox, want 2", n)
	}

	px.start(t)
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// Delivered in the background, without a Publish.
	outposttest.Eventually(t, 10*time.Second, "the queued event and notification stored", func() bool {
		return len(storedEvents(t, p, d.ID)) == 2
	})
	// Publish waits for what was queued before it.
	if err := c.SendEvent(ctx, "door_open", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if got := storedEvents(t, p, d.ID); strings.Join(got, ",") != "boot,Offline,door_open" {
		t.Fatalf("stored %v, want boot, Offline, door_open", got)
	}
	if n := c.OutboxStats().PendingMessages; n != 0 {
		t.Fatalf("%d messages still waiting after Publish", n)
	}
}

// Item 8: each failed connection attempt is logged at Warn with its cause
// and the next retry time, and Connect returns the last cause when its
// context ends.
func TestConnectFailuresAreReported(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "unlucky")
	nowhere := newProxy(t, p.MQTTAddr()).addr
	for _, tc := range []struct {
		name  string
		url   string
		cause string
		is    error
		fatal bool
	}{
		{name: "refused", url: via(p, d, nowhere), cause: "connection refused", is: syscall.ECONNREFUSED},
		{name: "dns", url: via(p, d, "no-such-host.invalid:1883"), cause: "DNS lookup failed"},
		{name: "tls", url: strings.Replace(d.URL, "mqtt://", "mqtts://", 1), cause: "TLS handshake failed"},
		{name: "credentials", url: strings.Replace(d.URL, d.Password, "wrong"+d.Password, 1), cause: "bad credentials", is: device.ErrAuth, fatal: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "dns" {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				_, err := net.DefaultResolver.LookupHost(ctx, "no-such-host.invalid")
				cancel()
				var de *net.DNSError
				if !errors.As(err, &de) || !de.IsNotFound {
					t.Skipf("no DNS resolver answers quickly here (%v)", err)
				}
			}
			logs := &logRecorder{}
			c := newClient(t, tc.url, fast(device.WithLogger(slog.New(logs)))...)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if !tc.fatal {
				ctx, cancel = context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
			}
			err := c.Connect(ctx)
			if err == nil {
				t.Fatal("Connect succeeded")
			}
			if !tc.fatal && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Connect = %v, want it to wrap context.DeadlineExceeded", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("Connect = %v, want it to wrap %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.cause) {
				t.Errorf("Connect = %q, want the cause %q in it", err, tc.cause)
			}
			recs := logs.find(slog.LevelWarn, "connection attempt failed")
			if len(recs) == 0 {
				t.Fatalf("no Warn record for the failed attempts; logged: %v", logs.recs)
			}
			r := recs[0]
			if got := r["cause"].String(); got != tc.cause {
				t.Errorf("logged cause %q, want %q", got, tc.cause)
			}
			if r["error"].String() == "" {
				t.Error("no error logged")
			}
			if !tc.fatal {
				if _, ok := r["retry_at"]; !ok {
					t.Errorf("no retry time logged: %v", r)
				}
				if len(recs) < 2 {
					t.Errorf("%d failed attempts logged in 500ms with a 100ms backoff", len(recs))
				}
			}
		})
	}
}
