package protocol_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/outpost-iot/outpost/protocol"
)

// The fuzz targets below cover every decoder that takes outside input. Each
// asserts that the decoder never panics, that what it accepts obeys the
// documented rules, and that an accepted message survives a round trip:
// encoding the decoded value and decoding it again yields the same message.
// Seed inputs live in testdata/fuzz/<FuzzName>/ as well as in f.Add calls.

// codeOf returns the code of a *protocol.Error, failing the test for any
// other error type: decoders promise coded errors.
func codeOf(t *testing.T, err error) string {
	t.Helper()
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *protocol.Error", err, err)
	}
	return pe.Code
}

// sameJSON reports whether two encoded JSON values are equal as JSON
// (whitespace and escaping aside).
func sameJSON(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if da.Decode(&x) != nil || db.Decode(&y) != nil {
		return bytes.Equal(a, b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// validUTF8 replaces each byte of an invalid UTF-8 sequence with U+FFFD, as
// encoding/json does.
func validUTF8(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r)
	}
	return b.String()
}

// strictOK fails the test unless an accepted payload is strict JSON: valid
// UTF-8, no duplicate keys, no oversized number (issue 12, items 8, 16).
func strictOK(t *testing.T, payload []byte) {
	t.Helper()
	if !utf8.Valid(payload) {
		t.Fatalf("accepted a payload that is not valid UTF-8: %q", payload)
	}
	if err := protocol.CheckJSON(payload); err != nil {
		t.Fatalf("accepted a payload that is not strict JSON (%v): %q", err, payload)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("re-encode %+v: %v", v, err)
	}
	return b
}

func FuzzDecodeTelemetry(f *testing.F) {
	for _, s := range []string{
		`{"id":"b-1","r":[{"f":"temperature","v":21.5,"t":1700000000000}]}`,
		`{"r":[{"f":"door","v":true},{"f":"status","v":"ok","t":1},{"f":"n","v":-0.5e3}]}`,
		`{"r":[]}`,
		`{"id":"","r":[{"f":"x","v":null}]}`,
		`{"r":[{"f":"bad feed","v":1},{"f":"a","v":{"x":1}},{"f":"b","v":[1]},{"f":"c","v":1,"t":-1}]}`,
		`{"r":[{"f":"c","v":1,"t":4102444800001}]}`,
		`{"r":[{"f":"c","v":"\u00e9\ud83d\ude00<>&","t":4102444800000}]}`,
		`{"ID":"upper","R":[{"F":"x","V":1,"T":2}]}`,
		`{"r":null}`,
		`{"r":[{"f":"x","v":1,"t":1.5}]}`,
		`{"r":[{"f":"x","v":1e400}]}`,
		`null`,
		`[]`,
		``,
		`{"id":"` + strings.Repeat("x", 65) + `","r":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		tm, err := protocol.DecodeTelemetry(payload)
		if err != nil {
			if c := codeOf(t, err); c != protocol.CodeInvalid && c != protocol.CodeTooLarge {
				t.Fatalf("decode error code %q", c)
			}
			return
		}
		if len(payload) > protocol.MaxMessageBytes {
			t.Fatalf("accepted a payload of %d bytes", len(payload))
		}
		strictOK(t, payload)
		if tm.Readings == nil || len(tm.Readings) > protocol.MaxReadingsPerMessage || len(tm.ID) > protocol.MaxBatchIDLen {
			t.Fatalf("accepted a batch breaking the limits: id %q, %d readings (nil %v)", tm.ID, len(tm.Readings), tm.Readings == nil)
		}
		valid := make([]bool, len(tm.Readings))
		for i, r := range tm.Readings {
			err := protocol.ValidateReading(r)
			if err != nil {
				if c := codeOf(t, err); c != protocol.CodeInvalid && c != protocol.CodeTooLarge {
					t.Fatalf("reading %d: error code %q", i, c)
				}
				continue
			}
			valid[i] = true
			if protocol.ValidFeed(r.Feed) != nil || r.TS < 0 || r.TS > protocol.MaxTimestamp {
				t.Fatalf("reading %d accepted: %+v", i, r)
			}
			if _, err := protocol.ValueKind(r.Value); err != nil {
				t.Fatalf("reading %d accepted with a bad value %q: %v", i, r.Value, err)
			}
		}

		// Round trip: encode, decode, encode again.
		b1 := mustMarshal(t, tm)
		if len(b1) > protocol.MaxMessageBytes {
			return // re-encoding escaped characters and grew past the limit
		}
		tm2, err := protocol.DecodeTelemetry(b1)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b1, err)
		}
		if b2 := mustMarshal(t, tm2); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
		if tm2.ID != tm.ID || len(tm2.Readings) != len(tm.Readings) {
			t.Fatalf("round trip changed the batch: %+v -> %+v", tm, tm2)
		}
		for i, r := range tm.Readings {
			r2 := tm2.Readings[i]
			if r2.Feed != r.Feed && utf8.ValidString(r.Feed) {
				t.Fatalf("reading %d feed %q -> %q", i, r.Feed, r2.Feed)
			}
			if r2.TS != r.TS {
				t.Fatalf("reading %d ts %d -> %d", i, r.TS, r2.TS)
			}
			if valid[i] {
				if !sameJSON(r.Value, r2.Value) {
					t.Fatalf("reading %d value %s -> %s", i, r.Value, r2.Value)
				}
				err := protocol.ValidateReading(r2)
				if err != nil && !(codeOf(t, err) == protocol.CodeTooLarge && len(r2.Value) > len(r.Value)) {
					t.Fatalf("reading %d valid before the round trip, now: %v", i, err)
				}
			}
		}
	})
}

func FuzzValueKind(f *testing.F) {
	for _, s := range []string{
		`0`, `-0`, `21.5`, `-1.5e-3`, `1e308`, `1e309`, `-1e400`, `1e-400`, `01`, `1.`, `.5`, `-`, `+1`,
		`0x10`, `0x1p-2`, `Inf`, `-Inf`, `NaN`, `1_000`, `true`, `false`, `tru`, `True`, `null`,
		`"ok"`, `""`, `"\u00e9"`, `"\ud800"`, `"unterminated`, `"a"b"`, `{}`, `[]`, ` 1 `, `{"lat":45.1,"lon":13.6}`, `{"lat":91,"lon":0}`, `{"lat":1,"lon":2,"alt":3,"x":1}`, "\t\"x\"\n",
		`"` + strings.Repeat("a", protocol.MaxStringValue-2) + `"`,
		`"` + strings.Repeat("a", protocol.MaxStringValue-1) + `"`,
		`12345678901234567890123456789`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		kind, err := protocol.ValueKind(v)
		if err != nil {
			if kind != "" {
				t.Fatalf("kind %q with error %v", kind, err)
			}
			return
		}
		trimmed := bytes.TrimSpace(v)
		if !json.Valid(trimmed) {
			t.Fatalf("accepted invalid JSON %q", v)
		}
		var x any
		if err := json.Unmarshal(trimmed, &x); err != nil {
			t.Fatalf("accepted %q, but it does not decode: %v", v, err)
		}
		var enc json.RawMessage
		switch kind {
		case protocol.ValueNumber:
			f, err := strconv.ParseFloat(string(trimmed), 64)
			if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				t.Fatalf("number %q is not finite: %v %v", v, f, err)
			}
			if _, ok := x.(float64); !ok {
				t.Fatalf("number %q decodes to %T", v, x)
			}
			enc, err = protocol.EncodeValue(f)
			if err != nil {
				t.Fatalf("EncodeValue(%v) from %q: %v", f, v, err)
			}
			if g, _ := strconv.ParseFloat(string(enc), 64); g != f {
				t.Fatalf("EncodeValue(%v) = %s, decodes to %v", f, enc, g)
			}
		case protocol.ValueBool:
			b, ok := x.(bool)
			if !ok {
				t.Fatalf("bool %q decodes to %T", v, x)
			}
			if enc, err = protocol.EncodeValue(b); err != nil || string(enc) != string(trimmed) {
				t.Fatalf("EncodeValue(%v) = %s, %v", b, enc, err)
			}
		case protocol.ValueString:
			s, ok := x.(string)
			if !ok {
				t.Fatalf("string %q decodes to %T", v, x)
			}
			if len(trimmed) > protocol.MaxStringValue {
				t.Fatalf("accepted a string of %d bytes", len(trimmed))
			}
			enc, err = protocol.EncodeValue(s)
			if err != nil {
				// Go escapes <, >, & and invalid UTF-8, so the SDK's encoding
				// of the same string may be longer than what was sent.
				if c := codeOf(t, err); c != protocol.CodeTooLarge {
					t.Fatalf("EncodeValue(%q): %v", s, err)
				}
				return
			}
			var s2 string
			if err := json.Unmarshal(enc, &s2); err != nil || s2 != s {
				t.Fatalf("EncodeValue(%q) = %s, decodes to %q (%v)", s, enc, s2, err)
			}
		case protocol.ValueLocation:
			var l protocol.Location
			if err := json.Unmarshal(trimmed, &l); err != nil {
				t.Fatalf("location %q does not decode: %v", v, err)
			}
			if enc, err = protocol.EncodeValue(l); err != nil {
				t.Fatalf("EncodeValue(%+v) from %q: %v", l, v, err)
			}
		default:
			t.Fatalf("unknown kind %q", kind)
		}
		if k2, err := protocol.ValueKind(enc); err != nil || k2 != kind {
			t.Fatalf("re-encoded %s has kind %q, %v; want %q", enc, k2, err, kind)
		}
	})
}

func FuzzEncodeValue(f *testing.F) {
	f.Add(0.0, int64(0), "", false, uint8(0))
	f.Add(21.5, int64(-42), "ok", true, uint8(1))
	f.Add(math.MaxFloat64, int64(math.MinInt64), "<tag>&\"quote\"", false, uint8(2))
	f.Add(math.SmallestNonzeroFloat64, int64(math.MaxInt64), "\xff\xfe", true, uint8(3))
	f.Add(-0.1, int64(1), strings.Repeat("é", 3000), true, uint8(4))
	f.Fuzz(func(t *testing.T, fl float64, n int64, s string, b bool, which uint8) {
		var in any
		switch which % 5 {
		case 0:
			in = fl
		case 1:
			in = n
		case 2:
			in = s
		case 3:
			in = b
		case 4:
			in = float32(fl)
		}
		raw, err := protocol.EncodeValue(in)
		if err != nil {
			switch x := in.(type) {
			case float64:
				if !math.IsNaN(x) && !math.IsInf(x, 0) {
					t.Fatalf("EncodeValue(%v): %v", x, err)
				}
			case float32:
				if !math.IsNaN(float64(x)) && !math.IsInf(float64(x), 0) {
					t.Fatalf("EncodeValue(float32 %v): %v", x, err)
				}
			case string:
				if codeOf(t, err) != protocol.CodeTooLarge {
					t.Fatalf("EncodeValue(%q): %v", x, err)
				}
			default:
				t.Fatalf("EncodeValue(%v): %v", in, err)
			}
			return
		}
		if _, err := protocol.ValueKind(raw); err != nil {
			t.Fatalf("EncodeValue(%v) = %s, which ValueKind rejects: %v", in, raw, err)
		}
		if err := protocol.ValidateReading(protocol.Reading{Feed: "f", Value: raw}); err != nil {
			t.Fatalf("EncodeValue(%v) = %s, which ValidateReading rejects: %v", in, raw, err)
		}
		switch x := in.(type) {
		case float64:
			if g, err := strconv.ParseFloat(string(raw), 64); err != nil || g != x {
				t.Fatalf("EncodeValue(%v) = %s -> %v, %v", x, raw, g, err)
			}
		case float32:
			if g, err := strconv.ParseFloat(string(raw), 32); err != nil || float32(g) != x {
				t.Fatalf("EncodeValue(float32 %v) = %s -> %v, %v", x, raw, g, err)
			}
		case int64:
			if string(raw) != strconv.FormatInt(x, 10) {
				t.Fatalf("EncodeValue(%d) = %s", x, raw)
			}
		case bool:
			if string(raw) != strconv.FormatBool(x) {
				t.Fatalf("EncodeValue(%v) = %s", x, raw)
			}
		case string:
			var s2 string
			if err := json.Unmarshal(raw, &s2); err != nil || s2 != validUTF8(x) {
				t.Fatalf("EncodeValue(%q) = %s -> %q, %v", x, raw, s2, err)
			}
		}
	})
}

func FuzzDecodeRPCRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":"a1","method":"blink","args":{"times":3},"deadline":1700000005000}`,
		`{"id":"a1","method":"rpc_list"}`,
		`{"id":"a1","method":"m","args":null}`,
		`{"id":"a1","method":"m","args":[1, 2 ,3]}`,
		`{"id":"","method":"m"}`,
		`{"id":"a1","method":"bad method"}`,
		`{"id":"a1","method":"m","deadline":-5}`,
		`{"id":"a1","method":"m","deadline":"soon"}`,
		`{"id":1,"method":"m"}`,
		`{"ID":"x","METHOD":"y"}`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		req, err := protocol.DecodeRPCRequest(payload)
		if err != nil {
			if c := codeOf(t, err); c != protocol.CodeInvalid && c != protocol.CodeTooLarge {
				t.Fatalf("decode error code %q", c)
			}
			return
		}
		if req.ID == "" || len(req.ID) > protocol.MaxBatchIDLen || protocol.ValidMethod(req.Method) != nil {
			t.Fatalf("accepted %+v", req)
		}
		b1 := mustMarshal(t, req)
		if len(b1) > protocol.MaxMessageBytes {
			return
		}
		req2, err := protocol.DecodeRPCRequest(b1)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b1, err)
		}
		if b2 := mustMarshal(t, req2); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
		if (req2.ID != req.ID && utf8.ValidString(req.ID)) || req2.Method != req.Method || req2.Deadline != req.Deadline || !sameJSON(req.Args, req2.Args) {
			t.Fatalf("round trip changed the request: %+v -> %+v", req, req2)
		}
	})
}

