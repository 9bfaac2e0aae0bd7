package server_test

// End-to-end tests of gateways (docs/protocol.md §26) with the real
// embedded broker and SQLite. The gateway in these tests is a
// general-purpose MQTT client (paho.mqtt.golang) that speaks only what
// the document says, in plain JSON: the third-party gateway the issue
// asks for.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
)

// Gateway wire shapes, as docs/protocol.md §26 gives them.
type (
	gwReading struct {
		C string `json:"c"`
		F string `json:"f"`
		V any    `json:"v"`
		T int64  `json:"t,omitempty"`
	}
	gwBatch struct {
		ID string      `json:"id,omitempty"`
		R  []gwReading `json:"r"`
	}
	gwJoin struct {
		C    string `json:"c"`
		Sink string `json:"sink,omitempty"`
	}
	gwErrorReply struct {
		Kind     string `json:"kind"`
		ID       string `json:"id"`
		C        string `json:"c"`
		Code     string `json:"code"`
		Message  string `json:"message"`
		Rejected int    `json:"rejected"`
	}
	gwChild struct {
		GatewayID string `json:"gateway_id"`
		Address   string `json:"address"`
		DeviceID  string `json:"device_id"`
	}
	apiDevice struct {
		ID     string `json:"id"`
		Online bool   `json:"online"`
	}
)

// startGateway creates a device, makes it a gateway with policy, and
// connects it as a bare MQTT client subscribed to its down/ topics.
func startGateway(t *testing.T, p *outposttest.Platform, name, policy string) (outposttest.Device, *bareDevice) {
	t.Helper()
	d := p.CreateDevice(t, name)
	if st := p.Do(t, "PUT", "/api/v1/gateways/"+d.ID, map[string]string{"policy": policy}, nil); st != http.StatusOK {
		t.Fatalf("declare gateway: status %d", st)
	}
	return d, dialGateway(t, p, d)
}

func dialGateway(t *testing.T, p *outposttest.Platform, d outposttest.Device) *bareDevice {
	t.Helper()
	c := mustDial311(t, p, d)
	if code := c.subscribe(t, topicOf(d.ID, "down", "#")); code != 1 {
		t.Fatalf("subscribe: granted %#x", code)
	}
	return c
}

func children(t *testing.T, p *outposttest.Platform, gw string) map[string]string {
	t.Helper()
	var out struct {
		Children []gwChild `json:"children"`
	}
	if st := p.Do(t, "GET", "/api/v1/gateways/"+gw+"/children", nil, &out); st != 200 {
		t.Fatalf("children: status %d", st)
	}
	m := map[string]string{}
	for _, c := range out.Children {
		m[c.Address] = c.DeviceID
	}
	return m
}

func readingsOf(t *testing.T, p *outposttest.Platform, dev, feed string) []string {
	t.Helper()
	var got apiReadings
	if st := p.Do(t, "GET", "/api/v1/devices/"+dev+"/telemetry?limit=10000&feed="+feed, nil, &got); st != 200 {
		t.Fatalf("telemetry of %s: status %d", dev, st)
	}
	var vs []string
	for _, r := range got.Readings {
		vs = append(vs, string(r.Value))
	}
	return vs
}

func errorReply(t *testing.T, c *bareDevice) gwErrorReply {
	t.Helper()
	var e gwErrorReply
	if err := json.Unmarshal(c.next(t, topicOf(c.id, "down", "error")), &e); err != nil {
		t.Fatal(err)
	}
	return e
}

func online(t *testing.T, p *outposttest.Platform, dev string) bool {
	t.Helper()
	var d apiDevice
	if st := p.Do(t, "GET", "/api/v1/devices/"+dev, nil, &d); st != 200 {
		t.Fatalf("device %s: status %d", dev, st)
	}
	return d.Online
}

// TestGatewayThirdParty drives every part of §26 with a gateway written
// from the document alone.
func TestGatewayThirdParty(t *testing.T) { testGatewayThirdParty(t, outposttest.Start(t)) }

