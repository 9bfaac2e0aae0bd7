package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
	"github.com/outpost-iot/outpost/protocol"
)

// call is the API's JSON of a queued call.
type call struct {
	ID           string          `json:"id"`
	DeviceID     string          `json:"device_id"`
	Method       string          `json:"method"`
	State        string          `json:"state"`
	TimeoutMS    int64           `json:"timeout_ms"`
	SentAt       time.Time       `json:"sent_at"`
	DeliveredAt  time.Time       `json:"delivered_at"`
	Result       json.RawMessage `json:"result"`
	Error        *apiErrBody     `json:"error"`
	LateAt       time.Time       `json:"late_at"`
	LateResponse json.RawMessage `json:"late_response"`
}

type apiErrBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func fastSweep(c *server.Config) { c.QueueSweep = 20 * time.Millisecond }

// queueCall queues a call through the API and expects 202.
func queueCall(t *testing.T, p *outposttest.Platform, id, method, args, query string) call {
	t.Helper()
	var c call
	var body any
	if args != "" {
		body = args
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+id+"/rpc/"+method+"?queue=true&"+query, body, &c); st != http.StatusAccepted {
		t.Fatalf("queue %s: status %d (%+v)", method, st, c)
	}
	if c.ID == "" || c.State == "" {
		t.Fatalf("queue %s: no id or state in %+v", method, c)
	}
	return c
}

func getCall(t *testing.T, p *outposttest.Platform, id string) call {
	t.Helper()
	var c call
	if st := p.Do(t, "GET", "/api/v1/calls/"+id, nil, &c); st != http.StatusOK {
		t.Fatalf("get call %s: status %d", id, st)
	}
	return c
}

func waitState(t *testing.T, p *outposttest.Platform, id, state string) call {
	t.Helper()
	var c call
	outposttest.Eventually(t, 10*time.Second, "call "+id+" "+state, func() bool {
		c = getCall(t, p, id)
		return c.State == state
	})
	return c
}

func TestQueuedCallDeliveredOnConnect(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "sleeper")
	events := openStream(t, p, "?kind=call&device="+d.ID)

	c := queueCall(t, p, d.ID, "add", `{"a":2,"b":3}`, "ttl=1h&timeout=5s")
	if c.State != "queued" || c.TimeoutMS != 5000 {
		t.Fatalf("queued call: %+v", c)
	}
	var ran atomic.Int32
	dev, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	dev.Handle("add", func(ctx context.Context, args json.RawMessage) (any, error) {
		ran.Add(1)
		var in struct{ A, B int }
		if err := json.Unmarshal(args, &in); err != nil {
			return nil, err
		}
		return in.A + in.B, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dev.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	got := waitState(t, p, c.ID, "succeeded")
	if string(got.Result) != "5" || got.SentAt.IsZero() || got.Error != nil {
		t.Fatalf("succeeded call: %+v", got)
	}
	if ran.Load() != 1 {
		t.Fatalf("handler ran %d times", ran.Load())
	}

	// The stream told every change, in order.
	var states []string
	for !slices.Contains(states, "succeeded") {
		e := next(t, events)
		var ev call
		if err := json.Unmarshal(e.data, &ev); err != nil || ev.ID != c.ID {
			t.Fatalf("call event %s: %v", e.data, err)
		}
		states = append(states, ev.State)
	}
	if states[0] != "queued" || states[1] != "sent" {
		t.Fatalf("call events %v, want queued, sent, [delivered,] succeeded", states)
	}

	// The device is online now: a new queued call goes out at once.
	c2 := queueCall(t, p, d.ID, "add", `{"a":1,"b":1}`, "")
	if c2.State == "queued" {
		t.Fatalf("call to an online device still queued: %+v", c2)
	}
	if got := waitState(t, p, c2.ID, "succeeded"); string(got.Result) != "2" {
		t.Fatalf("second call: %+v", got)
	}
	var list struct{ Calls []call }
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/calls?state=succeeded", nil, &list); st != 200 || len(list.Calls) != 2 || list.Calls[0].ID != c2.ID {
		t.Fatalf("calls list: %d %+v", st, list)
	}
}

