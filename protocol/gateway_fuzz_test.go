package protocol_test

import (
	"encoding/json"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

// Fuzz targets for the gateway decoders (docs/protocol.md §26). Seed
// inputs live in testdata/fuzz/<FuzzName>/ as well as in f.Add calls.
// Each target checks that errors are coded and that what is accepted
// obeys the rules the decoder promises.

func addSeeds(f *testing.F, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
}

func FuzzDecodeGatewaySinks(f *testing.F) {
	addSeeds(f, `{"sinks":[{"name":"sink1","config":{"network_address":1234,"channel":5,"role":"sink"}},{"name":"sink2"}]}`,
		`{"sinks":[]}`, `{"sinks":[{"name":"a"},{"name":"a"}]}`, `{"sinks":[{"name":"bad name"}]}`,
		`{"sinks":[{"name":"s","config":[1]}]}`, `{"sinks":null}`, `{}`, `[]`)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeGatewaySinks(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if len(m.Sinks) > protocol.MaxSinks {
			t.Fatalf("accepted %d sinks", len(m.Sinks))
		}
		seen := map[string]bool{}
		for _, s := range m.Sinks {
			if protocol.ValidSinkName(s.Name) != nil || seen[s.Name] || protocol.ValidSinkConfig(s.Config) != nil {
				t.Fatalf("accepted sink %+v", s)
			}
			seen[s.Name] = true
		}
	})
}

func FuzzDecodeGatewayChildren(f *testing.F) {
	addSeeds(f, `{"id":"j1","join":[{"c":"1001","sink":"sink1"},{"c":"1002"}],"leave":["1003"]}`,
		`{"join":[{"c":"a"}],"leave":["a"]}`, `{"join":[]}`, `{"leave":["bad address"]}`, `{"join":[{"c":""}]}`,
		`{"join":[{"C":"1"}]}`, `{}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeGatewayChildren(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		n := len(m.Join) + len(m.Leave)
		if n == 0 || n > protocol.MaxChildrenPerMessage || len(m.ID) > protocol.MaxBatchIDLen {
			t.Fatalf("accepted %+v", m)
		}
		seen := map[string]bool{}
		for _, j := range m.Join {
			if protocol.ValidChildAddress(j.Address) != nil || seen[j.Address] {
				t.Fatalf("accepted join %+v", j)
			}
			seen[j.Address] = true
		}
		for _, a := range m.Leave {
			if protocol.ValidChildAddress(a) != nil || seen[a] {
				t.Fatalf("accepted leave %q", a)
			}
			seen[a] = true
		}
	})
}

func FuzzDecodeGatewayTelemetry(f *testing.F) {
	addSeeds(f, `{"id":"g-1","r":[{"c":"1001","f":"temperature","v":21.5,"t":1717243200000},{"c":"1002","f":"door","v":true}]}`,
		`{"r":[]}`, `{"r":[{"c":"","f":"x","v":1}]}`, `{"r":[{"c":"a","f":"x","v":null}]}`, `{"id":1,"r":[]}`,
		`{"r":[{"c":"a","f":"x","v":1,"t":-5}]}`, `{"r":null}`, `{}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeGatewayTelemetry(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if m.Readings == nil || len(m.Readings) > protocol.MaxReadingsPerMessage || len(m.ID) > protocol.MaxBatchIDLen {
			t.Fatalf("accepted %+v", m)
		}
		children := map[string]bool{}
		for _, r := range m.Readings {
			children[r.Child] = true
			if err := protocol.ValidateChildReading(r); err != nil {
				codeOf(t, err)
				continue
			}
			if protocol.ValidChildAddress(r.Child) != nil || protocol.ValidFeed(r.Feed) != nil {
				t.Fatalf("accepted reading %+v", r)
			}
		}
		if len(children) > protocol.MaxChildrenPerMessage {
			t.Fatalf("accepted %d children", len(children))
		}
	})
}