func testGatewayThirdParty(t *testing.T, p *outposttest.Platform) {
	gwd, gw := startGateway(t, p, "mesh-gw", "auto")
	presence := openStream(t, p, "?kind=presence")

	// Sinks, then children.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/sinks"), `{"sinks":[{"name":"sink1","config":{"network_address":1234,"channel":5,"role":"sink"}},{"name":"sink2","config":{"network_address":1234,"channel":7}}]}`)
	var sinks struct {
		Sinks []struct {
			Name   string          `json:"name"`
			Config json.RawMessage `json:"config"`
		} `json:"sinks"`
	}
	p.Do(t, "GET", "/api/v1/gateways/"+gwd.ID+"/sinks", nil, &sinks)
	if len(sinks.Sinks) != 2 || sinks.Sinks[0].Name != "sink1" || !strings.Contains(string(sinks.Sinks[0].Config), `"channel":5`) {
		t.Fatalf("sinks = %+v", sinks)
	}
	gw.publish(t, topicOf(gwd.ID, "up", "gw/children"), map[string]any{"id": "j1", "join": []gwJoin{{C: "1001", Sink: "sink1"}, {C: "1002", Sink: "sink2"}}})
	cs := children(t, p, gwd.ID)
	if len(cs) != 2 || cs["1001"] == "" || cs["1002"] == "" {
		t.Fatalf("children = %v", cs)
	}
	c1, c2 := cs["1001"], cs["1002"]
	if !online(t, p, c1) || !online(t, p, c2) {
		t.Fatal("announced children are not online")
	}

	// A batch that mixes children; a third one joins by sending.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), gwBatch{ID: "g-1", R: []gwReading{
		{C: "1001", F: "temperature", V: 21.5, T: 1717243200000},
		{C: "1002", F: "temperature", V: 19, T: 1717243200000},
		{C: "1001", F: "temperature", V: 21.7, T: 1717243260000},
		{C: "1003", F: "door", V: true, T: 1717243200000},
	}})
	if got := readingsOf(t, p, c1, "temperature"); strings.Join(got, ",") != "21.5,21.7" {
		t.Fatalf("child 1001 readings = %v", got)
	}
	if got := readingsOf(t, p, c2, "temperature"); strings.Join(got, ",") != "19" {
		t.Fatalf("child 1002 readings = %v", got)
	}
	c3 := children(t, p, gwd.ID)["1003"]
	if got := readingsOf(t, p, c3, "door"); strings.Join(got, ",") != "true" {
		t.Fatalf("child 1003 readings = %v", got)
	}

	// An event of a child.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/child"), `{"c":"1002","kind":"event","msg":{"id":"e-1","name":"door_opened","data":{"door":2}}}`)
	var evs struct {
		Events []struct {
			DeviceID string `json:"device_id"`
			Name     string `json:"name"`
		} `json:"events"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+c2+"/events", nil, &evs)
	if len(evs.Events) != 1 || evs.Events[0].Name != "door_opened" || evs.Events[0].DeviceID != c2 {
		t.Fatalf("child events = %+v", evs)
	}

	// A call to a child goes through the gateway.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		req := gw.next(t, topicOf(gwd.ID, "down", "gw/rpc"))
		var r struct {
			C      string          `json:"c"`
			ID     string          `json:"id"`
			Method string          `json:"method"`
			Args   json.RawMessage `json:"args"`
		}
		json.Unmarshal(req, &r)
		if r.C != "1001" || r.Method != "blink" {
			t.Errorf("rpc request %s", req)
		}
		wait(t, gw.Publish(topicOf(gwd.ID, "up", "gw/rpc"), 1, false, fmt.Sprintf(`{"c":"1001","id":%q,"result":{"blinked":%s}}`, r.ID, r.Args)), "rpc answer")
	}()
	var res struct {
		Result json.RawMessage `json:"result"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+c1+"/rpc/blink", `3`, &res); st != 200 || string(res.Result) != `{"blinked":3}` {
		t.Fatalf("rpc to child: status %d, %s", st, res.Result)
	}
	wg.Wait()

	// Sink configuration: accepted, then rejected.
	answerConfig := func(res string, cfg string) {
		req := gw.next(t, topicOf(gwd.ID, "down", "gw/config"))
		var r struct {
			ID     string          `json:"id"`
			Sink   string          `json:"sink"`
			Config json.RawMessage `json:"config"`
		}
		json.Unmarshal(req, &r)
		body := fmt.Sprintf(`{"id":%q,"sink":%q,"res":%q`, r.ID, r.Sink, res)
		if cfg != "" {
			body += `,"config":` + cfg
		} else {
			body += `,"message":"channel out of range"`
		}
		wait(t, gw.Publish(topicOf(gwd.ID, "up", "gw/config"), 1, false, body+"}"), "config answer")
	}
	wg.Add(1)
	go func() { defer wg.Done(); answerConfig("ok", `{"network_address":1234,"channel":9,"role":"sink"}`) }()
	var cres struct {
		Result  string          `json:"result"`
		Message string          `json:"message"`
		Config  json.RawMessage `json:"config"`
	}
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/sink1/config", `{"config":{"channel":9}}`, &cres); st != 200 || cres.Result != "ok" {
		t.Fatalf("set config: %d %+v", st, cres)
	}
	wg.Wait()
	p.Do(t, "GET", "/api/v1/gateways/"+gwd.ID+"/sinks", nil, &sinks)
	if !strings.Contains(string(sinks.Sinks[0].Config), `"channel":9`) {
		t.Fatalf("config after change = %s", sinks.Sinks[0].Config)
	}
	wg.Add(1)
	go func() { defer wg.Done(); answerConfig("invalid_config", "") }()
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/sink1/config", `{"config":{"channel":99}}`, &cres); st != 200 || cres.Result != "invalid_config" || cres.Message == "" {
		t.Fatalf("rejected config: %d %+v", st, cres)
	}
	wg.Wait()
	p.Do(t, "GET", "/api/v1/gateways/"+gwd.ID+"/sinks", nil, &sinks)
	if !strings.Contains(string(sinks.Sinks[0].Config), `"channel":9`) {
		t.Fatalf("a rejected config changed the sink: %s", sinks.Sinks[0].Config)
	}

	// Send to a node, and broadcast.
	for _, dst := range []string{"1001", "*"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := gw.next(t, topicOf(gwd.ID, "down", "gw/send"))
			var r struct {
				ID      string `json:"id"`
				Dst     string `json:"dst"`
				SrcEP   int    `json:"src_ep"`
				DstEP   int    `json:"dst_ep"`
				Payload []byte `json:"payload"`
			}
			json.Unmarshal(req, &r)
			if r.Dst != dst || r.SrcEP != 1 || r.DstEP != 2 || string(r.Payload) != "hello" {
				t.Errorf("send request %s", req)
			}
			wait(t, gw.Publish(topicOf(gwd.ID, "up", "gw/send"), 1, false, fmt.Sprintf(`{"id":%q,"res":"ok"}`, r.ID)), "send answer")
		}()
		var sres struct {
			Result string `json:"result"`
		}
		body := fmt.Sprintf(`{"dst":%q,"src_ep":1,"dst_ep":2,"payload":"aGVsbG8="}`, dst)
		if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/sink2/send", body, &sres); st != 200 || sres.Result != "ok" {
			t.Fatalf("send to %s: %d %+v", dst, st, sres)
		}
		wg.Wait()
	}

	// Node data reaches the stream with its network.
	data := openStream(t, p, "?kind=node_data")
	gw.publish(t, topicOf(gwd.ID, "up", "gw/data"), `{"d":[{"sink":"sink1","src":"1001","src_ep":1,"dst_ep":1,"t":1717243200000,"payload":"AQID"}]}`)
	e := next(t, data)
	if !strings.Contains(string(e.data), `"network":1234`) || !strings.Contains(string(e.data), `"device_id":"`+c1+`"`) || !strings.Contains(string(e.data), `"payload":"AQID"`) {
		t.Fatalf("node data event %s", e.data)
	}

	// A child that leaves goes offline; the rest go with the gateway.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/children"), `{"leave":["1003"]}`)
	if online(t, p, c3) {
		t.Fatal("a child that left is online")
	}
	gw.Disconnect(100)
	reasons := map[string]string{}
	outposttest.Eventually(t, 10*time.Second, "children offline", func() bool {
		select {
		case e := <-presence:
			var c struct {
				DeviceID string `json:"device_id"`
				Online   bool   `json:"online"`
				Reason   string `json:"reason"`
			}
			json.Unmarshal(e.data, &c)
			if !c.Online {
				reasons[c.DeviceID] = c.Reason
			}
		default:
		}
		return reasons[c1] != "" && reasons[c2] != ""
	})
	if reasons[c1] != "gateway offline" || reasons[c2] != "gateway offline" || reasons[c3] != "left the gateway" {
		t.Fatalf("offline reasons = %v", reasons)
	}
	if online(t, p, c1) {
		t.Fatal("child online after its gateway left")
	}
}

