package protocol_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

// referenceDecode is DecodeTelemetry as it was written with
// json.Unmarshal: the behaviour the one-pass decoder must keep.
//
// It decodes with protocol.Unmarshal, json.Unmarshal behind the strict
// check every device payload passes (exact field names, no duplicate
// keys, valid UTF-8, bounded numbers), as DecodeTelemetry does.
func referenceDecode(p []byte) (protocol.Telemetry, bool) {
	var t protocol.Telemetry
	if len(p) > protocol.MaxMessageBytes || protocol.Unmarshal(p, &t) != nil || t.Readings == nil ||
		len(t.Readings) > protocol.MaxReadingsPerMessage || len(t.ID) > protocol.MaxBatchIDLen {
		return protocol.Telemetry{}, false
	}
	return t, true
}

var decodeSeeds = []string{
	`{"id":"b-1","r":[{"f":"t","v":21.5,"t":1700000000000},{"f":"s","v":"ok"}]}`,
	`{"r":[]}`, `{}`, `null`, `[]`, ``, ` `, `"x"`, `1`, `{"r":null}`, `{"r":{}}`, `{"r":"x"}`, `{"r":[1]}`, `{"r":[null]}`,
	`{"ID":"upper","R":[{"F":"x","V":1,"T":2}]}`, `{"Id":"a","iD":"b","r":[]}`,
	`{"\u0069d":"escaped key","\u0072":[{"\u0066":"f","\u0076":1}]}`,
	`{"r":[{"f":"a","v":1,"t":5}],"r":[{"f":"b"}]}`, `{"r":[{"f":"a","v":1,"t":5},{"f":"c"}],"r":[null]}`,
	`{"r":[{"f":"a","v":1}],"r":null}`, `{"r":null,"r":[]}`, `{"id":"a","id":null,"r":[]}`,
	`{"r":[{"f":"x","v":1,"t":1.5}]}`, `{"r":[{"f":"x","v":1,"t":1e3}]}`, `{"r":[{"f":"x","v":1,"t":-0}]}`,
	`{"r":[{"f":"x","v":1,"t":99999999999999999999}]}`, `{"r":[{"f":"x","v":1,"t":"1"}]}`, `{"r":[{"f":"x","v":1,"t":null}]}`,
	`{"r":[{"f":"x","v":1e400}]}`, `{"r":[{"f":"x","v":-0.0e-0}]}`, `{"r":[{"f":"x","v":01}]}`, `{"r":[{"f":"x","v":1.}]}`,
	`{"r":[{"f":"x","v":{"lat":1,"lon":[2,{"a":null}]}}]}`, `{"r":[{"f":"x","v":[true,false,null]}]}`, `{"r":[{"f":"x","v":nul}]}`,
	`{"r":[{"f":"x","v":"\ud800"}],"id":"\u00e9\"\\\/\b\f\n\r\t"}`, "{\"r\":[{\"f\":\"\xff\",\"v\":\"\xc3\"}]}", "{\"r\":[],\"id\":\"a\x01\"}",
	`{"r":[{"f":"x","v":"\x"}]}`, `{"r":[{"f":"x","v":"\u12"}]}`, `{"r":[]} x`, `{"r":[],}`, `{"r":[1,]}`, `{"r" []}`, `{r:[]}`,
	"\t{ \"r\" :\n[ { \"f\" : \"x\" , \"v\" : 1 } ] }\r\n", `{"id":7,"r":[]}`, `{"id":["a"],"r":[]}`, `{"r":[{"f":1,"v":1}]}`,
	`{"r":[{"f":"x","v":1,"extra":{"deep":[[[[]]]]}}],"extra":"y"}`,
	`{"id":"` + strings.Repeat("x", 65) + `","r":[]}`,
	`{"r":[` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `]}`,
	`{"r":[{"f":"x","v":` + strings.Repeat("[", 9997) + strings.Repeat("]", 9997) + `}]}`,
	`{"r":[{"f":"x","v":` + strings.Repeat("[", 9998) + strings.Repeat("]", 9998) + `}]}`,
}

func sameTelemetry(a, b protocol.Telemetry) bool {
	if a.ID != b.ID || len(a.Readings) != len(b.Readings) || (a.Readings == nil) != (b.Readings == nil) {
		return false
	}
	for i := range a.Readings {
		x, y := a.Readings[i], b.Readings[i]
		if x.Feed != y.Feed || x.TS != y.TS || !bytes.Equal(x.Value, y.Value) || (x.Value == nil) != (y.Value == nil) {
			return false
		}
	}
	return true
}

func checkAgainstReference(t *testing.T, payload []byte) {
	t.Helper()
	want, ok := referenceDecode(payload)
	got, err := protocol.DecodeTelemetry(payload)
	switch {
	case ok && err != nil:
		t.Fatalf("%q: the reference accepts it, DecodeTelemetry says %v", payload, err)
	case !ok && err == nil:
		t.Fatalf("%q: the reference rejects it, DecodeTelemetry accepts %+v", payload, got)
	case ok && !sameTelemetry(got, want):
		t.Fatalf("%q: DecodeTelemetry = %+v, reference = %+v", payload, got, want)
	}
}

// DecodeTelemetry accepts and rejects what the strict reference does, with
// the same result.
func TestDecodeTelemetryMatchesJSON(t *testing.T) {
	for _, s := range decodeSeeds {
		checkAgainstReference(t, []byte(s))
	}
	for _, n := range []int{1, 50, protocol.MaxReadingsPerMessage} {
		checkAgainstReference(t, sdkTelemetry(n))
	}
}

func FuzzDecodeTelemetryMatchesJSON(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Add(sdkTelemetry(3))
	f.Fuzz(checkAgainstReference)
}

// The decoder allocates the readings once and one string per distinct
// feed, and copies no value: a constant number of allocations, whatever
// the number of readings (json.Unmarshal made two or more per reading).
func TestDecodeTelemetryAllocations(t *testing.T) {
	allocs := func(n int) float64 {
		p := sdkTelemetry(n)
		return testing.AllocsPerRun(100, func() {
			if _, err := protocol.DecodeTelemetry(p); err != nil {
				t.Fatal(err)
			}
		})
	}
	a50, a500 := allocs(50), allocs(500)
	if a50 > 10 || a500 > a50 {
		t.Errorf("%.0f allocations to decode 50 readings, %.0f for 500; want at most 10, and no more for 500", a50, a500)
	}
}
