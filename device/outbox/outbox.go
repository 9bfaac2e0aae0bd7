// Package outbox is the device's durable queue of everything it sends to
// the platform: readings waiting to be packed into telemetry messages, and
// sealed messages waiting for the broker's acknowledgement.
//
// An Outbox sits on a Store, an append-only log of records: FileStore keeps
// it in a directory and survives the process being killed and the machine
// losing power; MemStore keeps it in memory. Every change is one record
// written before the call returns, and the state is rebuilt from the log on
// Open, so after a restart the device sends exactly what it had not yet got
// acknowledged, in the same order and in the same messages: sealing is
// itself a record, so a message sent before the restart is resent with the
// same batch id and the same readings, and the platform stores it once.
//
// Messages are numbered with 64-bit sequence numbers of the outbox's own,
// increasing and never reused. Telemetry batch ids are the outbox's random
// instance id, a dash and the sequence number; the instance id changes
// whenever Open had to skip damaged data, since the lost records may have
// been the ones that made a batch id used.
//
// A typical sender seals, then keeps a window of messages in flight:
//
//	ob.Seal()
//	var last uint64
//	for {
//		msgs, _ := ob.Next(last, 8)
//		if len(msgs) == 0 { break }
//		for _, m := range msgs { publish(m); last = m.Seq }
//		// ... ob.Ack(m.Seq) as each acknowledgement arrives
//	}
package outbox

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/protocol"
)

// ErrFull is returned when adding would exceed the outbox's bound and the
// outbox refuses new data (the default; see WithDropOldest).
var ErrFull = errors.New("outbox full")

// ErrClosed is returned by operations on a closed Outbox or Store.
var ErrClosed = errors.New("outbox closed")

// Queue is what a device SDK needs from an outbox. *Outbox implements it;
// another implementation can be swapped in.
type Queue interface {
	// AddReadings queues readings (already validated by the caller) to be
	// packed into telemetry messages with other readings. It returns once
	// they are written to the store, or ErrFull.
	AddReadings(rs ...protocol.Reading) error
	// AddSeparated is AddReadings for readings that must travel in
	// message(s) of their own, never merged with other readings.
	AddSeparated(rs ...protocol.Reading) error
	// AddMessage queues an opaque message of another kind (an RPC response,
	// an event) and returns its sequence number, or ErrFull.
	AddMessage(kind string, payload []byte) (uint64, error)
	// Seal packs every open reading into telemetry messages.
	Seal() error
	// Next returns up to max sealed, unacknowledged messages with a
	// sequence number greater than after, in order.
	Next(after uint64, max int) ([]Message, error)
	// Ack removes a message the broker acknowledged. Unknown or already
	// removed sequence numbers are ignored.
	Ack(seq uint64) error
	// Drop removes a message the platform rejected for good; it is counted
	// as rejected. Unknown sequence numbers are ignored.
	Drop(seq uint64) error
	// Stats returns the counters.
	Stats() Stats
	// Close syncs and releases the queue.
	Close() error
}

// Message is a sealed message ready to publish.
type Message struct {
	// Seq is the message's sequence number in this outbox.
	Seq uint64
	// Kind is the topic kind: protocol.KindTelemetry for sealed readings.
	Kind string
	// Payload is the message body. It is shared: do not modify it.
	Payload []byte
	// Readings is the number of readings in a telemetry message.
	Readings int
	// BatchID is the id of a telemetry batch, empty for other kinds.
	BatchID string
}

// Stats are an Outbox's counters. Pending figures describe the queue now;
// the others count since Open.
type Stats struct {
	// PendingReadings is the readings not yet acknowledged, open or sealed.
	PendingReadings int
	// OpenReadings is the readings not yet sealed into a message.
	OpenReadings int
	// PendingMessages is the sealed messages not yet acknowledged.
	PendingMessages int
	// PendingBytes is the bytes of open reading encodings and pending
	// message payloads, what WithMaxBytes bounds.
	PendingBytes int64
	// StoreBytes is the size of the store.
	StoreBytes int64
	// NextSeq is the sequence number the next message will get.
	NextSeq uint64

	// Added is the readings added.
	Added uint64
	// AddedMessages is the opaque messages added with AddMessage.
	AddedMessages uint64
	// Sealed is the telemetry messages sealed.
	Sealed uint64
	// Acked and AckedReadings count acknowledged messages and the readings
	// in them.
	Acked, AckedReadings uint64
	// Rejected and RejectedReadings count messages removed by Drop and the
	// readings in them.
	Rejected, RejectedReadings uint64
	// DroppedMessages and DroppedReadings count what a full outbox with
	// WithDropOldest removed unsent (the readings include those of the
	// dropped messages).
	DroppedMessages, DroppedReadings uint64
	// Refused and RefusedMessages count readings and messages refused with
	// ErrFull.
	Refused, RefusedMessages uint64
	// Corrupt is the damaged regions and undecodable records skipped on
	// Open; CorruptBytes their size when known.
	Corrupt      int
	CorruptBytes int64
	// Compactions is the checkpoints that rewrote the store.
	Compactions uint64
}

