package outpost_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

func TestStateMachine(t *testing.T) {
	allowed := map[[2]outpost.State]bool{}
	for _, p := range [][2]outpost.State{
		{"queued", "sent"}, {"queued", "expired"}, {"queued", "cancelled"},
		{"sent", "delivered"}, {"sent", "succeeded"}, {"sent", "failed"}, {"sent", "timed_out"}, {"sent", "expired"},
		{"delivered", "succeeded"}, {"delivered", "failed"}, {"delivered", "timed_out"},
	} {
		allowed[p] = true
	}
	for _, from := range outpost.States {
		for _, to := range outpost.States {
			if got := outpost.CanTransition(from, to); got != allowed[[2]outpost.State{from, to}] {
				t.Errorf("CanTransition(%s, %s) = %v", from, to, got)
			}
		}
	}
	for _, s := range []outpost.State{"succeeded", "failed", "expired", "timed_out", "cancelled"} {
		if !s.Final() {
			t.Errorf("%s is not final", s)
		}
	}
	if outpost.State("queued").Final() || outpost.State("bogus").Valid() {
		t.Error("queued final or bogus valid")
	}
	if got := outpost.TransitionSources(outpost.StateTimedOut); !slices.Equal(got, []outpost.State{"sent", "delivered"}) {
		t.Errorf("sources of timed_out: %v", got)
	}
}

func TestCallJSON(t *testing.T) {
	c := outpost.Call{ID: "a", Method: "m", State: outpost.StateQueued, Timeout: 1500 * time.Millisecond}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back outpost.Call
	if err := json.Unmarshal(b, &back); err != nil || back.Timeout != c.Timeout || back.ID != "a" {
		t.Fatalf("%s → %+v, %v", b, back, err)
	}
}
