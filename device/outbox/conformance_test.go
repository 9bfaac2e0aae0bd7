package outbox_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/outpost-iot/outpost/device/outbox"
	"github.com/outpost-iot/outpost/protocol"
)

func TestOrderAcrossReopen(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		ob := mustOpen(t, open(), outbox.WithMessageLimits(100, 0))
		n := 0
		for i := 1; n < 2500; i++ {
			k := min(i%37+1, 2500-n)
			if err := ob.AddReadings(readings(n, k)...); err != nil {
				t.Fatal(err)
			}
			n += k
		}
		if _, err := ob.AddMessage("event", []byte(`{"e":1}`)); err != nil {
			t.Fatal(err)
		}
		if err := ob.Close(); err != nil {
			t.Fatal(err)
		}
		ob = mustOpen(t, open(), outbox.WithMessageLimits(100, 0))
		if s := ob.Stats(); s.PendingReadings != 2500 || s.PendingMessages < 25 {
			t.Fatalf("after reopen: %+v", s)
		}
		ms := drain(t, ob)
		if got := values(t, ms); !slices.Equal(got, seq(2500)) {
			t.Fatalf("readings out of order or missing: %d of 2500", len(got))
		}
		if !slices.IsSortedFunc(ms, func(a, b outbox.Message) int { return int(a.Seq - b.Seq) }) {
			t.Fatal("messages not in seq order")
		}
		events := 0
		for _, m := range ms {
			if m.Kind == "event" {
				events++
				if string(m.Payload) != `{"e":1}` {
					t.Fatalf("event payload %q", m.Payload)
				}
			}
			if m.Kind == protocol.KindTelemetry && m.Readings > 100 {
				t.Fatalf("message of %d readings", m.Readings)
			}
		}
		if events != 1 {
			t.Fatalf("%d events", events)
		}
		if s := ob.Stats(); s.PendingReadings != 0 || s.PendingMessages != 0 || s.PendingBytes != 0 {
			t.Fatalf("after drain: %+v", s)
		}
	})
}

func TestKillReopenKeepsEverything(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		ob := mustOpen(t, open(), outbox.WithMessageLimits(10, 0), outbox.WithSync(outbox.SyncNever))
		if err := ob.AddReadings(readings(0, 35)...); err != nil {
			t.Fatal(err)
		}
		if err := ob.Seal(); err != nil { // 10,10,10,5
			t.Fatal(err)
		}
		ms := pending(t, ob)
		if len(ms) != 4 {
			t.Fatalf("%d messages", len(ms))
		}
		// Acks out of order: the second before the first.
		if err := ob.Ack(ms[1].Seq); err != nil {
			t.Fatal(err)
		}
		if err := ob.Ack(ms[0].Seq); err != nil {
			t.Fatal(err)
		}
		if err := ob.Ack(ms[3].Seq); err != nil {
			t.Fatal(err)
		}
		if err := ob.AddReadings(readings(35, 3)...); err != nil {
			t.Fatal(err)
		}
		if _, err := ob.AddMessage(protocol.KindRPC, []byte(`{"id":"x"}`)); err != nil {
			t.Fatal(err)
		}
		before := ob.Stats()
		outbox.Abandon(ob) // kill: no Close, no sync

		ob2 := mustOpen(t, open(), outbox.WithMessageLimits(10, 0))
		s := ob2.Stats()
		if s.PendingReadings != 13 || s.OpenReadings != 3 || s.PendingMessages != 2 || s.NextSeq != before.NextSeq || s.PendingBytes != before.PendingBytes {
			t.Fatalf("after kill: %+v\nbefore: %+v", s, before)
		}
		got := pending(t, ob2)
		if len(got) != 2 || got[0].Seq != ms[2].Seq || string(got[0].Payload) != string(ms[2].Payload) || got[1].Kind != protocol.KindRPC {
			t.Fatalf("pending after kill: %+v", got)
		}
		if v := values(t, drain(t, ob2)); !slices.Equal(v, append(seq(30)[20:], 35, 36, 37)) {
			t.Fatalf("values %v", v)
		}
	})
}

