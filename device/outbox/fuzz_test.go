package outbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

// fuzzSegment turns fuzz input into a segment file: a sequence of
// [length byte][record] entries, each framed with a valid CRC so that the
// record decoder is reached, followed by whatever bytes remain, raw (a
// damaged tail).
func fuzzSegment(data []byte) []byte {
	var seg []byte
	for len(data) > 0 {
		n := int(data[0])
		if n == 0 || n >= len(data) {
			break
		}
		seg = appendFrame(seg, data[1:1+n])
		data = data[1+n:]
	}
	return append(seg, data...)
}

// FuzzOpen opens an outbox on an arbitrary segment and checks that it opens,
// works, and comes back identical after a restart.
func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := fuzzDir(t)
		if err := os.WriteFile(filepath.Join(dir, "0000000000000001.seg"), fuzzSegment(data), 0o600); err != nil {
			t.Fatal(err)
		}
		open := func(opts ...Option) (*Outbox, error) {
			st, err := NewFileStore(dir)
			if err != nil {
				return nil, err
			}
			st.noSync = true
			return Open(st, opts...)
		}
		ob, err := open(WithSync(SyncNever), WithMessageLimits(3, 0))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		s := ob.Stats()
		if s.PendingReadings < 0 || s.PendingMessages < 0 || s.PendingBytes < 0 || s.NextSeq == 0 {
			t.Fatalf("stats %+v", s)
		}
		if err := ob.AddReadings(protocol.Reading{Feed: "x", Value: json.RawMessage("1")}); err != nil {
			t.Fatal(err)
		}
		if err := ob.Seal(); err != nil {
			t.Fatal(err)
		}
		ms, err := ob.Next(0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			t.Fatal("no message after sealing a reading")
		}
		for i, m := range ms {
			if i > 0 && m.Seq <= ms[i-1].Seq {
				t.Fatalf("seq %d after %d", m.Seq, ms[i-1].Seq)
			}
			if m.Seq >= ob.Stats().NextSeq {
				t.Fatalf("seq %d not below next %d", m.Seq, ob.Stats().NextSeq)
			}
		}
		if err := ob.Ack(ms[0].Seq); err != nil {
			t.Fatal(err)
		}
		want, _ := ob.Next(0, 1000)
		if err := ob.Close(); err != nil {
			t.Fatal(err)
		}
		ob, err = open(WithSync(SyncNever))
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		defer ob.Close()
		got, _ := ob.Next(0, 1000)
		if len(got) != len(want) {
			t.Fatalf("%d messages after reopen, want %d", len(got), len(want))
		}
		for i := range got {
			if got[i].Seq != want[i].Seq || !bytes.Equal(got[i].Payload, want[i].Payload) || got[i].BatchID != want[i].BatchID {
				t.Fatalf("message %d changed across reopen", i)
			}
		}
	})
}

// fuzzDir returns a scratch directory, in memory (/dev/shm) when there is
// one: on a disk busy with other work, creating files can block for seconds
// and the fuzzer would mostly wait.
func fuzzDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "outbox-fuzz-"); err == nil {
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// FuzzDecodeFrames checks the frame scanner on raw segment bytes: it never
// panics, loses no byte unaccounted, and re-framing what it found reads back
// the same.
func FuzzDecodeFrames(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(fuzzSegment(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, dmg := DecodeFrames(data)
		size := dmg.Bytes
		var again []byte
		for _, r := range recs {
			size += int64(len(r)) + frameHeader
			again = appendFrame(again, r)
		}
		if size != int64(len(data)) {
			t.Fatalf("accounted for %d of %d bytes", size, len(data))
		}
		if (dmg.Regions == 0) != (dmg.Err == nil) {
			t.Fatalf("damage %d regions, err %v", dmg.Regions, dmg.Err)
		}
		recs2, dmg2 := DecodeFrames(again)
		if len(recs2) != len(recs) || dmg2.Regions != 0 {
			t.Fatalf("re-framed: %d records, %d damaged; want %d, 0", len(recs2), dmg2.Regions, len(recs))
		}
	})
}

// fuzzSeeds returns inputs in the fuzzSegment format built from real
// outbox logs.
func fuzzSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	enc := func(recs [][]byte) []byte {
		var b []byte
		for _, r := range recs {
			if len(r) == 0 || len(r) > 255 {
				continue
			}
			b = append(b, byte(len(r)))
			b = append(b, r...)
		}
		return b
	}
	for k := range 3 {
		st := NewMemStore()
		ob, err := Open(st, WithMessageLimits(2+k, 0), WithCapacity(20), WithDropOldest(), WithSync(SyncNever))
		if err != nil {
			tb.Fatal(err)
		}
		for i := range 12 {
			r := protocol.Reading{Feed: "t" + strconv.Itoa(i%2), Value: json.RawMessage(strconv.Itoa(i)), TS: int64(i)}
			if i%4 == 3 {
				_ = ob.AddSeparated(r, r)
			} else {
				_ = ob.AddReadings(r)
			}
			if i%3 == k {
				_ = ob.Seal()
				if ms, _ := ob.Next(0, 1); len(ms) > 0 {
					_ = ob.Ack(ms[0].Seq)
				}
			}
		}
		_, _ = ob.AddMessage("rpc", []byte(`{"id":"a","result":1}`))
		_ = ob.AddReadings(make([]protocol.Reading, 30)...) // refused: larger than the outbox
		if k == 2 {
			_ = ob.checkpoint()
		}
		var recs [][]byte
		_, _ = st.Load(func(r []byte) error { recs = append(recs, bytes.Clone(r)); return nil })
		_ = ob.Close()
		seeds = append(seeds, enc(recs), append(enc(recs), 9, 0, 0, 0, 1))
	}
	return append(seeds, nil, []byte(fmt.Sprint("garbage")))
}
