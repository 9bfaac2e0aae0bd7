package outbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/outpost-iot/outpost/protocol"
)

// Record types of the outbox log. Every record starts with its type byte;
// the fields follow as unsigned varints and length-prefixed byte strings.
//
// Readings carry a 64-bit reading index of their own so that a seal record
// can name exactly which readings it packed, even if a record between them
// was lost to corruption.
const (
	// recState: instance id, next message seq, next reading index. It
	// starts every log and every snapshot.
	recState byte = 1
	// recReadings: flags, first reading index, count, then each reading as
	// its JSON encoding.
	recReadings byte = 2
	// recSeal: seq, first reading index, count. Packs those open readings
	// into telemetry message seq.
	recSeal byte = 3
	// recMessage: seq, reading count, batch id, kind, payload. A sealed
	// message written whole (opaque messages, and telemetry in snapshots).
	recMessage byte = 4
	// recAck: seq. The broker acknowledged the message.
	recAck byte = 5
	// recDrop: seq, reason. The message was removed unsent or rejected.
	recDrop byte = 6
	// recDropOpen: first reading index, count. Open readings dropped to
	// make room.
	recDropOpen byte = 7
)

const flagSeparated = 1

// Reasons in recDrop.
const (
	dropRejected byte = 1
	dropFull     byte = 2
)

var errBadRecord = errors.New("malformed record")

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errBadRecord
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = errBadRecord
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = errBadRecord
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) done() error {
	if r.err == nil && len(r.b) != 0 {
		return errBadRecord
	}
	return r.err
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// appendReading appends the wire JSON of r, as json.Marshal would write it
// but without reflection: {"f":"temp","v":21.5,"t":1700000000000}.
func appendReading(dst []byte, r protocol.Reading) []byte {
	dst = append(dst, `{"f":`...)
	dst = appendJSONString(dst, r.Feed)
	dst = append(dst, `,"v":`...)
	v := r.Value
	if len(v) == 0 {
		dst = append(dst, "null"...)
	} else if bytes.ContainsAny(v, " \t\r\n") {
		var b bytes.Buffer
		if json.Compact(&b, v) == nil {
			dst = append(dst, b.Bytes()...)
		} else {
			dst = append(dst, v...)
		}
	} else {
		dst = append(dst, v...)
	}
	if r.TS != 0 {
		dst = append(dst, `,"t":`...)
		dst = strconv.AppendInt(dst, r.TS, 10)
	}
	return append(dst, '}')
}

func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// telemetryPayload builds the wire form of a telemetry batch from the JSON
// encodings of its readings. The same id and readings always give the same
// bytes.
func telemetryPayload(id string, readings [][]byte) []byte {
	n := len(id) + 16
	for _, r := range readings {
		n += len(r) + 1
	}
	p := make([]byte, 0, n)
	p = append(p, `{"id":`...)
	p = appendJSONString(p, id)
	p = append(p, `,"r":[`...)
	for i, r := range readings {
		if i > 0 {
			p = append(p, ',')
		}
		p = append(p, r...)
	}
	return append(p, "]}"...)
}

// telemetryOverhead is the payload size of a batch with id and no readings,
// minus the comma that every reading after the first adds.
func telemetryOverhead(id string) int { return len(`{"id":"","r":[]}`) + len(id) - 1 }