// TestQueuedCallsInOrder uses a device written against the protocol
// document (paho MQTT 5, no SDK) to see the order of arrival.
func TestQueuedCallsInOrder(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "ordered")
	var ids []string
	for i := range 5 {
		ids = append(ids, queueCall(t, p, d.ID, "step", fmt.Sprint(i), "").ID)
	}
	cl, _, msgs, _, err := dial5(t, p, d.ID, d.Password, d.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: protocol.DeviceFilter(d.ID), QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		var pk *paho.Publish
		select {
		case pk = <-msgs:
		case <-ctx.Done():
			t.Fatalf("request %d did not arrive", i)
		}
		req, err := protocol.DecodeRPCRequest(pk.Payload)
		if err != nil || req.ID != ids[i] || string(req.Args) != fmt.Sprint(i) || req.Deadline == 0 {
			t.Fatalf("request %d: %s (%v), want id %s", i, pk.Payload, err, ids[i])
		}
		if pk.Properties == nil || pk.Properties.User.Get(protocol.PropMessageID) != ids[i] {
			t.Fatalf("request %d lacks the %s user property", i, protocol.PropMessageID)
		}
		resp, _ := json.Marshal(protocol.RPCResponse{ID: req.ID, Result: json.RawMessage(fmt.Sprint(i * 10))})
		if _, err := cl.Publish(ctx, &paho.Publish{Topic: protocol.UpTopic(d.ID, protocol.KindRPC), QoS: 1, Payload: resp}); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range ids {
		if c := getCall(t, p, id); c.State != "succeeded" || string(c.Result) != fmt.Sprint(i*10) {
			t.Fatalf("call %d: %+v", i, c)
		}
	}
}