type openReading struct {
	data []byte
	ridx uint64
	grp  uint64 // 0 for readings that may be merged, else the separated group
}

type entry struct {
	Message
	removed bool
}

// Outbox is the durable outbox. It is safe for concurrent use.
type Outbox struct {
	opt options
	st  Store

	mu           sync.Mutex
	closed       bool
	id           string
	nextSeq      uint64
	nextRIdx     uint64
	open         []openReading
	openBytes    int64
	msgs         []entry // ascending seq; removed entries are popped lazily
	live         int
	liveRead     int
	liveBytes    int64
	stats        Stats
	recovery     error
	scratch      []byte
	retryCompact int64
	replaying    bool

	dirty atomic.Bool
	stop  chan struct{}
	done  chan struct{}
}

var _ Queue = (*Outbox)(nil)

// OpenDir opens the Outbox kept in dir by a FileStore with default settings,
// creating it if needed. Close closes the store.
func OpenDir(dir string, opts ...Option) (*Outbox, error) {
	st, err := NewFileStore(dir)
	if err != nil {
		return nil, err
	}
	o, err := Open(st, opts...)
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	return o, nil
}

// Open rebuilds an Outbox from st, which it then owns: Close closes it.
// Damaged data in the store is skipped, counted in Stats and described by
// Recovery; it never makes Open fail. After damage the Outbox takes a new
// instance id (InstanceID), so that no batch id already sent can be
// sealed again with other readings. Open fails only when the store cannot
// be read or written, or an option is out of range.
func Open(st Store, opts ...Option) (*Outbox, error) {
	o := &Outbox{opt: defaultOptions(), st: st}
	for _, f := range opts {
		if err := f(&o.opt); err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
	}
	var bad []error
	o.replaying = true
	dmg, err := st.Load(func(rec []byte) error {
		if len(rec) > 0 && (rec[0] == recReadings || rec[0] == recMessage) {
			rec = bytes.Clone(rec) // kept in memory
		}
		if err := o.apply(rec); err != nil {
			o.stats.Corrupt++
			if len(bad) < 10 {
				bad = append(bad, err)
			}
		}
		return nil
	})
	o.replaying = false
	if err != nil {
		return nil, fmt.Errorf("outbox: load: %w", err)
	}
	o.stats.Corrupt += dmg.Regions
	o.stats.CorruptBytes += dmg.Bytes
	o.recovery = errors.Join(append([]error{dmg.Err}, bad...)...)
	if o.recovery != nil {
		o.opt.logger.Warn("outbox: damaged data skipped on open", "regions", o.stats.Corrupt, "bytes", o.stats.CorruptBytes, "err", o.recovery)
	}
	switch {
	case o.id == "" && o.nextSeq == 0 && len(o.open) == 0 && len(o.msgs) == 0:
		// A new store.
		o.id = newInstanceID()
		o.nextSeq = max(o.opt.startSeq, 1)
		o.nextRIdx = 1
		if err := st.Append(o.stateRecord()); err != nil {
			return nil, fmt.Errorf("outbox: init: %w", err)
		}
	case o.id == "" || o.recovery != nil:
		// Damage was skipped, or the state record itself was lost. A lost
		// seal record (with later records kept) would let readings
		// already sent under a batch id be sealed again, with others,
		// under the same id, and the platform would take the new batch
		// for a duplicate. A new instance id makes every batch id sealed
		// from now on new; messages sealed before keep theirs. The
		// snapshot makes the log start with the new state.
		o.id = newInstanceID()
		o.nextSeq = max(o.nextSeq, 1)
		o.nextRIdx = max(o.nextRIdx, 1)
		if err := o.checkpoint(); err != nil {
			return nil, err
		}
	}
	if o.opt.sync > 0 {
		o.stop, o.done = make(chan struct{}), make(chan struct{})
		go o.flusher(time.Duration(o.opt.sync))
	}
	return o, nil
}

