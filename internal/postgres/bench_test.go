package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/postgres"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
)

// benchDevices send the benchmark's batches; each batch is 50 readings of
// one device over 4 feeds, with an id, timestamps around now.
const (
	benchDevices = 100
	benchBatch   = 50
)

var benchFeeds = [...]string{"temperature", "humidity", "pressure", "battery"}

func benchValue(i int) json.RawMessage { return json.RawMessage(fmt.Sprint(20 + float64(i%1000)/8)) }

// BenchmarkIngest measures AppendBatches at batch 50 (one iteration is one
// group commit of group batches, as the ingest writer forms them) and, in
// the same run, the raw engine doing the same rows: COPY of (series, ts,
// seq, value) into a plain table with the same index, one transaction per
// group, no dedup, no feed lookup, no partition routing. Compare the
// readings/s of store/… with rawcopy/… of the same group.
func BenchmarkIngest(b *testing.B) {
	u, _ := pgtest.MustSchema(b)
	ctx := context.Background()
	for _, group := range []int{20, 156, 400} { // 1,000, 7,800 (the platform's groups in outpost bench ingest) and 20,000 readings per commit
		b.Run(fmt.Sprintf("store/batch%d/group%d", benchBatch, group), func(b *testing.B) {
			db := MustOpen(b, u, postgres.Options{})
			ids := make([]string, benchDevices)
			for i := range ids {
				ids[i] = storetest.MustCreateDevice(b, db, fmt.Sprintf("bench-%d-%d-%d", group, i, time.Now().UnixNano())).ID
			}
			t0 := time.Now().UnixMilli()
			seq := 0
			next := func() []*outpost.Batch {
				bs := make([]*outpost.Batch, group)
				for i := range bs {
					seq++
					bt := &outpost.Batch{DeviceID: ids[seq%benchDevices], ID: fmt.Sprintf("b%d", seq), Readings: make([]outpost.Reading, benchBatch)}
					for j := range bt.Readings {
						n := seq*benchBatch + j
						bt.Readings[j] = outpost.Reading{Feed: benchFeeds[j%4], TS: t0 + int64(n/benchDevices), Value: benchValue(n)}
					}
					bs[i] = bt
				}
				return bs
			}
			storetest.MustAppend(b, db, next()...) // feeds created, caches warm
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				bs := next()
				b.StartTimer()
				res, err := db.AppendBatches(ctx, bs)
				if err != nil || res[0] != outpost.AppendStored {
					b.Fatalf("append: %v %v", res[:1], err)
				}
			}
			b.ReportMetric(float64(b.N*group*benchBatch)/b.Elapsed().Seconds(), "readings/s")
		})
		b.Run(fmt.Sprintf("rawcopy/batch%d/group%d", benchBatch, group), func(b *testing.B) {
			conn, err := pgx.Connect(ctx, u)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(ctx)
			table := fmt.Sprintf("raw_readings_%d", group)
			if _, err := conn.Exec(ctx, `CREATE TABLE `+table+` (series bigint NOT NULL, ts bigint NOT NULL, seq bigint NOT NULL, value text NOT NULL);
				CREATE INDEX ON `+table+` (series, ts, seq)`); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now().UnixMilli()
			seq := 0
			rows := make([][]any, group*benchBatch)
			next := func() {
				for i := range rows {
					seq++
					rows[i] = []any{int64(seq%(benchDevices*4) + 1), t0 + int64(seq/benchDevices), int64(seq), string(benchValue(seq))}
				}
			}
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				next()
				b.StartTimer()
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{table}, []string{"series", "ts", "seq", "value"}, pgx.CopyFromRows(rows))
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*group*benchBatch)/b.Elapsed().Seconds(), "readings/s")
		})
	}
}