func FuzzDecodeRPCResponse(f *testing.F) {
	for _, s := range []string{
		`{"id":"a1","result":{"sum":42}}`,
		`{"id":"a1","result":null}`,
		`{"id":"a1"}`,
		`{"id":"a1","error":{"code":"handler_error","message":"sensor 3 is not responding"}}`,
		`{"id":"a1","error":{"message":"no code"}}`,
		`{"id":"a1","error":null,"result":[1, 2]}`,
		`{"id":"a1","error":{},"result":1}`,
		`{"id":"a1","error":"text"}`,
		`{"id":"","result":1}`,
		`{"id":"` + strings.Repeat("i", 65) + `","result":1}`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		resp, err := protocol.DecodeRPCResponse(payload)
		if err != nil {
			if c := codeOf(t, err); c != protocol.CodeInvalid && c != protocol.CodeTooLarge {
				t.Fatalf("decode error code %q", c)
			}
			return
		}
		if resp.ID == "" || len(resp.ID) > protocol.MaxBatchIDLen {
			t.Fatalf("accepted id %q", resp.ID)
		}
		strictOK(t, payload)
		if resp.Error != nil && resp.Error.Code == "" {
			t.Fatalf("error without a code: %+v", resp.Error)
		}
		if resp.Error == nil && len(resp.Result) == 0 {
			t.Fatalf("neither result nor error: %+v", resp)
		}
		b1 := mustMarshal(t, resp)
		if len(b1) > protocol.MaxMessageBytes {
			return
		}
		resp2, err := protocol.DecodeRPCResponse(b1)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b1, err)
		}
		if b2 := mustMarshal(t, resp2); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
		if (resp2.ID != resp.ID && utf8.ValidString(resp.ID)) || !sameJSON(resp.Result, resp2.Result) || (resp.Error == nil) != (resp2.Error == nil) {
			t.Fatalf("round trip changed the response: %+v -> %+v", resp, resp2)
		}
		if resp.Error != nil && utf8.ValidString(resp.Error.Code+resp.Error.Message) && *resp.Error != *resp2.Error {
			t.Fatalf("round trip changed the error: %+v -> %+v", resp.Error, resp2.Error)
		}
	})
}