func FuzzDecodeChildMessage(f *testing.F) {
	addSeeds(f, `{"c":"1001","kind":"event","msg":{"id":"e1","name":"door_opened","data":{"door":2}}}`,
		`{"c":"1001","kind":"notification","msg":{"title":"Low battery"}}`, `{"c":"1","kind":"telemetry","msg":{}}`,
		`{"c":"1","kind":"event","msg":[]}`, `{"c":"1","kind":"event"}`, `{}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeChildMessage(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if protocol.ValidChildAddress(m.Child) != nil || len(m.Msg) == 0 || m.Msg[0] != '{' || !json.Valid(m.Msg) {
			t.Fatalf("accepted %+v", m)
		}
	})
}

func FuzzDecodeChildRPCRequest(f *testing.F) {
	addSeeds(f, `{"c":"1001","id":"5f2c","method":"set_interval","args":{"seconds":30},"deadline":1717243205000}`,
		`{"c":"1001","id":"","method":"x"}`, `{"c":"1001","id":"a","method":"bad method"}`, `{"id":"a","method":"x"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := protocol.DecodeChildRPCRequest(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if protocol.ValidChildAddress(r.Child) != nil || r.ID == "" || len(r.ID) > protocol.MaxBatchIDLen || protocol.ValidMethod(r.Method) != nil {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzDecodeChildRPCResponse(f *testing.F) {
	addSeeds(f, `{"c":"1001","id":"5f2c","result":{"seconds":30}}`,
		`{"c":"1001","id":"5f2c","error":{"code":"unknown_method","message":"no"}}`, `{"c":"1001","id":"5f2c","error":{}}`,
		`{"c":"1001","id":"x"}`, `{"c":"1001"}`, `{"id":"x"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := protocol.DecodeChildRPCResponse(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if protocol.ValidChildAddress(r.Child) != nil || r.ID == "" || (r.Error == nil && len(r.Result) == 0) || (r.Error != nil && r.Error.Code == "") {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzDecodeSinkConfigRequest(f *testing.F) {
	addSeeds(f, `{"id":"cfg-1","sink":"sink1","config":{"channel":7}}`, `{"id":"cfg-1","sink":"sink1","config":7}`,
		`{"id":"","sink":"sink1","config":{}}`, `{"id":"x","sink":"","config":{}}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := protocol.DecodeSinkConfigRequest(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if r.ID == "" || protocol.ValidSinkName(r.Sink) != nil || protocol.ValidSinkConfig(r.Config) != nil {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzDecodeSinkConfigResult(f *testing.F) {
	addSeeds(f, `{"id":"cfg-1","sink":"sink1","res":"ok","config":{"channel":7,"role":"sink"}}`,
		`{"id":"cfg-1","sink":"sink1","res":"invalid_config","message":"channel 99 is out of range"}`,
		`{"id":"cfg-1","res":""}`, `{"id":"cfg-1","res":"ok","config":"x"}`, `{"res":"ok"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := protocol.DecodeSinkConfigResult(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if r.ID == "" || protocol.ValidResultCode(r.Result) != nil || (r.Config != nil && protocol.ValidSinkConfig(r.Config) != nil) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzDecodeSendRequest(f *testing.F) {
	addSeeds(f, `{"id":"s-1","sink":"sink1","dst":"1001","src_ep":1,"dst_ep":1,"payload":"aGVsbG8="}`,
		`{"id":"s-2","sink":"sink1","dst":"*","src_ep":1,"dst_ep":1,"qos":1,"payload":""}`,
		`{"id":"s-3","sink":"sink1","dst":"1001","src_ep":256,"dst_ep":1,"payload":""}`,
		`{"id":"s-4","sink":"sink1","dst":"1001","src_ep":1,"dst_ep":1,"payload":"!!"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := protocol.DecodeSendRequest(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if r.ID == "" || protocol.ValidSinkName(r.Sink) != nil || (r.Dest != protocol.BroadcastAddress && protocol.ValidChildAddress(r.Dest) != nil) ||
			r.SrcEP < 0 || r.SrcEP > 255 || r.DstEP < 0 || r.DstEP > 255 || len(r.Payload) > protocol.MaxNodePayload {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzDecodeSendResult(f *testing.F) {
	addSeeds(f, `{"id":"s-1","res":"ok"}`, `{"id":"s-1","res":"invalid_destination","message":"no node 1001"}`,
		`{"id":"s-1","res":"not ok"}`, `{"id":"","res":"ok"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := protocol.DecodeSendResult(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if r.ID == "" || protocol.ValidResultCode(r.Result) != nil {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzDecodeNodeData(f *testing.F) {
	addSeeds(f, `{"d":[{"sink":"sink1","src":"1001","dst":"9","src_ep":1,"dst_ep":1,"t":1717243200000,"payload":"AQID"}]}`,
		`{"d":[]}`, `{"d":[{"sink":"sink1","src":"","src_ep":1,"dst_ep":1,"payload":""}]}`,
		`{"d":[{"sink":"sink1","src":"1","src_ep":-1,"dst_ep":1,"payload":""}]}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeNodeData(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if len(m.Messages) == 0 || len(m.Messages) > protocol.MaxNodeDataPerMessage {
			t.Fatalf("accepted %d messages", len(m.Messages))
		}
		for _, d := range m.Messages {
			if protocol.ValidSinkName(d.Sink) != nil || protocol.ValidChildAddress(d.Source) != nil || len(d.Payload) > protocol.MaxNodePayload ||
				d.SrcEP < 0 || d.SrcEP > 255 || d.DstEP < 0 || d.DstEP > 255 {
				t.Fatalf("accepted %+v", d)
			}
		}
	})
}

func FuzzDecodeGatewayErrorReply(f *testing.F) {
	addSeeds(f, `{"kind":"gw/telemetry","id":"g-1","c":"1001","code":"unknown_child","message":"no child 1001","rejected":3}`,
		`{"kind":"gw/children","code":"forbidden","message":"x"}`, `{"kind":1}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := protocol.DecodeGatewayErrorReply(b); err != nil {
			codeOf(t, err)
		}
	})
}

func FuzzDecodeChildDownMessage(f *testing.F) {
	addSeeds(f, `{"c":"1001","kind":"feed","msg":{"id":"5f2c0e7a91b3d4c8","f":"valve","v":true,"t":1717243200000}}`,
		`{"c":"1001","kind":"parameters","msg":{"id":"p1","version":7,"values":{"interval":30}}}`,
		`{"c":"1001","kind":"a//b","msg":{}}`, `{"c":"1001","kind":"feed"}`, `{"c":"","kind":"feed","msg":{}}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeChildDownMessage(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if protocol.ValidChildAddress(m.Child) != nil || m.Kind == "" || len(m.Msg) == 0 {
			t.Fatalf("accepted %+v", m)
		}
	})
}

func FuzzDecodeChildAck(f *testing.F) {
	addSeeds(f, `{"c":"1001","ids":["9f3c2a1b7e5d4c6a8b0e1f2d","5f2c9a1e7b3d4c6a8e0f1b2d"]}`,
		`{"c":"1001","ids":[]}`, `{"c":"1001","ids":[""]}`, `{"ids":["x"]}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeChildAck(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if protocol.ValidChildAddress(m.Child) != nil || len(m.IDs) == 0 || len(m.IDs) > protocol.MaxAckIDs {
			t.Fatalf("accepted %+v", m)
		}
		for _, id := range m.IDs {
			if id == "" || len(id) > protocol.MaxBatchIDLen {
				t.Fatalf("accepted id %q", id)
			}
		}
	})
}