// TestGatewayThousandChildren sends readings of 1,000 children in one
// message that mixes them all.
func TestGatewayThousandChildren(t *testing.T) { testGatewayThousandChildren(t, outposttest.Start(t)) }

func testGatewayThousandChildren(t *testing.T, p *outposttest.Platform) {
	gwd, gw := startGateway(t, p, "big-gw", "auto")
	const n, per = 1000, 3
	b := gwBatch{ID: "big-1"}
	for j := 0; j < per; j++ {
		for i := 0; i < n; i++ {
			b.R = append(b.R, gwReading{C: fmt.Sprintf("n%04d", i), F: "v", V: j, T: 1717243200000 + int64(j)})
		}
	}
	start := time.Now()
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), b)
	first := time.Since(start)
	cs := children(t, p, gwd.ID)
	if len(cs) != n {
		t.Fatalf("%d children, want %d", len(cs), n)
	}
	for _, a := range []string{"n0000", "n0500", "n0999"} {
		if got := readingsOf(t, p, cs[a], "v"); strings.Join(got, ",") != "0,1,2" {
			t.Fatalf("child %s readings = %v", a, got)
		}
	}
	// Registered now: a second batch costs only the commit.
	b.ID = "big-2"
	start = time.Now()
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), b)
	second := time.Since(start)
	t.Logf("1,000 children × %d readings in one message: %v with registration, %v registered (%.0f readings/s)",
		per, first, second, float64(n*per)/second.Seconds())
	if got := readingsOf(t, p, cs["n0123"], "v"); len(got) != 2*per {
		t.Fatalf("child n0123 has %d readings, want %d", len(got), 2*per)
	}
}

