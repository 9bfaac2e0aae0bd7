package protocol_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

// TestDecodersRejectLenientJSON covers issue 12 items 8 and 16: every
// decoder of device input rejects invalid UTF-8 (and lone surrogate
// escapes), duplicate keys, field names that differ from the documented
// ones only in case, and oversized numbers, instead of passing them
// through or letting the last key win.
func TestDecodersRejectLenientJSON(t *testing.T) {
	longNum := "1" + strings.Repeat("0", 200_002) // the 200,003-byte number of the report
	decoders := map[string]func([]byte) error{
		"telemetry":    func(b []byte) error { _, err := protocol.DecodeTelemetry(b); return err },
		"rpc request":  func(b []byte) error { _, err := protocol.DecodeRPCRequest(b); return err },
		"rpc response": func(b []byte) error { _, err := protocol.DecodeRPCResponse(b); return err },
		"event":        func(b []byte) error { _, err := protocol.DecodeEvent(b); return err },
		"notification": func(b []byte) error { _, err := protocol.DecodeNotification(b); return err },
		"attributes":   func(b []byte) error { _, err := protocol.DecodeAttributes(b); return err },
		"parameters":   func(b []byte) error { _, err := protocol.DecodeParametersReport(b); return err },
		"feeds":        func(b []byte) error { _, err := protocol.DecodeFeeds(b); return err },
		"time":         func(b []byte) error { _, err := protocol.DecodeTimeRequest(b); return err },
		"pull":         func(b []byte) error { _, err := protocol.DecodePullRequest(b); return err },
		"error reply":  func(b []byte) error { _, err := protocol.DecodeErrorReply(b); return err },
	}
	tests := []struct {
		decoder, name, payload, code string
	}{
		// The valid form of each message first: the rest must differ only
		// by the defect under test.
		{"telemetry", "valid", `{"id":"b","r":[{"f":"s","v":"ok","t":1}]}`, ""},
		{"telemetry", "unknown field", `{"id":"b","r":[{"f":"s","v":"ok","x":1}],"future":true}`, ""},
		{"telemetry", "invalid UTF-8 in a value", "{\"r\":[{\"f\":\"s\",\"v\":\"\xff\xfe\"}]}", protocol.CodeInvalid},
		{"telemetry", "invalid UTF-8 in an unknown field", "{\"r\":[],\"x\":\"\xc3\"}", protocol.CodeInvalid},
		{"telemetry", "invalid UTF-8 in a key", "{\"r\":[],\"\xff\":1}", protocol.CodeInvalid},
		{"telemetry", "lone surrogate", `{"r":[{"f":"s","v":"\ud800"}]}`, protocol.CodeInvalid},
		{"telemetry", "duplicate top-level key", `{"id":"a","id":"b","r":[]}`, protocol.CodeInvalid},
		{"telemetry", "duplicate key in a reading", `{"r":[{"f":"s","v":1,"v":2}]}`, protocol.CodeInvalid},
		{"telemetry", "duplicate key spelled with an escape", `{"r":[{"f":"s","v":1,"\u0076":2}]}`, protocol.CodeInvalid},
		{"telemetry", "duplicate unknown key", `{"r":[],"x":1,"x":2}`, protocol.CodeInvalid},
		{"telemetry", "upper-case field", `{"R":[{"f":"s","v":1}]}`, protocol.CodeInvalid},
		{"telemetry", "upper-case field in a reading", `{"r":[{"F":"s","v":1}]}`, protocol.CodeInvalid},
		{"telemetry", "case variant next to the field", `{"r":[{"f":"s","v":1,"V":2}]}`, protocol.CodeInvalid},
		{"telemetry", "dotless i is another letter", `{"r":[],"id":"b","ıd":"x"}`, ""},
		{"telemetry", "200,003-byte number", `{"r":[{"f":"s","v":` + longNum + `}]}`, protocol.CodeTooLarge},
		{"telemetry", "long number in an unknown field", `{"r":[],"x":` + longNum + `}`, protocol.CodeTooLarge},
		{"telemetry", "trailing JSON", `{"r":[]}{"r":[]}`, protocol.CodeInvalid},

		{"rpc response", "valid", `{"id":"r1","result":{"a":"é"}}`, ""},
		{"rpc response", "invalid UTF-8 in the result", "{\"id\":\"r1\",\"result\":{\"a\":\"\xff\"}}", protocol.CodeInvalid},
		{"rpc response", "duplicate key in the result", `{"id":"r1","result":{"a":1,"a":2}}`, protocol.CodeInvalid},
		{"rpc response", "case variant of id", `{"ID":"r1","result":1}`, protocol.CodeInvalid},
		{"rpc response", "case variant in the error", `{"id":"r1","error":{"Code":"x","message":"m"}}`, protocol.CodeInvalid},
		{"rpc response", "long s folds to s", `{"id":"r1","reſult":1}`, protocol.CodeInvalid},
		{"rpc response", "result keys are free", `{"id":"r1","result":{"ID":1,"id":2}}`, ""},
		{"rpc request", "valid", `{"id":"a","method":"m","args":[1,2]}`, ""},
		{"rpc request", "duplicate method", `{"id":"a","method":"m","method":"reset"}`, protocol.CodeInvalid},

		{"event", "valid", `{"name":"door","data":{"open":true,"by":"é"}}`, ""},
		{"event", "invalid UTF-8 in data", "{\"name\":\"door\",\"data\":{\"by\":\"\xff\xfe\"}}", protocol.CodeInvalid},
		{"event", "duplicate key in data", `{"name":"door","data":{"a":1,"a":2}}`, protocol.CodeInvalid},
		{"event", "long number in data", `{"name":"door","data":` + longNum + `}`, protocol.CodeTooLarge},
		{"notification", "valid", `{"title":"t","text":"x"}`, ""},
		{"notification", "invalid UTF-8 in text", "{\"title\":\"t\",\"text\":\"\xff\"}", protocol.CodeInvalid},
		{"notification", "upper-case Title", `{"Title":"t","text":"x"}`, protocol.CodeInvalid},
		{"attributes", "valid", `{"attributes":[{"name":"model","data_type":"string","value":"x"}]}`, ""},
		{"attributes", "duplicate attribute key", `{"attributes":[{"name":"model","name":"serial","data_type":"string","value":"x"}]}`, protocol.CodeInvalid},
		{"parameters", "valid", `{"reported":{"rate":5,"Rate":6}}`, ""},
		{"parameters", "duplicate parameter", `{"reported":{"rate":5,"rate":6}}`, protocol.CodeInvalid},
		{"parameters", "case variant of reported", `{"Reported":{"rate":5}}`, protocol.CodeInvalid},
		{"feeds", "valid", `{"register":[{"ref":"t","data_type":"number"}]}`, ""},
		{"feeds", "case variant in a definition", `{"register":[{"ref":"t","Data_Type":"number"}]}`, protocol.CodeInvalid},
		{"time", "valid", `{"id":"t1","sent":1}`, ""},
		{"time", "duplicate sent", `{"id":"t1","sent":1,"sent":2}`, protocol.CodeInvalid},
		{"pull", "valid", `{"id":"p1"}`, ""},
		{"pull", "case variant", `{"Id":"p1"}`, protocol.CodeInvalid},
		{"error reply", "valid", `{"kind":"telemetry","code":"invalid","message":"m"}`, ""},
		{"error reply", "duplicate code", `{"kind":"telemetry","code":"invalid","code":"x","message":"m"}`, protocol.CodeInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.decoder+"/"+tt.name, func(t *testing.T) {
			err := decoders[tt.decoder]([]byte(tt.payload))
			if tt.code == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %.80q", tt.payload)
			}
			if c := codeOf(t, err); c != tt.code {
				t.Fatalf("code %q (%v), want %q", c, err, tt.code)
			}
			if len(err.Error()) > 300 {
				t.Fatalf("error message of %d bytes echoes the input", len(err.Error()))
			}
		})
	}
}

