package fleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

func TestDial(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name, url, token string
		want             error
	}{
		{"not a URL", "127.0.0.1:1", p.AdminToken(), nil},
		{"wrong scheme", "mqtt://" + p.MQTTAddr(), p.AdminToken(), nil},
		{"wrong token", p.HTTPURL(), "nope", fleet.ErrUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := fleet.Dial(ctx, tc.url, tc.token)
			if err == nil {
				f.Close()
				t.Fatal("Dial succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Dial: %v, want %v", err, tc.want)
			}
		})
	}
}

// Dial's errors name the request once, with one "fleet:" prefix, and keep
// the network error reachable with errors.Is and errors.As.
func TestDialErrorText(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	_, err = fleet.Dial(testCtx(t), closed, "tok")
	if err == nil {
		t.Fatal("Dial to a closed port succeeded")
	}
	msg := err.Error()
	if strings.Count(msg, "fleet:") != 1 || strings.Count(msg, closed) != 1 || !strings.HasPrefix(msg, "fleet: dial "+closed+": ") {
		t.Errorf("Dial error %q: want one prefix and the URL once", msg)
	}
	var ue *url.Error
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.As(err, &ue) {
		t.Errorf("Dial error %q does not unwrap to ECONNREFUSED and a *url.Error", msg)
	}

	p := outposttest.Start(t)
	_, err = fleet.Dial(testCtx(t), p.HTTPURL(), "wrong")
	if err == nil || strings.Count(err.Error(), "fleet:") != 1 || !errors.Is(err, fleet.ErrUnauthorized) {
		t.Errorf("Dial with a wrong token: %v", err)
	}
	f := dial(t, p)
	p.Close()
	_, err = f.Devices(testCtx(t), fleet.DeviceFilter{})
	if err == nil || strings.Count(err.Error(), "fleet:") != 1 || !strings.Contains(err.Error(), "GET "+p.HTTPURL()+"/api/v1/devices: ") {
		t.Errorf("Devices on a stopped platform: %v", err)
	}
}

func TestDevices(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p)
	ctx := testCtx(t)

	var ids []string
	for _, name := range []string{"alpha", "beta", "gamma"} {
		d, err := f.CreateDevice(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if d.ID == "" || d.Password == "" || !strings.HasPrefix(d.URL, "mqtt://"+d.ID+":") {
			t.Fatalf("created device %+v lacks id, password or url", d)
		}
		ids = append(ids, d.ID)
		if name == "beta" {
			connect(t, d.URL, nil)
		}
	}
	if _, err := f.CreateDevice(ctx, "alpha"); !errors.Is(err, fleet.ErrConflict) {
		t.Fatalf("second alpha: %v, want ErrConflict", err)
	}
	if _, err := f.CreateDevice(ctx, " "); !errors.Is(err, fleet.ErrInvalid) {
		t.Fatalf("blank name: %v, want ErrInvalid", err)
	}

	names := func(ds []fleet.Device) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.Name)
		}
		return out
	}
	outposttest.Eventually(t, 5*time.Second, "beta online", func() bool {
		d, err := f.Device(ctx, ids[1])
		return err == nil && d.Online
	})
	for _, tc := range []struct {
		name   string
		filter fleet.DeviceFilter
		want   []string
	}{
		{"all", fleet.DeviceFilter{}, []string{"alpha", "beta", "gamma"}},
		{"online", fleet.DeviceFilter{Online: new(true)}, []string{"beta"}},
		{"offline", fleet.DeviceFilter{Online: new(false)}, []string{"alpha", "gamma"}},
		{"name", fleet.DeviceFilter{Name: "gamma"}, []string{"gamma"}},
		{"no such name", fleet.DeviceFilter{Name: "delta"}, nil},
		{"limit", fleet.DeviceFilter{Limit: 2}, []string{"alpha", "beta"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := f.Devices(ctx, tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			if got := names(ds); !slices.Equal(got, tc.want) {
				t.Fatalf("Devices(%+v) = %v, want %v", tc.filter, got, tc.want)
			}
		})
	}

	d, err := f.Device(ctx, ids[1])
	if err != nil || d.Name != "beta" || !d.Online || d.LastSeen.IsZero() {
		t.Fatalf("Device(beta) = %+v, %v", d, err)
	}
	if err := f.DeleteDevice(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Device(ctx, ids[0]); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("deleted device: %v, want ErrNotFound", err)
	}
	if err := f.DeleteDevice(ctx, ids[0]); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
}

