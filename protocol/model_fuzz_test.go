package protocol_test

import (
	"encoding/json"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

// Fuzz targets for the decoders of the device model. Seed inputs live in
// testdata/fuzz/<FuzzName>/ as well as in f.Add calls.

func FuzzDecodeFeeds(f *testing.F) {
	for _, s := range []string{
		`{"register":[{"ref":"t","name":"Temperature","type":"IN","data_type":"number","unit":"CELSIUS"}]}`,
		`{"id":"f1","register":[{"ref":"sw","type":"IN_OUT","data_type":"bool"},{"ref":"pos","data_type":"location"}],"remove":["old"]}`,
		`{"register":[{"ref":"bad ref","data_type":"number"}]}`,
		`{"register":[{"ref":"x","data_type":"blob","type":"OUT"}]}`,
		`{}`, `[]`, `null`, `{"remove":[]}`, `{"register":[{"ref":"u","data_type":"hex","unit":"\u0001"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeFeeds(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if len(m.Register)+len(m.Remove) == 0 || len(m.ID) > protocol.MaxBatchIDLen {
			t.Fatalf("accepted %+v", m)
		}
		for i := range m.Register {
			d := m.Register[i]
			if err := protocol.ValidateFeedDef(&d); err != nil {
				codeOf(t, err)
				continue
			}
			if protocol.ValidFeed(d.Ref) != nil || (d.Type != protocol.FeedIn && d.Type != protocol.FeedInOut) || !protocol.ValidDataType(d.DataType) || d.Name == "" {
				t.Fatalf("accepted feed %+v", d)
			}
			d2 := d
			if err := protocol.ValidateFeedDef(&d2); err != nil || d2 != d {
				t.Fatalf("validating twice changed %+v to %+v (%v)", d, d2, err)
			}
		}
	})
}

func FuzzDecodeAttributes(f *testing.F) {
	for _, s := range []string{
		`{"attributes":[{"name":"model","data_type":"string","value":"X1"}]}`,
		`{"attributes":[{"name":"serial","data_type":"hex","value":"00ff"},{"name":"pos","data_type":"location","value":{"lat":1,"lon":2}}]}`,
		`{"attributes":[{"name":"n","data_type":"number","value":"1"}]}`,
		`{"attributes":[]}`, `{"attributes":[{"name":"","data_type":"bool","value":true}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeAttributes(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		for _, a := range m.Attributes {
			if err := protocol.ValidateAttribute(a); err != nil {
				codeOf(t, err)
				continue
			}
			if err := protocol.ValidateTyped(a.DataType, a.Value); err != nil {
				t.Fatalf("accepted attribute %+v whose value does not match: %v", a, err)
			}
		}
	})
}

func FuzzDecodeParametersReport(f *testing.F) {
	for _, s := range []string{
		`{"reported":{"interval":10,"mode":"eco"}}`, `{"pull":true}`, `{"id":"p1","pull":true,"reported":{}}`,
		`{"reported":{"bad key":1}}`, `{"reported":{"k":null}}`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeParametersReport(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if m.Reported == nil && !m.Pull {
			t.Fatalf("accepted empty report %q", b)
		}
		if len(m.Reported) > protocol.MaxParametersPerDevice {
			t.Fatalf("accepted %d parameters", len(m.Reported))
		}
		for k, v := range m.Reported {
			if protocol.ValidFeed(k) != nil || !json.Valid(v) || string(v) == "null" {
				t.Fatalf("accepted parameter %q=%s", k, v)
			}
		}
	})
}

func FuzzDecodeParametersUpdate(f *testing.F) {
	for _, s := range []string{
		`{"version":3,"full":true,"values":{"interval":10}}`, `{"version":4,"values":{"mode":null}}`,
		`{"version":1,"full":true,"values":{"k":null}}`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeParametersUpdate(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if m.Values == nil {
			t.Fatal("nil values")
		}
	})
}

func FuzzDecodeTimeRequest(f *testing.F) {
	for _, s := range []string{`{"id":"t1","sent":1717243200000}`, `{"id":"t2"}`, `{"sent":-1}`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeTimeRequest(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if m.Sent < 0 || m.Sent > protocol.MaxTimestamp || len(m.ID) > protocol.MaxBatchIDLen {
			t.Fatalf("accepted %+v", m)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	for _, s := range []string{
		`{"name":"door_open","data":{"door":2},"t":1717243200000}`, `{"name":"boot"}`, `{"name":"x","data":[1,2]}`,
		`{"name":"bad name"}`, `{"name":"n","t":-5}`, `{"data":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeEvent(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if protocol.ValidFeed(m.Name) != nil || len(m.Data) > protocol.MaxEventData || m.T < 0 || m.T > protocol.MaxTimestamp {
			t.Fatalf("accepted %+v", m)
		}
		if len(m.Data) > 0 && !json.Valid(m.Data) {
			t.Fatalf("accepted invalid data %q", m.Data)
		}
		strictOK(t, b)
	})
}

func FuzzDecodeNotification(f *testing.F) {
	for _, s := range []string{
		`{"title":"Low battery","text":"12% left"}`, `{"title":"","text":"x"}`, `{"title":"a\u0007","text":""}`,
		`{"title":"t","text":"\ud800"}`, `{"title":"t","t":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeNotification(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if m.Title == "" || len(m.Title) > protocol.MaxTitleLen || len(m.Text) > protocol.MaxTextLen {
			t.Fatalf("accepted %+v", m)
		}
	})
}

func FuzzDecodeFeedCommand(f *testing.F) {
	for _, s := range []string{
		`{"id":"c1","f":"switch","v":true,"t":1717243200000}`, `{"id":"c2","f":"pos","v":{"lat":1,"lon":2}}`,
		`{"f":"x","v":null}`, `{"f":"","v":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.DecodeFeedCommand(b)
		if err != nil {
			codeOf(t, err)
			return
		}
		if _, err := protocol.ValueKind(m.Value); err != nil || protocol.ValidFeed(m.Feed) != nil {
			t.Fatalf("accepted %+v", m)
		}
	})
}
