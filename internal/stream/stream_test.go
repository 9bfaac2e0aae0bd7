package stream_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"

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
