package fleet_test

// The fleet package keeps its own copies of the HTTP API's JSON types: it is
// a public package and must not import internal/. These tests are the
// contract between the copies and the platform's types (issue 10, item 10):
// they fail as soon as a field is added, renamed or retyped on one side
// only.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/presence"
)

// filler sets every exported field of a value, recursively, to a distinct
// non-zero value, so that no field hides behind omitempty and two fields
// swapped on one side do not compare equal.
type filler struct{ n int }

func (f *filler) fill(v reflect.Value) {
	f.n++
	switch {
	case v.Type() == reflect.TypeFor[time.Time]():
		v.Set(reflect.ValueOf(time.Date(2026, 1, 2, 3, 4, 5, f.n*1_000_000, time.UTC)))
		return
	case v.Type() == reflect.TypeFor[time.Duration]():
		v.SetInt(int64(time.Duration(f.n) * time.Second))
		return
	case v.Type() == reflect.TypeFor[json.RawMessage]():
		v.SetBytes([]byte(fmt.Sprintf(`{"n":%d}`, f.n)))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				f.fill(v.Field(i))
			}
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		f.fill(v.Elem())
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		f.fill(v.Index(0))
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k := reflect.New(v.Type().Key()).Elem()
		f.fill(k)
		e := reflect.New(v.Type().Elem()).Elem()
		f.fill(e)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d", f.n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(f.n))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(f.n))
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(f.n) + 0.5)
	}
}

// filled returns a *T with every field set.
func filled[T any]() *T {
	v := new(T)
	(&filler{}).fill(reflect.ValueOf(v).Elem())
	return v
}

// sameJSON decodes data strictly into into (a field into does not know is
// an error), encodes it again and reports what got lost or changed on the
// way.
func sameJSON(data []byte, into any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return fmt.Errorf("decode: %w\n  json: %s", err, data)
	}
	back, err := json.Marshal(into)
	if err != nil {
		return err
	}
	var a, b any
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	if err := json.Unmarshal(back, &b); err != nil {
		return err
	}
	if !reflect.DeepEqual(a, b) {
		return fmt.Errorf("not the same JSON after the round trip:\n  sent:     %s\n  returned: %s", data, back)
	}
	return nil
}

// pair checks a platform type P against its fleet copy F both ways: what
// the platform encodes, fleet decodes and encodes back unchanged; what
// fleet encodes, the platform decodes and encodes back unchanged.
func pair[P, F any](t *testing.T) {
	t.Helper()
	name := fmt.Sprintf("%T and %T", *new(P), *new(F))
	p, err := json.Marshal(filled[P]())
	if err != nil {
		t.Fatal(err)
	}
	if err := sameJSON(p, new(F)); err != nil {
		t.Errorf("platform → fleet, %s: %v", name, err)
	}
	f, err := json.Marshal(filled[F]())
	if err != nil {
		t.Fatal(err)
	}
	if err := sameJSON(f, new(P)); err != nil {
		t.Errorf("fleet → platform, %s: %v", name, err)
	}
}

func TestWireTypesMatchThePlatform(t *testing.T) {
	pair[outpost.Device, fleet.Device](t)
	pair[outpost.Reading, fleet.Reading](t)
	pair[outpost.Call, fleet.Call](t)
	pair[outpost.CallError, fleet.CallError](t)
	pair[outpost.Feed, fleet.Feed](t)
	pair[outpost.Attribute, fleet.Attribute](t)
	pair[outpost.Parameters, fleet.Parameters](t)
	pair[outpost.FeedCommand, fleet.FeedCommand](t)
	pair[outpost.DeviceEvent, fleet.DeviceEvent](t)
	pair[presence.Change, fleet.Presence](t)
}

