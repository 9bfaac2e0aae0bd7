package outbox_test

import (
	"testing"

	"github.com/outpost-iot/outpost/device/outbox"
	"github.com/outpost-iot/outpost/protocol"
)

func benchStores(b *testing.B, run func(b *testing.B, st outbox.Store)) {
	b.Run("file", func(b *testing.B) {
		st, err := outbox.NewFileStore(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		run(b, st)
	})
	b.Run("mem", func(b *testing.B) { run(b, outbox.NewMemStore()) })
}

// BenchmarkAddReading adds one reading per call (one record, one write
// system call each), with the default once-a-second fsync.
func BenchmarkAddReading(b *testing.B) {
	benchStores(b, func(b *testing.B, st outbox.Store) {
		ob := mustOpen(b, st, outbox.WithCapacity(1<<30))
		r := reading(42)
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			if err := ob.AddReadings(r); err != nil {
				b.Fatal(err)
			}
			if n++; n%100_000 == 0 {
				empty(b, ob)
			}
		}
	})
}

// BenchmarkAddReadings100 adds 100 readings per call; ns/op is per reading.
func BenchmarkAddReadings100(b *testing.B) {
	benchStores(b, func(b *testing.B, st outbox.Store) {
		ob := mustOpen(b, st, outbox.WithCapacity(1<<30))
		rs := readings(0, 100)
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			if n%100 == 0 {
				if err := ob.AddReadings(rs...); err != nil {
					b.Fatal(err)
				}
			}
			if n++; n%100_000 == 0 {
				empty(b, ob)
			}
		}
	})
}

// empty acknowledges everything, outside the timed part, so that the add
// benchmarks measure an outbox of realistic size (at most 100,000 pending
// readings) rather than one growing without bound.
func empty(b *testing.B, ob *outbox.Outbox) {
	b.StopTimer()
	drain(b, ob)
	b.StartTimer()
}

// BenchmarkSealNextAck is the steady state of a connected device: add 50
// readings, seal them into one message, fetch it and acknowledge it. ns/op
// is per reading.
func BenchmarkSealNextAck(b *testing.B) {
	benchStores(b, func(b *testing.B, st outbox.Store) {
		ob := mustOpen(b, st, outbox.WithMessageLimits(50, 0))
		rs := readings(0, 50)
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			if n%50 == 0 {
				if err := ob.AddReadings(rs...); err != nil {
					b.Fatal(err)
				}
				if err := ob.Seal(); err != nil {
					b.Fatal(err)
				}
				ms, err := ob.Next(0, 1)
				if err != nil || len(ms) != 1 || ms[0].Kind != protocol.KindTelemetry {
					b.Fatal(ms, err)
				}
				if err := ob.Ack(ms[0].Seq); err != nil {
					b.Fatal(err)
				}
			}
			n++
		}
	})
}

// BenchmarkOpen measures rebuilding 100,000 pending readings from disk.
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	ob, err := outbox.OpenDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		if err := ob.AddReadings(readings(i*100, 100)...); err != nil {
			b.Fatal(err)
		}
	}
	if err := ob.Close(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		ob, err := outbox.OpenDir(dir)
		if err != nil {
			b.Fatal(err)
		}
		if ob.Stats().PendingReadings != 100_000 {
			b.Fatal(ob.Stats())
		}
		ob.Close()
	}
}