func TestSealingIdenticalAfterReopen(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		ob := mustOpen(t, open(), outbox.WithMessageLimits(7, 0))
		if err := ob.AddReadings(readings(0, 50)...); err != nil {
			t.Fatal(err)
		}
		if err := ob.Seal(); err != nil {
			t.Fatal(err)
		}
		first := pending(t, ob)
		id := ob.InstanceID()
		outbox.Abandon(ob)

		// Other limits after the restart must not change what was sealed.
		ob2 := mustOpen(t, open(), outbox.WithMessageLimits(3, 0))
		if ob2.InstanceID() != id {
			t.Fatalf("instance id %q, was %q", ob2.InstanceID(), id)
		}
		again := pending(t, ob2)
		if len(again) != len(first) {
			t.Fatalf("%d messages, was %d", len(again), len(first))
		}
		for i := range first {
			a, b := first[i], again[i]
			if a.Seq != b.Seq || a.BatchID != b.BatchID || string(a.Payload) != string(b.Payload) || a.Readings != b.Readings {
				t.Fatalf("message %d changed across restart:\n%+v\n%+v", i, a, b)
			}
			if len(a.BatchID) > protocol.MaxBatchIDLen || a.BatchID != fmt.Sprintf("%s-%d", id, a.Seq) {
				t.Fatalf("batch id %q", a.BatchID)
			}
		}
		// New messages continue the numbering and never reuse an id.
		if err := ob2.AddReadings(readings(50, 1)...); err != nil {
			t.Fatal(err)
		}
		ms := drain(t, ob2)
		if last := ms[len(ms)-1]; last.Seq != first[len(first)-1].Seq+1 {
			t.Fatalf("new message seq %d after %d", last.Seq, first[len(first)-1].Seq)
		}
	})
}

func TestAckedNotReturnedAfterReopen(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		ob := mustOpen(t, open(), outbox.WithMessageLimits(1, 0))
		if err := ob.AddReadings(readings(0, 10)...); err != nil {
			t.Fatal(err)
		}
		if err := ob.Seal(); err != nil {
			t.Fatal(err)
		}
		ms := pending(t, ob)
		for _, i := range []int{7, 2, 0, 9} {
			if err := ob.Ack(ms[i].Seq); err != nil {
				t.Fatal(err)
			}
		}
		if err := ob.Drop(ms[4].Seq); err != nil {
			t.Fatal(err)
		}
		// Unknown and repeated acks are harmless.
		for _, s := range []uint64{ms[7].Seq, 1 << 40} {
			if err := ob.Ack(s); err != nil {
				t.Fatal(err)
			}
		}
		if s := ob.Stats(); s.Acked != 4 || s.Rejected != 1 || s.RejectedReadings != 1 || s.PendingMessages != 5 {
			t.Fatalf("stats %+v", s)
		}
		// A window starting after a given seq.
		w, err := ob.Next(ms[2].Seq, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(w) != 2 || w[0].Seq != ms[3].Seq || w[1].Seq != ms[5].Seq {
			t.Fatalf("window %+v", w)
		}
		if err := ob.Close(); err != nil {
			t.Fatal(err)
		}
		ob = mustOpen(t, open())
		if v := values(t, pending(t, ob)); !slices.Equal(v, []int{1, 3, 5, 6, 8}) {
			t.Fatalf("after reopen: %v", v)
		}
	})
}

