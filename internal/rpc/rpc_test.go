package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/rpc"
	"github.com/outpost-iot/outpost/protocol"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeDevices stands for the broker and the devices behind it: it records
// every published request and, when answer is set, has the addressed device
// answer it from another goroutine through Relay.Deliver, as the broker's
// up/rpc hook would.
type fakeDevices struct {
	relay  *rpc.Relay
	answer func(deviceID string, req protocol.RPCRequest) protocol.RPCResponse
	err    error // returned by PublishUntil

	requests  chan published // every request, in order
	delivered chan error     // outcome of each answer's Deliver
	wg        sync.WaitGroup
}

type published struct {
	deviceID, kind string
	req            protocol.RPCRequest
}

func (f *fakeDevices) PublishUntil(deviceID, kind string, payload []byte, _ time.Time) error {
	if f.err != nil {
		return f.err
	}
	req, err := protocol.DecodeRPCRequest(payload)
	if err != nil {
		return err
	}
	f.requests <- published{deviceID, kind, req}
	if f.answer != nil {
		f.wg.Go(func() { f.delivered <- f.relay.Deliver(deviceID, f.answer(deviceID, req)) })
	}
	return nil
}

// onlineSet is the presence of a fixed set of devices.
type onlineSet struct {
	mu sync.Mutex
	m  map[string]bool
}

func (p *onlineSet) Online(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[id]
}

func (p *onlineSet) set(id string, online bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m[id] = online
}

const dev = "d-pump"

// MustRelay returns a relay publishing through devices, with dev online. It
// checks when the test ends that no call was left pending.
func MustRelay(tb testing.TB, devices *fakeDevices) (*rpc.Relay, *onlineSet) {
	tb.Helper()
	presence := &onlineSet{m: map[string]bool{dev: true}}
	r := rpc.NewRelay(devices, presence)
	devices.relay = r
	if devices.requests == nil {
		devices.requests = make(chan published, 100)
	}
	if devices.delivered == nil {
		devices.delivered = make(chan error, 100)
	}
	tb.Cleanup(func() {
		devices.wg.Wait()
		if n := r.Pending(); n != 0 {
			tb.Errorf("%d calls still pending", n)
		}
	})
	return r, presence
}

func answerWith(result string, e *protocol.Error) func(string, protocol.RPCRequest) protocol.RPCResponse {
	return func(_ string, req protocol.RPCRequest) protocol.RPCResponse {
		resp := protocol.RPCResponse{ID: req.ID, Error: e}
		if e == nil {
			resp.Result = json.RawMessage(result)
		}
		return resp
	}
}

func TestCallSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		devices := &fakeDevices{answer: func(_ string, req protocol.RPCRequest) protocol.RPCResponse {
			time.Sleep(300 * time.Millisecond) // the handler takes a while
			return protocol.RPCResponse{ID: req.ID, Result: json.RawMessage(`{"echo":` + string(req.Args) + `}`)}
		}}
		r, _ := MustRelay(t, devices)
		start := time.Now()
		res, err := r.Call(context.Background(), dev, "valve.set", json.RawMessage(`{"open":true}`), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if string(res.Result) != `{"echo":{"open":true}}` {
			t.Errorf("result %s", res.Result)
		}
		if res.Duration != 300*time.Millisecond {
			t.Errorf("duration %v, want 300ms", res.Duration)
		}
		p := <-devices.requests
		if p.deviceID != dev || p.kind != protocol.KindRPC {
			t.Errorf("published to %s on %q, want %s on %q", p.deviceID, p.kind, dev, protocol.KindRPC)
		}
		if p.req.ID != res.ID || p.req.Method != "valve.set" || string(p.req.Args) != `{"open":true}` {
			t.Errorf("request %+v does not match the call (result id %s)", p.req, res.ID)
		}
		if want := start.Add(2 * time.Second).UnixMilli(); p.req.Deadline != want {
			t.Errorf("request deadline %d, want %d", p.req.Deadline, want)
		}
		if err := <-devices.delivered; err != nil {
			t.Errorf("Deliver: %v", err)
		}
		if n := r.Pending(); n != 0 {
			t.Errorf("Pending() = %d after the call", n)
		}
	})
}

func TestCallWithoutArgs(t *testing.T) {
	devices := &fakeDevices{answer: answerWith(`null`, nil)}
	r, _ := MustRelay(t, devices)
	res, err := r.Call(context.Background(), dev, "ping", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Result) != "null" {
		t.Errorf("result %s, want null", res.Result)
	}
	if p := <-devices.requests; p.req.Args != nil {
		t.Errorf("request carries args %s, want none", p.req.Args)
	}
}

