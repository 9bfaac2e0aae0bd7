// Package loglimit keeps devices from flooding the platform's log: a
// slog.Handler that passes a few lines per message and device and counts
// the rest.
package loglimit

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Handler is the slog.Handler the platform logs through: it keeps
// devices from flooding the log. A device reconnecting in a tight loop
// while the disk is full, or sending bad messages as fast as it can, would
// otherwise write a line per attempt (82,770 lines in 20 s were seen).
//
// Records are counted per message and device (the device_id attribute)
// in windows of logWindow: each (message, device) pair gets perKey lines
// a window, each message perMsg lines whatever the device. The rest are
// counted, and when the window ends one line per message says how many
// were left out.
type Handler struct {
	h     slog.Handler
	st    *logLimitState
	attrs []slog.Attr // from WithAttrs, searched for device_id
}

type logLimitState struct {
	perKey, perMsg int // 0: no limit

	mu    sync.Mutex
	start time.Time
	keys  map[logKey]int        // lines seen per (message, device) this window
	msgs  map[string]*msgCounts // per message
	inner slog.Handler          // the unwrapped handler, for summaries
}

type logKey struct{ msg, device string }

type msgCounts struct {
	level      slog.Level
	seen       int
	suppressed int
	devices    map[string]struct{} // devices with suppressed lines (bounded)
}

const (
	logWindow        = 10 * time.Second
	logPerMsg        = 100
	logMaxKeys       = 10_000
	logMaxDevicesSet = 1_000
)

// newLogLimiter wraps h. perKey is the number of lines per message and
// device per window (0: default 5; negative: no limit).
func New(h slog.Handler, perKey int) *Handler {
	st := &logLimitState{perKey: perKey, perMsg: logPerMsg, inner: h}
	switch {
	case perKey == 0:
		st.perKey = 5
	case perKey < 0:
		st.perKey, st.perMsg = 0, 0
	}
	return &Handler{h: h, st: st}
}

func (l *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return l.h.Enabled(ctx, level)
}

func (l *Handler) Handle(ctx context.Context, r slog.Record) error {
	if l.st.perKey == 0 {
		return l.h.Handle(ctx, r)
	}
	device := ""
	for _, a := range l.attrs {
		if a.Key == "device_id" {
			device = a.Value.String()
		}
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "device_id" {
			device = a.Value.String()
			return false
		}
		return true
	})
	if !l.st.allow(ctx, r.Message, device, r.Level, r.Time) {
		return nil
	}
	return l.h.Handle(ctx, r)
}

func (l *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &Handler{h: l.h.WithAttrs(as), st: l.st, attrs: append(l.attrs[:len(l.attrs):len(l.attrs)], as...)}
}

func (l *Handler) WithGroup(g string) slog.Handler {
	return &Handler{h: l.h.WithGroup(g), st: l.st, attrs: l.attrs}
}

// allow counts a record and reports whether it may be written.
func (s *logLimitState) allow(ctx context.Context, msg, device string, level slog.Level, now time.Time) bool {
	if now.IsZero() {
		now = time.Now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil || now.Sub(s.start) >= logWindow || now.Before(s.start) {
		s.rollLocked(ctx, now)
	}
	m := s.msgs[msg]
	if m == nil {
		m = &msgCounts{level: level}
		s.msgs[msg] = m
	}
	m.seen++
	k := logKey{msg, device}
	keyOK := true // a pair that does not fit the map counts per message only
	if n, ok := s.keys[k]; ok || len(s.keys) < logMaxKeys {
		s.keys[k] = n + 1
		keyOK = n+1 <= s.perKey
	}
	if keyOK && m.seen-m.suppressed <= s.perMsg {
		return true
	}
	m.suppressed++
	if device != "" && len(m.devices) < logMaxDevicesSet {
		if m.devices == nil {
			m.devices = map[string]struct{}{}
		}
		m.devices[device] = struct{}{}
	}
	return false
}

// rollLocked reports what the ending window left out and starts a new one.
func (s *logLimitState) rollLocked(ctx context.Context, now time.Time) {
	names := make([]string, 0, len(s.msgs))
	for msg, m := range s.msgs {
		if m.suppressed > 0 {
			names = append(names, msg)
		}
	}
	sort.Strings(names)
	for _, msg := range names {
		m := s.msgs[msg]
		r := slog.NewRecord(now, m.level, "repeated log lines left out", 0)
		r.AddAttrs(slog.String("message", msg), slog.Int("left_out", m.suppressed), slog.Int("written", m.seen-m.suppressed),
			slog.Duration("window", logWindow))
		if len(m.devices) > 0 {
			r.AddAttrs(slog.Int("devices", len(m.devices)))
		}
		if s.inner.Enabled(ctx, m.level) {
			_ = s.inner.Handle(ctx, r)
		}
	}
	s.start = now
	s.keys = map[logKey]int{}
	s.msgs = map[string]*msgCounts{}
}

// flush reports what the current window left out (at shutdown).
func (l *Handler) Flush() {
	if l == nil {
		return
	}
	l.st.mu.Lock()
	defer l.st.mu.Unlock()
	if l.st.keys != nil {
		l.st.rollLocked(context.Background(), time.Now())
	}
}
