package sqlite

import (
	"github.com/prometheus/client_golang/prometheus"
)

// storeCollector exports the store's background work (merging the
// readings landing table, checkpointing the WAL), read once per scrape.
type storeCollector struct{ db *DB }

// Collector returns the Prometheus collector of the store's background
// work, read once per scrape.
func (db *DB) Collector() prometheus.Collector { return storeCollector{db} }

var (
	storeLandingRows = prometheus.NewDesc("outpost_store_landing_readings", "Readings in the landing table, not yet merged into the readings table.", nil, nil)
	storeMerged      = prometheus.NewDesc("outpost_store_merged_readings_total", "Readings moved from the landing table into the readings table.", nil, nil)
	storeMaintenance = prometheus.NewDesc("outpost_store_maintenance_seconds_total", "Time background merges and checkpoints held the write lock (commits waited).", nil, nil)
	storeWrite       = prometheus.NewDesc("outpost_store_write_seconds_total", "Time appends, merges and checkpoints held the write lock: the writer's busy time.", nil, nil)
	storeCheckpoint  = prometheus.NewDesc("outpost_store_checkpoint_seconds_total", "Time spent checkpointing the WAL, mostly concurrently with commits.", nil, nil)
	storeWALPages    = prometheus.NewDesc("outpost_store_wal_pages", "Length of the WAL in pages at the last checkpoint.", nil, nil)
	storeErrors      = prometheus.NewDesc("outpost_store_maintenance_errors_total", "Background merges and checkpoints that failed (each is retried).", nil, nil)
)

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{storeLandingRows, storeMerged, storeMaintenance, storeWrite, storeCheckpoint, storeWALPages, storeErrors} {
		ch <- d
	}
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.db.Stats()
	ch <- prometheus.MustNewConstMetric(storeLandingRows, prometheus.GaugeValue, float64(st.LandingRows))
	ch <- prometheus.MustNewConstMetric(storeMerged, prometheus.CounterValue, float64(st.MergedRows))
	ch <- prometheus.MustNewConstMetric(storeMaintenance, prometheus.CounterValue, (st.MergeHeld + st.CheckpointHeld).Seconds())
	ch <- prometheus.MustNewConstMetric(storeWrite, prometheus.CounterValue, (st.AppendHeld + st.MergeHeld + st.CheckpointHeld).Seconds())
	ch <- prometheus.MustNewConstMetric(storeCheckpoint, prometheus.CounterValue, st.CheckpointTime.Seconds())
	ch <- prometheus.MustNewConstMetric(storeWALPages, prometheus.GaugeValue, float64(st.WALFrames))
	ch <- prometheus.MustNewConstMetric(storeErrors, prometheus.CounterValue, float64(st.Errors))
}
