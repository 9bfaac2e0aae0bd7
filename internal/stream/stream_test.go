package stream_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/stream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// MustSubscribe subscribes and unsubscribes when the test ends.
func MustSubscribe(tb testing.TB, h *stream.Hub, f stream.Filter, size int, afterID uint64) (*stream.Subscription, uint64) {
	tb.Helper()
	s, missed := h.Subscribe(f, size, afterID)
	tb.Cleanup(s.Close)
	return s, missed
}

// drain returns the ids of the events already queued on s, without waiting.
func drain(s *stream.Subscription) []uint64 {
	var ids []uint64
	for {
		select {
		case e, ok := <-s.C:
			if !ok {
				return ids
			}
			ids = append(ids, e.ID)
		default:
			return ids
		}
	}
}

func set(vals ...string) map[string]bool {
	m := map[string]bool{}
	for _, v := range vals {
		m[v] = true
	}
	return m
}

// publishMix publishes, in order: telemetry a (id 1), telemetry b (2),
// presence a (3), presence b (4), telemetry c (5).
func publishMix(h *stream.Hub) {
	h.Publish(stream.KindTelemetry, "a", map[string]int{"n": 1})
	h.Publish(stream.KindTelemetry, "b", map[string]int{"n": 2})
	h.Publish(stream.KindPresence, "a", map[string]bool{"online": true})
	h.Publish(stream.KindPresence, "b", map[string]bool{"online": false})
	h.Publish(stream.KindTelemetry, "c", map[string]int{"n": 5})
}

func TestFilter(t *testing.T) {
	tests := []struct {
		name string
		f    stream.Filter
		want []uint64
	}{
		{"everything", stream.Filter{}, []uint64{1, 2, 3, 4, 5}},
		{"one device", stream.Filter{DeviceIDs: set("a")}, []uint64{1, 3}},
		{"two devices", stream.Filter{DeviceIDs: set("a", "c")}, []uint64{1, 3, 5}},
		{"one kind", stream.Filter{Kinds: set(stream.KindPresence)}, []uint64{3, 4}},
		{"device and kind", stream.Filter{DeviceIDs: set("b"), Kinds: set(stream.KindTelemetry)}, []uint64{2}},
		{"unknown device", stream.Filter{DeviceIDs: set("z")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := stream.NewHub(100)
			s, missed := MustSubscribe(t, h, tt.f, 10, 0)
			if missed != 0 {
				t.Errorf("missed %d on a fresh subscription", missed)
			}
			publishMix(h)
			if got := drain(s); !slices.Equal(got, tt.want) {
				t.Errorf("got events %v, want %v", got, tt.want)
			}
		})
	}
}

func TestEventContent(t *testing.T) {
	h := stream.NewHub(10)
	s, _ := MustSubscribe(t, h, stream.Filter{}, 10, 0)
	h.Publish(stream.KindTelemetry, "d-1", map[string]any{"feed": "temp", "value": 21.5})
	e := <-s.C
	if e.ID != 1 || e.Kind != stream.KindTelemetry || e.DeviceID != "d-1" || e.Time.IsZero() {
		t.Errorf("event %+v", e)
	}
	if got, want := string(e.Data), `{"feed":"temp","value":21.5}`; got != want {
		t.Errorf("data %s, want %s", got, want)
	}
	if id := h.LastID(); id != 1 {
		t.Errorf("LastID() = %d, want 1", id)
	}
}

func TestUnencodableEventIsDropped(t *testing.T) {
	h := stream.NewHub(10)
	s, _ := MustSubscribe(t, h, stream.Filter{}, 10, 0)
	h.Publish(stream.KindTelemetry, "a", make(chan int)) // not JSON
	h.Publish(stream.KindTelemetry, "a", 1)
	if got := drain(s); !slices.Equal(got, []uint64{1}) {
		t.Errorf("got events %v, want only the encodable one as id 1", got)
	}
}

func TestSlowSubscriber(t *testing.T) {
	h := stream.NewHub(100)
	slow, _ := MustSubscribe(t, h, stream.Filter{}, 2, 0)
	fast, _ := MustSubscribe(t, h, stream.Filter{}, 100, 0)
	other, _ := MustSubscribe(t, h, stream.Filter{DeviceIDs: set("b")}, 1, 0)
	for i := range 10 {
		h.Publish(stream.KindTelemetry, "a", i) // returns although slow is full
	}
	if got := drain(slow); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("slow subscriber got %v, want the first 2", got)
	}
	if d := slow.Dropped(); d != 8 {
		t.Errorf("slow subscriber dropped %d, want 8", d)
	}
	if got := drain(fast); len(got) != 10 || fast.Dropped() != 0 {
		t.Errorf("fast subscriber got %d events and dropped %d, want 10 and 0", len(got), fast.Dropped())
	}
	// Events the filter rejects do not count as dropped.
	if d := other.Dropped(); d != 0 {
		t.Errorf("filtered-out subscriber dropped %d, want 0", d)
	}
	h.Publish(stream.KindTelemetry, "a", 10)
	if got := drain(slow); !slices.Equal(got, []uint64{11}) {
		t.Errorf("after catching up the slow subscriber got %v, want [11]", got)
	}
}

