package fleet_test

import (
	"context"
	"encoding/json"
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
