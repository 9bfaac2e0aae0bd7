package loglimit

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// Repeated log lines are rate-limited: per message and device a few lines
// a window, per message at most logPerMsg whatever the device, and the
// rest counted in one summary line per message when the window ends.
func TestLogLimiter(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.NewTextHandler(&buf, nil), 3)
	log := slog.New(l)
	for i := 0; i < 1000; i++ {
		log.Error("store presence", "device_id", "d-1", "error", "database or disk is full")
	}
	log.With("device_id", "d-2").Warn("store presence", "error", "x") // another device: its own share
	for i := 0; i < 500; i++ {
		log.Info("device message refused", "device_id", "d-"+strings.Repeat("x", i%300))
	}
	log.Info("outpost started")
	l.Flush()
	out := buf.String()
	count := func(s string) int { return strings.Count(out, s) }
	if n := count(`msg="store presence" device_id=d-1`); n != 3 {
		t.Errorf("%d lines of one message from one device, want 3", n)
	}
	if n := count(`device_id=d-2 msg="store presence"`) + count(`msg="store presence" device_id=d-2`); n != 1 {
		t.Errorf("the other device's line written %d times, want 1:\n%s", n, out)
	}
	if n := count(`msg="device message refused"`); n != logPerMsg {
		t.Errorf("%d lines of one message from many devices, want %d", n, logPerMsg)
	}
	if count(`msg="outpost started"`) != 1 {
		t.Error("an ordinary line was left out")
	}
	if !strings.Contains(out, `msg="repeated log lines left out" message="store presence" left_out=997 written=4`) {
		t.Errorf("no summary of the left-out lines:\n%s", out)
	}
	if !strings.Contains(out, `message="device message refused" left_out=400 written=100`) {
		t.Errorf("no summary for the many-device message:\n%s", out)
	}

	// A new window starts afresh, and reports the previous one.
	buf.Reset()
	now := time.Now()
	for i := 0; i < 10; i++ {
		l.st.allow(context.Background(), "tick", "d-1", slog.LevelInfo, now)
	}
	if out := buf.String(); out != "" {
		t.Errorf("flush left a window open: %s", out)
	}
	if l.st.allow(context.Background(), "tick", "d-1", slog.LevelInfo, now.Add(logWindow)) != true {
		t.Error("the next window does not start afresh")
	}
	if !strings.Contains(buf.String(), `message=tick left_out=7 written=3`) {
		t.Errorf("window end not reported: %s", buf.String())
	}
}
