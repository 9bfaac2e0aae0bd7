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

// BenchmarkIngest measures AppendBatches at batch 50 against the raw
// engine doing the same rows, in the same run: each iteration makes one
// group commit of group batches through the store (as the ingest writer
// forms them) and one raw COPY of as many (series, ts, seq, value) rows
// into a plain table with the same index, in a transaction of its own (no
// dedup, no device or feed lookup, no partition routing), the two in
// alternating order so that a change of the machine's load hits both. It
// reports both rates and store/raw.
func BenchmarkIngest(b *testing.B) {
	u, _ := pgtest.MustSchema(b)
	ctx := context.Background()
	db := MustOpen(b, u, postgres.Options{})
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, group := range []int{20, 156, 400} { // 1,000, 7,800 (the platform's groups in outpost bench ingest) and 20,000 readings per commit
		b.Run(fmt.Sprintf("batch%d/group%d", benchBatch, group), func(b *testing.B) {
			ids := make([]string, benchDevices)
			for i := range ids {
				ids[i] = storetest.MustCreateDevice(b, db, fmt.Sprintf("bench-%d-%d-%d", group, i, time.Now().UnixNano())).ID
			}
			table := fmt.Sprintf("raw_readings_%d_%d", group, time.Now().UnixNano())
			if _, err := conn.Exec(ctx, `CREATE TABLE `+table+` (series bigint NOT NULL, ts bigint NOT NULL, seq bigint NOT NULL, value text NOT NULL);
				CREATE INDEX ON `+table+` (series, ts, seq)`); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now().UnixMilli()
			seq := 0
			batches := func() []*outpost.Batch {
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
			raw := func(bs []*outpost.Batch) [][]any {
				var rows [][]any
				for i, bt := range bs {
					for j, r := range bt.Readings {
						rows = append(rows, []any{int64(i%benchDevices*4 + j%4 + 1), r.TS, int64(len(rows)), string(r.Value)})
					}
				}
				return rows
			}
			storetest.MustAppend(b, db, batches()...) // feeds created, caches warm
			var inStore, inRaw time.Duration
			n := 0
			for b.Loop() {
				bs := batches()
				rows := raw(bs)
				viaStore := func() {
					start := time.Now()
					res, err := db.AppendBatches(ctx, bs)
					inStore += time.Since(start)
					if err != nil || res[0] != outpost.AppendStored {
						b.Fatalf("append: %v %v", res[:1], err)
					}
				}
				viaRaw := func() {
					start := time.Now()
					err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
						_, err := tx.CopyFrom(ctx, pgx.Identifier{table}, []string{"series", "ts", "seq", "value"}, pgx.CopyFromRows(rows))
						return err
					})
					inRaw += time.Since(start)
					if err != nil {
						b.Fatal(err)
					}
				}
				if n%2 == 0 {
					viaStore()
					viaRaw()
				} else {
					viaRaw()
					viaStore()
				}
				n++
			}
			readings := float64(n * group * benchBatch)
			b.ReportMetric(readings/inStore.Seconds(), "store-readings/s")
			b.ReportMetric(readings/inRaw.Seconds(), "rawcopy-readings/s")
			b.ReportMetric(inRaw.Seconds()/inStore.Seconds(), "store/raw")
		})
	}
}
