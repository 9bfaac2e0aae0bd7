package bench

import (
	"context"
	"io"
	"testing"
	"time"
)

// A small ota run completes every transfer, each way, and reports
// figures for all of them against the raw baseline.
func TestOTA(t *testing.T) {
	res, err := RunOTA(context.Background(), OTAConfig{Devices: 4, Size: 300 << 10, Chunk: 16 << 10, BigChunk: 256 << 10,
		Platform: "inproc", Timeout: 2 * time.Minute}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Raw.MBPerS <= 0 || len(res.Runs) != 3 {
		t.Fatalf("result %+v", res)
	}
	for _, r := range res.Runs {
		if r.Failed != 0 || r.Drops != 0 || r.MBPerS <= 0 || r.Bytes != 4*300<<10 {
			t.Errorf("run %+v", r)
		}
	}
	if res.Runs[0].Ratio <= 0 {
		t.Errorf("no ratio to raw: %+v", res.Runs[0])
	}
	for _, args := range [][]string{{"ota", "--devices", "0"}, {"ota", "--chunk", "100"}, {"ota", "--platform", "moon"}} {
		if err := Main(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("Main(%q) accepted bad flags", args)
		}
	}
}