func newInstanceID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// maxInstanceID keeps batch ids within protocol.MaxBatchIDLen with a 20-digit
// sequence number.
const maxInstanceID = protocol.MaxBatchIDLen - 21

// Recovery describes the damaged data Open skipped, nil if there was none.
// A device SDK logs it.
func (o *Outbox) Recovery() error { return o.recovery }

// InstanceID returns the outbox's instance id, the prefix of its batch ids.
func (o *Outbox) InstanceID() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.id
}

func (o *Outbox) flusher(every time.Duration) {
	defer close(o.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
			if o.dirty.Swap(false) {
				if err := o.st.Sync(); err != nil {
					o.dirty.Store(true)
					o.opt.logger.Warn("outbox: sync", "err", err)
				}
			}
		}
	}
}

// write appends records to the store and applies them. Called with mu held.
func (o *Outbox) write(recs ...[]byte) error {
	if err := o.st.Append(recs...); err != nil {
		return err
	}
	for _, r := range recs {
		if err := o.apply(r); err != nil {
			return fmt.Errorf("outbox: apply own record: %w", err)
		}
	}
	if o.opt.sync == SyncAlways {
		if err := o.st.Sync(); err != nil {
			return err
		}
	} else {
		o.dirty.Store(true)
	}
	o.maybeCompact()
	return nil
}

// AddReadings implements Queue.
func (o *Outbox) AddReadings(rs ...protocol.Reading) error { return o.add(rs, false) }

// AddSeparated implements Queue.
func (o *Outbox) AddSeparated(rs ...protocol.Reading) error { return o.add(rs, true) }

func (o *Outbox) add(rs []protocol.Reading, sep bool) error {
	if len(rs) == 0 {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return ErrClosed
	}
	rec := make([]byte, 0, 24+len(rs)*40)
	var flags byte
	if sep {
		flags = flagSeparated
	}
	rec = append(rec, recReadings, flags)
	rec = binary.AppendUvarint(rec, o.nextRIdx)
	rec = binary.AppendUvarint(rec, uint64(len(rs)))
	var size int64
	for _, r := range rs {
		o.scratch = appendReading(o.scratch[:0], r)
		size += int64(len(o.scratch))
		rec = appendBytes(rec, o.scratch)
	}
	if len(rec) > maxRecord {
		o.stats.Refused += uint64(len(rs))
		return fmt.Errorf("outbox: %d readings in one call are too large: %w", len(rs), ErrFull)
	}
	drops, err := o.makeRoom(len(rs), size)
	if err != nil {
		o.stats.Refused += uint64(len(rs))
		return err
	}
	boundary := len(o.open) > 0 && (sep || o.open[len(o.open)-1].grp != 0)
	if err := o.write(append(drops, rec)...); err != nil {
		return fmt.Errorf("outbox: add readings: %w", err)
	}
	o.stats.Added += uint64(len(rs))
	// Seal messages that cannot grow any more, so a long offline spell does
	// not leave everything open.
	if boundary || len(o.open) >= o.opt.msgReadings || o.openBytes >= int64(o.opt.msgBytes) {
		if err := o.seal(true); err != nil {
			return fmt.Errorf("outbox: seal: %w", err)
		}
	}
	return nil
}

// AddMessage implements Queue. The message takes the next sequence number
// at once, so readings still open are sealed after it. It counts against
// WithMaxBytes but not against the reading capacity.
func (o *Outbox) AddMessage(kind string, payload []byte) (uint64, error) {
	if kind == "" || len(kind) > 256 {
		return 0, errors.New("outbox: message kind must be 1 to 256 bytes")
	}
	if len(payload) == 0 || len(payload) > maxRecord-512 {
		return 0, fmt.Errorf("outbox: message payload of %d bytes out of range", len(payload))
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return 0, ErrClosed
	}
	drops, err := o.makeRoom(0, int64(len(payload)))
	if err != nil {
		o.stats.RefusedMessages++
		return 0, err
	}
	seq := o.nextSeq
	rec := messageRecord(Message{Seq: seq, Kind: kind, Payload: payload})
	if err := o.write(append(drops, rec)...); err != nil {
		return 0, fmt.Errorf("outbox: add message: %w", err)
	}
	o.stats.AddedMessages++
	return seq, nil
}