func TestQueuedCallExpires(t *testing.T) {
	p := outposttest.Start(t, fastSweep)
	d := p.CreateDevice(t, "away")
	events := openStream(t, p, "?kind=call")
	c := queueCall(t, p, d.ID, "never", "", "ttl=100ms")
	got := waitState(t, p, c.ID, "expired")
	if got.Error == nil || got.Error.Code != "expired" {
		t.Fatalf("expired call: %+v", got)
	}
	for {
		var ev call
		if json.Unmarshal(next(t, events).data, &ev); ev.State == "expired" {
			break
		}
	}
	var ran atomic.Int32
	dev := connect(t, d.URL)
	dev.Handle("never", func(context.Context, json.RawMessage) (any, error) { ran.Add(1); return nil, nil })
	// A round trip through the same connection after the subscription:
	// whatever the platform would have sent has arrived by then.
	dev.Add("x", 1)
	if err := dev.Publish(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ran.Load() != 0 || getCall(t, p, c.ID).State != "expired" {
		t.Fatalf("expired call was delivered")
	}
	if p.Queue().Stats().Expired.Load() != 1 {
		t.Fatalf("expired counter %d", p.Queue().Stats().Expired.Load())
	}
}

// TestQueuedCallAcrossRestart: a call delivered and running when the
// platform restarts is sent again on reconnect; the SDK does not run it
// twice and its answer, sent once the handler finishes, completes the call
// (succeeded).
func TestQueuedCallAcrossRestart(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "busy")
	release := make(chan struct{})
	var ran atomic.Int32
	dev, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)), device.WithReconnectBackoff(20*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	dev.Handle("slow", func(ctx context.Context, _ json.RawMessage) (any, error) {
		ran.Add(1)
		<-release
		return "done", nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dev.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	c := queueCall(t, p, d.ID, "slow", "", "timeout=30s")
	waitState(t, p, c.ID, "delivered")
	p.Restart(t)
	outposttest.Eventually(t, 10*time.Second, "redelivery after restart", func() bool {
		return p.Queue().Stats().Sent.Load() >= 1
	})
	close(release)
	got := waitState(t, p, c.ID, "succeeded")
	if string(got.Result) != `"done"` {
		t.Fatalf("call after restart: %+v", got)
	}
	if ran.Load() != 1 {
		t.Fatalf("handler ran %d times, want once", ran.Load())
	}
}

// TestQueuedCallTimesOutAcrossRestart: a call sent to a device that then
// goes away for good ends timed_out after the restart.
func TestQueuedCallTimesOutAcrossRestart(t *testing.T) {
	p := outposttest.Start(t, fastSweep)
	d := p.CreateDevice(t, "gone")
	dev := connect(t, d.URL)
	block := make(chan struct{})
	defer close(block)
	dev.Handle("hang", func(ctx context.Context, _ json.RawMessage) (any, error) {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return nil, ctx.Err()
	})
	c := queueCall(t, p, d.ID, "hang", "", "timeout=1s")
	waitState(t, p, c.ID, "delivered")
	dev.Close()
	p.Restart(t)
	got := waitState(t, p, c.ID, "timed_out")
	if got.Error == nil || got.Error.Code != "timeout" {
		t.Fatalf("timed out call: %+v", got)
	}
}

// TestLateAnswerRecorded: an answer after the call timed out is kept as
// late and changes nothing else.
func TestLateAnswerRecorded(t *testing.T) {
	p := outposttest.Start(t, fastSweep)
	d := p.CreateDevice(t, "late")
	dev := connect(t, d.URL)
	release, started := make(chan struct{}), make(chan struct{})
	dev.Handle("slow", func(context.Context, json.RawMessage) (any, error) {
		close(started)
		<-release
		return "finally", nil
	})
	// The device skips a request that arrives after its deadline, so
	// leave it time to start the handler even on a loaded machine.
	c := queueCall(t, p, d.ID, "slow", "", "timeout=1s")
	select {
	case <-started:
	case <-time.After(waitFor):
		t.Fatal("handler did not start")
	}
	waitState(t, p, c.ID, "timed_out")
	close(release)
	var got call
	outposttest.Eventually(t, 10*time.Second, "late answer", func() bool {
		got = getCall(t, p, c.ID)
		return !got.LateAt.IsZero()
	})
	if got.State != "timed_out" || got.Result != nil || string(got.LateResponse) == "" {
		t.Fatalf("late answer: %+v", got)
	}
}

func TestPullDevice(t *testing.T) {
	p := outposttest.Start(t, fastSweep)
	d := p.CreateDevice(t, "puller")
	stale := queueCall(t, p, d.ID, "do", `"stale"`, "ttl=50ms")
	waitState(t, p, stale.ID, "expired")
	fresh := queueCall(t, p, d.ID, "do", `"fresh"`, "ttl=1h")

	var mu sync.Mutex
	var got []string
	dev := connect(t, d.URL, device.WithPullMode())
	dev.Handle("do", func(ctx context.Context, args json.RawMessage) (any, error) {
		mu.Lock()
		got = append(got, string(args))
		mu.Unlock()
		return "ok:" + string(args), nil
	})
	// A PULL device gets nothing on connect.
	dev.Add("x", 1)
	if err := dev.Publish(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := getCall(t, p, fresh.ID); c.State != "queued" {
		t.Fatalf("PULL device was pushed a call: %+v", c)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dev.Add("y", 2)
	res, err := dev.Pull(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Delivered != 1 || res.Expired != 1 || len(res.ExpiredIDs) != 1 || res.ExpiredIDs[0] != stale.ID {
		t.Fatalf("pull result %+v", res)
	}
	mu.Lock()
	if !slices.Equal(got, []string{`"fresh"`}) {
		t.Fatalf("handler got %v", got)
	}
	mu.Unlock()
	// Pull returned after the answer was acknowledged, which the platform
	// does after storing it.
	if c := getCall(t, p, fresh.ID); c.State != "succeeded" || string(c.Result) != `"ok:\"fresh\""` {
		t.Fatalf("pulled call: %+v", c)
	}
	if dev.Pending() != 0 {
		t.Fatalf("telemetry left after Pull: %d", dev.Pending())
	}
	// Expired calls are reported once.
	res, err = dev.Pull(ctx)
	if err != nil || res.Delivered != 0 || res.Expired != 0 {
		t.Fatalf("second pull: %+v, %v", res, err)
	}
}

func TestQueuedCallAPIErrors(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "api")
	c := queueCall(t, p, d.ID, "m", "", "")
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{"POST", "/api/v1/devices/" + d.ID + "/rpc/m?queue=maybe", nil, 400, "invalid"},
		{"POST", "/api/v1/devices/" + d.ID + "/rpc/m?queue=true&ttl=soon", nil, 400, "invalid"},
		{"POST", "/api/v1/devices/" + d.ID + "/rpc/m?queue=true&ttl=9999h", nil, 400, "invalid"},
		{"POST", "/api/v1/devices/" + d.ID + "/rpc/m?queue=true&timeout=2h", nil, 400, "invalid"},
		{"POST", "/api/v1/devices/" + d.ID + "/rpc/m?queue=true", "{bad", 400, "invalid"},
		{"POST", "/api/v1/devices/" + d.ID + "/rpc/bad%20name?queue=true", nil, 400, "invalid"},
		{"POST", "/api/v1/devices/nope/rpc/m?queue=true", nil, 404, "not_found"},
		{"POST", "/api/v1/devices/" + d.ID + "/rpc/m", nil, 409, "device_offline"},
		{"GET", "/api/v1/calls/nope", nil, 404, "not_found"},
		{"GET", "/api/v1/devices/nope/calls", nil, 404, "not_found"},
		{"GET", "/api/v1/devices/" + d.ID + "/calls?state=bogus", nil, 400, "invalid"},
		{"DELETE", "/api/v1/calls/" + c.ID, nil, 200, ""},
		{"DELETE", "/api/v1/calls/" + c.ID, nil, 409, "conflict"},
		{"DELETE", "/api/v1/calls/nope", nil, 404, "not_found"},
	} {
		var e apiError
		if st := p.Do(t, tc.method, tc.path, tc.body, &e); st != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.path, st, e.Error.Code, tc.status, tc.code)
		}
	}
	if got := getCall(t, p, c.ID); got.State != "cancelled" {
		t.Fatalf("cancelled call: %+v", got)
	}
}