func TestReplay(t *testing.T) {
	tests := []struct {
		name       string
		ring       int
		published  int
		f          stream.Filter
		after      uint64
		wantReplay []uint64
		wantMissed uint64
	}{
		{"no resume", 10, 5, stream.Filter{}, 0, nil, 0},
		{"after an id", 10, 5, stream.Filter{}, 2, []uint64{3, 4, 5}, 0},
		{"after the first", 10, 5, stream.Filter{}, 1, []uint64{2, 3, 4, 5}, 0},
		{"up to date", 10, 5, stream.Filter{}, 5, nil, 0},
		{"ahead of the hub", 10, 5, stream.Filter{}, 9, nil, 0},
		{"filtered", 10, 5, stream.Filter{DeviceIDs: set("b")}, 1, []uint64{2, 4}, 0},
		{"ring exactly full", 5, 5, stream.Filter{}, 1, []uint64{2, 3, 4, 5}, 0},
		{"ring overflowed", 4, 10, stream.Filter{}, 2, []uint64{7, 8, 9, 10}, 4},
		{"oldest still held", 4, 10, stream.Filter{}, 6, []uint64{7, 8, 9, 10}, 0},
		{"overflowed and filtered", 4, 10, stream.Filter{DeviceIDs: set("b")}, 1, []uint64{8, 10}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := stream.NewHub(tt.ring)
			for i := range tt.published {
				h.Publish(stream.KindTelemetry, []string{"a", "b"}[i%2], i+1) // odd ids from a, even from b
			}
			s, missed := MustSubscribe(t, h, tt.f, 1, tt.after) // replay does not count against the buffer
			if missed != tt.wantMissed {
				t.Errorf("missed %d, want %d", missed, tt.wantMissed)
			}
			if got := drain(s); !slices.Equal(got, tt.wantReplay) {
				t.Errorf("replayed %v, want %v", got, tt.wantReplay)
			}
			// Live events follow the replay.
			h.Publish(stream.KindTelemetry, "b", "live")
			if got, want := drain(s), []uint64{uint64(tt.published) + 1}; !slices.Equal(got, want) {
				t.Errorf("live events %v, want %v", got, want)
			}
			if d := s.Dropped(); d != 0 {
				t.Errorf("dropped %d", d)
			}
		})
	}
}

func TestClose(t *testing.T) {
	h := stream.NewHub(10)
	s, _ := h.Subscribe(stream.Filter{}, 10, 0)
	h.Publish(stream.KindTelemetry, "a", 1)
	s.Close()
	s.Close() // idempotent
	// Queued events can still be read, then C is closed.
	if e, ok := <-s.C; !ok || e.ID != 1 {
		t.Errorf("first receive after Close: %v, %v; want the queued event", e, ok)
	}
	if _, ok := <-s.C; ok {
		t.Error("C still open after Close")
	}
	h.Publish(stream.KindTelemetry, "a", 2) // must not panic on the closed channel
	if d := s.Dropped(); d != 0 {
		t.Errorf("a closed subscription counted %d drops", d)
	}
}

func TestConcurrentPublishSubscribe(t *testing.T) {
	h := stream.NewHub(64)
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			for i := range 200 {
				h.Publish(stream.KindTelemetry, fmt.Sprint("d", p), i)
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for range 20 {
				s, _ := h.Subscribe(stream.Filter{}, 8, h.LastID()/2)
				drain(s)
				s.Close()
			}
		})
	}
	wg.Wait()
	if id := h.LastID(); id != 800 {
		t.Errorf("LastID() = %d, want 800", id)
	}
	// Every id was assigned once and in order: a full ring holds the last 64.
	s, missed := MustSubscribe(t, h, stream.Filter{}, 1, 1)
	got := drain(s)
	if missed != 735 || len(got) != 64 || got[0] != 737 || got[63] != 800 {
		t.Errorf("replay from 1: missed %d, got %d events from %v; want 735 missed, 737..800", missed, len(got), got[:min(1, len(got))])
	}
}

// A hub started later (a platform restart) tells a client resuming with an
// id from before it that events were lost, count unknown, and replays
// nothing of its own that the client could mistake for a continuation.
func TestResumeAcrossRestart(t *testing.T) {
	old := stream.NewHubAt(8, 1000)
	old.Publish("telemetry", "d-1", 1)
	last := old.LastID()
	h := stream.NewHubAt(8, 5000)
	h.Publish("telemetry", "d-1", 2)
	if h.LastID() <= last {
		t.Fatalf("ids went backwards across the restart: %d after %d", h.LastID(), last)
	}
	sub, missed := h.Subscribe(stream.Filter{}, 4, last)
	defer sub.Close()
	if missed != stream.MissedUnknown {
		t.Fatalf("missed = %d, want MissedUnknown", missed)
	}
	if len(sub.C) != 1 {
		t.Fatalf("%d events replayed, want the new hub's one event", len(sub.C))
	}
}