func TestRemoteErrors(t *testing.T) {
	tests := []struct {
		code        string
		message     string
		wantCode    string
		wantMessage string // "": must contain message
	}{
		{protocol.CodeUnknownMethod, "no handler", outpost.EUNKNOWNMETHOD, `device d-pump has no method "valve.set"`},
		{protocol.CodeHandlerError, "valve stuck at 40%", outpost.EREMOTE, "valve stuck at 40%"},
		{protocol.CodeNotSupported, "reset is not supported", outpost.ENOTSUPPORTED, "reset is not supported"},
		{protocol.CodeInvalid, "open must be a boolean", outpost.EINVALID, ""},
		{protocol.CodeInternal, "out of memory", outpost.EREMOTE, "out of memory"},
		{"some_future_code", "whatever", outpost.EREMOTE, "whatever"},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			devices := &fakeDevices{answer: answerWith("", &protocol.Error{Code: tt.code, Message: tt.message})}
			r, _ := MustRelay(t, devices)
			res, err := r.Call(context.Background(), dev, "valve.set", nil, time.Second)
			if err == nil {
				t.Fatalf("call succeeded with %s", res.Result)
			}
			if got := outpost.ErrorCode(err); got != tt.wantCode {
				t.Errorf("code %q, want %q (%v)", got, tt.wantCode, err)
			}
			msg := outpost.ErrorMessage(err)
			if tt.wantMessage != "" && msg != tt.wantMessage {
				t.Errorf("message %q, want %q", msg, tt.wantMessage)
			} else if tt.wantMessage == "" && !strings.Contains(msg, tt.message) {
				t.Errorf("message %q does not contain the device's %q", msg, tt.message)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	tests := []struct {
		name     string
		timeout  time.Duration
		want     time.Duration
		goesAway bool
	}{
		{"given", 1500 * time.Millisecond, 1500 * time.Millisecond, false},
		{"default", 0, rpc.DefaultTimeout, false},
		{"maximum", rpc.MaxTimeout, rpc.MaxTimeout, false},
		{"device goes offline", time.Second, time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				devices := &fakeDevices{} // never answers
				r, presence := MustRelay(t, devices)
				start := time.Now()
				done := make(chan error)
				go func() {
					_, err := r.Call(context.Background(), dev, "slow", nil, tt.timeout)
					done <- err
				}()
				p := <-devices.requests
				if tt.goesAway {
					presence.set(dev, false)
				}
				err := <-done
				if got := outpost.ErrorCode(err); got != outpost.ETIMEOUT {
					t.Errorf("error %v (code %q), want %q", err, got, outpost.ETIMEOUT)
				}
				if took := time.Since(start); took != tt.want {
					t.Errorf("gave up after %v, want %v", took, tt.want)
				}
				if tt.goesAway && !strings.Contains(err.Error(), "offline") {
					t.Errorf("error %q does not say the device went offline", err)
				}
				if n := r.Pending(); n != 0 {
					t.Errorf("Pending() = %d after the timeout", n)
				}
				// The answer arrives too late.
				late := protocol.RPCResponse{ID: p.req.ID, Result: json.RawMessage(`1`)}
				if err := r.Deliver(dev, late); !errors.Is(err, rpc.ErrUnmatched) {
					t.Errorf("late Deliver: %v, want ErrUnmatched", err)
				}
			})
		})
	}
}

func TestOffline(t *testing.T) {
	devices := &fakeDevices{answer: answerWith(`1`, nil)}
	r, presence := MustRelay(t, devices)
	presence.set(dev, false)
	_, err := r.Call(context.Background(), dev, "ping", nil, time.Second)
	if got := outpost.ErrorCode(err); got != outpost.EOFFLINE {
		t.Errorf("error %v (code %q), want %q", err, got, outpost.EOFFLINE)
	}
	if _, err := r.Call(context.Background(), "d-never-seen", "ping", nil, time.Second); outpost.ErrorCode(err) != outpost.EOFFLINE {
		t.Errorf("unknown device: %v, want %q", err, outpost.EOFFLINE)
	}
	if n := len(devices.requests); n != 0 {
		t.Errorf("%d requests published to an offline device", n)
	}
}