func TestCall(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p)
	short := dial(t, p, fleet.WithCallTimeout(200*time.Millisecond))
	ctx := testCtx(t)
	on := p.CreateDevice(t, "on")
	off := p.CreateDevice(t, "off")
	connect(t, on.URL, map[string]device.Handler{
		"echo": echo,
		"fail": func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("sensor unplugged") },
		"hang": hang,
	})

	deadline := func(d time.Duration) context.Context {
		c, cancel := context.WithTimeout(ctx, d)
		t.Cleanup(cancel)
		return c
	}
	for _, tc := range []struct {
		name     string
		client   *fleet.Client
		ctx      context.Context
		device   string
		method   string
		args     any
		want     string
		wantErr  error
		alsoErr  error
		remote   string
		maxDelay time.Duration
	}{
		{name: "result", device: on.ID, method: "echo", args: map[string]int{"n": 7}, want: `{"n":7}`},
		{name: "raw args", device: on.ID, method: "echo", args: json.RawMessage(`[1,2]`), want: `[1,2]`},
		{name: "no args", device: on.ID, method: "echo", want: `null`},
		{name: "handler error", device: on.ID, method: "fail", remote: "sensor unplugged"},
		{name: "unknown method", device: on.ID, method: "dance", wantErr: fleet.ErrUnknownMethod},
		{name: "offline", device: off.ID, method: "echo", wantErr: fleet.ErrOffline},
		{name: "no such device", device: "d-missing", method: "echo", wantErr: fleet.ErrNotFound},
		{name: "invalid method", device: on.ID, method: "no spaces", wantErr: fleet.ErrInvalid},
		{name: "ctx deadline", ctx: deadline(300 * time.Millisecond), device: on.ID, method: "hang",
			wantErr: fleet.ErrTimeout, maxDelay: 2 * time.Second},
		{name: "deadline already passed", ctx: deadline(10 * time.Millisecond), device: on.ID, method: "hang",
			wantErr: fleet.ErrTimeout, alsoErr: context.DeadlineExceeded, maxDelay: time.Second},
		{name: "client call timeout", client: short, ctx: context.Background(), device: on.ID, method: "hang",
			wantErr: fleet.ErrTimeout, maxDelay: 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, cctx := f, ctx
			if tc.client != nil {
				c = tc.client
			}
			if tc.ctx != nil {
				cctx = tc.ctx
			}
			start := time.Now()
			res, err := c.Call(cctx, tc.device, tc.method, tc.args)
			if tc.maxDelay > 0 && time.Since(start) > tc.maxDelay {
				t.Errorf("Call took %s, want at most %s", time.Since(start), tc.maxDelay)
			}
			var re *fleet.RemoteError
			switch {
			case tc.remote != "":
				if !errors.As(err, &re) || re.Message != tc.remote || re.DeviceID != tc.device || re.Method != tc.method {
					t.Fatalf("Call = %v, want RemoteError %q", err, tc.remote)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Call = %s, %v; want %v", res, err, tc.wantErr)
				}
				if tc.alsoErr != nil && !errors.Is(err, tc.alsoErr) {
					t.Fatalf("Call = %v, want it to match %v too", err, tc.alsoErr)
				}
			default:
				if err != nil || string(res) != tc.want {
					t.Fatalf("Call = %s, %v; want %s", res, err, tc.want)
				}
			}
		})
	}
}

// outcome is what an async callback received.
type outcome struct {
	res   string
	err   error
	param any
}

func collect(ch chan<- outcome) fleet.CallFunc {
	return func(res json.RawMessage, err error, param any) { ch <- outcome{string(res), err, param} }
}

func recv(t *testing.T, ch <-chan outcome) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("no callback within 10s")
	}
	return outcome{}
}

