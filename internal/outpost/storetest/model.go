package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// feedView is the comparable part of a feed definition.
type feedView struct {
	Ref, Name, Type, DataType, Unit string
	Removed                         bool
}

func feedViews(tb testing.TB, fs []outpost.Feed) []feedView {
	tb.Helper()
	out := make([]feedView, len(fs))
	for i, f := range fs {
		if f.UpdatedAt.IsZero() {
			tb.Errorf("feed %s has no UpdatedAt", f.Ref)
		}
		out[i] = feedView{f.Ref, f.Name, f.Type, f.DataType, f.Unit, f.Removed}
	}
	return out
}

func testFeedDefs(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	other := MustCreateDevice(t, s, "other")
	if fs, err := s.FeedDefs(ctx, d.ID); err != nil || len(fs) != 0 {
		t.Fatalf("before any: %v, %v", fs, err)
	}
	temp := outpost.Feed{Ref: "temp", Name: "Temperature", Type: "IN", DataType: "number", Unit: "C"}
	sw := outpost.Feed{Ref: "switch", Name: "Switch", Type: "IN_OUT", DataType: "bool"}
	steps := []struct {
		name     string
		register []outpost.Feed
		remove   []string
		want     []feedView
	}{
		{"register, sorted by ref", []outpost.Feed{temp, sw}, nil, []feedView{
			{"switch", "Switch", "IN_OUT", "bool", "", false},
			{"temp", "Temperature", "IN", "number", "C", false},
		}},
		{"update by ref", []outpost.Feed{{Ref: "temp", Name: "Temp", Type: "IN", DataType: "number", Unit: "K"}}, nil, []feedView{
			{"switch", "Switch", "IN_OUT", "bool", "", false},
			{"temp", "Temp", "IN", "number", "K", false},
		}},
		{"remove keeps the definition", nil, []string{"switch"}, []feedView{
			{"switch", "Switch", "IN_OUT", "bool", "", true},
			{"temp", "Temp", "IN", "number", "K", false},
		}},
		{"register again clears removed", []outpost.Feed{sw}, nil, []feedView{
			{"switch", "Switch", "IN_OUT", "bool", "", false},
			{"temp", "Temp", "IN", "number", "K", false},
		}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			got, err := s.PutFeeds(ctx, d.ID, st.register, st.remove)
			if err != nil {
				t.Fatal(err)
			}
			if v := feedViews(t, got); !slices.Equal(v, st.want) {
				t.Errorf("PutFeeds returned\n %v\nwant %v", v, st.want)
			}
			got, err = s.FeedDefs(ctx, d.ID)
			if err != nil {
				t.Fatal(err)
			}
			if v := feedViews(t, got); !slices.Equal(v, st.want) {
				t.Errorf("FeedDefs\n %v\nwant %v", v, st.want)
			}
		})
	}
	t.Run("a ref never registered is recorded as removed", func(t *testing.T) {
		got, err := s.PutFeeds(ctx, d.ID, nil, []string{"ghost"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got[0].Ref != "ghost" || !got[0].Removed {
			t.Errorf("feeds %+v, want ghost first and removed", got)
		}
	})
	if fs, err := s.FeedDefs(ctx, other.ID); err != nil || len(fs) != 0 {
		t.Errorf("another device's feeds: %v, %v", fs, err)
	}
}

func testAttributes(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	other := MustCreateDevice(t, s, "other")
	if as, err := s.Attributes(ctx, d.ID); err != nil || len(as) != 0 {
		t.Fatalf("before any: %v, %v", as, err)
	}
	put := func(as ...outpost.Attribute) {
		t.Helper()
		if err := s.PutAttributes(ctx, d.ID, as); err != nil {
			t.Fatal(err)
		}
	}
	put(outpost.Attribute{Name: "serial", DataType: "string", Value: json.RawMessage(`"SN-1 ✓"`)},
		outpost.Attribute{Name: "firmware", DataType: "string", Value: json.RawMessage(`"1.0"`)})
	put(outpost.Attribute{Name: "firmware", DataType: "string", Value: json.RawMessage(`"1.1"`)},
		outpost.Attribute{Name: "cores", DataType: "number", Value: json.RawMessage(`4.0`)})
	as, err := s.Attributes(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range as {
		if a.UpdatedAt.IsZero() {
			t.Errorf("attribute %s has no UpdatedAt", a.Name)
		}
		got = append(got, a.Name+" "+a.DataType+" "+string(a.Value))
	}
	if want := []string{`cores number 4.0`, `firmware string "1.1"`, `serial string "SN-1 ✓"`}; !slices.Equal(got, want) {
		t.Errorf("attributes\n %q\nwant %q", got, want)
	}
	if as, err := s.Attributes(ctx, other.ID); err != nil || len(as) != 0 {
		t.Errorf("another device's attributes: %v, %v", as, err)
	}
}

func rawMap(m map[string]json.RawMessage) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

func testParameters(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	other := MustCreateDevice(t, s, "other")
	check := func(t *testing.T, what string, p *outpost.Parameters, version int64, desired, reported map[string]string) {
		t.Helper()
		if p == nil {
			t.Fatalf("%s: nil parameters", what)
		}
		if p.Desired == nil || p.Reported == nil {
			t.Errorf("%s: nil maps (desired %v, reported %v); want empty ones", what, p.Desired, p.Reported)
		}
		if p.Version != version || !maps.Equal(rawMap(p.Desired), desired) || !maps.Equal(rawMap(p.Reported), reported) {
			t.Errorf("%s: version %d desired %v reported %v; want %d %v %v", what, p.Version, rawMap(p.Desired), rawMap(p.Reported), version, desired, reported)
		}
	}
	p, err := s.Parameters(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "new device", p, 0, map[string]string{}, map[string]string{})

	steps := []struct {
		name     string
		do       func() (*outpost.Parameters, error)
		version  int64
		desired  map[string]string
		reported map[string]string
	}{
		{"desired", func() (*outpost.Parameters, error) {
			return s.UpdateParameters(ctx, d.ID, map[string]json.RawMessage{"rate": json.RawMessage(`1.50`), "mode": json.RawMessage(`"eco"`)})
		}, 1, map[string]string{"rate": "1.50", "mode": `"eco"`}, map[string]string{}},
		{"null removes a key", func() (*outpost.Parameters, error) {
			return s.UpdateParameters(ctx, d.ID, map[string]json.RawMessage{"rate": json.RawMessage(`null`), "level": json.RawMessage(`{"a":[1,2]}`)})
		}, 2, map[string]string{"mode": `"eco"`, "level": `{"a":[1,2]}`}, map[string]string{}},
		{"reported merges, version unchanged", func() (*outpost.Parameters, error) {
			if err := s.SetReportedParameters(ctx, d.ID, map[string]json.RawMessage{"mode": json.RawMessage(`"eco"`), "rate": json.RawMessage(`2`)}); err != nil {
				return nil, err
			}
			if err := s.SetReportedParameters(ctx, d.ID, map[string]json.RawMessage{"rate": json.RawMessage(`3`), "uptime": json.RawMessage(`true`)}); err != nil {
				return nil, err
			}
			return s.Parameters(ctx, d.ID)
		}, 2, map[string]string{"mode": `"eco"`, "level": `{"a":[1,2]}`}, map[string]string{"mode": `"eco"`, "rate": "3", "uptime": "true"}},
		{"empty change still counts", func() (*outpost.Parameters, error) {
			return s.UpdateParameters(ctx, d.ID, map[string]json.RawMessage{})
		}, 3, map[string]string{"mode": `"eco"`, "level": `{"a":[1,2]}`}, map[string]string{"mode": `"eco"`, "rate": "3", "uptime": "true"}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			p, err := st.do()
			if err != nil {
				t.Fatal(err)
			}
			check(t, "returned", p, st.version, st.desired, st.reported)
			p, err = s.Parameters(ctx, d.ID)
			if err != nil {
				t.Fatal(err)
			}
			check(t, "read back", p, st.version, st.desired, st.reported)
		})
	}
	p, err = s.Parameters(ctx, other.ID)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "another device", p, 0, map[string]string{}, map[string]string{})
}

