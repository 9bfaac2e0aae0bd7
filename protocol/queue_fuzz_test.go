package protocol_test

import (
	"encoding/json"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

func FuzzDecodePullRequest(f *testing.F) {
	f.Add([]byte(`{"id":"p-1"}`))
	f.Add([]byte(`{"id":""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := protocol.DecodePullRequest(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if r.ID == "" || len(r.ID) > protocol.MaxBatchIDLen {
			t.Fatalf("accepted bad id %q", r.ID)
		}
		raw, _ := json.Marshal(r)
		r2, err := protocol.DecodePullRequest(raw)
		if err != nil || r2 != r {
			t.Fatalf("round trip: %+v → %s → %+v, %v", r, raw, r2, err)
		}
	})
}

func FuzzDecodePullEnd(f *testing.F) {
	f.Add([]byte(`{"id":"p-1","delivered":2,"expired":1,"expired_ids":["a"]}`))
	f.Add([]byte(`{"id":"p-1","delivered":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := protocol.DecodePullEnd(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if e.ID == "" || e.Delivered < 0 || e.Expired < 0 {
			t.Fatalf("accepted %+v", e)
		}
		raw, _ := json.Marshal(e)
		if _, err := protocol.DecodePullEnd(raw); err != nil {
			t.Fatalf("round trip of %s: %v", raw, err)
		}
	})
}
