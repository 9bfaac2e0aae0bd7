package fleet_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// Every goroutine a Client starts (senders, workers, subscription readers)
// must be gone once the tests have closed what they opened.
func TestMain(m *testing.M) {
	outposttest.Main(m)
}

// dial connects a fleet client to p and closes it when the test ends.
func dial(t testing.TB, p *outposttest.Platform, opts ...fleet.Option) *fleet.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := fleet.Dial(ctx, p.HTTPURL(), p.AdminToken(), opts...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// connect brings a device online with handlers and disconnects it when the
// test ends.
func connect(t testing.TB, url string, handlers map[string]device.Handler) *device.Client {
	t.Helper()
	c, err := device.New(url, device.WithLogger(outposttest.Logger(t)), device.WithReconnectBackoff(50*time.Millisecond, 500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	for name, h := range handlers {
		if err := c.Handle(name, h); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("connect device: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echo returns its arguments.
func echo(_ context.Context, args json.RawMessage) (any, error) {
	if args == nil {
		return nil, nil
	}
	return args, nil
}

// hang answers only when the call's deadline has passed (too late).
func hang(ctx context.Context, _ json.RawMessage) (any, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// observedClient is an HTTP client that reports, on events, every RPC
// request the fleet client finished: "METHOD" once its answer has been read
// to the end and closed, "METHOD:error" when the request failed (for
// example cut short by Close). Tests wait on these instead of sleeping.
func observedClient(t testing.TB, events chan<- string) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: observer{tr, events}}
}

type observer struct {
	base   http.RoundTripper
	events chan<- string
}

func (o observer) RoundTrip(req *http.Request) (*http.Response, error) {
	_, method, isRPC := strings.Cut(req.URL.Path, "/rpc/")
	resp, err := o.base.RoundTrip(req)
	if !isRPC {
		return resp, err
	}
	if err != nil {
		o.events <- method + ":error"
		return nil, err
	}
	resp.Body = &observedBody{ReadCloser: resp.Body, done: func() { o.events <- method }}
	return resp, nil
}

type observedBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *observedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// waitEvents waits until n events equal to want have arrived; others are
// skipped.
func waitEvents(t testing.TB, events <-chan string, want string, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for n > 0 {
		select {
		case e := <-events:
			if e == want {
				n--
			}
		case <-deadline:
			t.Fatalf("still waiting for %d %q requests after 10s", n, want)
		}
	}
}