func FuzzDecodeErrorReply(f *testing.F) {
	for _, s := range []string{
		`{"kind":"telemetry","id":"b-1","code":"invalid","message":"feed reference is empty","rejected":2}`,
		`{"kind":"bogus","code":"unknown_kind","message":"unknown message kind \"bogus\""}`,
		`{"kind":"rpc","code":"invalid","message":"x","rejected":-1}`,
		`{"rejected":1e3}`, `{"rejected":1.5}`, `[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		e, err := protocol.DecodeErrorReply(payload)
		if err != nil {
			if e != (protocol.ErrorReply{}) {
				t.Fatalf("error %v with a non-zero reply %+v", err, e)
			}
			return
		}
		b1 := mustMarshal(t, e)
		e2, err := protocol.DecodeErrorReply(b1)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b1, err)
		}
		if b2 := mustMarshal(t, e2); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
		if utf8.ValidString(e.Kind+e.ID+e.Code+e.Message) && e2 != e {
			t.Fatalf("round trip changed the reply: %+v -> %+v", e, e2)
		}
	})
}

// refParseTopic is an independent reading of the topic scheme in
// docs/protocol.md: outpost/v1/{id}/{up|down}/{kind}, kind one or more
// non-empty levels without wildcards.
func refParseTopic(topic string) (protocol.ParsedTopic, bool) {
	levels := strings.Split(topic, "/")
	if len(levels) < 5 || levels[0] != "outpost" || levels[1] != "v1" || protocol.ValidID(levels[2]) != nil {
		return protocol.ParsedTopic{}, false
	}
	if levels[3] != "up" && levels[3] != "down" {
		return protocol.ParsedTopic{}, false
	}
	for _, l := range levels[4:] {
		if l == "" || strings.ContainsAny(l, "+#") {
			return protocol.ParsedTopic{}, false
		}
	}
	return protocol.ParsedTopic{DeviceID: levels[2], Dir: levels[3], Kind: strings.Join(levels[4:], "/")}, true
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{
		"outpost/v1/d-abc/up/telemetry", "outpost/v1/d-abc/down/rpc", "outpost/v1/d-abc/up/raw/sensors/a",
		"outpost/v1/d-abc/up/", "outpost/v1/d-abc/up", "outpost/v1/d-abc/up//x", "outpost/v1/d-abc/up/x/",
		"outpost/v1/d-abc/sideways/x", "outpost/v1/+/up/telemetry", "outpost/v1/d-abc/up/#", "outpost/v1/d-abc/up/a+b",
		"outpost/v2/d-abc/up/telemetry", "/outpost/v1/d-abc/up/telemetry", "outpost/v1//up/telemetry",
		"outpost/v1/d.abc/up/telemetry", "outpost/v1/" + strings.Repeat("a", 65) + "/up/x", "", "outpost/v1/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		p, err := protocol.ParseTopic(topic)
		want, ok := refParseTopic(topic)
		if (err == nil) != ok {
			t.Fatalf("ParseTopic(%q) = %+v, %v; the documented scheme says ok=%v", topic, p, err, ok)
		}
		if err != nil {
			if !errors.Is(err, protocol.ErrBadTopic) || p != (protocol.ParsedTopic{}) {
				t.Fatalf("ParseTopic(%q) = %+v, %v", topic, p, err)
			}
			return
		}
		if p != want {
			t.Fatalf("ParseTopic(%q) = %+v, want %+v", topic, p, want)
		}
		if got := protocol.Topic(p.DeviceID, p.Dir, p.Kind); got != topic {
			t.Fatalf("Topic(ParseTopic(%q)) = %q", topic, got)
		}
		if !protocol.FilterAllowed(p.DeviceID, topic) {
			t.Fatalf("device %s may not subscribe to its own topic %q", p.DeviceID, topic)
		}
	})
}

// matches reports whether an MQTT topic filter matches a topic name
// (MQTT 3.1.1 section 4.7; topics starting with $ aside).
func matches(filter, topic string) bool {
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) {
			return false
		}
		if f != "+" && f != tl[i] {
			return false
		}
	}
	return len(fl) == len(tl)
}

func FuzzFilterAllowed(f *testing.F) {
	for _, s := range [][2]string{
		{"d-abc", "outpost/v1/d-abc/down/#"}, {"d-abc", "outpost/v1/d-abc/#"}, {"d-abc", "outpost/v1/d-abc"},
		{"d-abc", "outpost/v1/d-abc/+/rpc"}, {"d-abc", "#"}, {"d-abc", "+/v1/d-abc/down/#"}, {"d-abc", "outpost/#"},
		{"d-abc", "outpost/v1/+/down/#"}, {"d-abc", "outpost/v1/d-abcd/#"}, {"d-abc", "outpost/v1/d-ab/#"},
		{"d-abc", "outpost/v1/d-abc#"}, {"d-abc", "$share/g/outpost/v1/d-abc/#"}, {"d-abc", "outpost/v1/d-abc/../d-xyz"},
		{"", "outpost/v1/"}, {"", "outpost/v1//down/#"}, {"+", "outpost/v1/+/down/#"}, {"#", "outpost/v1/#"},
		{"a/up", "outpost/v1/a/up/#"}, {"d-abc", ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, deviceID, filter string) {
		if !protocol.FilterAllowed(deviceID, filter) {
			return
		}
		if protocol.ValidID(deviceID) != nil {
			t.Fatalf("FilterAllowed(%q, %q) with an invalid device id", deviceID, filter)
		}
		levels := strings.Split(filter, "/")
		if len(levels) < 3 || levels[0] != "outpost" || levels[1] != "v1" || levels[2] != deviceID {
			t.Fatalf("FilterAllowed(%q, %q): the first three levels are not outpost/v1/%s", deviceID, filter, deviceID)
		}
		// No topic of another device may match, whatever follows.
		for _, other := range []string{deviceID + "x", deviceID[:len(deviceID)-1], "other", "+", "#", ""} {
			if other == deviceID {
				continue
			}
			var rest []string
			for _, l := range levels[3:] {
				if l == "+" || l == "#" {
					l = "x"
				}
				rest = append(rest, l)
			}
			for _, topic := range []string{
				strings.Join(append([]string{"outpost", "v1", other}, rest...), "/"),
				protocol.UpTopic(other, "telemetry"),
				protocol.DownTopic(other, "rpc"),
				"outpost/v1/" + other,
			} {
				if matches(filter, topic) {
					t.Fatalf("FilterAllowed(%q, %q), yet the filter matches %q", deviceID, filter, topic)
				}
			}
		}
	})
}