// TestGatewayRestartLosesNothing: the gateway resends what it had not
// seen acknowledged after its restart (and the platform's), and every
// child keeps each reading once.
func TestGatewayRestartLosesNothing(t *testing.T) {
	testGatewayRestartLosesNothing(t, outposttest.Start(t))
}

func testGatewayRestartLosesNothing(t *testing.T, p *outposttest.Platform) {
	gwd, gw := startGateway(t, p, "restart-gw", "auto")
	batch := func(id string, v int) gwBatch {
		return gwBatch{ID: id, R: []gwReading{{C: "a", F: "x", V: v, T: 1717243200000 + int64(v)}, {C: "b", F: "x", V: v, T: 1717243200000 + int64(v)}}}
	}
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), batch("r-1", 1))
	// The gateway dies before it saw the PUBACK of r-2 (it did reach the
	// platform), and the platform restarts while r-3 waits in its buffer.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), batch("r-2", 2))
	gw.Disconnect(0)
	p.Restart(t)
	gw = dialGateway(t, p, gwd)
	for _, b := range []gwBatch{batch("r-2", 2), batch("r-3", 3), batch("r-3", 3)} {
		gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), b)
	}
	cs := children(t, p, gwd.ID)
	for _, a := range []string{"a", "b"} {
		if got := readingsOf(t, p, cs[a], "x"); strings.Join(got, ",") != "1,2,3" {
			t.Fatalf("child %s readings = %v, want 1,2,3 once each", a, got)
		}
	}
}

// TestGatewayAccessControl: a gateway acts only for its own children.
func TestGatewayAccessControl(t *testing.T) { testGatewayAccessControl(t, outposttest.Start(t)) }

