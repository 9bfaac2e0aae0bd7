package server_test

// The HTTP server's bounds (issue 12, item 4): slow request bodies, idle
// keep-alive connections and connections that never send a request must
// not hold the platform; the event stream and long RPCs must outlive the
// timeouts that bound everything else.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// httpHostPort returns the platform's HTTP HOST:PORT.
func httpHostPort(p *outposttest.Platform) string {
	return strings.TrimPrefix(p.HTTPURL(), "http://")
}

// dialRawHTTP opens n raw TCP connections to the HTTP listener and closes
// them when the test ends.
func dialRawHTTP(t *testing.T, p *outposttest.Platform, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", httpHostPort(p), 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

// waitClosed waits until at least want of conns have been closed by the
// server (a read returns EOF or a reset), polling each with a short read
// deadline, and returns how many were closed. Data the server sends
// first (an error response) is read and skipped.
func waitClosed(t *testing.T, conns []net.Conn, want int, within time.Duration) int {
	t.Helper()
	closed := make([]bool, len(conns))
	n := 0
	deadline := time.Now().Add(within)
	buf := make([]byte, 4096)
	for n < want && time.Now().Before(deadline) {
		for i, c := range conns {
			if closed[i] {
				continue
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			for {
				_, err := c.Read(buf)
				if err == nil {
					continue // a response: read on to the close
				}
				var ne net.Error
				if !(errors.As(err, &ne) && ne.Timeout()) {
					closed[i] = true
					n++
				}
				break
			}
		}
	}
	return n
}

// TestHTTPSlowBodiesReleased: POSTs with a valid token whose bodies never
// finish arriving were held for over 40 s (no read timeout). Now the read
// timeout ends each.
func TestHTTPSlowBodiesReleased(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.HTTPReadTimeout = time.Second })
	const n = 200
	conns := dialRawHTTP(t, p, n)
	for _, c := range conns {
		fmt.Fprintf(c, "POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":", p.AdminToken())
	}
	start := time.Now()
	if got := waitClosed(t, conns, n, 20*time.Second); got != n {
		t.Fatalf("%d of %d slow-body requests still held after %s", n-got, n, time.Since(start).Round(time.Millisecond))
	}
	if st, _, err := api(p, "GET", "/api/v1/devices", ""); err != nil || st != 200 {
		t.Fatalf("API after the slow bodies: %d %v", st, err)
	}
}

// TestHTTPIdleConnectionsBounded: connections that never send a request,
// and keep-alive connections left idle, were held indefinitely (9,784 of
// them locked the API out). Now at most HTTPMaxConns are open: the
// oldest idle one makes room for a newcomer, so the API keeps answering.
func TestHTTPIdleConnectionsBounded(t *testing.T) {
	const max, n = 16, 200
	p := outposttest.Start(t, func(c *server.Config) {
		c.HTTPMaxConns = max
		// Long enough that only the bound can explain a close.
		c.HTTPReadHeaderTimeout, c.HTTPIdleTimeout = 10*time.Minute, 10*time.Minute
	})
	silent := dialRawHTTP(t, p, n/2)
	idle := dialRawHTTP(t, p, n/2)
	for _, c := range idle { // one request each, then keep-alive
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	// A real client still gets through at once...
	for i := 0; i < 5; i++ {
		if st, _, err := api(p, "GET", "/api/v1/devices", ""); err != nil || st != 200 {
			t.Fatalf("API with %d connections held: %d %v", n, st, err)
		}
	}
	// ...because all but the bound's worth were closed.
	all := append(append([]net.Conn{}, silent...), idle...)
	if got := waitClosed(t, all, n-max, 10*time.Second); got < n-max {
		t.Fatalf("%d of %d idle connections closed, want at least %d", got, n, n-max)
	}
	if m := metricsText(t, p); !strings.Contains(m, "outpost_http_connections_evicted_total") {
		t.Errorf("no eviction metric")
	}
}

// TestHTTPIdleTimeout: a keep-alive connection left idle is closed after
// the idle timeout.
func TestHTTPIdleTimeout(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.HTTPIdleTimeout = 200 * time.Millisecond })
	c := dialRawHTTP(t, p, 1)[0]
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v", err)
	}
	resp.Body.Close()
	if waitClosed(t, []net.Conn{c}, 1, 10*time.Second) != 1 {
		t.Fatal("idle keep-alive connection still open 10s after a 200ms idle timeout")
	}
}

// TestHTTPTimeoutsSpareStreamAndRPC: with short read and write timeouts,
// the event stream keeps delivering past them, and a synchronous RPC the
// device answers after the write timeout still gets its result.
func TestHTTPTimeoutsSpareStreamAndRPC(t *testing.T) {
	const limit = 300 * time.Millisecond
	p := outposttest.Start(t, func(c *server.Config) {
		c.HTTPReadTimeout, c.HTTPWriteTimeout, c.HTTPReadHeaderTimeout = limit, limit, limit
	})
	d := p.CreateDevice(t, "slow-answer")
	events := openStream(t, p, "?kind=telemetry")
	c := connect(t, d.URL)
	c.Handle("slow", func(ctx context.Context, args json.RawMessage) (any, error) {
		// Answer only once the write timeout has passed three times over.
		select {
		case <-time.After(3 * limit):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return "done", nil
	})
	start := time.Now()
	st, body, err := api(p, "POST", "/api/v1/devices/"+d.ID+"/rpc/slow?timeout=10s", "")
	if err != nil || st != 200 || !strings.Contains(string(body), `"done"`) {
		t.Fatalf("slow RPC: %d %s %v", st, body, err)
	}
	if took := time.Since(start); took < 3*limit {
		t.Fatalf("RPC took %s: the handler did not wait", took)
	}
	// The stream opened before the RPC is now older than both timeouts.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Add("t", 1.0); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.kind != "telemetry" {
		t.Fatalf("stream event %+v", e)
	}
}