func TestSeparated(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		ob := mustOpen(t, open(), outbox.WithMessageLimits(4, 0))
		add := func(sep bool, from, n int) {
			t.Helper()
			var err error
			if sep {
				err = ob.AddSeparated(readings(from, n)...)
			} else {
				err = ob.AddReadings(readings(from, n)...)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		add(false, 0, 2)
		add(true, 2, 1)
		add(true, 3, 6) // split by the limit, but alone
		add(false, 9, 1)
		add(false, 10, 1)
		outbox.Abandon(ob)
		ob = mustOpen(t, open(), outbox.WithMessageLimits(4, 0))
		var sizes []int
		ms := drain(t, ob)
		for _, m := range ms {
			sizes = append(sizes, m.Readings)
		}
		if !slices.Equal(sizes, []int{2, 1, 4, 2, 2}) {
			t.Fatalf("message sizes %v", sizes)
		}
		if v := values(t, ms); !slices.Equal(v, seq(11)) {
			t.Fatalf("values %v", v)
		}
	})
}

func TestMessageByteLimit(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		const limit = 600
		ob := mustOpen(t, open(), outbox.WithMessageLimits(1000, limit))
		for i := range 200 {
			if err := ob.AddReadings(reading(i)); err != nil {
				t.Fatal(err)
			}
		}
		ms := drain(t, ob)
		for _, m := range ms {
			if len(m.Payload) > limit {
				t.Fatalf("payload of %d bytes", len(m.Payload))
			}
		}
		if len(ms) < 200*40/limit {
			t.Fatalf("only %d messages", len(ms))
		}
		if v := values(t, ms); !slices.Equal(v, seq(200)) {
			t.Fatalf("values %v", v)
		}
		// The default limit is what the platform accepts.
		ob2 := mustOpen(t, outbox.NewMemStore(), outbox.WithMessageLimits(protocol.MaxReadingsPerMessage, 0))
		big := make([]protocol.Reading, 30000)
		for i := range big {
			big[i] = reading(i)
			big[i].Value = []byte(`"` + string(make([]byte, 0)) + fmt.Sprintf("%040d", i) + `"`)
		}
		if err := ob2.AddReadings(big...); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, m := range drain(t, ob2) {
			if len(m.Payload) > protocol.MaxMessageBytes {
				t.Fatalf("payload of %d bytes", len(m.Payload))
			}
			tel, err := protocol.DecodeTelemetry(m.Payload)
			if err != nil {
				t.Fatal(err)
			}
			n += len(tel.Readings)
		}
		if n != len(big) {
			t.Fatalf("%d readings delivered", n)
		}
	})
}

func TestFullRefuses(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		ob := mustOpen(t, open(), outbox.WithCapacity(100), outbox.WithMessageLimits(10, 0))
		if err := ob.AddReadings(readings(0, 95)...); err != nil {
			t.Fatal(err)
		}
		if err := ob.AddReadings(readings(95, 6)...); !errors.Is(err, outbox.ErrFull) {
			t.Fatalf("got %v, want ErrFull", err)
		}
		if err := ob.AddReadings(readings(95, 5)...); err != nil {
			t.Fatal(err)
		}
		if err := ob.AddReadings(reading(100)); !errors.Is(err, outbox.ErrFull) {
			t.Fatalf("got %v, want ErrFull", err)
		}
		s := ob.Stats()
		if s.Refused != 7 || s.PendingReadings != 100 || s.Added != 100 || s.DroppedReadings != 0 {
			t.Fatalf("stats %+v", s)
		}
		// Acknowledging makes room again.
		ms := pending(t, ob)
		if err := ob.Ack(ms[0].Seq); err != nil {
			t.Fatal(err)
		}
		if err := ob.AddReadings(readings(100, 10)...); err != nil {
			t.Fatal(err)
		}
		if err := ob.Close(); err != nil {
			t.Fatal(err)
		}
		ob = mustOpen(t, open(), outbox.WithCapacity(100))
		if v := values(t, drain(t, ob)); !slices.Equal(v, seq(110)[10:]) {
			t.Fatalf("values %v", v)
		}
	})
}

