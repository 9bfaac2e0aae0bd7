package stream_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/stream"
)

// TestTapAndInject: a hub with a Tap hands every event it publishes to the
// tap, encoded, whether anybody listens or not; injected events (another
// replica's) reach the subscribers and not the tap, so replicas mirroring
// each other never loop.
func TestTapAndInject(t *testing.T) {
	var tapped []string
	h := stream.New(stream.Options{KeepIdle: time.Minute, Tap: func(kind, deviceID string, data json.RawMessage) {
		tapped = append(tapped, kind+" "+deviceID+" "+string(data))
	}})
	h.Publish("telemetry", "d-1", map[string]int{"n": 1}) // nobody listens yet
	sub, _ := h.Subscribe(stream.Filter{}, 8, 0)
	defer sub.Close()
	h.Publish("telemetry", "d-2", map[string]int{"n": 2})
	h.Inject("telemetry", "d-3", json.RawMessage(`{"n":3}`))
	if len(tapped) != 2 || tapped[0] != `telemetry d-1 {"n":1}` || tapped[1] != `telemetry d-2 {"n":2}` {
		t.Fatalf("tapped %q", tapped)
	}
	for _, want := range []string{`d-2 {"n":2}`, `d-3 {"n":3}`} {
		select {
		case e := <-sub.C:
			if got := e.DeviceID + " " + string(e.Data); got != want {
				t.Fatalf("event %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no event %q", want)
		}
	}
}
