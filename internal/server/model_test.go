package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/log"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
	"github.com/outpost-iot/outpost/protocol"
)

// errorReplies collects the platform's error replies to a device.
type errorReplies struct {
	mu  sync.Mutex
	got []protocol.ErrorReply
}

func (e *errorReplies) add(r protocol.ErrorReply) {
	e.mu.Lock()
	e.got = append(e.got, r)
	e.mu.Unlock()
}

// waitFor waits for a reply of kind with code and returns it.
func (e *errorReplies) waitFor(t *testing.T, kind, code string) protocol.ErrorReply {
	t.Helper()
	var found protocol.ErrorReply
	outposttest.Eventually(t, 10*time.Second, "error reply "+kind+"/"+code, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		for i, r := range e.got {
			if r.Kind == kind && r.Code == code {
				found = r
				e.got = append(e.got[:i:i], e.got[i+1:]...)
				return true
			}
		}
		return false
	})
	return found
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type modelResp struct {
	Feeds []struct {
		Ref, Name, Type, Unit string
		DataType              string `json:"data_type"`
		Removed               bool
	} `json:"feeds"`
	Attributes []struct {
		Name     string          `json:"name"`
		DataType string          `json:"data_type"`
		Value    json.RawMessage `json:"value"`
	} `json:"attributes"`
	Parameters struct {
		Version  int64                      `json:"version"`
		Desired  map[string]json.RawMessage `json:"desired"`
		Reported map[string]json.RawMessage `json:"reported"`
	} `json:"parameters"`
}