func testGatewayAccessControl(t *testing.T, p *outposttest.Platform) {
	ad, a := startGateway(t, p, "gw-a", "provisioned")
	bd, b := startGateway(t, p, "gw-b", "provisioned")
	var child gwChild
	if st := p.Do(t, "PUT", "/api/v1/gateways/"+ad.ID+"/children/n1", nil, &child); st != http.StatusCreated || child.DeviceID == "" {
		t.Fatalf("provision child: %d %+v", st, child)
	}
	a.publish(t, topicOf(ad.ID, "up", "gw/telemetry"), gwBatch{ID: "a-1", R: []gwReading{{C: "n1", F: "x", V: 1}}})

	// B names the same address: it is not B's child.
	b.publish(t, topicOf(bd.ID, "up", "gw/telemetry"), gwBatch{ID: "b-1", R: []gwReading{{C: "n1", F: "x", V: 666}}})
	if e := errorReply(t, b); e.Code != "unknown_child" || e.C != "n1" || e.Rejected != 1 || e.Kind != "gw/telemetry" {
		t.Fatalf("error reply %+v", e)
	}
	b.publish(t, topicOf(bd.ID, "up", "gw/child"), `{"c":"n1","kind":"event","msg":{"name":"x"}}`)
	if e := errorReply(t, b); e.Code != "unknown_child" {
		t.Fatalf("error reply %+v", e)
	}
	if got := readingsOf(t, p, child.DeviceID, "x"); strings.Join(got, ",") != "1" {
		t.Fatalf("A's child readings = %v", got)
	}
	// The operator cannot give A's child to B either.
	if st := p.Do(t, "PUT", "/api/v1/gateways/"+bd.ID+"/children/n1", map[string]string{"device_id": child.DeviceID}, nil); st != http.StatusConflict {
		t.Fatalf("child of two gateways: status %d", st)
	}
	// Even with policy auto, B's n1 is a new device of its own.
	p.Do(t, "PUT", "/api/v1/gateways/"+bd.ID, map[string]string{"policy": "auto"}, nil)
	b.publish(t, topicOf(bd.ID, "up", "gw/telemetry"), gwBatch{ID: "b-2", R: []gwReading{{C: "n1", F: "x", V: 2}}})
	bn1 := children(t, p, bd.ID)["n1"]
	if bn1 == "" || bn1 == child.DeviceID {
		t.Fatalf("B's n1 = %q (A's child is %s)", bn1, child.DeviceID)
	}
	if got := readingsOf(t, p, child.DeviceID, "x"); strings.Join(got, ",") != "1" {
		t.Fatalf("A's child readings after B's = %v", got)
	}
	// A device that is not a gateway cannot speak for anybody.
	plain := p.CreateDevice(t, "plain")
	pc := dialGateway(t, p, plain)
	pc.publish(t, topicOf(plain.ID, "up", "gw/telemetry"), gwBatch{R: []gwReading{{C: "n1", F: "x", V: 3}}})
	if e := errorReply(t, pc); e.Code != "forbidden" {
		t.Fatalf("error reply to a plain device %+v", e)
	}
}