func TestCheckJSON(t *testing.T) {
	deep := strings.Repeat("[", 10_001) + strings.Repeat("]", 10_001)
	manyKeys := func(dupAt int) string {
		var b strings.Builder
		b.WriteString("{")
		for i := 0; i < 100; i++ {
			if i > 0 {
				b.WriteString(",")
			}
			k := i
			if i == dupAt {
				k = 3
			}
			b.WriteString(`"k` + strings.Repeat("x", k) + `":1`)
		}
		b.WriteString("}")
		return b.String()
	}
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{`{}`, true}, {` [1, "a", true, false, null, {"a": [ ]}, -0.5e+3] `, true},
		{manyKeys(-1), true}, {manyKeys(50), false}, {manyKeys(5), false},
		{`{"a":1,"A":1}`, true}, {`{"a":{"b":1},"b":1}`, true}, {`[{"a":1},{"a":1}]`, true},
		{`{"a":1} x`, false}, {`{"a":1}{}`, false}, {`1 2`, false}, {``, false}, {`{`, false},
		{`{"a" 1}`, false}, {`{"a":1,}`, false}, {`[1,]`, false}, {`{1:1}`, false},
		{`01`, false}, {`1.`, false}, {`-`, false}, {`1e`, false}, {`.5`, false}, {`tru`, false},
		{"\"\t\"", false}, {`"\x"`, false}, {`"\u12"`, false}, {`"\ud83d\ude00"`, true},
		{`"\ude00"`, false}, {`"\ud83d"`, false}, {`"\ud83dx"`, false}, {`"\ud83d\u0041"`, false},
		{"\"\xed\xa0\x80\"", false}, // a surrogate encoded directly in UTF-8
		{deep, false}, {strings.Repeat("[", 100) + strings.Repeat("]", 100), true},
	} {
		err := protocol.CheckJSON([]byte(tt.in))
		if (err == nil) != tt.ok {
			t.Errorf("CheckJSON(%.60q) = %v, want ok %v", tt.in, err, tt.ok)
		}
	}
}

