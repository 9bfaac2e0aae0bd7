package outbox_test

import (
	"encoding/json"
	"strconv"
	"testing"

	"github.com/outpost-iot/outpost/device/outbox"
	"github.com/outpost-iot/outpost/protocol"
)

// storeFactory returns a function that opens the same store again, as a
// restarted process would.
type storeFactory func(t *testing.T) func() outbox.Store

var factories = []struct {
	name string
	new  storeFactory
}{
	{"file", func(t *testing.T) func() outbox.Store {
		dir := t.TempDir()
		return func() outbox.Store {
			s, err := outbox.NewFileStore(dir, outbox.WithSegmentSize(32<<10))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}},
	{"mem", func(t *testing.T) func() outbox.Store {
		m := outbox.NewMemStore()
		return func() outbox.Store { return m }
	}},
}

// forEachStore runs test against every Store implementation: the
// conformance suite.
func forEachStore(t *testing.T, test func(t *testing.T, open func() outbox.Store)) {
	for _, f := range factories {
		t.Run(f.name, func(t *testing.T) { test(t, f.new(t)) })
	}
}

func mustOpen(t testing.TB, st outbox.Store, opts ...outbox.Option) *outbox.Outbox {
	t.Helper()
	ob, err := outbox.Open(st, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ob.Close() })
	return ob
}

func reading(v int) protocol.Reading {
	return protocol.Reading{Feed: "f" + strconv.Itoa(v%3), Value: json.RawMessage(strconv.Itoa(v)), TS: 1_700_000_000_000 + int64(v)}
}

func readings(from, n int) []protocol.Reading {
	rs := make([]protocol.Reading, n)
	for i := range rs {
		rs[i] = reading(from + i)
	}
	return rs
}

// pending returns every sealed, unacknowledged message.
func pending(t testing.TB, ob outbox.Queue) []outbox.Message {
	t.Helper()
	var all []outbox.Message
	var last uint64
	for {
		ms, err := ob.Next(last, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			return all
		}
		all = append(all, ms...)
		last = ms[len(ms)-1].Seq
	}
}

// drain seals everything, acknowledges every message and returns them.
func drain(t testing.TB, ob outbox.Queue) []outbox.Message {
	t.Helper()
	if err := ob.Seal(); err != nil {
		t.Fatal(err)
	}
	ms := pending(t, ob)
	for _, m := range ms {
		if err := ob.Ack(m.Seq); err != nil {
			t.Fatal(err)
		}
	}
	return ms
}

// values decodes the telemetry messages among ms and returns the reading
// values in order, checking each batch against the protocol.
func values(t testing.TB, ms []outbox.Message) []int {
	t.Helper()
	var out []int
	for _, m := range ms {
		if m.Kind != protocol.KindTelemetry {
			continue
		}
		tel, err := protocol.DecodeTelemetry(m.Payload)
		if err != nil {
			t.Fatalf("message %d: %v", m.Seq, err)
		}
		if tel.ID != m.BatchID || len(tel.Readings) != m.Readings {
			t.Fatalf("message %d: id %q readings %d, want %q %d", m.Seq, tel.ID, len(tel.Readings), m.BatchID, m.Readings)
		}
		for _, r := range tel.Readings {
			if err := protocol.ValidateReading(r); err != nil {
				t.Fatalf("message %d: %v", m.Seq, err)
			}
			v, err := strconv.Atoi(string(r.Value))
			if err != nil {
				t.Fatal(err)
			}
			if want := reading(v); r.Feed != want.Feed || r.TS != want.TS {
				t.Fatalf("reading %d came back as %+v", v, r)
			}
			out = append(out, v)
		}
	}
	return out
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}
