package protocol_test

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

func TestTopics(t *testing.T) {
	if got := protocol.UpTopic("d-abc", protocol.KindTelemetry); got != "outpost/v1/d-abc/up/telemetry" {
		t.Errorf("UpTopic = %q", got)
	}
	if got := protocol.DownTopic("d-abc", protocol.KindRPC); got != "outpost/v1/d-abc/down/rpc" {
		t.Errorf("DownTopic = %q", got)
	}
	if got := protocol.DeviceFilter("d-abc"); got != "outpost/v1/d-abc/down/#" {
		t.Errorf("DeviceFilter = %q", got)
	}
}

func TestParseTopic(t *testing.T) {
	id64 := strings.Repeat("a", protocol.MaxDeviceIDLen)
	for _, tc := range []struct {
		topic string
		want  protocol.ParsedTopic // zero: ErrBadTopic
	}{
		{"outpost/v1/d-abc/up/telemetry", protocol.ParsedTopic{DeviceID: "d-abc", Dir: "up", Kind: "telemetry"}},
		{"outpost/v1/d-abc/down/rpc", protocol.ParsedTopic{DeviceID: "d-abc", Dir: "down", Kind: "rpc"}},
		{"outpost/v1/d-abc/down/error", protocol.ParsedTopic{DeviceID: "d-abc", Dir: "down", Kind: "error"}},
		{"outpost/v1/d-abc/up/raw/sensors/a", protocol.ParsedTopic{DeviceID: "d-abc", Dir: "up", Kind: "raw/sensors/a"}},
		{"outpost/v1/A_z-9/up/x", protocol.ParsedTopic{DeviceID: "A_z-9", Dir: "up", Kind: "x"}},
		{"outpost/v1/" + id64 + "/up/x", protocol.ParsedTopic{DeviceID: id64, Dir: "up", Kind: "x"}},
		{"outpost/v1/d-abc/up/kind with spaces", protocol.ParsedTopic{DeviceID: "d-abc", Dir: "up", Kind: "kind with spaces"}},
		// Not Outpost topics.
		{"", protocol.ParsedTopic{}},
		{"outpost/v1", protocol.ParsedTopic{}},
		{"outpost/v1/", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/up", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/up/", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/up//x", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/up/x//y", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/up/x/", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/sideways/x", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/UP/x", protocol.ParsedTopic{}},
		{"outpost/v1//up/x", protocol.ParsedTopic{}},
		{"outpost/v1/+/up/x", protocol.ParsedTopic{}},
		{"outpost/v1/#", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/up/#", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/up/+", protocol.ParsedTopic{}},
		{"outpost/v1/d-abc/up/a+b", protocol.ParsedTopic{}},
		{"outpost/v1/d.abc/up/x", protocol.ParsedTopic{}},
		{"outpost/v1/" + id64 + "a/up/x", protocol.ParsedTopic{}},
		{"outpost/v2/d-abc/up/x", protocol.ParsedTopic{}},
		{"Outpost/v1/d-abc/up/x", protocol.ParsedTopic{}},
		{"/outpost/v1/d-abc/up/x", protocol.ParsedTopic{}},
		{"$share/g/outpost/v1/d-abc/up/x", protocol.ParsedTopic{}},
	} {
		t.Run(tc.topic, func(t *testing.T) {
			got, err := protocol.ParseTopic(tc.topic)
			if tc.want == (protocol.ParsedTopic{}) {
				if !errors.Is(err, protocol.ErrBadTopic) || got != tc.want {
					t.Fatalf("ParseTopic = %+v, %v; want ErrBadTopic", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseTopic = %+v, %v; want %+v", got, err, tc.want)
			}
			if back := protocol.Topic(got.DeviceID, got.Dir, got.Kind); back != tc.topic {
				t.Fatalf("Topic(parts) = %q", back)
			}
		})
	}
}

func TestFilterAllowed(t *testing.T) {
	for _, tc := range []struct {
		id, filter string
		ok         bool
	}{
		{"d-abc", "outpost/v1/d-abc/down/#", true},
		{"d-abc", "outpost/v1/d-abc/down/rpc", true},
		{"d-abc", "outpost/v1/d-abc/down/+", true},
		{"d-abc", "outpost/v1/d-abc/#", true},
		{"d-abc", "outpost/v1/d-abc/+/rpc", true},
		{"d-abc", "outpost/v1/d-abc/up/telemetry", true},
		{"d-abc", "outpost/v1/d-abc", true},
		// Wider than the device's namespace, or someone else's.
		{"d-abc", "#", false},
		{"d-abc", "+", false},
		{"d-abc", "+/#", false},
		{"d-abc", "outpost/#", false},
		{"d-abc", "outpost/+/d-abc/#", false},
		{"d-abc", "outpost/v1/#", false},
		{"d-abc", "outpost/v1/+/down/#", false},
		{"d-abc", "outpost/v1/+/#", false},
		{"d-abc", "outpost/v1/d-xyz/down/#", false},
		{"d-abc", "outpost/v1/d-abcd/down/#", false},
		{"d-abc", "outpost/v1/d-ab/down/#", false},
		{"d-abc", "outpost/v1/d-abc#", false},
		{"d-abc", "outpost/v1/d-abc+", false},
		{"d-abc", "$share/g/outpost/v1/d-abc/down/#", false},
		{"d-abc", "$SYS/#", false},
		{"d-abc", "/outpost/v1/d-abc/#", false},
		{"d-abc", "", false},
		// Invalid device ids allow nothing.
		{"", "outpost/v1/", false},
		{"", "outpost/v1//down/#", false},
		{"+", "outpost/v1/+/down/#", false},
		{"#", "outpost/v1/#", false},
		{"a/up", "outpost/v1/a/up/#", false},
	} {
		if got := protocol.FilterAllowed(tc.id, tc.filter); got != tc.ok {
			t.Errorf("FilterAllowed(%q, %q) = %v, want %v", tc.id, tc.filter, got, tc.ok)
		}
	}
}

func TestValidNames(t *testing.T) {
	for _, tc := range []struct {
		name             string
		id, feed, method bool
	}{
		{"d-abc_09", true, true, true},
		{"temp.room:1", false, true, true},
		{strings.Repeat("x", 64), true, true, true},
		{strings.Repeat("x", 65), false, false, false},
		{"", false, false, false},
		{"a b", false, false, false},
		{"a/b", false, false, false},
		{"a+", false, false, false},
		{"a#", false, false, false},
		{"é", false, false, false},
		{"a\x00", false, false, false},
	} {
		if got := protocol.ValidID(tc.name) == nil; got != tc.id {
			t.Errorf("ValidID(%q) ok = %v", tc.name, got)
		}
		if got := protocol.ValidFeed(tc.name) == nil; got != tc.feed {
			t.Errorf("ValidFeed(%q) ok = %v", tc.name, got)
		}
		if got := protocol.ValidMethod(tc.name) == nil; got != tc.method {
			t.Errorf("ValidMethod(%q) ok = %v", tc.name, got)
		}
	}
}

func TestValueKind(t *testing.T) {
	maxStr := `"` + strings.Repeat("a", protocol.MaxStringValue-2) + `"`
	for _, tc := range []struct {
		v    string
		kind string // "" means rejected
		code string // for rejections: the *protocol.Error code, "" for a plain error
	}{
		{`0`, protocol.ValueNumber, ""},
		{`-0`, protocol.ValueNumber, ""},
		{`21.5`, protocol.ValueNumber, ""},
		{`-1.5e-3`, protocol.ValueNumber, ""},
		{`1E+2`, protocol.ValueNumber, ""},
		{`1e308`, protocol.ValueNumber, ""},
		{`12345678901234567890123456789`, protocol.ValueNumber, ""},
		{` 42 `, protocol.ValueNumber, ""},
		{`true`, protocol.ValueBool, ""},
		{`false`, protocol.ValueBool, ""},
		{`"ok"`, protocol.ValueString, ""},
		{`""`, protocol.ValueString, ""},
		{`"\u00e9\n"`, protocol.ValueString, ""},
		{maxStr, protocol.ValueString, ""},
		{`"` + strings.Repeat("a", protocol.MaxStringValue-1) + `"`, "", protocol.CodeTooLarge},
		{``, "", ""},
		{`  `, "", ""},
		{`null`, "", ""},
		{`1e309`, "", ""},
		{`-1e400`, "", ""},
		{`NaN`, "", ""},
		{`Inf`, "", ""},
		{`-Inf`, "", ""},
		{`0x10`, "", ""},
		{`01`, "", ""},
		{`1.`, "", ""},
		{`.5`, "", ""},
		{`+1`, "", ""},
		{`-`, "", ""},
		{`True`, "", ""},
		{`tru`, "", ""},
		{`"unterminated`, "", ""},
		{`"a"b"`, "", ""},
		{`{}`, "", ""},
		{`[1]`, "", ""},
		// Strict JSON (issue 12, items 8 and 16).
		{"\"\xff\xfe\"", "", ""},
		{`"\ud800"`, "", ""},
		{`"\udc00\ud800"`, "", ""},
		{`"\ud83d\ude00"`, protocol.ValueString, ""},
		{"1" + strings.Repeat("0", protocol.MaxNumberLen-1), protocol.ValueNumber, ""},
		{"1" + strings.Repeat("0", protocol.MaxNumberLen), "", protocol.CodeTooLarge},
		{"0." + strings.Repeat("0", 200_000) + "1", "", protocol.CodeTooLarge},
		{`{"lat":1,"lon":2,"lat":3}`, "", ""},
	} {
		kind, err := protocol.ValueKind(json.RawMessage(tc.v))
		if kind != tc.kind || (err == nil) != (tc.kind != "") {
			t.Errorf("ValueKind(%.40q) = %q, %v; want %q", tc.v, kind, err, tc.kind)
			continue
		}
		if err != nil {
			var pe *protocol.Error
			isPE := errors.As(err, &pe)
			if (tc.code == "") == isPE || (isPE && pe.Code != tc.code) {
				t.Errorf("ValueKind(%.40q) error %#v, want code %q", tc.v, err, tc.code)
			}
		}
	}
}

func TestEncodeValue(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want string // "" means an error
	}{
		{21.5, `21.5`},
		{float32(21.7), `21.7`},
		{float32(0.1), `0.1`},
		{1e21, `1e+21`},
		{1e-7, `1e-07`},
		{math.MaxFloat64, `1.7976931348623157e+308`},
		{math.Copysign(0, -1), `-0`},
		{42, `42`},
		{int8(-8), `-8`},
		{int16(16), `16`},
		{int32(-32), `-32`},
		{int64(math.MinInt64), `-9223372036854775808`},
		{uint(7), `7`},
		{uint8(8), `8`},
		{uint64(math.MaxUint64), `18446744073709551615`},
		{true, `true`},
		{false, `false`},
		{"ok", `"ok"`},
		{"", `""`},
		{"<&>", `"\u003c\u0026\u003e"`},
		{json.RawMessage(`12.50`), `12.50`},
		{json.RawMessage(`"raw"`), `"raw"`},
		{strings.Repeat("a", protocol.MaxStringValue-2), `"` + strings.Repeat("a", protocol.MaxStringValue-2) + `"`},
		{strings.Repeat("a", protocol.MaxStringValue-1), ""},
		{strings.Repeat("<", 1000), ""}, // escaped to 6002 bytes
		{math.NaN(), ""},
		{math.Inf(1), ""},
		{float32(math.Inf(-1)), ""},
		{nil, ""},
		{[]int{1}, ""},
		{map[string]int{"a": 1}, ""},
		{json.RawMessage(`null`), ""},
		{json.RawMessage(`{"a":1}`), ""},
		{json.Number("1"), ""}, // a named string type is not accepted
	} {
		got, err := protocol.EncodeValue(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("EncodeValue(%T %.20v) = %s, want an error", tc.in, tc.in, got)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("EncodeValue(%T %.20v) = %.40s, %v; want %.40s", tc.in, tc.in, got, err, tc.want)
		}
	}
}

func TestValidateReading(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    protocol.Reading
		code string // "" means valid
	}{
		{"number", protocol.Reading{Feed: "temperature", Value: json.RawMessage(`21.5`), TS: 1700000000000}, ""},
		{"no timestamp", protocol.Reading{Feed: "t", Value: json.RawMessage(`1`)}, ""},
		{"bool", protocol.Reading{Feed: "door.open", Value: json.RawMessage(`true`), TS: 1}, ""},
		{"string", protocol.Reading{Feed: "status:main", Value: json.RawMessage(`"ok"`)}, ""},
		{"max timestamp", protocol.Reading{Feed: "t", Value: json.RawMessage(`1`), TS: protocol.MaxTimestamp}, ""},
		{"timestamp past 2100", protocol.Reading{Feed: "t", Value: json.RawMessage(`1`), TS: protocol.MaxTimestamp + 1}, protocol.CodeInvalid},
		{"negative timestamp", protocol.Reading{Feed: "t", Value: json.RawMessage(`1`), TS: -1}, protocol.CodeInvalid},
		{"empty feed", protocol.Reading{Feed: "", Value: json.RawMessage(`1`)}, protocol.CodeInvalid},
		{"feed with space", protocol.Reading{Feed: "a b", Value: json.RawMessage(`1`)}, protocol.CodeInvalid},
		{"feed with slash", protocol.Reading{Feed: "a/b", Value: json.RawMessage(`1`)}, protocol.CodeInvalid},
		{"long feed", protocol.Reading{Feed: strings.Repeat("f", protocol.MaxFeedLen+1), Value: json.RawMessage(`1`)}, protocol.CodeInvalid},
		{"missing value", protocol.Reading{Feed: "t"}, protocol.CodeInvalid},
		{"null", protocol.Reading{Feed: "t", Value: json.RawMessage(`null`)}, protocol.CodeInvalid},
		{"object", protocol.Reading{Feed: "t", Value: json.RawMessage(`{"a":1}`)}, protocol.CodeInvalid},
		{"array", protocol.Reading{Feed: "t", Value: json.RawMessage(`[1,2]`)}, protocol.CodeInvalid},
		{"long string", protocol.Reading{Feed: "t", Value: json.RawMessage(`"` + strings.Repeat("s", protocol.MaxStringValue) + `"`)}, protocol.CodeTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := protocol.ValidateReading(tc.r)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("ValidateReading: %v", err)
				}
				return
			}
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != tc.code {
				t.Fatalf("ValidateReading = %v, want code %q", err, tc.code)
			}
		})
	}
}