// The check can fail: a field of one side missing on the other is found.
func TestWireContractFindsDrift(t *testing.T) {
	type platform struct {
		ID    string `json:"id"`
		Extra string `json:"extra"`
	}
	type copied struct {
		ID string `json:"id"`
	}
	if err := sameJSON([]byte(`{"id":"a","extra":"b"}`), new(copied)); err == nil {
		t.Error("a field the copy lacks went unnoticed")
	}
	type renamed struct {
		ID    string `json:"id"`
		Extra string `json:"extra,omitempty"`
		More  string `json:"more,omitempty"`
	}
	b, _ := json.Marshal(filled[renamed]())
	if err := sameJSON(b, new(platform)); err == nil {
		t.Error("a field the platform lacks went unnoticed")
	}
}

// The responses and stream events that the platform builds from types of
// its own (created device, model, stream payloads) are checked on a live
// platform, with every optional field present at least once.
func TestWireResponsesMatchThePlatform(t *testing.T) {
	p := outposttest.Start(t)
	f := dial(t, p)
	ctx := testCtx(t)

	var created json.RawMessage
	if st := p.Do(t, "POST", "/api/v1/devices", map[string]string{"name": "contract"}, &created); st != http.StatusCreated {
		t.Fatalf("create: status %d", st)
	}
	if err := sameJSON(created, new(fleet.NewDevice)); err != nil {
		t.Errorf("created device: %v", err)
	}
	var d fleet.NewDevice
	if err := json.Unmarshal(created, &d); err != nil {
		t.Fatal(err)
	}

	events := make(chan fleet.Event, 64)
	sub, err := f.Subscribe(ctx, fleet.StreamFilter{DeviceIDs: []string{d.ID}}, func(e fleet.Event) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	c := connect(t, d.URL, nil)
	if err := c.RegisterFeeds(ctx, device.Feed{Ref: "valve", Name: "Valve", Type: device.FeedInOut, DataType: device.Number, Unit: "PERCENT"}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAttribute(ctx, "model", device.String, "V-1"); err != nil {
		t.Fatal(err)
	}
	if err := c.ReportParameters(ctx, map[string]any{"rate": 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.UpdateParameters(ctx, d.ID, map[string]any{"rate": 5}); err != nil {
		t.Fatal(err)
	}
	var model json.RawMessage
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/model", nil, &model); st != http.StatusOK {
		t.Fatalf("model: status %d", st)
	}
	if err := sameJSON(model, new(fleet.Model)); err != nil {
		t.Errorf("model: %v", err)
	}
	var dev json.RawMessage
	p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
	if err := sameJSON(dev, new(fleet.Device)); err != nil {
		t.Errorf("device: %v", err)
	}

	c.Add("valve", 40)
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.SendEvent(ctx, "opened", map[string]int{"pct": 40}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendNotification(ctx, "Valve", "open"); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishRaw(ctx, "json", []byte(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishRaw(ctx, "bin", []byte{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	c.Close() // presence: offline, with a reason

	want := map[string]int{fleet.KindTelemetry: 1, fleet.KindEvent: 1, fleet.KindNotification: 1, fleet.KindRaw: 2, fleet.KindPresence: 2}
	payload := map[string]func() any{
		fleet.KindTelemetry:    func() any { return new(fleet.Telemetry) },
		fleet.KindEvent:        func() any { return new(fleet.DeviceEvent) },
		fleet.KindNotification: func() any { return new(fleet.DeviceEvent) },
		fleet.KindRaw:          func() any { return new(fleet.Raw) },
		fleet.KindPresence:     func() any { return new(fleet.Presence) },
	}
	deadline := time.After(10 * time.Second)
	for left := 7; left > 0; {
		select {
		case e := <-events:
			mk, ok := payload[e.Kind]
			if !ok || want[e.Kind] == 0 {
				continue
			}
			want[e.Kind]--
			left--
			if err := sameJSON(e.Data, mk()); err != nil {
				t.Errorf("stream event %s: %v", e.Kind, err)
			}
		case <-deadline:
			t.Fatalf("stream events still missing: %v", want)
		}
	}
}
