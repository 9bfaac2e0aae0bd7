package bench

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// The ingest workload is deterministic: reading i of every device is feed
// feeds[i%4], value 20 + (i%1000)/8 (exact in binary, so it survives the
// JSON round trip byte for byte) and timestamp workloadBase + i ms. The
// same readings feed the platform, the raw broker and the raw store, and
// let the verification check every stored reading.
var feeds = [...]string{"temperature", "humidity", "pressure", "battery"}

var workloadBase = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

func readingFeed(i int) string   { return feeds[i%len(feeds)] }
func readingValue(i int) float64 { return 20 + float64(i%1000)/8 }
func readingTS(i int) int64      { return workloadBase + int64(i) }

func encodedValue(i int) json.RawMessage {
	v, err := protocol.EncodeValue(readingValue(i))
	if err != nil {
		panic(err) // finite numbers always encode
	}
	return v
}

// share returns how many of total readings device d of n sends.
func share(total, n, d int) int {
	s := total / n
	if d < total%n {
		s++
	}
	return s
}

// wireReadings returns device-local readings [from, to) in wire form.
func wireReadings(from, to int) []protocol.Reading {
	rs := make([]protocol.Reading, 0, to-from)
	for i := from; i < to; i++ {
		rs = append(rs, protocol.Reading{Feed: readingFeed(i), Value: encodedValue(i), TS: readingTS(i)})
	}
	return rs
}

// rawMsg is one telemetry message of the raw runs.
type rawMsg struct {
	device   int
	batchID  string
	topic    string
	payload  []byte
	from, to int // device-local reading indexes
}

// buildMessages splits each device's readings into telemetry messages the
// way the device SDK seals them (telemetry.seal in package device): at most
// batch readings, halved while the payload exceeds the protocol limit. The
// batch id has the SDK's shape (12 hex digits, a dash, a sequence number);
// its 12 hex digits are the message's global index, which the raw
// subscriber reads back to check that every message arrived exactly once.
func buildMessages(deviceIDs []string, total, batch int) ([][]rawMsg, int) {
	n := len(deviceIDs)
	out := make([][]rawMsg, n)
	global := 0
	for d := 0; d < n; d++ {
		cnt := share(total, n, d)
		seq := 0
		for from := 0; from < cnt; {
			k := min(batch, cnt-from)
			seq++
			id := fmt.Sprintf("%012x-%d", global, seq)
			var payload []byte
			for {
				payload, _ = json.Marshal(protocol.Telemetry{ID: id, Readings: wireReadings(from, from+k)})
				if len(payload) <= protocol.MaxMessageBytes || k == 1 {
					break
				}
				k /= 2
			}
			out[d] = append(out[d], rawMsg{device: d, batchID: id, topic: protocol.UpTopic(deviceIDs[d], protocol.KindTelemetry), payload: payload, from: from, to: from + k})
			from += k
			global++
		}
	}
	return out, global
}

// messageIndex reads the global index back from a raw payload, which
// starts with {"id":"<12 hex digits>-.
func messageIndex(payload []byte) (int, bool) {
	const pre = `{"id":"`
	if len(payload) < len(pre)+12 || string(payload[:len(pre)]) != pre {
		return 0, false
	}
	n, err := strconv.ParseUint(string(payload[len(pre):len(pre)+12]), 16, 48)
	return int(n), err == nil
}

// storeBatches turns the messages into store batches in arrival order
// (round robin over devices, as concurrent devices interleave).
func storeBatches(msgs [][]rawMsg, deviceIDs []string) []*outpost.Batch {
	var out []*outpost.Batch
	for j := 0; ; j++ {
		more := false
		for d := range msgs {
			if j >= len(msgs[d]) {
				continue
			}
			more = true
			m := msgs[d][j]
			b := &outpost.Batch{DeviceID: deviceIDs[d], ID: m.batchID, Readings: make([]outpost.Reading, 0, m.to-m.from)}
			for i := m.from; i < m.to; i++ {
				b.Readings = append(b.Readings, outpost.Reading{Feed: readingFeed(i), TS: readingTS(i), Value: encodedValue(i)})
			}
			out = append(out, b)
		}
		if !more {
			return out
		}
	}
}
