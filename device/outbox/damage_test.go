package outbox_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/device/outbox"
)

// zeroRecord overwrites with zeros the first frame of the segment whose
// record starts with the type byte typ, as a block lost in a power cut
// leaves it: the records after it stay intact.
func zeroRecord(t *testing.T, seg string, typ byte) {
	t.Helper()
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off+8 < len(data); {
		n := int(binary.LittleEndian.Uint32(data[off:]))
		if data[off+8] == typ {
			clear(data[off : off+8+n])
			if err := os.WriteFile(seg, data, 0o600); err != nil {
				t.Fatal(err)
			}
			return
		}
		off += 8 + n
	}
	t.Fatalf("no record of type %d in %s", typ, seg)
}

// Item 4 of issue 10: a power cut that loses a seal record but keeps the
// records written after it must not make the outbox seal other readings
// under a batch id it already sent: the platform would answer "duplicate"
// and acknowledge readings it never stored. After any recovered damage
// the outbox takes a new instance id, so every batch id sealed from then
// on is new.
func TestLostSealRecordRotatesInstanceID(t *testing.T) {
	dir := t.TempDir()
	ob, err := outbox.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := ob.InstanceID()
	if err := ob.AddReadings(readings(0, 3)...); err != nil {
		t.Fatal(err)
	}
	if err := ob.Seal(); err != nil {
		t.Fatal(err)
	}
	sent := pending(t, ob) // on the wire; the platform stored it under its batch id
	if len(sent) != 1 {
		t.Fatalf("%d messages sealed, want 1", len(sent))
	}
	if err := ob.AddReadings(readings(3, 3)...); err != nil { // kept by the power cut
		t.Fatal(err)
	}
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	zeroRecord(t, segments(t, dir)[0], 3) // the seal record

	ob = mustOpen(t, mustStore(t, dir))
	if ob.Recovery() == nil {
		t.Fatal("the damage was not reported")
	}
	if ob.InstanceID() == before {
		t.Errorf("instance id %s kept after recovered damage", before)
	}
	after := drain(t, ob)
	for _, m := range after {
		for _, s := range sent {
			if m.BatchID == s.BatchID && !bytes.Equal(m.Payload, s.Payload) {
				t.Fatalf("batch id %s sealed again with other readings:\nbefore %s\nafter  %s", m.BatchID, s.Payload, m.Payload)
			}
		}
		if !strings.HasPrefix(m.BatchID, ob.InstanceID()+"-") {
			t.Errorf("batch %s sealed after the recovery does not carry the new instance id %s", m.BatchID, ob.InstanceID())
		}
	}
	// At least once: the readings of the lost seal travel again, under a
	// new batch id.
	if v := values(t, after); !slices.Equal(v, seq(6)) {
		t.Fatalf("readings after recovery: %v", v)
	}
	// The new id is durable: the next open is clean and keeps it.
	id := ob.InstanceID()
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	ob = mustOpen(t, mustStore(t, dir))
	if ob.Recovery() != nil || ob.InstanceID() != id {
		t.Fatalf("after a clean reopen: recovery %v, instance id %s (want %s)", ob.Recovery(), ob.InstanceID(), id)
	}
}