func TestDeliverMatchesDevice(t *testing.T) {
	devices := &fakeDevices{} // the test answers
	r, _ := MustRelay(t, devices)
	type outcome struct {
		res *rpc.Result
		err error
	}
	done := make(chan outcome)
	go func() {
		res, err := r.Call(context.Background(), dev, "ping", nil, time.Minute)
		done <- outcome{res, err}
	}()
	p := <-devices.requests
	if n := r.Pending(); n != 1 {
		t.Errorf("Pending() = %d while waiting, want 1", n)
	}

	steps := []struct {
		name     string
		deviceID string
		resp     protocol.RPCResponse
		want     error
	}{
		{"another device", "d-other", protocol.RPCResponse{ID: p.req.ID, Result: json.RawMessage(`"spoofed"`)}, rpc.ErrUnmatched},
		{"unknown id", dev, protocol.RPCResponse{ID: "0123", Result: json.RawMessage(`"stray"`)}, rpc.ErrUnmatched},
		{"the device", dev, protocol.RPCResponse{ID: p.req.ID, Result: json.RawMessage(`"pong"`)}, nil},
		{"a duplicate", dev, protocol.RPCResponse{ID: p.req.ID, Result: json.RawMessage(`"again"`)}, rpc.ErrUnmatched},
	}
	for _, st := range steps {
		if err := r.Deliver(st.deviceID, st.resp); !errors.Is(err, st.want) {
			t.Errorf("%s: Deliver = %v, want %v", st.name, err, st.want)
		}
	}
	o := <-done
	if o.err != nil || string(o.res.Result) != `"pong"` {
		t.Errorf("call: %v, %v; want the device's answer", o.res, o.err)
	}
}

func TestInvalidCalls(t *testing.T) {
	big := json.RawMessage(`"` + strings.Repeat("x", protocol.MaxMessageBytes) + `"`)
	tests := []struct {
		name    string
		method  string
		args    json.RawMessage
		timeout time.Duration
	}{
		{"empty method", "", nil, 0},
		{"slash in method", "valve/set", nil, 0},
		{"space in method", "valve set", nil, 0},
		{"wildcard in method", "valve.#", nil, 0},
		{"method too long", strings.Repeat("m", protocol.MaxMethodLen+1), nil, 0},
		{"args not JSON", "ping", json.RawMessage(`{"open":`), 0},
		{"args too large", "ping", big, 0},
		{"timeout above maximum", "ping", nil, rpc.MaxTimeout + time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devices := &fakeDevices{answer: answerWith(`1`, nil)}
			r, _ := MustRelay(t, devices)
			_, err := r.Call(context.Background(), dev, tt.method, tt.args, tt.timeout)
			if got := outpost.ErrorCode(err); got != outpost.EINVALID {
				t.Errorf("error %v (code %q), want %q", err, got, outpost.EINVALID)
			}
			if n := len(devices.requests); n != 0 {
				t.Errorf("%d invalid requests published", n)
			}
		})
	}
}

func TestPublishFails(t *testing.T) {
	devices := &fakeDevices{err: errors.New("broker closed")}
	r, _ := MustRelay(t, devices)
	_, err := r.Call(context.Background(), dev, "ping", nil, time.Second)
	if err == nil || !errors.Is(err, devices.err) {
		t.Errorf("error %v, want it to wrap %v", err, devices.err)
	}
	if got := outpost.ErrorCode(err); got != outpost.EUNAVAILABLE {
		t.Errorf("code %q, want %q", got, outpost.EUNAVAILABLE)
	}
}

func TestCallCanceled(t *testing.T) {
	devices := &fakeDevices{}
	r, _ := MustRelay(t, devices)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := r.Call(ctx, dev, "ping", nil, time.Minute)
		done <- err
	}()
	<-devices.requests
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		devices := &fakeDevices{
			answer: func(_ string, req protocol.RPCRequest) protocol.RPCResponse {
				time.Sleep(time.Duration(len(req.Args)) * time.Millisecond) // answers arrive out of order
				return protocol.RPCResponse{ID: req.ID, Result: req.Args}
			},
			requests: make(chan published, 1000),
		}
		r, _ := MustRelay(t, devices)
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				args := json.RawMessage(`"` + strings.Repeat("a", 50-i) + `"`)
				res, err := r.Call(context.Background(), dev, "echo", args, time.Second)
				if err != nil || string(res.Result) != string(args) {
					t.Errorf("call %d: %v, %v; want its own args back", i, res, err)
				}
			})
		}
		wg.Wait()
		if n := r.Pending(); n != 0 {
			t.Errorf("Pending() = %d after all calls", n)
		}
	})
}
