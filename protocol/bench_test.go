package protocol_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

// telemetryPayload builds a batch like the device SDK sends: n readings of
// a few feeds, mostly numbers, some booleans and strings.
func telemetryPayload(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"id":"7c1e9a0b3f2d-000042","r":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		switch i % 10 {
		case 3:
			fmt.Fprintf(&b, `{"f":"door","v":%v,"t":%d}`, i%20 == 3, 1717243200000+int64(i))
		case 7:
			fmt.Fprintf(&b, `{"f":"status","v":"ok %d","t":%d}`, i, 1717243200000+int64(i))
		default:
			fmt.Fprintf(&b, `{"f":"temperature","v":%d.25,"t":%d}`, i, 1717243200000+int64(i))
		}
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// BenchmarkDecodeTelemetry measures the platform's telemetry hot path in
// protocol: decoding a batch and validating each reading.
func BenchmarkDecodeTelemetry(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		p := telemetryPayload(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(len(p)))
			b.ReportAllocs()
			for b.Loop() {
				t, err := protocol.DecodeTelemetry(p)
				if err != nil {
					b.Fatal(err)
				}
				for _, r := range t.Readings {
					if err := protocol.ValidateReading(r); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkCheckJSON measures the strict pre-pass alone (UTF-8, duplicate
// keys, number length) on the same batches.
func BenchmarkCheckJSON(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		p := telemetryPayload(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(len(p)))
			b.ReportAllocs()
			for b.Loop() {
				if err := protocol.CheckJSON(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