func TestFullByBytes(t *testing.T) {
	ob := mustOpen(t, outbox.NewMemStore(), outbox.WithMaxBytes(1000))
	n := 0
	for ; ; n++ {
		err := ob.AddReadings(reading(n))
		if errors.Is(err, outbox.ErrFull) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	s := ob.Stats()
	if n < 10 || s.PendingBytes > 1000 || s.Refused != 1 {
		t.Fatalf("after %d readings: %+v", n, s)
	}
	if _, err := ob.AddMessage("event", make([]byte, 1000)); !errors.Is(err, outbox.ErrFull) {
		t.Fatalf("got %v, want ErrFull", err)
	}
	if s := ob.Stats(); s.RefusedMessages != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFullDropsOldest(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		opts := []outbox.Option{outbox.WithCapacity(100), outbox.WithDropOldest(), outbox.WithMessageLimits(10, 0)}
		ob := mustOpen(t, open(), opts...)
		if err := ob.AddReadings(readings(0, 95)...); err != nil {
			t.Fatal(err)
		}
		if err := ob.Seal(); err != nil { // 9 messages of 10 and one of 5
			t.Fatal(err)
		}
		if err := ob.AddReadings(readings(95, 3)...); err != nil {
			t.Fatal(err)
		}
		// 98 + 15 = 113: the two oldest messages (20 readings) go.
		if err := ob.AddReadings(readings(98, 15)...); err != nil {
			t.Fatal(err)
		}
		s := ob.Stats()
		if s.DroppedMessages != 2 || s.DroppedReadings != 20 || s.PendingReadings != 93 || s.Refused != 0 {
			t.Fatalf("stats %+v", s)
		}
		// Only open readings left: they go oldest first.
		if err := ob.Ack(pending(t, ob)[0].Seq); err != nil {
			t.Fatal(err)
		}
		ob2 := mustOpen(t, outbox.NewMemStore(), opts...)
		if err := ob2.AddReadings(readings(0, 8)...); err != nil {
			t.Fatal(err)
		}
		if err := ob2.AddReadings(readings(8, 95)...); err != nil {
			t.Fatal(err)
		}
		if s := ob2.Stats(); s.DroppedReadings != 3 || s.PendingReadings != 100 {
			t.Fatalf("stats %+v", s)
		}
		if v := values(t, drain(t, ob2)); !slices.Equal(v, seq(103)[3:]) {
			t.Fatalf("values %v", v)
		}
		// A batch larger than the whole outbox is refused even so.
		if err := ob2.AddReadings(readings(0, 101)...); !errors.Is(err, outbox.ErrFull) {
			t.Fatalf("got %v, want ErrFull", err)
		}

		// Nothing corrupted: the same state after a restart.
		outbox.Abandon(ob)
		ob = mustOpen(t, open(), opts...)
		if s := ob.Stats(); s.PendingReadings != 83 || s.Corrupt != 0 {
			t.Fatalf("after reopen: %+v", s)
		}
		want := append(seq(98)[30:], seq(113)[98:]...)
		if v := values(t, drain(t, ob)); !slices.Equal(v, want) {
			t.Fatalf("values %v\nwant   %v", v, want)
		}
	})
}

