package bench

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

// Design holds the settings of the write path that the ingest and latency
// benchmarks can vary, so that designs are compared in the same build:
// where commits go (the landing table or the clustered readings table) and
// how long the ingest writer lets a small group wait for more batches.
type Design struct {
	// Landing is auto (default), always or off (sqlite.LandingMode).
	Landing string `json:"landing"`
	// MaxDelay is the ingest writer's ingest.Options.MaxDelay (0: its
	// default; negative: a group never waits).
	MaxDelay time.Duration `json:"max_delay_ns"`
	// MergeChunk is sqlite.Options.MergeChunk (0: its default).
	MergeChunk int `json:"merge_chunk,omitempty"`
	// Writers is ingest.Options.Writers: group commits running at once
	// (0: the engine's default, 1 on SQLite, 3 on PostgreSQL).
	Writers int `json:"writers,omitempty"`
}

func (d *Design) flags(fs *flag.FlagSet) {
	fs.StringVar(&d.Landing, "landing", "auto", "where commits go: auto (landing table for small commits), always, off (clustered table only)")
	fs.DurationVar(&d.MaxDelay, "max-delay", 0, "how long the ingest writer lets a small group wait for more batches (0: default 4ms; negative: never)")
	fs.IntVar(&d.MergeChunk, "merge-chunk", 0, "readings per merge transaction (0: default)")
	fs.IntVar(&d.Writers, "writers", 0, "group commits running at once (0: the engine's default: 1 on SQLite, 3 on PostgreSQL)")
}

func (d *Design) validate() error {
	d.Landing = strings.ToLower(d.Landing)
	if d.Landing == "" {
		d.Landing = "auto"
	}
	if _, err := d.landingMode(); err != nil {
		return err
	}
	if d.MaxDelay > time.Second {
		return fmt.Errorf("--max-delay must be at most 1s")
	}
	if d.MergeChunk < 0 || d.MergeChunk > 1_000_000 {
		return fmt.Errorf("--merge-chunk must be between 0 and 1000000")
	}
	if d.Writers < 0 || d.Writers > 64 {
		return fmt.Errorf("--writers must be between 0 and 64")
	}
	return nil
}

func (d Design) landingMode() (sqlite.LandingMode, error) {
	switch d.Landing {
	case "auto", "":
		return sqlite.LandingAuto, nil
	case "always":
		return sqlite.LandingAlways, nil
	case "off":
		return sqlite.LandingOff, nil
	}
	return 0, fmt.Errorf("--landing must be auto, always or off, not %q", d.Landing)
}

// store returns the store options of the design.
func (d Design) store(syncMode string) sqlite.Options {
	m, _ := d.landingMode()
	return sqlite.Options{Synchronous: strings.ToUpper(syncMode), Landing: m, MergeChunk: d.MergeChunk}
}

// ingest returns the ingest writer options of the design.
func (d Design) ingest() ingest.Options {
	return ingest.Options{MaxDelay: d.MaxDelay, Writers: d.Writers}
}

func (d Design) String() string {
	s := "landing " + d.Landing
	if d.MaxDelay != 0 {
		s += fmt.Sprintf(", max delay %s", d.MaxDelay)
	}
	if d.MergeChunk != 0 {
		s += fmt.Sprintf(", merge chunk %d", d.MergeChunk)
	}
	if d.Writers != 0 {
		s += fmt.Sprintf(", %d writers", d.Writers)
	}
	return s
}