func metricsText(t *testing.T, p *outposttest.Platform) string {
	t.Helper()
	resp, err := http.Get(p.HTTPURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestFeedsRegistrationAndRules(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "model-feeds")
	var errs errorReplies
	c := connect(t, d.URL, device.WithErrorHandler(errs.add))
	ctx := ctx10(t)

	// Before any registration, feeds are auto-created from telemetry.
	c.Add("legacy", 1)
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}

	err := c.RegisterFeeds(ctx,
		device.Feed{Ref: "temp", Name: "Temperature", DataType: device.Number, Unit: "CELSIUS"},
		device.Feed{Ref: "switch", Type: device.FeedInOut, DataType: device.Bool},
		device.Feed{Ref: "pos", DataType: device.Location},
		device.Feed{Ref: "mac", DataType: device.Hex, Unit: "my unit"},
	)
	if err != nil {
		t.Fatal(err)
	}
	var m modelResp
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/model", nil, &m); st != 200 {
		t.Fatalf("model: %d", st)
	}
	if len(m.Feeds) != 4 || m.Feeds[3].Ref != "temp" || m.Feeds[3].Unit != "CELSIUS" || m.Feeds[3].Type != "IN" || m.Feeds[3].Name != "Temperature" {
		t.Fatalf("feeds = %+v", m.Feeds)
	}
	var one struct{ Type string }
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/feeds/switch", nil, &one); st != 200 || one.Type != "IN_OUT" {
		t.Fatalf("feed switch: %d %+v", st, one)
	}

	// Valid typed readings are stored.
	c.Add("temp", 21.5)
	c.Add("switch", true)
	c.Add("pos", device.LocationValue{Lat: 45.8, Lon: 15.97, Alt: 120})
	c.Add("mac", "00a1ff")
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	var pos readingsResp
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=pos", nil, &pos)
	if len(pos.Readings) != 1 || string(pos.Readings[0].Value) != `{"lat":45.8,"lon":15.97,"alt":120}` {
		t.Fatalf("location readings = %+v", pos.Readings)
	}

	// A wrong type and an unregistered feed are rejected; the rest of the
	// batch is stored.
	c.Add("temp", "hot")
	c.Add("temp", 22)
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if r := errs.waitFor(t, "telemetry", protocol.CodeWrongType); r.Rejected != 1 {
		t.Fatalf("reply %+v", r)
	}
	c.Add("legacy", 2)
	c.Add("mac", "xyz")
	c.Add("temp", 23)
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if r := errs.waitFor(t, "telemetry", protocol.CodeUnknownFeed); r.Rejected != 2 {
		t.Fatalf("reply %+v", r)
	}
	var temps readingsResp
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=temp", nil, &temps)
	if len(temps.Readings) != 3 {
		t.Fatalf("temp readings = %+v", temps.Readings)
	}

	// A removed feed's readings are rejected.
	if err := c.RemoveFeeds(ctx, "mac"); err != nil {
		t.Fatal(err)
	}
	c.Add("mac", "ff")
	c.Add("temp", 24)
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if r := errs.waitFor(t, "telemetry", protocol.CodeUnknownFeed); !strings.Contains(r.Message, "removed") {
		t.Fatalf("reply %+v", r)
	}

	// The rejections show on the device and in the metrics.
	var dev struct {
		Rejected map[string]int64 `json:"rejected"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
	if dev.Rejected["telemetry/unknown_feed"] != 3 || dev.Rejected["telemetry/wrong_type"] != 1 {
		t.Fatalf("rejected = %v", dev.Rejected)
	}
	if mt := metricsText(t, p); !strings.Contains(mt, `outpost_device_rejected_total{code="unknown_feed",kind="telemetry"} 3`) {
		t.Fatalf("metrics lack the rejection counter:\n%s", grepLines(mt, "rejected"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestFeedCommand(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "model-cmd")
	c, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan device.FeedCommand, 1)
	c.HandleFeed("switch", func(ctx context.Context, cmd device.FeedCommand) error {
		got <- cmd
		return nil
	})
	ctx := ctx10(t)
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.RegisterFeeds(ctx, device.Feed{Ref: "switch", Type: device.FeedInOut, DataType: device.Bool},
		device.Feed{Ref: "temp", DataType: device.Number}); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Second)
	var res struct {
		ID       string `json:"id"`
		IssuedAt int64  `json:"issued_at"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/feeds/switch/value", map[string]any{"value": true}, &res); st != http.StatusAccepted {
		t.Fatalf("set value: %d", st)
	}
	select {
	case cmd := <-got:
		if cmd.Feed != "switch" || string(cmd.Value) != "true" || cmd.IssuedAt.Before(before) || cmd.ID != res.ID {
			t.Fatalf("command = %+v (result %+v)", cmd, res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("feed command not delivered")
	}

	for _, tc := range []struct {
		ref, body string
		status    int
	}{
		{"temp", `{"value":1}`, http.StatusBadRequest},      // IN feed
		{"switch", `{"value":"on"}`, http.StatusBadRequest}, // wrong type
		{"nope", `{"value":1}`, http.StatusNotFound},
		{"switch", `{}`, http.StatusBadRequest},
		{"switch", `{"value":true,"x":1}`, http.StatusBadRequest},
	} {
		if st, b, _ := api(p, "POST", "/api/v1/devices/"+d.ID+"/feeds/"+tc.ref+"/value", tc.body); st != tc.status {
			t.Errorf("%s %s: status %d (%s), want %d", tc.ref, tc.body, st, b, tc.status)
		}
	}
	c.Close()
	outposttest.Eventually(t, 10*time.Second, "device offline", func() bool {
		var dev struct{ Online bool }
		p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
		return !dev.Online
	})
	// A command for a device that is away waits in the down queue and is
	// delivered when it connects again.
	var queued struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/feeds/switch/value", map[string]any{"value": false}, &queued); st != http.StatusAccepted || queued.State != "queued" {
		t.Fatalf("offline: %d %+v, want 202 queued", st, queued)
	}
	c2, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Close() })
	c2.HandleFeed("switch", func(ctx context.Context, cmd device.FeedCommand) error {
		got <- cmd
		return nil
	})
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if err := c2.Connect(cctx); err != nil {
		t.Fatal(err)
	}
	select {
	case cmd := <-got:
		if cmd.ID != queued.ID || string(cmd.Value) != "false" {
			t.Fatalf("queued command = %+v, want %s", cmd, queued.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("queued feed command not delivered on reconnect")
	}
}

func TestAttributes(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "model-attrs")
	c := connect(t, d.URL)
	ctx := ctx10(t)
	if err := c.SetAttribute(ctx, "model", device.String, "X1"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAttribute(ctx, "serial", device.Hex, "00ff12"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAttribute(ctx, "model", device.String, "X2"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAttribute(ctx, "bad", device.Number, "x"); err == nil {
		t.Fatal("wrong-typed attribute accepted by the SDK")
	}
	var dev struct {
		Attributes []struct {
			Name, DataType string
			Value          json.RawMessage
		} `json:"attributes"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
	if len(dev.Attributes) != 2 || dev.Attributes[0].Name != "model" || string(dev.Attributes[0].Value) != `"X2"` {
		t.Fatalf("attributes = %+v", dev.Attributes)
	}
	var list struct{ Attributes []json.RawMessage }
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/attributes", nil, &list); st != 200 || len(list.Attributes) != 2 {
		t.Fatalf("attributes endpoint: %d %s", st, list.Attributes)
	}
}

func TestParameters(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "model-params")

	// Set while the device has never connected: the change waits in the
	// down queue, and the SDK also pulls the full set on connect.
	var pr struct {
		Version  int64  `json:"version"`
		Delivery string `json:"delivery"`
	}
	if st := p.Do(t, "PATCH", "/api/v1/devices/"+d.ID+"/parameters", map[string]any{"interval": 10, "mode": "eco"}, &pr); st != 200 || pr.Version != 1 || pr.Delivery != "queued" {
		t.Fatalf("patch: %d %+v", st, pr)
	}
	c, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	updates := make(chan device.ParametersUpdate, 10)
	c.HandleParameters(func(ctx context.Context, u device.ParametersUpdate) { updates <- u })
	ctx := ctx10(t)
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	nextUpdate := func() device.ParametersUpdate {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(10 * time.Second):
			t.Fatal("no parameters update")
		}
		panic("unreachable")
	}
	// The full set and the queued change arrive in either order; both
	// are version 1 (the SDK applies the second only if it is the full
	// set).
	if u := nextUpdate(); u.Version != 1 || string(u.Values["interval"]) != "10" {
		t.Fatalf("first update = %+v", u)
	}
	if vals, v := c.Parameters(); v != 1 || string(vals["mode"]) != `"eco"` {
		t.Fatalf("after connect: %v v%d", vals, v)
	}

	// A change while online arrives as a change.
	if st := p.Do(t, "PATCH", "/api/v1/devices/"+d.ID+"/parameters", map[string]any{"mode": nil, "interval": 30}, &pr); st != 200 || (pr.Delivery != "sent" && pr.Delivery != "delivered") {
		t.Fatalf("patch: %d %+v", st, pr)
	}
	u := nextUpdate()
	for u.Version == 1 { // the second of the first two
		u = nextUpdate()
	}
	if u.Full || u.Version != 2 || string(u.Values["mode"]) != "null" {
		t.Fatalf("change = %+v", u)
	}
	if vals, v := c.Parameters(); v != 2 || len(vals) != 1 || string(vals["interval"]) != "30" {
		t.Fatalf("merged = %v v%d", vals, v)
	}

	// The device reports its own values.
	if err := c.ReportParameters(ctx, map[string]any{"interval": 30, "fw_mode": "normal"}); err != nil {
		t.Fatal(err)
	}
	var m modelResp
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/model", nil, &m)
	if string(m.Parameters.Reported["fw_mode"]) != `"normal"` || string(m.Parameters.Desired["interval"]) != "30" || m.Parameters.Version != 2 {
		t.Fatalf("parameters = %+v", m.Parameters)
	}

	// Bad changes are API errors.
	for _, body := range []string{`{}`, `{"bad key":1}`, `[1]`, `{"k":` + strings.Repeat("1", protocol.MaxParameterValue+1) + `}`} {
		if st, b, _ := api(p, "PATCH", "/api/v1/devices/"+d.ID+"/parameters", body); st != http.StatusBadRequest {
			t.Errorf("patch %.40s: %d %s", body, st, b)
		}
	}
}

func TestPlatformTimeAndKeepAlive(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.KeepAliveMax = 20 * time.Second })
	d := p.CreateDevice(t, "model-time")
	c := connect(t, d.URL) // proposes the SDK default, 30s
	if ka := c.KeepAlive(); ka != 20*time.Second {
		t.Fatalf("dictated keep-alive = %s, want 20s", ka)
	}
	ctx := ctx10(t)
	before := time.Now()
	pt, err := c.PlatformTime(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pt.Before(before.Add(-time.Second)) || pt.After(time.Now().Add(time.Second)) {
		t.Fatalf("platform time %v, local %v", pt, before)
	}
	if off := c.ClockOffset(); off > time.Second || off < -time.Second {
		t.Fatalf("offset %s on the same machine", off)
	}
	if last, local := c.LastPlatformTime(); !last.Equal(pt) || local.IsZero() {
		t.Fatalf("last = %v %v", last, local)
	}
}

// silentPinger never pings: the connection looks dead to the platform.
type silentPinger struct{}

func (silentPinger) Run(ctx context.Context, _ net.Conn, _ uint16) error {
	<-ctx.Done()
	return nil
}
func (silentPinger) PacketSent()           {}
func (silentPinger) PacketReceived()       {}
func (silentPinger) PingResp()             {}
func (silentPinger) SetDebug(_ log.Logger) {}

func TestKeepAliveExpiry(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.KeepAliveMin, c.KeepAliveMax = time.Second, time.Second })
	d := p.CreateDevice(t, "model-silent")
	events := openStream(t, p, "?kind=presence&device="+d.ID)

	conn, err := net.DialTimeout("tcp", p.MQTTAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := paho.NewClient(paho.ClientConfig{Conn: conn, PingHandler: silentPinger{}})
	ack, err := cl.Connect(ctx10(t), &paho.Connect{ClientID: d.ID, KeepAlive: 60, CleanStart: true,
		Username: d.ID, UsernameFlag: true, Password: []byte(d.Password), PasswordFlag: true})
	if err != nil {
		t.Fatal(err)
	}
	if ack.Properties == nil || ack.Properties.ServerKeepAlive == nil || *ack.Properties.ServerKeepAlive != 1 {
		t.Fatalf("CONNACK server keep-alive = %+v", ack.Properties)
	}
	connectedAt := time.Now()
	if e := next(t, events); !strings.Contains(string(e.data), `"online":true`) {
		t.Fatalf("first event %s", e.data)
	}
	e := next(t, events)
	gone := time.Since(connectedAt)
	if !strings.Contains(string(e.data), `"online":false`) || !strings.Contains(string(e.data), "keepalive timeout") {
		t.Fatalf("presence %s", e.data)
	}
	// Two intervals (2s) with mochi's whole-second rounding: 3s at most.
	if gone < 1900*time.Millisecond || gone > 4*time.Second {
		t.Fatalf("dropped after %s, want about two keep-alive intervals", gone)
	}
	select {
	case <-cl.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed")
	}
}

func TestEventsNotificationsAndStreamFilter(t *testing.T) {
	p := outposttest.Start(t)
	a := p.CreateDevice(t, "model-ev-a")
	b := p.CreateDevice(t, "model-ev-b")
	ca := connect(t, a.URL)
	cb := connect(t, b.URL)
	ctx := ctx10(t)
	onlyA := openStream(t, p, "?device="+a.ID+"&kind=event,notification")
	all := openStream(t, p, "?kind=event&kind=notification&kind=telemetry")

	if err := cb.SendEvent(ctx, "b_event", nil); err != nil {
		t.Fatal(err)
	}
	if err := cb.Publish(ctx); err != nil { // SendEvent queues; Publish waits for the delivery
		t.Fatal(err)
	}
	ca.Add("temp", 1)
	if err := ca.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ca.SendEvent(ctx, "door_open", map[string]int{"door": 2}); err != nil {
		t.Fatal(err)
	}
	if err := ca.SendNotification(ctx, "Low battery", "12% left"); err != nil {
		t.Fatal(err)
	}
	e := next(t, onlyA)
	if e.kind != "event" || !strings.Contains(string(e.data), `"name":"door_open"`) || !strings.Contains(string(e.data), `"data":{"door":2}`) {
		t.Fatalf("first = %s %s", e.kind, e.data)
	}
	e = next(t, onlyA)
	if e.kind != "notification" || !strings.Contains(string(e.data), `"title":"Low battery"`) {
		t.Fatalf("second = %s %s", e.kind, e.data)
	}
	kinds := []string{}
	for range 4 {
		kinds = append(kinds, next(t, all).kind)
	}
	if strings.Join(kinds, ",") != "event,telemetry,event,notification" {
		t.Fatalf("all kinds = %v", kinds)
	}

	var evs struct {
		Events []struct {
			Kind, Name, Title, Text string
			TS                      int64 `json:"ts"`
		} `json:"events"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+a.ID+"/events", nil, &evs)
	if len(evs.Events) != 2 || evs.Events[0].Name != "door_open" || evs.Events[1].Text != "12% left" || evs.Events[0].TS == 0 {
		t.Fatalf("events = %+v", evs.Events)
	}
	p.Do(t, "GET", "/api/v1/devices/"+a.ID+"/events?kind=notification", nil, &evs)
	if len(evs.Events) != 1 || evs.Events[0].Kind != "notification" {
		t.Fatalf("notifications = %+v", evs.Events)
	}
	if st, _, _ := api(p, "GET", "/api/v1/devices/"+a.ID+"/events?kind=bogus", ""); st != http.StatusBadRequest {
		t.Fatalf("bad kind: %d", st)
	}
}

func TestRawPublish(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "model-raw")
	c := connect(t, d.URL)
	ctx := ctx10(t)
	events := openStream(t, p, "?kind=raw")
	if err := c.PublishRaw(ctx, "sensors/a", []byte(`{"x": 1}`)); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishRaw(ctx, "", []byte{0xff, 0x00}); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishRaw(ctx, "bad/+", nil); err == nil {
		t.Fatal("wildcard subtopic accepted")
	}
	e := next(t, events)
	if want := fmt.Sprintf(`{"device_id":"%s","topic":"sensors/a","payload":{"x":1}`, d.ID); !strings.HasPrefix(string(e.data), want) {
		t.Fatalf("raw = %s", e.data)
	}
	e = next(t, events)
	if !strings.Contains(string(e.data), `"topic":"","payload_base64":"/wA="`) {
		t.Fatalf("raw binary = %s", e.data)
	}
}

// TestModelBadInput sends malformed and oversized device-model messages
// over plain MQTT 3.1.1 and checks each gets an error reply and a count,
// and that the device's good data is kept.
func TestModelBadInput(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "model-bad")
	c := mustDial311(t, p, d)
	c.subscribe(t, topicOf(d.ID, "down", "#"))
	up := func(kind string) string { return topicOf(d.ID, "up", kind) }
	errTopic := topicOf(d.ID, "down", "error")

	many := make([]map[string]string, protocol.MaxFeedsPerDevice+1)
	for i := range many {
		many[i] = map[string]string{"ref": fmt.Sprintf("f%d", i), "data_type": "number"}
	}
	good := `{"register":[{"ref":"ok","data_type":"number"}]}`
	c.publish(t, up("feeds"), good)
	for _, tc := range []struct {
		kind, payload, code string
	}{
		{"feeds", `{"register":`, protocol.CodeInvalid},
		{"feeds", `{}`, protocol.CodeInvalid},
		{"feeds", string(encode(t, map[string]any{"register": many})), protocol.CodeTooLarge},
		{"feeds", `{"register":[{"ref":"` + strings.Repeat("x", 65) + `","data_type":"number"}]}`, protocol.CodeInvalid},
		{"feeds", `{"register":[{"ref":"n","data_type":"number","name":"` + strings.Repeat("n", 200) + `"}]}`, protocol.CodeTooLarge},
		{"feeds", `{"register":[{"ref":"t","data_type":"blob"}]}`, protocol.CodeInvalid},
		{"attributes", `{"attributes":[{"name":"a","data_type":"number","value":"x"}]}`, protocol.CodeWrongType},
		{"attributes", `not json`, protocol.CodeInvalid},
		{"parameters", `{"reported":{"k":null}}`, protocol.CodeInvalid},
		{"time", `{"id":1}`, protocol.CodeInvalid},
		{"event", `{"name":"bad name"}`, protocol.CodeInvalid},
		{"notification", `{"title":"","text":"x"}`, protocol.CodeInvalid},
		{"telemetry", `{"r":[{"f":"nope","v":1},{"f":"ok","v":"str"}]}`, protocol.CodeUnknownFeed},
	} {
		c.publish(t, up(tc.kind), tc.payload)
		var r protocol.ErrorReply
		if err := json.Unmarshal(c.next(t, errTopic), &r); err != nil {
			t.Fatal(err)
		}
		if r.Kind != tc.kind || r.Code != tc.code {
			t.Errorf("%s %.60s: reply %+v, want code %s", tc.kind, tc.payload, r, tc.code)
		}
	}
	// 1000 feeds fit, the 1001st does not, and the registration so far is
	// kept.
	c.publish(t, up("feeds"), encode(t, map[string]any{"register": many[:protocol.MaxFeedsPerDevice]}))
	var r protocol.ErrorReply
	json.Unmarshal(c.next(t, errTopic), &r)
	if r.Code != protocol.CodeTooLarge || r.Rejected != 1 {
		t.Fatalf("limit reply %+v", r)
	}
	var m modelResp
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/model", nil, &m)
	if len(m.Feeds) != protocol.MaxFeedsPerDevice || m.Feeds[0].Ref != "f0" {
		t.Fatalf("%d feeds registered", len(m.Feeds))
	}
	// Oversized raw payloads never reach the platform: the broker's packet
	// limit closes the connection (MQTT 3.1.1 has no negative PUBACK).
	// The device model survives all of it.
	var dev struct {
		Rejected map[string]int64 `json:"rejected"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
	if dev.Rejected["feeds/invalid"] < 3 || dev.Rejected["telemetry/unknown_feed"] != 2 {
		t.Fatalf("rejected = %v", dev.Rejected)
	}
}

// An event or notification redelivered with the same id (its PUBACK was
// lost) is stored and streamed once.
func TestEventRedeliveryStoredOnce(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "event-once")
	c, _, _, _, err := dial5(t, p, d.ID, d.Password, d.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctx10(t)
	for _, m := range []struct{ kind, payload string }{
		{"event", `{"id":"e-1","name":"door_open","data":{"door":1}}`},
		{"event", `{"id":"e-1","name":"door_open","data":{"door":1}}`},
		{"notification", `{"id":"n-1","title":"Battery low","text":"12 %"}`},
		{"notification", `{"id":"n-1","title":"Battery low","text":"12 %"}`},
		{"event", `{"name":"no_id"}`},
		{"event", `{"name":"no_id"}`},
	} {
		if _, err := c.Publish(ctx, &paho.Publish{Topic: topicOf(d.ID, "up", m.kind), QoS: 1, Payload: []byte(m.payload)}); err != nil {
			t.Fatalf("publish %s: %v", m.payload, err)
		}
	}
	var got struct {
		Events []struct {
			Kind      string `json:"kind"`
			MessageID string `json:"message_id"`
		} `json:"events"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/events", nil, &got)
	count := map[string]int{}
	for _, e := range got.Events {
		count[e.Kind+"/"+e.MessageID]++
	}
	if count["event/e-1"] != 1 || count["notification/n-1"] != 1 || count["event/"] != 2 {
		t.Fatalf("stored %v; want e-1 and n-1 once, the two events without id both", count)
	}
}

// A device process that restarts again and again while feed commands wait
// for it always gets its subscription and its commands, each handled once
// (the SDK remembers the command ids next to its durable outbox). (Right after a persistent
// session resumes, the embedded broker may refuse a SUBSCRIBE whose packet
// id equals one of a message it is resending, 0x91; the SDK retries.)
func TestReconnectWithQueuedCommands(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "reconnecting")
	got := make(chan device.FeedCommand, 1)
	var mu sync.Mutex
	runs := map[string]int{} // command id → handler runs, over all processes
	outbox := t.TempDir()    // the device's durable state, kept across restarts
	for i := range 30 {
		c, err := device.New(d.URL, device.WithOutbox(outbox), device.WithLogger(outposttest.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		c.HandleFeed("switch", func(ctx context.Context, cmd device.FeedCommand) error {
			mu.Lock()
			runs[cmd.ID]++
			n := runs[cmd.ID]
			mu.Unlock()
			if n > 1 {
				t.Errorf("feed command %s handled %d times", cmd.ID, n)
				return nil
			}
			got <- cmd
			return nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if err := c.Connect(ctx); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if i == 0 {
			if err := c.RegisterFeeds(ctx, device.Feed{Ref: "switch", Type: device.FeedInOut, DataType: device.Bool}); err != nil {
				t.Fatal(err)
			}
		} else {
			select {
			case <-got:
			case <-ctx.Done():
				t.Fatalf("round %d: the queued command never arrived", i)
			}
		}
		cancel()
		c.Close()
		outposttest.Eventually(t, 10*time.Second, "device offline", func() bool {
			var dev struct{ Online bool }
			p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
			return !dev.Online
		})
		if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/feeds/switch/value", map[string]any{"value": i%2 == 0}, nil); st != http.StatusAccepted {
			t.Fatalf("round %d: feed command status %d", i, st)
		}
	}
}
