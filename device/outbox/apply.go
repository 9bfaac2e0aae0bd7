package outbox

import (
	"fmt"
	"sort"
)

// apply changes the in-memory state by one record, on Open and after every
// write, so that the state rebuilt from the log is the state that wrote it.
// rec is kept (readings and payloads point into it). A record that does not
// fit the state (possible only after corruption) is refused whole.
func (o *Outbox) apply(rec []byte) error {
	if len(rec) == 0 {
		return fmt.Errorf("empty record: %w", errBadRecord)
	}
	r := reader{b: rec[1:]}
	switch rec[0] {
	case recState:
		id := r.bytes()
		seq, ridx := r.uvarint(), r.uvarint()
		if err := r.done(); err != nil {
			return fmt.Errorf("state record: %w", err)
		}
		if seq >= maxIndex || ridx >= maxIndex {
			return fmt.Errorf("state record: counters out of range: %w", errBadRecord)
		}
		if len(id) == 0 || len(id) > maxInstanceID || !batchIDSafe(id) {
			return fmt.Errorf("state record: bad instance id: %w", errBadRecord)
		}
		// A state record starts the log: whatever came before is
		// superseded.
		o.open, o.openBytes, o.msgs, o.live, o.liveRead, o.liveBytes = nil, 0, nil, 0, 0, 0
		o.id, o.nextSeq, o.nextRIdx = string(id), max(seq, 1), max(ridx, 1)
		return nil

	case recReadings:
		flags := r.byte()
		first, n := r.uvarint(), r.uvarint()
		if r.err != nil || n == 0 || n > uint64(len(r.b)) || first == 0 || first >= maxIndex {
			return fmt.Errorf("readings record: %w", errBadRecord)
		}
		if k := len(o.open); k > 0 && first <= o.open[k-1].ridx {
			return fmt.Errorf("readings record: index %d out of order: %w", first, errBadRecord)
		}
		var grp uint64
		if flags&flagSeparated != 0 {
			grp = first
		}
		start := len(o.open)
		var size int64
		for i := range n {
			b := r.bytes()
			if r.err != nil || len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
				o.open = o.open[:start]
				return fmt.Errorf("readings record: reading %d: %w", i, errBadRecord)
			}
			o.open = append(o.open, openReading{data: b, ridx: first + i, grp: grp})
			size += int64(len(b))
		}
		if err := r.done(); err != nil {
			o.open = o.open[:start]
			return fmt.Errorf("readings record: %w", err)
		}
		o.openBytes += size
		o.nextRIdx = max(o.nextRIdx, first+n)
		return nil

	case recSeal:
		seq, first, n := r.uvarint(), r.uvarint(), r.uvarint()
		if err := r.done(); err != nil || n == 0 || first >= maxIndex || n >= maxIndex {
			return fmt.Errorf("seal record: %w", errBadRecord)
		}
		if err := o.checkSeq(seq); err != nil {
			return err
		}
		lo := sort.Search(len(o.open), func(i int) bool { return o.open[i].ridx >= first })
		hi := lo + sort.Search(len(o.open)-lo, func(i int) bool { return o.open[lo+i].ridx >= first+n })
		if lo == hi {
			return fmt.Errorf("seal record %d: its readings are missing: %w", seq, errBadRecord)
		}
		if o.id == "" {
			return fmt.Errorf("seal record %d before any state record: %w", seq, errBadRecord)
		}
		data := make([][]byte, hi-lo)
		var size int64
		for i, x := range o.open[lo:hi] {
			data[i] = x.data
			size += int64(len(x.data))
		}
		id := o.batchID(seq)
		m := Message{Seq: seq, Kind: kindTelemetry, Payload: telemetryPayload(id, data), Readings: hi - lo, BatchID: id}
		o.cutOpen(lo, hi, size)
		o.push(m)
		return nil

	case recMessage:
		seq, n := r.uvarint(), r.uvarint()
		batch, kind, payload := r.bytes(), r.bytes(), r.bytes()
		if err := r.done(); err != nil || len(kind) == 0 || len(payload) == 0 || n > uint64(len(payload)) {
			return fmt.Errorf("message record: %w", errBadRecord)
		}
		if err := o.checkSeq(seq); err != nil {
			return err
		}
		o.push(Message{Seq: seq, Kind: string(kind), Payload: payload, Readings: int(n), BatchID: string(batch)})
		return nil

	case recAck, recDrop:
		seq := r.uvarint()
		var reason byte
		if rec[0] == recDrop {
			reason = r.byte()
		}
		if err := r.done(); err != nil {
			return fmt.Errorf("ack record: %w", err)
		}
		i := o.find(seq)
		if i < 0 || o.msgs[i].removed {
			return nil // already gone, for example dropped to make room
		}
		m := &o.msgs[i]
		if reason == dropFull && !o.replaying {
			o.stats.DroppedMessages++
			o.stats.DroppedReadings += uint64(m.Readings)
		}
		o.live--
		o.liveRead -= m.Readings
		o.liveBytes -= int64(len(m.Payload))
		m.removed = true
		m.Payload = nil
		k := 0
		for k < len(o.msgs) && o.msgs[k].removed {
			o.msgs[k] = entry{}
			k++
		}
		if k == len(o.msgs) {
			o.msgs = o.msgs[:0] // keep the array
		} else {
			o.msgs = o.msgs[k:]
		}
		return nil

	case recDropOpen:
		first, n := r.uvarint(), r.uvarint()
		if err := r.done(); err != nil || first >= maxIndex || n >= maxIndex {
			return fmt.Errorf("drop record: %w", errBadRecord)
		}
		lo := sort.Search(len(o.open), func(i int) bool { return o.open[i].ridx >= first })
		hi := lo + sort.Search(len(o.open)-lo, func(i int) bool { return o.open[lo+i].ridx >= first+n })
		var size int64
		for _, x := range o.open[lo:hi] {
			size += int64(len(x.data))
		}
		if !o.replaying {
			o.stats.DroppedReadings += uint64(hi - lo)
		}
		o.cutOpen(lo, hi, size)
		return nil
	}
	return fmt.Errorf("unknown record type %d: %w", rec[0], errBadRecord)
}