// TestGatewayChildWithOwnCredentials: a device with credentials of its
// own, made a gateway's child by the operator, is reached directly until
// its gateway announces it, then through the gateway.
func TestGatewayChildWithOwnCredentials(t *testing.T) {
	p := outposttest.Start(t)
	gwd, gw := startGateway(t, p, "gw", "provisioned")
	own := p.CreateDevice(t, "own")
	if st := p.Do(t, "PUT", "/api/v1/gateways/"+gwd.ID+"/children/o1", map[string]string{"device_id": own.ID}, nil); st != http.StatusCreated {
		t.Fatalf("attach: status %d", st)
	}
	// A gateway cannot become a child, nor a child a gateway.
	if st := p.Do(t, "PUT", "/api/v1/gateways/"+own.ID, map[string]string{"policy": "auto"}, nil); st != http.StatusConflict {
		t.Fatalf("child as gateway: status %d", st)
	}
	other, _ := startGateway(t, p, "gw2", "auto")
	if st := p.Do(t, "PUT", "/api/v1/gateways/"+gwd.ID+"/children/g2", map[string]string{"device_id": other.ID}, nil); st != http.StatusConflict {
		t.Fatalf("gateway as child: status %d", st)
	}

	// Connected itself, the child answers directly.
	dc := connect(t, own.URL)
	dc.Handle("where", func(context.Context, json.RawMessage) (any, error) { return "direct", nil })
	dc.Add("x", 1)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := dc.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	var res struct {
		Result json.RawMessage `json:"result"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+own.ID+"/rpc/where", nil, &res); st != 200 || string(res.Result) != `"direct"` {
		t.Fatalf("direct call: %d %s", st, res.Result)
	}
	// Announced by its gateway, it is reached through the gateway.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/children"), `{"join":[{"c":"o1"}]}`)
	go func() {
		req := gw.next(t, topicOf(gwd.ID, "down", "gw/rpc"))
		var r struct {
			C  string `json:"c"`
			ID string `json:"id"`
		}
		json.Unmarshal(req, &r)
		gw.Publish(topicOf(gwd.ID, "up", "gw/rpc"), 1, false, fmt.Sprintf(`{"c":%q,"id":%q,"result":"via gateway"}`, r.C, r.ID))
	}()
	if st := p.Do(t, "POST", "/api/v1/devices/"+own.ID+"/rpc/where", nil, &res); st != 200 || string(res.Result) != `"via gateway"` {
		t.Fatalf("routed call: %d %s", st, res.Result)
	}
	// It connects itself again, later than the announcement, and that
	// connection ends: offline, until the gateway speaks for it again.
	dc.Close()
	dc2 := connect(t, own.URL)
	dc2.Close()
	outposttest.Eventually(t, 10*time.Second, "child offline", func() bool { return !online(t, p, own.ID) })
	gw.publish(t, topicOf(gwd.ID, "up", "gw/children"), `{"join":[{"c":"o1"}]}`)
	if !online(t, p, own.ID) {
		t.Fatal("a child its gateway announced again is offline")
	}
	// Both ways feed the same device.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), gwBatch{ID: "g1", R: []gwReading{{C: "o1", F: "x", V: 2, T: time.Now().UnixMilli() + 1000}}})
	if got := readingsOf(t, p, own.ID, "x"); strings.Join(got, ",") != "1,2" {
		t.Fatalf("readings = %v", got)
	}
}

// TestGatewayBadInput: unknown children, oversized fan-out, malformed
// messages, and an unknown sink.
func TestGatewayBadInput(t *testing.T) {
	p := outposttest.Start(t)
	gwd, gw := startGateway(t, p, "gw", "provisioned")
	p.Do(t, "PUT", "/api/v1/gateways/"+gwd.ID+"/children/k1", nil, nil)
	k1 := children(t, p, gwd.ID)["k1"]

	// Unknown children are dropped, the rest stored.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), gwBatch{ID: "m-1", R: []gwReading{{C: "k1", F: "x", V: 1}, {C: "u1", F: "x", V: 2}, {C: "u2", F: "x", V: 3}, {C: "k1", F: "bad feed", V: 4}}})
	if e := errorReply(t, gw); e.Code != "unknown_child" || e.Rejected != 3 || e.ID != "m-1" || e.C != "u1" {
		t.Fatalf("error reply %+v", e)
	}
	if got := readingsOf(t, p, k1, "x"); strings.Join(got, ",") != "1" {
		t.Fatalf("k1 readings = %v", got)
	}
	var dev struct {
		Rejected map[string]int64 `json:"rejected"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+gwd.ID, nil, &dev)
	if dev.Rejected["gw/telemetry/unknown_child"] != 3 {
		t.Fatalf("gateway's rejection counts %v", dev.Rejected)
	}
	gw.publish(t, topicOf(gwd.ID, "up", "gw/children"), `{"join":[{"c":"u9"}]}`)
	if e := errorReply(t, gw); e.Code != "unknown_child" || e.C != "u9" {
		t.Fatalf("error reply %+v", e)
	}
	if len(children(t, p, gwd.ID)) != 1 {
		t.Fatal("a provisioned gateway registered a child")
	}

	// Fan-out over 1,000 children in one message.
	p.Do(t, "PUT", "/api/v1/gateways/"+gwd.ID, map[string]string{"policy": "auto"}, nil)
	big := gwBatch{ID: "m-2"}
	for i := 0; i <= 1000; i++ {
		big.R = append(big.R, gwReading{C: fmt.Sprintf("f%d", i), F: "x", V: i})
	}
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), big)
	if e := errorReply(t, gw); e.Code != "too_large" || e.Kind != "gw/telemetry" {
		t.Fatalf("error reply %+v", e)
	}
	var join []gwJoin
	for i := 0; i <= 1000; i++ {
		join = append(join, gwJoin{C: fmt.Sprintf("f%d", i)})
	}
	gw.publish(t, topicOf(gwd.ID, "up", "gw/children"), map[string]any{"join": join})
	if e := errorReply(t, gw); e.Code != "too_large" {
		t.Fatalf("error reply %+v", e)
	}
	if len(children(t, p, gwd.ID)) != 1 {
		t.Fatal("an oversized message registered children")
	}

	// Malformed messages and unknown kinds.
	for _, m := range []struct{ kind, payload, code string }{
		{"gw/telemetry", `{"r":`, "invalid"},
		{"gw/telemetry", `{"r":[{"C":"k1","f":"x","v":1}]}`, "invalid"},
		{"gw/sinks", `{"sinks":[{"name":"a"},{"name":"a"}]}`, "invalid"},
		{"gw/sinks", `{"sinks":[{"name":"a","config":[1]}]}`, "invalid"},
		{"gw/child", `{"c":"k1","kind":"telemetry","msg":{}}`, "invalid"},
		{"gw/rpc", `{"c":"zz","id":"x","result":1}`, "unknown_child"},
		{"gw/data", `{"d":[{"sink":"s","src":"k1","src_ep":300,"dst_ep":1,"payload":""}]}`, "invalid"},
		{"gw/bogus", `{}`, "unknown_kind"},
	} {
		gw.publish(t, topicOf(gwd.ID, "up", m.kind), m.payload)
		if e := errorReply(t, gw); e.Code != m.code || e.Kind != m.kind {
			t.Fatalf("%s %s: error reply %+v, want code %s", m.kind, m.payload, e, m.code)
		}
	}

	// API: unknown sink, bad config, gateway offline.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/sinks"), `{"sinks":[{"name":"s1","config":{}}]}`)
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/nope/config", `{"config":{"a":1}}`, nil); st != 404 {
		t.Fatalf("unknown sink: %d", st)
	}
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/s1/config", `{"config":[1]}`, nil); st != 400 {
		t.Fatalf("bad config: %d", st)
	}
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/s1/config", `{"config":{"a":1},"timeout":"200ms"}`, nil); st != 504 {
		t.Fatalf("unanswered config: %d", st)
	}
	gw.Disconnect(100)
	outposttest.Eventually(t, 10*time.Second, "gateway offline", func() bool { return !online(t, p, gwd.ID) })
	if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/s1/send", `{"dst":"k1","src_ep":1,"dst_ep":1,"payload":""}`, nil); st != 409 {
		t.Fatalf("send through an offline gateway: %d", st)
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+k1+"/rpc/x", nil, nil); st != 409 {
		t.Fatalf("call to a child of an offline gateway: %d", st)
	}
}