// TestRingBoundedInBytes (issue 9, item 10): the replay ring holds the
// newest events that fit in its byte bound, however few they are.
func TestRingBoundedInBytes(t *testing.T) {
	big := strings.Repeat("x", 100_000) // ~100 KB per event, like a 2,000-reading batch
	h := stream.New(stream.Options{RingEvents: 10_000, RingBytes: 1 << 20})
	s, _ := MustSubscribe(t, h, stream.Filter{}, 1, 0)
	for i := range 100 {
		h.Publish(stream.KindTelemetry, "a", map[string]any{"n": i, "big": big})
	}
	drain(s)
	if b := h.RingBytes(); b > 1<<20 || b < 900_000 {
		t.Fatalf("ring holds %d bytes, want at most %d and nearly full", b, 1<<20)
	}
	// A resume from the start replays only what the bytes allow, and says
	// how much is missing.
	r, missed := MustSubscribe(t, h, stream.Filter{}, 1, 1)
	got := drain(r)
	if len(got) == 0 || len(got) > 10 || got[len(got)-1] != 100 || missed != uint64(99-len(got)) {
		t.Fatalf("resume from 1: replayed %d events ending %v, missed %d", len(got), got[max(len(got)-1, 0):], missed)
	}
	// An event larger than the whole bound is delivered but not kept.
	h.Publish(stream.KindTelemetry, "a", strings.Repeat("y", 2<<20))
	if got := drain(s); len(got) != 1 {
		t.Fatalf("live subscriber got %v", got)
	}
	if b := h.RingBytes(); b != 0 {
		t.Fatalf("ring holds %d bytes after an event over its bound", b)
	}
}

// countingData counts how often it is encoded.
type countingData struct{ n *atomic.Int32 }

func (c countingData) MarshalJSON() ([]byte, error) {
	c.n.Add(1)
	return []byte(`{"x":1}`), nil
}

// TestNoEncodingWithoutListeners (issue 9, item 10): with KeepIdle, events
// published while nobody listens (and has not for KeepIdle) are not
// encoded; a client that resumes later is told how many it missed.
func TestNoEncodingWithoutListeners(t *testing.T) {
	var encoded atomic.Int32
	h := stream.New(stream.Options{KeepIdle: time.Hour})
	for range 5 {
		h.Publish(stream.KindTelemetry, "a", countingData{&encoded})
	}
	if n := encoded.Load(); n != 0 {
		t.Fatalf("%d events encoded with nobody listening", n)
	}
	s, _ := h.Subscribe(stream.Filter{Kinds: set(stream.KindPresence)}, 10, 0)
	h.Publish(stream.KindTelemetry, "a", countingData{&encoded}) // id 6: kept for replay
	s.Close()
	h.Publish(stream.KindTelemetry, "a", countingData{&encoded}) // id 7: within KeepIdle
	if n := encoded.Load(); n != 2 {
		t.Fatalf("%d events encoded while a subscriber was, or had just been, there; want 2", n)
	}
	r, missed := MustSubscribe(t, h, stream.Filter{}, 10, 2)
	if got := drain(r); missed != 3 || !slices.Equal(got, []uint64{6, 7}) {
		t.Fatalf("resume after 2: missed %d, replayed %v; want 3 missed and 6, 7", missed, got)
	}

	// Without KeepIdle every event is kept, listened to or not.
	var all atomic.Int32
	h = stream.NewHub(10)
	h.Publish(stream.KindTelemetry, "a", countingData{&all})
	if all.Load() != 1 {
		t.Fatal("NewHub did not encode an event for replay")
	}
}

// TestIdleHubStopsEncoding: once the last subscriber has been gone for
// KeepIdle, publishing stops encoding.
func TestIdleHubStopsEncoding(t *testing.T) {
	var encoded atomic.Int32
	h := stream.New(stream.Options{KeepIdle: time.Millisecond})
	s, _ := h.Subscribe(stream.Filter{}, 10, 0)
	s.Close()
	time.Sleep(5 * time.Millisecond) // let KeepIdle pass: the condition under test is elapsed time
	h.Publish(stream.KindTelemetry, "a", countingData{&encoded})
	if n := encoded.Load(); n != 0 {
		t.Fatalf("%d events encoded after the hub went idle", n)
	}
	if h.LastID() != 1 {
		t.Fatalf("LastID %d: the skipped event must use up its id", h.LastID())
	}
}
