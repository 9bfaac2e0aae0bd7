package outbox_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/device/outbox"
)

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	ms, err := filepath.Glob(filepath.Join(dir, "*.s*"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ms)
	return ms
}

// fill writes 20 single-reading records and closes the outbox.
func fill(t *testing.T, dir string) {
	t.Helper()
	ob, err := outbox.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := ob.AddReadings(reading(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestDamagedStore(t *testing.T) {
	tests := []struct {
		name string
		harm func(t *testing.T, path string, data []byte) []byte
		want func(v []int) bool // readings that must survive
	}{
		{"torn tail", func(t *testing.T, _ string, data []byte) []byte {
			return data[:len(data)-7]
		}, func(v []int) bool { return slices.Equal(v, seq(19)) }},
		{"garbage tail", func(t *testing.T, _ string, data []byte) []byte {
			return append(data, "\x13\x00\x00\x00garbage after a power cut"...)
		}, func(v []int) bool { return slices.Equal(v, seq(20)) }},
		{"zeroed tail", func(t *testing.T, _ string, data []byte) []byte {
			return append(data, make([]byte, 4096)...)
		}, func(v []int) bool { return slices.Equal(v, seq(20)) }},
		{"corrupt middle", func(t *testing.T, _ string, data []byte) []byte {
			data[len(data)/2] ^= 0x40
			return data
		}, func(v []int) bool { return len(v) == 19 && slices.IsSorted(v) }},
		{"corrupt length", func(t *testing.T, _ string, data []byte) []byte {
			// The length of the 10th frame (the state record comes first).
			off := 0
			for range 10 {
				off += 8 + int(data[off])
			}
			data[off+2] = 0x7f
			return data
		}, func(v []int) bool { return len(v) == 19 && slices.IsSorted(v) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			fill(t, dir)
			segs := segments(t, dir)
			if len(segs) != 1 {
				t.Fatalf("segments %v", segs)
			}
			data, err := os.ReadFile(segs[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(segs[0], tt.harm(t, segs[0], data), 0o600); err != nil {
				t.Fatal(err)
			}

			ob, err := outbox.OpenDir(dir)
			if err != nil {
				t.Fatalf("open refused: %v", err)
			}
			s := ob.Stats()
			if s.Corrupt != 1 || ob.Recovery() == nil {
				t.Fatalf("damage not reported: %+v, %v", s, ob.Recovery())
			}
			t.Logf("recovery: %v", ob.Recovery())
			// It keeps working, and the next open is clean when the damage
			// was at the tail.
			if err := ob.AddReadings(reading(20)); err != nil {
				t.Fatal(err)
			}
			if err := ob.Close(); err != nil {
				t.Fatal(err)
			}
			ob = mustOpen(t, mustStore(t, dir))
			if strings.Contains(tt.name, "tail") && ob.Recovery() != nil {
				t.Fatalf("tail damage reported again: %v", ob.Recovery())
			}
			v := values(t, drain(t, ob))
			if len(v) == 0 || v[len(v)-1] != 20 || !tt.want(v[:len(v)-1]) {
				t.Fatalf("readings after recovery: %v", v)
			}
		})
	}
}

func mustStore(t *testing.T, dir string, opts ...outbox.FileOption) *outbox.FileStore {
	t.Helper()
	s, err := outbox.NewFileStore(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestLostStateRecord(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir)
	seg := segments(t, dir)[0]
	data, _ := os.ReadFile(seg)
	data[9] ^= 1 // inside the state record
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ob := mustOpen(t, mustStore(t, dir))
	if ob.Stats().Corrupt == 0 {
		t.Fatal("damage not reported")
	}
	if v := values(t, drain(t, ob)); !slices.Equal(v, seq(20)) {
		t.Fatalf("values %v", v)
	}
}

func TestSegmentsRollAndCompact(t *testing.T) {
	dir := t.TempDir()
	ob := mustOpen(t, mustStore(t, dir, outbox.WithSegmentSize(8<<10)), outbox.WithCompactThreshold(64<<10), outbox.WithSync(outbox.SyncNever))
	// Offline: data piles up over many segments.
	for i := range 100 {
		if err := ob.AddReadings(readings(i*20, 20)...); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(segments(t, dir)); n < 10 {
		t.Fatalf("%d segments", n)
	}
	// Back online: everything is acknowledged and the files go.
	ms := drain(t, ob)
	if v := values(t, ms); !slices.Equal(v, seq(2000)) {
		t.Fatalf("values: %d", len(v))
	}
	if n := len(segments(t, dir)); n > 2 {
		t.Fatalf("%d segments after everything was acknowledged: %v", n, segments(t, dir))
	}
	if s := ob.Stats(); s.StoreBytes > 16<<10 {
		t.Fatalf("store %d bytes", s.StoreBytes)
	}
	// A leftover from a checkpoint interrupted by a crash is ignored.
	if err := os.WriteFile(filepath.Join(dir, "ffffffffffffff00.tmp"), []byte("half a snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	ob = mustOpen(t, mustStore(t, dir))
	if s := ob.Stats(); s.PendingReadings != 0 || s.Corrupt != 0 || s.NextSeq != ms[len(ms)-1].Seq+1 {
		t.Fatalf("after reopen: %+v", s)
	}
	if _, err := os.Stat(filepath.Join(dir, "ffffffffffffff00.tmp")); !os.IsNotExist(err) {
		t.Fatal("tmp file left")
	}
}