// eventView is the comparable part of a stored event.
type eventView struct {
	MessageID, Kind, Name, Data, Title, Text string
	TS, ReceivedAt                           int64
}

func eventViews(es []outpost.DeviceEvent) []eventView {
	out := make([]eventView, len(es))
	for i, e := range es {
		out[i] = eventView{e.MessageID, e.Kind, e.Name, string(e.Data), e.Title, e.Text, e.TS, e.ReceivedAt}
	}
	return out
}

func testEvents(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	other := MustCreateDevice(t, s, "other")
	add := func(e outpost.DeviceEvent) int64 {
		t.Helper()
		if err := s.AddEvent(ctx, &e); err != nil {
			t.Fatal(err)
		}
		return e.Seq
	}
	door := outpost.DeviceEvent{MessageID: "m1", DeviceID: d.ID, Kind: outpost.EventKindEvent, Name: "door", Data: json.RawMessage(`{"open":true,"n":1.0}`), TS: 1000, ReceivedAt: 1001}
	note := outpost.DeviceEvent{DeviceID: d.ID, Kind: outpost.EventKindNotification, Title: "Low battery", Text: "12% ✓", TS: 2000, ReceivedAt: 2001}
	bare := outpost.DeviceEvent{DeviceID: d.ID, Kind: outpost.EventKindEvent, Name: "tick", TS: 3000, ReceivedAt: 3001}
	s1 := add(door)
	s2 := add(note)
	again := door
	again.Data = json.RawMessage(`{"open":false}`)
	if seq := add(again); seq != 0 {
		t.Errorf("an event whose id the device used before got seq %d, want 0 (not stored)", seq)
	}
	elsewhere := door
	elsewhere.DeviceID = other.ID
	if seq := add(elsewhere); seq <= 0 {
		t.Errorf("the same id from another device got seq %d, want it stored", seq)
	}
	s3 := add(bare)
	if !(0 < s1 && s1 < s2 && s2 < s3) {
		t.Errorf("seqs %d, %d, %d; want positive and growing", s1, s2, s3)
	}
	v := func(es ...outpost.DeviceEvent) []eventView { return eventViews(es) }
	tests := []struct {
		name string
		f    outpost.EventFilter
		want []eventView
	}{
		{"all, oldest first", outpost.EventFilter{}, v(door, note, bare)},
		{"events", outpost.EventFilter{Kind: outpost.EventKindEvent}, v(door, bare)},
		{"notifications", outpost.EventFilter{Kind: outpost.EventKindNotification}, v(note)},
		{"since is inclusive", outpost.EventFilter{Since: 2000}, v(note, bare)},
		{"limit takes the most recent", outpost.EventFilter{Limit: 2}, v(note, bare)},
		{"kind and limit", outpost.EventFilter{Kind: outpost.EventKindEvent, Limit: 1}, v(bare)},
		{"after the last", outpost.EventFilter{Since: 3001}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.DeviceID = d.ID
			es, err := s.Events(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := eventViews(es); !slices.Equal(got, tt.want) && !(len(got) == 0 && len(tt.want) == 0) {
				t.Errorf("\n got %+v\nwant %+v", got, tt.want)
			}
			for _, e := range es {
				if e.DeviceID != d.ID || e.Seq <= 0 {
					t.Errorf("event %+v: wrong device or seq", e)
				}
			}
		})
	}
	es, err := s.Events(ctx, outpost.EventFilter{DeviceID: d.ID})
	if err != nil || len(es) != 3 || es[0].Seq != s1 || es[2].Seq != s3 {
		t.Errorf("seqs of the stored events: %+v, %v", es, err)
	}
}