const kindTelemetry = "telemetry"

// maxIndex bounds sequence numbers and reading indexes read from the log:
// far beyond any real count (2^62 messages at a million a second last
// 146,000 years), it keeps arithmetic on damaged values from overflowing.
const maxIndex = 1 << 62

// checkSeq accepts a new message seq only above every seq held, so the
// message list stays sorted.
func (o *Outbox) checkSeq(seq uint64) error {
	if seq == 0 || seq >= maxIndex {
		return fmt.Errorf("message seq %d: %w", seq, errBadRecord)
	}
	if k := len(o.msgs); k > 0 && seq <= o.msgs[k-1].Seq {
		return fmt.Errorf("message seq %d out of order: %w", seq, errBadRecord)
	}
	return nil
}

func (o *Outbox) push(m Message) {
	o.msgs = append(o.msgs, entry{Message: m})
	o.live++
	o.liveRead += m.Readings
	o.liveBytes += int64(len(m.Payload))
	o.nextSeq = max(o.nextSeq, m.Seq+1)
}

// cutOpen removes open[lo:hi], which hold size bytes.
func (o *Outbox) cutOpen(lo, hi int, size int64) {
	if lo == hi {
		return
	}
	switch {
	case lo == 0 && hi == len(o.open):
		// Keep the array: readings keep coming.
		clear(o.open)
		o.open = o.open[:0]
	case lo == 0:
		clear(o.open[:hi])
		o.open = o.open[hi:]
	default:
		n := copy(o.open[lo:], o.open[hi:])
		clear(o.open[lo+n:])
		o.open = o.open[:lo+n]
	}
	o.openBytes -= size
}

func batchIDSafe(id []byte) bool {
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
