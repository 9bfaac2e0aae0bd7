package protocol_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

// sdkTelemetry is a telemetry message as the device SDK seals it: n
// readings over four feeds, numbers, millisecond timestamps.
func sdkTelemetry(n int) []byte {
	feeds := []string{"temperature", "humidity", "pressure", "battery"}
	t := protocol.Telemetry{ID: "7c1e9a0b3f2d-42"}
	for i := range n {
		t.Readings = append(t.Readings, protocol.Reading{Feed: feeds[i%4], Value: json.RawMessage(strconv.FormatFloat(20+float64(i%1000)/8, 'g', -1, 64)), TS: 1735689600000 + int64(i)})
	}
	b, err := json.Marshal(t)
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkTelemetryHotPath measures what the platform does with every
// telemetry message before it reaches the store: DecodeTelemetry, then
// ValidateReading on each reading. Reported per message; ns/reading is
// the same divided by the readings.
func BenchmarkTelemetryHotPath(b *testing.B) {
	for _, n := range []int{1, 50, 500} {
		p := sdkTelemetry(n)
		b.Run(fmt.Sprintf("readings=%d", n), func(b *testing.B) {
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
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/reading")
		})
	}
}

// BenchmarkDecodeTelemetryOnly is DecodeTelemetry alone, without
// ValidateReading.
func BenchmarkDecodeTelemetryOnly(b *testing.B) {
	for _, n := range []int{1, 50, 500} {
		p := sdkTelemetry(n)
		b.Run(fmt.Sprintf("readings=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(p)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := protocol.DecodeTelemetry(p); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/reading")
		})
	}
}