func TestDecodeTelemetry(t *testing.T) {
	many := `{"r":[` + strings.TrimSuffix(strings.Repeat(`{"f":"a","v":1},`, protocol.MaxReadingsPerMessage+1), ",") + `]}`
	for _, tc := range []struct {
		name, payload string
		code          string // "" means accepted
		readings      int
	}{
		{"batch", `{"id":"b-1","r":[{"f":"t","v":21.5,"t":1700000000000},{"f":"s","v":"ok"}]}`, "", 2},
		{"empty batch", `{"r":[]}`, "", 0},
		{"unknown fields ignored", `{"id":"b","r":[{"f":"t","v":1,"unit":"C"}],"extra":{"x":1}}`, "", 1},
		{"bad readings are left to ValidateReading", `{"r":[{"f":"","v":null}]}`, "", 1},
		{"missing r", `{"id":"b-1"}`, protocol.CodeInvalid, 0},
		{"null r", `{"r":null}`, protocol.CodeInvalid, 0},
		{"r not an array", `{"r":{}}`, protocol.CodeInvalid, 0},
		{"not json", `{"r":`, protocol.CodeInvalid, 0},
		{"array", `[]`, protocol.CodeInvalid, 0},
		{"null", `null`, protocol.CodeInvalid, 0},
		{"empty", ``, protocol.CodeInvalid, 0},
		{"fractional timestamp", `{"r":[{"f":"t","v":1,"t":1.5}]}`, protocol.CodeInvalid, 0},
		{"exponent timestamp", `{"r":[{"f":"t","v":1,"t":1.7e12}]}`, protocol.CodeInvalid, 0},
		{"string timestamp", `{"r":[{"f":"t","v":1,"t":"1700000000000"}]}`, protocol.CodeInvalid, 0},
		{"id too long", `{"id":"` + strings.Repeat("i", protocol.MaxBatchIDLen+1) + `","r":[]}`, protocol.CodeInvalid, 0},
		{"id not a string", `{"id":7,"r":[]}`, protocol.CodeInvalid, 0},
		{"too many readings", many, protocol.CodeTooLarge, 0},
		{"too large", `{"r":[],"pad":"` + strings.Repeat("p", protocol.MaxMessageBytes) + `"}`, protocol.CodeTooLarge, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.DecodeTelemetry([]byte(tc.payload))
			if tc.code == "" {
				if err != nil || len(got.Readings) != tc.readings {
					t.Fatalf("DecodeTelemetry = %+v, %v; want %d readings", got, err, tc.readings)
				}
				return
			}
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != tc.code {
				t.Fatalf("DecodeTelemetry error = %v, want code %q", err, tc.code)
			}
		})
	}
}