func TestCallAsync(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p)
	ctx := testCtx(t)
	on := p.CreateDevice(t, "on")
	off := p.CreateDevice(t, "off")
	connect(t, on.URL, map[string]device.Handler{"echo": echo, "hang": hang})

	ch := make(chan outcome, 100)
	args := map[string]int{"n": 0}
	for i := range 20 {
		args["n"] = i
		// args are encoded before CallAsync returns, so reusing the map is safe.
		if err := f.CallAsync(ctx, on.ID, "echo", args, collect(ch), i); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		o := recv(t, ch)
		var got struct{ N int }
		if o.err != nil || json.Unmarshal([]byte(o.res), &got) != nil || got.N != o.param.(int) {
			t.Fatalf("callback got %q, %v for param %v", o.res, o.err, o.param)
		}
	}

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	for _, tc := range []struct {
		ctx    context.Context
		device string
		method string
		want   error
	}{
		{ctx, off.ID, "echo", fleet.ErrOffline},
		{ctx, on.ID, "dance", fleet.ErrUnknownMethod},
		{ctx, "d-missing", "echo", fleet.ErrNotFound},
		{short, on.ID, "hang", fleet.ErrTimeout},
	} {
		if err := f.CallAsync(tc.ctx, tc.device, tc.method, nil, collect(ch), tc.method); err != nil {
			t.Fatal(err)
		}
		if o := recv(t, ch); !errors.Is(o.err, tc.want) || o.param != tc.method {
			t.Fatalf("%s on %s: callback got %v, %v; want %v", tc.method, tc.device, o.err, o.param, tc.want)
		}
	}

	// Arguments that cannot be encoded are refused at once.
	if err := f.CallAsync(ctx, on.ID, "echo", func() {}, collect(ch), nil); err == nil {
		t.Fatal("CallAsync with a func as args succeeded")
	}
	// A nil callback is allowed: fire and forget.
	if err := f.CallAsync(ctx, on.ID, "echo", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// With several workers a slow callback does not hold up the others; with
// one it does, as documented.
func TestCallAsyncWorkers(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "d")
	connect(t, d.URL, map[string]device.Handler{"echo": echo})
	ctx := testCtx(t)

	for _, workers := range []int{1, 4} {
		t.Run("workers="+strconv.Itoa(workers), func(t *testing.T) {
			events := make(chan string, 100)
			f := dial(t, p, fleet.WithWorkers(workers), fleet.WithHTTPClient(observedClient(t, events)))
			started, release := make(chan struct{}), make(chan struct{})
			unblock := sync.OnceFunc(func() { close(release) })
			t.Cleanup(unblock) // before Close, which waits for the callback
			var slowRunning, overlapped atomic.Bool
			slow := func(json.RawMessage, error, any) {
				slowRunning.Store(true)
				close(started)
				<-release
				slowRunning.Store(false)
			}
			if err := f.CallAsync(ctx, d.ID, "echo", nil, slow, nil); err != nil {
				t.Fatal(err)
			}
			<-started
			ch := make(chan outcome, 10)
			for i := range 10 {
				cb := func(res json.RawMessage, err error, param any) {
					if slowRunning.Load() {
						overlapped.Store(true)
					}
					collect(ch)(res, err, param)
				}
				if err := f.CallAsync(ctx, d.ID, "echo", i, cb, i); err != nil {
					t.Fatal(err)
				}
			}
			if workers > 1 {
				for range 10 {
					if o := recv(t, ch); o.err != nil {
						t.Fatal(o.err)
					}
				}
				if !overlapped.Load() {
					t.Error("with several workers no callback ran beside the slow one")
				}
				unblock()
				return
			}
			// Every answer has reached the client (the slow call's and
			// the ten others): only the single worker holds them back.
			waitEvents(t, events, "echo", 11)
			if len(ch) != 0 {
				t.Fatal("with one worker a callback ran while the slow one was running")
			}
			unblock()
			for want := range 10 {
				// One worker runs callbacks in the order the answers came;
				// these calls may overtake each other on the way, so only
				// count them.
				o := recv(t, ch)
				if o.err != nil {
					t.Fatalf("callback %d: %v", want, o.err)
				}
			}
			if overlapped.Load() {
				t.Fatal("with one worker a callback ran while the slow one was running")
			}
		})
	}
}

// A full queue makes CallAsync wait, and ctx bounds that wait.
func TestCallAsyncQueueFull(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p, fleet.WithQueueSize(1), fleet.WithWorkers(1))
	d := p.CreateDevice(t, "d")
	connect(t, d.URL, map[string]device.Handler{"echo": echo})
	ctx := testCtx(t)

	started, release := make(chan struct{}), make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before Close, which waits for the callback
	if err := f.CallAsync(ctx, d.ID, "echo", nil, func(json.RawMessage, error, any) { close(started); <-release }, nil); err != nil {
		t.Fatal(err)
	}
	<-started // the worker is busy; its call no longer counts against the queue
	ch := make(chan outcome, 2)
	if err := f.CallAsync(ctx, d.ID, "echo", 2, collect(ch), 2); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := f.CallAsync(short, d.ID, "echo", 3, collect(ch), 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CallAsync on a full queue = %v, want DeadlineExceeded", err)
	}
	unblock()
	if o := recv(t, ch); o.param != 2 || o.err != nil {
		t.Fatalf("callback got %+v, want the answer to call 2", o)
	}
	if err := f.CallAsync(ctx, d.ID, "echo", 4, collect(ch), 4); err != nil {
		t.Fatalf("CallAsync once the queue drained: %v", err)
	}
	if o := recv(t, ch); o.param != 4 || o.err != nil {
		t.Fatalf("callback got %+v, want the answer to call 4", o)
	}
}