// makeRoom returns the drop records that make room for n readings and size
// bytes, or ErrFull. Called with mu held.
func (o *Outbox) makeRoom(n int, size int64) ([][]byte, error) {
	capR, capB := o.opt.capacity, o.opt.maxBytes
	overR := len(o.open) + o.liveRead + n - capR
	overB := int64(-1)
	if capB > 0 {
		overB = o.openBytes + o.liveBytes + size - capB
	}
	if overR <= 0 && overB <= 0 {
		return nil, nil
	}
	if !o.opt.dropOldest || n > capR || (capB > 0 && size > capB) {
		return nil, ErrFull
	}
	var recs [][]byte
	for i := 0; i < len(o.msgs) && (overR > 0 || overB > 0); i++ {
		m := &o.msgs[i]
		if m.removed {
			continue
		}
		recs = append(recs, dropRecord(m.Seq, dropFull))
		overR -= m.Readings
		overB -= int64(len(m.Payload))
	}
	k := 0
	for k < len(o.open) && (overR > 0 || overB > 0) {
		overR--
		overB -= int64(len(o.open[k].data))
		k++
	}
	if k > 0 {
		first, last := o.open[0].ridx, o.open[k-1].ridx
		recs = append(recs, dropOpenRecord(first, last-first+1))
	}
	return recs, nil
}

// Seal implements Queue.
func (o *Outbox) Seal() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return ErrClosed
	}
	if err := o.seal(false); err != nil {
		return fmt.Errorf("outbox: seal: %w", err)
	}
	return nil
}

// seal writes seal records for the open readings; with fullOnly, only for
// messages that cannot grow any more. Called with mu held.
func (o *Outbox) seal(fullOnly bool) error {
	var recs [][]byte
	seq := o.nextSeq
	for i := 0; i < len(o.open); {
		grp := o.open[i].grp
		size := telemetryOverhead(o.batchID(seq))
		j := i
		for j < len(o.open) && o.open[j].grp == grp && j-i < o.opt.msgReadings {
			add := len(o.open[j].data) + 1
			if j > i && size+add > o.opt.msgBytes {
				break
			}
			size += add
			j++
		}
		if fullOnly && j == len(o.open) {
			break
		}
		first, last := o.open[i].ridx, o.open[j-1].ridx
		rec := []byte{recSeal}
		rec = binary.AppendUvarint(rec, seq)
		rec = binary.AppendUvarint(rec, first)
		rec = binary.AppendUvarint(rec, last-first+1)
		recs = append(recs, rec)
		seq++
		i = j
	}
	if len(recs) == 0 {
		return nil
	}
	if err := o.write(recs...); err != nil {
		return err
	}
	o.stats.Sealed += uint64(len(recs))
	return nil
}

func (o *Outbox) batchID(seq uint64) string {
	return o.id + "-" + strconv.FormatUint(seq, 10)
}

// find returns the index in msgs of seq, or -1.
func (o *Outbox) find(seq uint64) int {
	i := sort.Search(len(o.msgs), func(i int) bool { return o.msgs[i].Seq >= seq })
	if i < len(o.msgs) && o.msgs[i].Seq == seq {
		return i
	}
	return -1
}

// Next implements Queue.
func (o *Outbox) Next(after uint64, max int) ([]Message, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil, ErrClosed
	}
	i := sort.Search(len(o.msgs), func(i int) bool { return o.msgs[i].Seq > after })
	var out []Message
	for ; i < len(o.msgs) && len(out) < max; i++ {
		if !o.msgs[i].removed {
			out = append(out, o.msgs[i].Message)
		}
	}
	return out, nil
}

// Ack implements Queue.
func (o *Outbox) Ack(seq uint64) error { return o.remove(seq, false) }

// Drop implements Queue.
func (o *Outbox) Drop(seq uint64) error { return o.remove(seq, true) }

func (o *Outbox) remove(seq uint64, rejected bool) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return ErrClosed
	}
	i := o.find(seq)
	if i < 0 || o.msgs[i].removed {
		return nil
	}
	n := o.msgs[i].Readings
	rec := ackRecord(seq)
	if rejected {
		rec = dropRecord(seq, dropRejected)
	}
	if err := o.write(rec); err != nil {
		return fmt.Errorf("outbox: remove message: %w", err)
	}
	if !rejected {
		o.stats.Acked++
		o.stats.AckedReadings += uint64(n)
	} else {
		o.stats.Rejected++
		o.stats.RejectedReadings += uint64(n)
	}
	return nil
}