func TestSeqPast16And32Bits(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		ob := mustOpen(t, open(), outbox.WithSync(outbox.SyncNever))
		const n = 70_000
		seen := make(map[uint64]bool, n)
		for i := range n {
			s, err := ob.AddMessage("event", []byte{'1'})
			if err != nil {
				t.Fatal(err)
			}
			if seen[s] || s != uint64(i+1) {
				t.Fatalf("message %d got seq %d", i, s)
			}
			seen[s] = true
		}
		ms := pending(t, ob)
		if len(ms) != n || ms[n-1].Seq != n {
			t.Fatalf("%d pending, last %d", len(ms), ms[len(ms)-1].Seq)
		}
		for _, m := range ms[:n-1] {
			if err := ob.Ack(m.Seq); err != nil {
				t.Fatal(err)
			}
		}
		outbox.Abandon(ob)
		ob = mustOpen(t, open())
		if ms := pending(t, ob); len(ms) != 1 || ms[0].Seq != n {
			t.Fatalf("after reopen: %+v", ms)
		}
	})
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		const start = 1<<32 - 3
		ob := mustOpen(t, open(), outbox.WithStartSeq(start), outbox.WithMessageLimits(1, 0))
		if err := ob.AddReadings(readings(0, 6)...); err != nil {
			t.Fatal(err)
		}
		if err := ob.Seal(); err != nil {
			t.Fatal(err)
		}
		outbox.Abandon(ob)
		ob = mustOpen(t, open(), outbox.WithStartSeq(5))
		ms := pending(t, ob)
		for i, m := range ms {
			if m.Seq != start+uint64(i) || m.BatchID != fmt.Sprintf("%s-%d", ob.InstanceID(), m.Seq) {
				t.Fatalf("message %d: seq %d id %s", i, m.Seq, m.BatchID)
			}
		}
		if ms[5].Seq <= 1<<32 {
			t.Fatal("did not cross 2^32")
		}
		if v := values(t, drain(t, ob)); !slices.Equal(v, seq(6)) {
			t.Fatalf("values %v", v)
		}
	})
}

func TestCompactionBoundsStore(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		const threshold = 64 << 10
		ob := mustOpen(t, open(), outbox.WithCompactThreshold(threshold), outbox.WithMessageLimits(25, 0), outbox.WithSync(outbox.SyncNever))
		var lastSeq uint64
		for round := range 400 {
			if err := ob.AddReadings(readings(round*50, 50)...); err != nil {
				t.Fatal(err)
			}
			ms := drain(t, ob)
			lastSeq = ms[len(ms)-1].Seq
			// Keep something pending across compactions.
			if _, err := ob.AddMessage("event", []byte(`{"round":1}`)); err != nil {
				t.Fatal(err)
			}
			if err := ob.AddReadings(reading(round)); err != nil {
				t.Fatal(err)
			}
			if s := ob.Stats(); s.StoreBytes > 3*threshold {
				t.Fatalf("round %d: store grew to %d bytes", round, s.StoreBytes)
			}
		}
		s := ob.Stats()
		if s.Compactions < 5 {
			t.Fatalf("only %d compactions", s.Compactions)
		}
		outbox.Abandon(ob)
		st := open()
		if fs, ok := st.(*outbox.FileStore); ok {
			if n := countFiles(t, fs.Dir()); n > 9 { // and the lock file
				t.Fatalf("%d segment files left", n)
			}
		}
		ob = mustOpen(t, st)
		ms := drain(t, ob)
		if ms[0].Seq <= lastSeq || ms[len(ms)-1].Seq != ob.Stats().NextSeq-1 {
			t.Fatalf("seq reused after compaction: %d after %d", ms[0].Seq, lastSeq)
		}
		events := 0
		for _, m := range ms {
			if m.Kind == "event" {
				events++
			}
		}
		if got := values(t, ms); len(got) != 1 || events != 1 {
			t.Fatalf("%d readings, %d events pending", len(got), events)
		}
	})
}

func TestConcurrentUse(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() outbox.Store) {
		ob := mustOpen(t, open(), outbox.WithMessageLimits(50, 0))
		const writers, each = 4, 500
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					if err := ob.AddReadings(reading(w*each + i)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		got := make(map[int]bool)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for len(got) < writers*each {
				for _, v := range values(t, drain(t, ob)) {
					if got[v] {
						t.Errorf("reading %d twice", v)
					}
					got[v] = true
				}
				_ = ob.Stats()
			}
		}()
		wg.Wait()
		<-done
		if s := ob.Stats(); s.PendingReadings != 0 || s.Added != writers*each || s.AckedReadings != writers*each {
			t.Fatalf("stats %+v", s)
		}
	})
}
