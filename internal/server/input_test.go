package server_test

// Bad device input must not grow memory or metrics, and must never come
// back out of the API as invalid JSON (issue 12, items 6 and 8).

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

// TestUnknownKindsKeepLabelsBounded publishes thousands of messages on
// unique unknown up/ kinds with 2 KB names. Today's attack grew /metrics
// to 40 MiB and GET /devices/{id} to 39 MiB: every name became a metric
// label and a key of the device's rejection counters. Now they all count
// as "other".
func TestUnknownKindsKeepLabelsBounded(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "namer")
	c := mustDial311(t, p, d)
	const n = 2000
	long := strings.Repeat("k", 2048)
	for i := 0; i < n; i++ {
		// QoS 0, as in the report: nothing waits for the platform.
		tok := c.Publish(topicOf(d.ID, "up", fmt.Sprintf("%s-%d", long, i)), 0, false, "{}")
		if !tok.WaitTimeout(waitFor) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	var dev struct {
		Rejected map[string]int64 `json:"rejected"`
	}
	var body []byte
	outposttest.Eventually(t, 30*time.Second, "every unknown kind counted", func() bool {
		st, b, err := api(p, "GET", "/api/v1/devices/"+d.ID, "")
		if err != nil || st != 200 {
			t.Fatalf("GET device: %d %v", st, err)
		}
		body = b
		dev.Rejected = nil
		if err := json.Unmarshal(b, &dev); err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, v := range dev.Rejected {
			sum += v
		}
		return sum == n
	})
	if len(body) > 4096 {
		t.Errorf("GET /devices/{id} is %d bytes after %d unknown kinds", len(body), n)
	}
	if got := dev.Rejected["other/"+protocol.CodeUnknownKind]; got != n || len(dev.Rejected) != 1 {
		t.Errorf("rejected = %.200v, want {other/unknown_kind: %d}", dev.Rejected, n)
	}
	m := metricsText(t, p)
	if strings.Contains(m, "kkkkkkkk") {
		t.Errorf("a device-chosen kind reached /metrics (%d bytes)", len(m))
	}
	if line := grepLines(m, `outpost_device_rejected_total{code="unknown_kind",kind="other"}`); !strings.HasSuffix(line, fmt.Sprint(n)) {
		t.Errorf("rejected metric: %q", line)
	}
	if len(m) > 256<<10 {
		t.Errorf("/metrics is %d bytes", len(m))
	}
}

// TestInvalidUTF8Rejected sends string values, event data and other
// fields holding invalid UTF-8 (\xff\xfe, as in the report; item 8), and
// messages the lenient decoder used to accept (item 16: duplicate keys
// with the last one winning, field names in another case, a 200,003-byte
// number). Each gets an error reply like other bad input, nothing of it is
// stored, and the API and the stream only ever return valid JSON.
func TestInvalidUTF8Rejected(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "utf8")
	c := mustDial311(t, p, d)
	c.subscribe(t, topicOf(d.ID, "down", "#"))
	errTopic := topicOf(d.ID, "down", "error")
	raws := openStream(t, p, "?kind=raw")

	bad := "\xff\xfe"
	for _, m := range []struct{ kind, payload string }{
		{"telemetry", `{"id":"b-1","r":[{"f":"s","v":"` + bad + `"}]}`},
		{"telemetry", `{"id":"b-2","r":[{"f":"s","v":"ok","x":"` + bad + `"}]}`},
		{"telemetry", `{"id":"b-3","r":[{"f":"s","v":"\udc00"}]}`},
		{"event", `{"name":"door","data":{"by":"` + bad + `"}}`},
		{"notification", `{"title":"t","text":"` + bad + `"}`},
		{"attributes", `{"attributes":[{"name":"model","data_type":"string","value":"` + bad + `"}]}`},
		{"parameters", `{"reported":{"mode":"` + bad + `"}}`},
		{"telemetry", `{"id":"b-4","r":[{"f":"s","v":1,"v":"x"}]}`},
		{"telemetry", `{"id":"b-5","r":[{"F":"s","v":1}]}`},
		{"telemetry", `{"id":"b-6","r":[{"f":"s","v":1` + strings.Repeat("0", 200_002) + `}]}`},
		{"event", `{"name":"door","name":"window"}`},
	} {
		c.publish(t, topicOf(d.ID, "up", m.kind), m.payload)
		var e protocol.ErrorReply
		if err := json.Unmarshal(c.next(t, errTopic), &e); err != nil {
			t.Fatal(err)
		}
		if e.Kind != m.kind || (e.Code != protocol.CodeInvalid && e.Code != protocol.CodeTooLarge) {
			t.Errorf("%s %q: error reply %+v, want kind %s code invalid", m.kind, m.payload, e, m.kind)
		}
	}
	// A raw publish may be any bytes, but is inlined in the stream only
	// when it is valid JSON that stays valid.
	c.publish(t, topicOf(d.ID, "up", "raw/x"), `{"a":"`+bad+`"}`)
	if e := next(t, raws); !utf8.Valid(e.data) || !json.Valid(e.data) || !strings.Contains(string(e.data), `"payload_base64"`) {
		t.Errorf("raw event %q", e.data)
	}
	// The valid control message goes through, and everything the API
	// shows is valid JSON.
	c.publish(t, topicOf(d.ID, "up", "telemetry"), `{"id":"b-ok","r":[{"f":"s","v":"é"}]}`)
	if got := readings(t, p, d.ID, ""); len(got.Readings) != 1 {
		t.Fatalf("readings = %+v, want only the valid one", got.Readings)
	}
	for _, path := range []string{"/telemetry", "/events", "/model", ""} {
		st, b, err := api(p, "GET", "/api/v1/devices/"+d.ID+path, "")
		if err != nil || st != 200 {
			t.Fatalf("GET %s: %d %v", path, st, err)
		}
		if !utf8.Valid(b) || !json.Valid(b) {
			t.Errorf("GET %s returned invalid JSON: %q", path, b)
		}
		if strings.Contains(string(b), "\\ufffd") || strings.Contains(string(b), "\ufffd") {
			t.Errorf("GET %s holds a replacement character: bad input was stored: %s", path, b)
		}
	}
}
