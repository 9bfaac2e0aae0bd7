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

func FuzzDecodePresence(f *testing.F) {
	f.Add([]byte(`{"online":true,"session":"s-1","mode":"pull"}`))
	f.Add([]byte(`{"online":false,"session":"s-1"}`))
	f.Add([]byte(`{"online":true,"session":""}`))
	f.Add([]byte(`{"online":true,"session":"s","mode":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := protocol.DecodePresence(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if p.Session == "" || len(p.Session) > protocol.MaxSessionLen {
			t.Fatalf("accepted bad session %q", p.Session)
		}
		raw, _ := json.Marshal(p)
		p2, err := protocol.DecodePresence(raw)
		if err != nil || p2 != p {
			t.Fatalf("round trip: %+v → %s → %+v, %v", p, raw, p2, err)
		}
	})
}