func TestDecodeRPC(t *testing.T) {
	req, err := protocol.DecodeRPCRequest([]byte(`{"id":"a1","method":"blink","args":{"n":3},"deadline":1700000005000}`))
	if err != nil || req.ID != "a1" || req.Method != "blink" || string(req.Args) != `{"n":3}` || req.Deadline != 1700000005000 {
		t.Fatalf("DecodeRPCRequest = %+v, %v", req, err)
	}
	for _, bad := range []string{`{"method":"m"}`, `{"id":"a","method":""}`, `{"id":"a","method":"a b"}`, `{"id":"a"}`, `nope`} {
		if _, err := protocol.DecodeRPCRequest([]byte(bad)); err == nil {
			t.Errorf("DecodeRPCRequest(%s) accepted", bad)
		}
	}

	for _, tc := range []struct {
		payload, result, code string
	}{
		{`{"id":"a1","result":{"sum":42}}`, `{"sum":42}`, ""},
		{`{"id":"a1"}`, `null`, ""},
		{`{"id":"a1","result":null}`, `null`, ""},
		{`{"id":"a1","error":{"code":"unknown_method","message":"no method \"x\""}}`, "", protocol.CodeUnknownMethod},
		{`{"id":"a1","error":{"message":"boom"}}`, "", protocol.CodeHandlerError},
	} {
		resp, err := protocol.DecodeRPCResponse([]byte(tc.payload))
		if err != nil {
			t.Errorf("DecodeRPCResponse(%s): %v", tc.payload, err)
			continue
		}
		if tc.code != "" {
			if resp.Error == nil || resp.Error.Code != tc.code {
				t.Errorf("DecodeRPCResponse(%s) error = %+v, want code %q", tc.payload, resp.Error, tc.code)
			}
		} else if resp.Error != nil || string(resp.Result) != tc.result {
			t.Errorf("DecodeRPCResponse(%s) = %s, %+v; want %s", tc.payload, resp.Result, resp.Error, tc.result)
		}
	}
	for _, bad := range []string{`{"result":1}`, `{"id":"","result":1}`, `{"id":"a","error":"text"}`, `[]`} {
		if _, err := protocol.DecodeRPCResponse([]byte(bad)); err == nil {
			t.Errorf("DecodeRPCResponse(%s) accepted", bad)
		}
	}

	e, err := protocol.DecodeErrorReply([]byte(`{"kind":"telemetry","id":"b-1","code":"invalid","message":"m","rejected":2}`))
	if err != nil || e != (protocol.ErrorReply{Kind: "telemetry", ID: "b-1", Code: "invalid", Message: "m", Rejected: 2}) {
		t.Fatalf("DecodeErrorReply = %+v, %v", e, err)
	}
}

func TestValidateReadingMessage(t *testing.T) {
	err := protocol.ValidateReading(protocol.Reading{Feed: "log", Value: json.RawMessage(`"` + strings.Repeat("x", 4998) + `"`)})
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeTooLarge || pe.Message != "feed log: string value of 5000 bytes exceeds 4096" {
		t.Fatalf("ValidateReading = %#v", err)
	}
}