func testEventsDefaultLimit(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	for i := range 105 {
		if err := s.AddEvent(ctx, &outpost.DeviceEvent{DeviceID: d.ID, Kind: outpost.EventKindEvent, Name: fmt.Sprint(i), TS: int64(i), ReceivedAt: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	es, err := s.Events(ctx, outpost.EventFilter{DeviceID: d.ID})
	if err != nil || len(es) != 100 || es[0].Name != "5" || es[99].Name != "104" {
		t.Fatalf("got %d events (%v), want the 100 most recent, oldest first", len(es), err)
	}
}

// Every ModelStore method returns ENOTFOUND for an unknown device.
func testModelNotFound(t *testing.T, s Store) {
	ctx := context.Background()
	MustCreateDevice(t, s, "present")
	const id = "d-missing"
	one := map[string]json.RawMessage{"a": json.RawMessage(`1`)}
	tests := []struct {
		name string
		call func() error
	}{
		{"PutFeeds", func() error {
			_, err := s.PutFeeds(ctx, id, []outpost.Feed{{Ref: "f", Name: "f", Type: "IN", DataType: "number"}}, nil)
			return err
		}},
		{"FeedDefs", func() error { _, err := s.FeedDefs(ctx, id); return err }},
		{"PutAttributes", func() error {
			return s.PutAttributes(ctx, id, []outpost.Attribute{{Name: "a", DataType: "number", Value: json.RawMessage(`1`)}})
		}},
		{"Attributes", func() error { _, err := s.Attributes(ctx, id); return err }},
		{"UpdateParameters", func() error { _, err := s.UpdateParameters(ctx, id, one); return err }},
		{"SetReportedParameters", func() error { return s.SetReportedParameters(ctx, id, one) }},
		{"Parameters", func() error { _, err := s.Parameters(ctx, id); return err }},
		{"AddEvent", func() error {
			return s.AddEvent(ctx, &outpost.DeviceEvent{DeviceID: id, Kind: outpost.EventKindEvent, Name: "x", TS: 1, ReceivedAt: 1})
		}},
		{"Events", func() error { _, err := s.Events(ctx, outpost.EventFilter{DeviceID: id}); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCode(t, tt.name, tt.call(), outpost.ENOTFOUND)
		})
	}
}

// A device's model goes with it: a device created again under the same id
// starts with none, and may reuse its event ids.
func testModelGoesWithDevice(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	if _, err := s.PutFeeds(ctx, d.ID, []outpost.Feed{{Ref: "f", Name: "f", Type: "IN", DataType: "number"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.PutAttributes(ctx, d.ID, []outpost.Attribute{{Name: "a", DataType: "number", Value: json.RawMessage(`1`)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateParameters(ctx, d.ID, map[string]json.RawMessage{"p": json.RawMessage(`1`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetReportedParameters(ctx, d.ID, map[string]json.RawMessage{"p": json.RawMessage(`1`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddEvent(ctx, &outpost.DeviceEvent{MessageID: "e1", DeviceID: d.ID, Kind: outpost.EventKindEvent, Name: "x", TS: 1, ReceivedAt: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	again := &outpost.Device{ID: d.ID, Name: d.Name, CreatedAt: d.CreatedAt}
	if err := s.CreateDevice(ctx, again, outpost.HashSecret("x")); err != nil {
		t.Fatal(err)
	}
	if fs, err := s.FeedDefs(ctx, d.ID); err != nil || len(fs) != 0 {
		t.Errorf("feed definitions: %v, %v", fs, err)
	}
	if as, err := s.Attributes(ctx, d.ID); err != nil || len(as) != 0 {
		t.Errorf("attributes: %v, %v", as, err)
	}
	if p, err := s.Parameters(ctx, d.ID); err != nil || p.Version != 0 || len(p.Desired)+len(p.Reported) != 0 {
		t.Errorf("parameters: %+v, %v", p, err)
	}
	if es, err := s.Events(ctx, outpost.EventFilter{DeviceID: d.ID}); err != nil || len(es) != 0 {
		t.Errorf("events: %v, %v", es, err)
	}
	e := &outpost.DeviceEvent{MessageID: "e1", DeviceID: d.ID, Kind: outpost.EventKindEvent, Name: "x", TS: 2, ReceivedAt: 2}
	if err := s.AddEvent(ctx, e); err != nil || e.Seq <= 0 {
		t.Errorf("event id of the deleted device: seq %d, %v; want stored", e.Seq, err)
	}
}