// TestGatewayDeviceDeleted: deleting a child frees its address (a new
// child comes with the next message under policy auto); deleting the
// gateway leaves its children as devices of their own.
func TestGatewayDeviceDeleted(t *testing.T) {
	p := outposttest.Start(t)
	gwd, gw := startGateway(t, p, "gw", "auto")
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), gwBatch{ID: "d-1", R: []gwReading{{C: "a", F: "x", V: 1}, {C: "b", F: "x", V: 1}}})
	first := children(t, p, gwd.ID)
	if st := p.Do(t, "DELETE", "/api/v1/devices/"+first["a"], nil, nil); st != http.StatusNoContent && st != http.StatusOK {
		t.Fatalf("delete child: %d", st)
	}
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), gwBatch{ID: "d-2", R: []gwReading{{C: "a", F: "x", V: 2}}})
	again := children(t, p, gwd.ID)
	if again["a"] == "" || again["a"] == first["a"] {
		t.Fatalf("child a after its deletion: %q (was %q)", again["a"], first["a"])
	}
	if got := readingsOf(t, p, again["a"], "x"); strings.Join(got, ",") != "2" {
		t.Fatalf("new child a readings = %v", got)
	}
	if st := p.Do(t, "DELETE", "/api/v1/devices/"+gwd.ID, nil, nil); st != http.StatusNoContent && st != http.StatusOK {
		t.Fatalf("delete gateway: %d", st)
	}
	if online(t, p, first["b"]) {
		t.Fatal("a child of a deleted gateway is online")
	}
	if st := p.Do(t, "GET", "/api/v1/gateways/"+gwd.ID, nil, nil); st != http.StatusNotFound {
		t.Fatalf("deleted gateway: %d", st)
	}
}

// TestGatewayOnPostgres runs the gateway scenarios on the PostgreSQL
// store.
func TestGatewayOnPostgres(t *testing.T) {
	for name, fn := range map[string]func(*testing.T, *outposttest.Platform){
		"ThirdParty": testGatewayThirdParty, "ThousandChildren": testGatewayThousandChildren,
		"RestartLosesNothing": testGatewayRestartLosesNothing, "AccessControl": testGatewayAccessControl,
	} {
		t.Run(name, func(t *testing.T) {
			dbURL, _ := pgtest.MustSchema(t)
			fn(t, startOnPostgres(t, dbURL))
		})
	}
}

// TestGatewayChildFeedRule: a child that registered feeds (through
// gw/child) gets the feed rule for the readings its gateway sends.
func TestGatewayChildFeedRule(t *testing.T) {
	p := outposttest.Start(t)
	gwd, gw := startGateway(t, p, "gw", "auto")
	gw.publish(t, topicOf(gwd.ID, "up", "gw/child"), `{"c":"s1","kind":"feeds","msg":{"register":[{"ref":"temp","data_type":"number"}]}}`)
	gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), gwBatch{ID: "f-1", R: []gwReading{
		{C: "s1", F: "temp", V: 20}, {C: "s1", F: "temp", V: "hot"}, {C: "s1", F: "other", V: 1}, {C: "s2", F: "other", V: 1}}})
	e := errorReply(t, gw)
	if e.Rejected != 2 || e.Code != "wrong_type" || e.C != "s1" {
		t.Fatalf("error reply %+v", e)
	}
	cs := children(t, p, gwd.ID)
	if got := readingsOf(t, p, cs["s1"], "temp"); strings.Join(got, ",") != "20" {
		t.Fatalf("s1 readings = %v", got)
	}
	if got := readingsOf(t, p, cs["s2"], "other"); strings.Join(got, ",") != "1" {
		t.Fatalf("s2 (no feeds registered) readings = %v", got)
	}
}