func TestUnmarshalExactFieldNames(t *testing.T) {
	var v struct {
		Name  string `json:"name"`
		Inner *struct {
			Value int `json:"value"`
		} `json:"inner"`
		Tags  []struct{ K string } `json:"tags"`
		Extra map[string]struct {
			N int `json:"n"`
		} `json:"extra"`
	}
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{`{"name":"a","inner":{"value":1},"tags":[{"K":"x"}],"extra":{"Any":{"n":1}}}`, true},
		{`{"Name":"a"}`, false},
		{`{"inner":{"Value":1}}`, false},
		{`{"tags":[{"k":"x"}]}`, false},
		{`{"extra":{"a":{"N":1}}}`, false},
		{`{"unknown":{"Name":1}}`, true},
		{`{"name":"a"} {}`, false},
	} {
		err := protocol.Unmarshal([]byte(tt.in), &v)
		if (err == nil) != tt.ok {
			t.Errorf("Unmarshal(%s) = %v, want ok %v", tt.in, err, tt.ok)
		}
	}
}

// FuzzCheckJSON: what CheckJSON accepts is valid JSON (encoding/json
// agrees) and valid UTF-8, and Unmarshal accepts it too.
func FuzzCheckJSON(f *testing.F) {
	for _, s := range []string{
		`{"a":[1,"x",true,null,{"b":-1.5e3}]}`, `{"a":1,"a":2}`, "\"\xff\"", `"\ud800"`, `"\ud83d\ude00"`,
		`{"k":1,"\u006b":2}`, `1` + strings.Repeat("0", 70), `[]`, ` {} `, `{} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := protocol.CheckJSON(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		strictOK(t, b)
		if !json.Valid(b) {
			t.Fatalf("CheckJSON accepted %q, encoding/json does not", b)
		}
		var x json.RawMessage
		if err := protocol.Unmarshal(b, &x); err != nil {
			t.Fatalf("Unmarshal(%q): %v", b, err)
		}
	})
}