// Sync forces everything written so far to stable storage.
func (o *Outbox) Sync() error {
	o.dirty.Store(false)
	if err := o.st.Sync(); err != nil {
		o.dirty.Store(true)
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// Stats implements Queue.
func (o *Outbox) Stats() Stats {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.stats
	s.OpenReadings = len(o.open)
	s.PendingReadings = len(o.open) + o.liveRead
	s.PendingMessages = o.live
	s.PendingBytes = o.openBytes + o.liveBytes
	s.StoreBytes = o.st.Size()
	s.NextSeq = o.nextSeq
	return s
}

// Close implements Queue: it stops the background flusher and closes the
// store, which syncs it. Pending data stays in the store for the next Open.
func (o *Outbox) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	o.mu.Unlock()
	if o.stop != nil {
		close(o.stop)
		<-o.done
	}
	if err := o.st.Close(); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// liveEstimate is about what a snapshot of the live state would take.
func (o *Outbox) liveEstimate() int64 {
	return o.openBytes + o.liveBytes + int64(len(o.open))*3 + int64(o.live)*32 + 64
}

// maybeCompact checkpoints when the store exceeds the threshold and holds
// more than twice the live data: each checkpoint rewrites at most half of
// what was written, so compaction costs a bounded share of the writes.
func (o *Outbox) maybeCompact() {
	size := o.st.Size()
	if size < o.opt.compactMin || size < o.retryCompact || size < 2*o.liveEstimate() {
		return
	}
	if err := o.checkpoint(); err != nil {
		// Try again after another threshold's worth of writes.
		o.opt.logger.Warn("outbox: compact", "err", err)
		o.retryCompact = size + o.opt.compactMin
		return
	}
	o.retryCompact = 0
}

// checkpoint rewrites the store with the live state. Called with mu held.
func (o *Outbox) checkpoint() error {
	// Drop removed entries first so the snapshot and memory agree.
	kept := o.msgs[:0]
	for _, m := range o.msgs {
		if !m.removed {
			kept = append(kept, m)
		}
	}
	clear(o.msgs[len(kept):])
	o.msgs = kept
	err := o.st.Checkpoint(func(add func([]byte) error) error {
		if err := add(o.stateRecord()); err != nil {
			return err
		}
		for _, m := range o.msgs {
			if err := add(messageRecord(m.Message)); err != nil {
				return err
			}
		}
		for i := 0; i < len(o.open); {
			r := o.open[i]
			j := i + 1
			size := len(r.data)
			for j < len(o.open) && o.open[j].grp == r.grp && o.open[j].ridx == o.open[j-1].ridx+1 && size < 1<<20 {
				size += len(o.open[j].data)
				j++
			}
			var flags byte
			if r.grp != 0 {
				flags = flagSeparated
			}
			rec := []byte{recReadings, flags}
			rec = binary.AppendUvarint(rec, r.ridx)
			rec = binary.AppendUvarint(rec, uint64(j-i))
			for _, x := range o.open[i:j] {
				rec = appendBytes(rec, x.data)
			}
			if err := add(rec); err != nil {
				return err
			}
			i = j
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("outbox: checkpoint: %w", err)
	}
	o.stats.Compactions++
	return nil
}

func (o *Outbox) stateRecord() []byte {
	rec := []byte{recState}
	rec = appendBytes(rec, []byte(o.id))
	rec = binary.AppendUvarint(rec, o.nextSeq)
	return binary.AppendUvarint(rec, o.nextRIdx)
}

func messageRecord(m Message) []byte {
	rec := make([]byte, 0, 32+len(m.BatchID)+len(m.Kind)+len(m.Payload))
	rec = append(rec, recMessage)
	rec = binary.AppendUvarint(rec, m.Seq)
	rec = binary.AppendUvarint(rec, uint64(m.Readings))
	rec = appendBytes(rec, []byte(m.BatchID))
	rec = appendBytes(rec, []byte(m.Kind))
	return appendBytes(rec, m.Payload)
}

func ackRecord(seq uint64) []byte {
	return binary.AppendUvarint([]byte{recAck}, seq)
}

func dropRecord(seq uint64, reason byte) []byte {
	return append(binary.AppendUvarint([]byte{recDrop}, seq), reason)
}

func dropOpenRecord(first, n uint64) []byte {
	rec := binary.AppendUvarint([]byte{recDropOpen}, first)
	return binary.AppendUvarint(rec, n)
}