// TestGatewayQueuedForChild: a queued call and a feed command for a child
// wait while its gateway is away, reach the gateway when it is back and
// announces the child, and are confirmed through it.
func TestGatewayQueuedForChild(t *testing.T) {
	p := outposttest.Start(t, fastSweep)
	gwd, gw := startGateway(t, p, "gw", "auto")
	gw.publish(t, topicOf(gwd.ID, "up", "gw/children"), `{"join":[{"c":"v1"}]}`)
	gw.publish(t, topicOf(gwd.ID, "up", "gw/child"), `{"c":"v1","kind":"feeds","msg":{"register":[{"ref":"valve","type":"IN_OUT","data_type":"bool"}]}}`)
	child := children(t, p, gwd.ID)["v1"]
	gw.Disconnect(100)
	outposttest.Eventually(t, 10*time.Second, "child offline", func() bool { return !online(t, p, child) })

	queued := queueCall(t, p, child, "open", `{"for":5}`, "ttl=1h&timeout=10s")
	if queued.State != "queued" {
		t.Fatalf("call for an offline child: %+v", queued)
	}
	var cmd struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+child+"/feeds/valve/value", map[string]any{"value": true}, &cmd); st != http.StatusAccepted || cmd.State != "queued" {
		t.Fatalf("feed command for an offline child: %d %+v", st, cmd)
	}
	queueEvents := openStream(t, p, "?kind=queue&device="+child)

	// The gateway is back and announces the child: both arrive, in order.
	gw = dialGateway(t, p, gwd)
	gw.publish(t, topicOf(gwd.ID, "up", "gw/children"), `{"join":[{"c":"v1"}]}`)
	var req struct {
		C      string          `json:"c"`
		ID     string          `json:"id"`
		Method string          `json:"method"`
		Args   json.RawMessage `json:"args"`
	}
	json.Unmarshal(gw.next(t, topicOf(gwd.ID, "down", "gw/rpc")), &req)
	if req.C != "v1" || req.ID != queued.ID || req.Method != "open" || string(req.Args) != `{"for":5}` {
		t.Fatalf("queued request %+v", req)
	}
	var down struct {
		C    string `json:"c"`
		Kind string `json:"kind"`
		Msg  struct {
			ID string `json:"id"`
			F  string `json:"f"`
			V  bool   `json:"v"`
		} `json:"msg"`
	}
	json.Unmarshal(gw.next(t, topicOf(gwd.ID, "down", "gw/child")), &down)
	if down.C != "v1" || down.Kind != "feed" || down.Msg.ID != cmd.ID || down.Msg.F != "valve" || !down.Msg.V {
		t.Fatalf("queued feed command %+v", down)
	}
	gw.publish(t, topicOf(gwd.ID, "up", "gw/rpc"), fmt.Sprintf(`{"c":"v1","id":%q,"result":"opened"}`, req.ID))
	gw.publish(t, topicOf(gwd.ID, "up", "gw/ack"), fmt.Sprintf(`{"c":"v1","ids":[%q]}`, cmd.ID))
	if c := waitState(t, p, queued.ID, "succeeded"); string(c.Result) != `"opened"` {
		t.Fatalf("call %+v", c)
	}
	for {
		e := next(t, queueEvents)
		var m struct {
			ID    string `json:"id"`
			State string `json:"state"`
		}
		json.Unmarshal(e.data, &m)
		if m.ID == cmd.ID && m.State == "delivered" {
			break
		}
	}
	// Unknown children's acknowledgements are refused.
	gw.publish(t, topicOf(gwd.ID, "up", "gw/ack"), `{"c":"nope","ids":["x"]}`)
	if e := errorReply(t, gw); e.Code != "unknown_child" || e.Kind != "gw/ack" {
		t.Fatalf("error reply %+v", e)
	}
}