// Close gives every queued call its callback: the answer when it came,
// ErrClosed when it did not; and it waits for them.
func TestCloseWaitsForCallbacks(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	events := make(chan string, 100)
	f, err := fleet.Dial(ctx, p.HTTPURL(), p.AdminToken(), fleet.WithWorkers(1), fleet.WithHTTPClient(observedClient(t, events)))
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(func() { unblock(); f.Close() })
	d := p.CreateDevice(t, "d")
	answered, hanging := make(chan struct{}, 10), make(chan struct{}, 10)
	connect(t, d.URL, map[string]device.Handler{
		"echo": func(ctx context.Context, args json.RawMessage) (any, error) {
			answered <- struct{}{}
			return echo(ctx, args)
		},
		"hang": func(ctx context.Context, args json.RawMessage) (any, error) {
			hanging <- struct{}{}
			return hang(ctx, args)
		},
	})

	var slowReturned atomic.Bool
	slow := func(json.RawMessage, error, any) {
		close(started)
		<-release
		slowReturned.Store(true)
	}
	if err := f.CallAsync(ctx, d.ID, "echo", nil, slow, nil); err != nil {
		t.Fatal(err)
	}
	<-started
	<-answered
	ch := make(chan outcome, 10)
	for i := range 3 {
		if err := f.CallAsync(ctx, d.ID, "echo", i, collect(ch), "echo"); err != nil {
			t.Fatal(err)
		}
		<-answered
	}
	for range 3 {
		if err := f.CallAsync(ctx, d.ID, "hang", nil, collect(ch), "hang"); err != nil {
			t.Fatal(err)
		}
	}
	// The three hang calls have reached the device, and the answers of
	// the slow call and of the three echo calls have reached the client.
	for range 3 {
		<-hanging
	}
	waitEvents(t, events, "echo", 4)

	closed := make(chan bool, 1) // whether the slow callback had returned
	start := time.Now()
	go func() {
		f.Close()
		closed <- slowReturned.Load()
	}()
	// Close cuts the unanswered calls short first; only then release the
	// slow callback, which Close must still be waiting for.
	waitEvents(t, events, "hang:error", 3)
	unblock()
	select {
	case returned := <-closed:
		if !returned {
			t.Fatal("Close returned while a callback was still running")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %s: it should abandon calls without an answer", took)
	}
	got := map[any][]error{}
	for range 6 {
		select {
		case o := <-ch:
			got[o.param] = append(got[o.param], o.err)
		default:
			t.Fatalf("after Close, only %d of 6 callbacks had run", len(got["echo"])+len(got["hang"]))
		}
	}
	for _, err := range got["echo"] {
		if err != nil {
			t.Errorf("answered call: callback got %v, want the answer", err)
		}
	}
	for _, err := range got["hang"] {
		if !errors.Is(err, fleet.ErrClosed) {
			t.Errorf("unanswered call: callback got %v, want ErrClosed", err)
		}
	}
	if err := f.CallAsync(ctx, d.ID, "echo", nil, collect(ch), nil); !errors.Is(err, fleet.ErrClosed) {
		t.Fatalf("CallAsync after Close = %v, want ErrClosed", err)
	}
	if _, err := f.Subscribe(ctx, fleet.StreamFilter{}, func(fleet.Event) {}); !errors.Is(err, fleet.ErrClosed) {
		t.Fatalf("Subscribe after Close = %v, want ErrClosed", err)
	}
	// Synchronous calls need none of the client's goroutines.
	if res, err := f.Call(ctx, d.ID, "echo", 1); err != nil || string(res) != "1" {
		t.Fatalf("Call after Close = %s, %v", res, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestBroadcast(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p, fleet.WithMaxInFlight(2))
	ctx := testCtx(t)
	var ids []string
	for i, name := range []string{"a", "b", "c", "d"} {
		d := p.CreateDevice(t, name)
		ids = append(ids, d.ID)
		if i != 2 {
			connect(t, d.URL, map[string]device.Handler{"echo": echo})
		}
	}
	ids = append(ids, "d-missing", ids[0])
	rs := f.Broadcast(ctx, ids, "echo", map[string]string{"hello": "fleet"})
	if len(rs) != len(ids) {
		t.Fatalf("%d results for %d devices", len(rs), len(ids))
	}
	for i, r := range rs {
		if r.DeviceID != ids[i] {
			t.Fatalf("result %d is for %s, want %s", i, r.DeviceID, ids[i])
		}
		var want error
		switch i {
		case 2:
			want = fleet.ErrOffline
		case 4:
			want = fleet.ErrNotFound
		}
		if want != nil {
			if !errors.Is(r.Err, want) || r.Result != nil {
				t.Errorf("result %d = %s, %v; want %v", i, r.Result, r.Err, want)
			}
		} else if r.Err != nil || string(r.Result) != `{"hello":"fleet"}` || r.Duration <= 0 {
			t.Errorf("result %d = %+v, want the echo", i, r)
		}
	}
	if rs := f.Broadcast(ctx, nil, "echo", nil); len(rs) != 0 {
		t.Fatalf("Broadcast to nobody = %v", rs)
	}
}
