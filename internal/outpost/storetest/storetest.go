// Package storetest is the conformance suite every storage engine runs: it
// checks an outpost.Store, every method of it, against the contracts
// written on the interfaces in internal/outpost, so SQLite, PostgreSQL or
// any other engine behaves the same to the rest of the platform.
//
// An engine's test calls Run with a function that opens an empty store:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) storetest.Store { return MustOpen(t) })
//	}
//
// An engine that several platform replicas can share also calls RunShared,
// whose tests open more than one handle on the same store.
package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Store is what an engine implements: every store contract.
type Store = outpost.Store

// Tests lists the suite's tests by name, in the order Run runs them.
func Tests() []string {
	out := make([]string, len(suite))
	for i, tt := range suite {
		out[i] = tt.name
	}
	return out
}

var suite = []struct {
	name string
	fn   func(t *testing.T, s Store)
}{
	// devices and presence
	{"CreateAndGet", testCreateAndGet},
	{"PresenceBatch", testPresenceBatch},
	{"CreateMany", testCreateMany},
	{"EachSecretHash", testEachSecretHash},
	{"QueuePendingDevices", testPendingDevices},
	{"CreateConflict", testCreateConflict},
	{"NotFound", testNotFound},
	{"Devices", testDevices},
	{"Delete", testDelete},
	{"SecretHash", testSecretHash},
	{"Presence", testPresence},
	// telemetry
	{"AppendResults", testAppendResults},
	{"AppendEmpty", testAppendEmpty},
	{"ReadingsOrder", testReadingsOrder},
	{"ReadingsWindow", testReadingsWindow},
	{"ReadingsDefaultLimit", testReadingsDefaultLimit},
	{"AllFeeds", testAllFeeds},
	{"Feeds", testFeeds},
	{"ValuesExact", testValuesExact},
	{"ConcurrentAppends", testConcurrentAppends},
	{"EachReading", testEachReading},
	{"ReadingsAcrossTime", testReadingsAcrossTime},
	// device model
	{"FeedDefs", testFeedDefs},
	{"Attributes", testAttributes},
	{"Parameters", testParameters},
	{"Events", testEvents},
	{"EventsDefaultLimit", testEventsDefaultLimit},
	{"ModelNotFound", testModelNotFound},
	{"ModelGoesWithDevice", testModelGoesWithDevice},
	// down queue
	{"QueueOrderAndStates", testQueueOrderAndStates},
	{"QueueExpiry", testQueueExpiry},
	{"QueueAnswers", testQueueAnswers},
	{"QueueLimits", testQueueLimits},
	{"QueueErrors", testQueueErrors},
	{"QueueResend", testQueueResend},
	{"QueuePending", testQueuePending},
	{"QueueLateAnswers", testQueueLateAnswers},
	{"QueueExpireOneDevice", testQueueExpireOneDevice},
	{"QueueCallsList", testQueueCallsList},
	// retention
	{"PruneBatches", testPruneBatches},
	{"PurgeFinished", testPurgeFinished},
	{"PruneReadings", testPruneReadings},
	// health and backup
	{"Health", testHealth},
	{"Backup", testBackup},
}

// Run runs the suite. open must return a new, empty store for each call and
// close it when t ends; every subtest gets its own.
func Run(t *testing.T, open func(t *testing.T) Store) {
	for _, tt := range suite {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

// MustCreateDevice registers a device named name with a fresh id and the
// hash of the secret "secret-"+name, and returns it as created.
func MustCreateDevice(tb testing.TB, s outpost.DeviceStore, name string) *outpost.Device {
	tb.Helper()
	d := &outpost.Device{
		ID:        outpost.NewDeviceID(),
		Name:      name,
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
	}
	if err := s.CreateDevice(context.Background(), d, outpost.HashSecret("secret-"+name)); err != nil {
		tb.Fatalf("create device %q: %v", name, err)
	}
	return d
}

// MustAppend stores batches and returns what became of each.
func MustAppend(tb testing.TB, s outpost.TelemetryStore, batches ...*outpost.Batch) []outpost.AppendResult {
	tb.Helper()
	res, err := s.AppendBatches(context.Background(), batches)
	if err != nil {
		tb.Fatalf("append %d batches: %v", len(batches), err)
	}
	if len(res) != len(batches) {
		tb.Fatalf("append %d batches: got %d results", len(batches), len(res))
	}
	return res
}

// MustReadings queries readings.
func MustReadings(tb testing.TB, s outpost.TelemetryStore, f outpost.ReadingFilter) []outpost.Reading {
	tb.Helper()
	rs, err := s.Readings(context.Background(), f)
	if err != nil {
		tb.Fatalf("readings %+v: %v", f, err)
	}
	return rs
}

// Batch builds a batch of readings of one feed with the values 1, 2, … at
// the given timestamps.
func Batch(deviceID, batchID, feed string, ts ...int64) *outpost.Batch {
	b := &outpost.Batch{DeviceID: deviceID, ID: batchID}
	for i, t := range ts {
		b.Readings = append(b.Readings, outpost.Reading{Feed: feed, TS: t, Value: json.RawMessage(fmt.Sprint(i + 1))})
	}
	return b
}

// reading is a comparable view of outpost.Reading.
type reading struct {
	Feed  string
	TS    int64
	Value string
}

func view(rs []outpost.Reading) []reading {
	out := make([]reading, len(rs))
	for i, r := range rs {
		out[i] = reading{r.Feed, r.TS, string(r.Value)}
	}
	return out
}

func wantCode(tb testing.TB, what string, err error, code string) {
	tb.Helper()
	if got := outpost.ErrorCode(err); got != code {
		tb.Errorf("%s: error %v has code %q, want %q", what, err, got, code)
	}
}

func ids(ds []*outpost.Device) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

func testCreateAndGet(t *testing.T, s Store) {
	want := MustCreateDevice(t, s, "pump-1")
	got, err := s.Device(context.Background(), want.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != want.ID || got.Name != want.Name || !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got.Online || !got.LastSeen.IsZero() {
		t.Errorf("new device: online %v, last seen %v; want offline, never seen", got.Online, got.LastSeen)
	}
}

func testCreateConflict(t *testing.T, s Store) {
	ctx := context.Background()
	first := MustCreateDevice(t, s, "pump")
	tests := []struct {
		name string
		d    outpost.Device
	}{
		{"same name", outpost.Device{ID: outpost.NewDeviceID(), Name: "pump", CreatedAt: time.Now()}},
		{"same id", outpost.Device{ID: first.ID, Name: "other", CreatedAt: time.Now()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateDevice(ctx, &tt.d, outpost.HashSecret("x"))
			wantCode(t, "create", err, outpost.ECONFLICT)
		})
	}
	ds, err := s.Devices(ctx, outpost.DeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(ds), []string{first.ID}) {
		t.Errorf("devices after conflicts: %v, want only %s", ids(ds), first.ID)
	}
	if h, err := s.SecretHash(ctx, first.ID); err != nil || !bytes.Equal(h, outpost.HashSecret("secret-pump")) {
		t.Errorf("secret of the first device changed: %x, %v", h, err)
	}
}

func testNotFound(t *testing.T, s Store) {
	ctx := context.Background()
	MustCreateDevice(t, s, "present")
	const id = "d-missing"
	tests := []struct {
		name string
		call func() error
	}{
		{"Device", func() error { _, err := s.Device(ctx, id); return err }},
		{"DeleteDevice", func() error { return s.DeleteDevice(ctx, id) }},
		{"SecretHash", func() error { _, err := s.SecretHash(ctx, id); return err }},
		{"SetSecretHash", func() error { return s.SetSecretHash(ctx, id, outpost.HashSecret("x")) }},
		{"Readings", func() error { _, err := s.Readings(ctx, outpost.ReadingFilter{DeviceID: id}); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCode(t, tt.name, tt.call(), outpost.ENOTFOUND)
		})
	}
}

func testDevices(t *testing.T, s Store) {
	ctx := context.Background()
	a := MustCreateDevice(t, s, "a")
	b := MustCreateDevice(t, s, "b")
	c := MustCreateDevice(t, s, "c")
	if err := s.SetPresence(ctx, b.ID, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	name := func(s string) *string { return &s }
	online := func(b bool) *bool { return &b }
	tests := []struct {
		name string
		f    outpost.DeviceFilter
		want []string
	}{
		{"all in creation order", outpost.DeviceFilter{}, []string{a.ID, b.ID, c.ID}},
		{"by name", outpost.DeviceFilter{Name: name("b")}, []string{b.ID}},
		{"unknown name", outpost.DeviceFilter{Name: name("z")}, []string{}},
		{"online", outpost.DeviceFilter{Online: online(true)}, []string{b.ID}},
		{"offline", outpost.DeviceFilter{Online: online(false)}, []string{a.ID, c.ID}},
		{"name and online", outpost.DeviceFilter{Name: name("a"), Online: online(true)}, []string{}},
		{"limit", outpost.DeviceFilter{Limit: 2}, []string{a.ID, b.ID}},
		{"limit after filter", outpost.DeviceFilter{Online: online(false), Limit: 1}, []string{a.ID}},
		{"limit above count", outpost.DeviceFilter{Limit: 10}, []string{a.ID, b.ID, c.ID}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := s.Devices(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(ds); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func testDelete(t *testing.T, s Store) {
	ctx := context.Background()
	keep := MustCreateDevice(t, s, "keep")
	MustAppend(t, s, Batch(keep.ID, "b1", "temp", 10, 20))

	tests := []struct {
		name     string
		recreate func(old *outpost.Device) *outpost.Device
	}{
		{"same name, new id", func(old *outpost.Device) *outpost.Device {
			return MustCreateDevice(t, s, old.Name)
		}},
		{"same name, same id", func(old *outpost.Device) *outpost.Device {
			d := &outpost.Device{ID: old.ID, Name: old.Name, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
			if err := s.CreateDevice(ctx, d, outpost.HashSecret("new")); err != nil {
				t.Fatal(err)
			}
			return d
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := MustCreateDevice(t, s, "gone")
			MustAppend(t, s, Batch(old.ID, "b1", "temp", 1, 2), Batch(old.ID, "b2", "hum", 3))
			if err := s.SetPresence(ctx, old.ID, true, time.Now()); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteDevice(ctx, old.ID); err != nil {
				t.Fatal(err)
			}
			_, err := s.Device(ctx, old.ID)
			wantCode(t, "device after delete", err, outpost.ENOTFOUND)
			_, err = s.Readings(ctx, outpost.ReadingFilter{DeviceID: old.ID})
			wantCode(t, "readings after delete", err, outpost.ENOTFOUND)
			wantCode(t, "second delete", s.DeleteDevice(ctx, old.ID), outpost.ENOTFOUND)
			if res := MustAppend(t, s, Batch(old.ID, "b3", "temp", 4)); res[0] != outpost.AppendUnknownDevice {
				t.Errorf("append to deleted device: %v, want AppendUnknownDevice", res[0])
			}

			d := tt.recreate(old)
			if got := MustReadings(t, s, outpost.ReadingFilter{DeviceID: d.ID}); len(got) != 0 {
				t.Errorf("re-created device has readings %v", view(got))
			}
			if fs, err := s.Feeds(ctx, d.ID); err != nil || len(fs) != 0 {
				t.Errorf("re-created device has feeds %v (%v)", fs, err)
			}
			if got, err := s.Device(ctx, d.ID); err != nil || got.Online || !got.LastSeen.IsZero() {
				t.Errorf("re-created device: %+v, %v; want offline, never seen", got, err)
			}
			// The old batch ids went with the old device.
			res := MustAppend(t, s, Batch(d.ID, "b1", "temp", 5), Batch(d.ID, "b2", "temp", 6))
			if !slices.Equal(res, []outpost.AppendResult{outpost.AppendStored, outpost.AppendStored}) {
				t.Errorf("re-used batch ids: %v, want both stored", res)
			}
			want := []reading{{"temp", 5, "1"}, {"temp", 6, "1"}}
			if got := view(MustReadings(t, s, outpost.ReadingFilter{DeviceID: d.ID})); !slices.Equal(got, want) {
				t.Errorf("readings: %v, want %v", got, want)
			}
			if err := s.DeleteDevice(ctx, d.ID); err != nil {
				t.Fatal(err)
			}
		})
	}

	want := []reading{{"temp", 10, "1"}, {"temp", 20, "2"}}
	if got := view(MustReadings(t, s, outpost.ReadingFilter{DeviceID: keep.ID})); !slices.Equal(got, want) {
		t.Errorf("other device's readings: %v, want %v", got, want)
	}
	if res := MustAppend(t, s, Batch(keep.ID, "b1", "temp", 30)); res[0] != outpost.AppendDuplicate {
		t.Errorf("other device's batch id: %v, want AppendDuplicate", res[0])
	}
}

func testSecretHash(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "dev")
	h, err := s.SecretHash(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h, outpost.HashSecret("secret-dev")) {
		t.Errorf("hash %x, want the one stored at creation", h)
	}
	if err := s.SetSecretHash(ctx, d.ID, outpost.HashSecret("rotated")); err != nil {
		t.Fatal(err)
	}
	h, err = s.SecretHash(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !outpost.CheckSecret(h, "rotated") || outpost.CheckSecret(h, "secret-dev") {
		t.Errorf("after rotation the hash %x does not match only the new secret", h)
	}
}

func testPresence(t *testing.T, s Store) {
	ctx := context.Background()
	a := MustCreateDevice(t, s, "a")
	b := MustCreateDevice(t, s, "b")
	t1 := time.UnixMilli(1_700_000_000_123).UTC()
	t2 := t1.Add(90 * time.Second)

	check := func(t *testing.T, id string, online bool, seen time.Time) {
		t.Helper()
		d, err := s.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Online != online || !d.LastSeen.Equal(seen) {
			t.Errorf("device %s: online %v, last seen %v; want %v, %v", d.Name, d.Online, d.LastSeen, online, seen)
		}
	}
	steps := []struct {
		name   string
		do     func() error
		id     string
		online bool
		seen   time.Time
	}{
		{"online", func() error { return s.SetPresence(ctx, a.ID, true, t1) }, a.ID, true, t1},
		{"offline", func() error { return s.SetPresence(ctx, a.ID, false, t2) }, a.ID, false, t2},
		{"online again", func() error { return s.SetPresence(ctx, a.ID, true, t2) }, a.ID, true, t2},
		{"other device", func() error { return s.SetPresence(ctx, b.ID, true, t1) }, b.ID, true, t1},
		{"reset keeps last seen", func() error { return s.ResetPresence(ctx) }, a.ID, false, t2},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := st.do(); err != nil {
				t.Fatal(err)
			}
			check(t, st.id, st.online, st.seen)
		})
	}
	check(t, b.ID, false, t1)
	if err := s.SetPresence(ctx, "d-nobody", true, t1); err != nil {
		t.Errorf("presence of an unknown device: %v, want it ignored", err)
	}
	online := true
	if ds, err := s.Devices(ctx, outpost.DeviceFilter{Online: &online}); err != nil || len(ds) != 0 {
		t.Errorf("online devices after reset: %v, %v", ids(ds), err)
	}
}

func testPresenceBatch(t *testing.T, s Store) {
	ctx := context.Background()
	a := MustCreateDevice(t, s, "a")
	b := MustCreateDevice(t, s, "b")
	t1 := time.UnixMilli(1_700_000_000_123).UTC()
	t2 := t1.Add(time.Minute)
	if err := s.SetPresences(ctx, nil); err != nil {
		t.Errorf("no presences: %v", err)
	}
	err := s.SetPresences(ctx, []outpost.Presence{
		{ID: a.ID, Online: true, LastSeen: t2},
		{ID: "d-unknown", Online: true, LastSeen: t2},
		{ID: b.ID, Online: false, LastSeen: t1},
	})
	if err != nil {
		t.Fatalf("SetPresences with an unknown id: %v", err)
	}
	// Last seen never moves backwards.
	if err := s.SetPresences(ctx, []outpost.Presence{{ID: a.ID, Online: false, LastSeen: t1}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []outpost.Device{{ID: a.ID, Online: false, LastSeen: t2}, {ID: b.ID, Online: false, LastSeen: t1}} {
		d, err := s.Device(ctx, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if d.Online != want.Online || !d.LastSeen.Equal(want.LastSeen) {
			t.Errorf("device %s: online %v, last seen %v; want %v, %v", d.Name, d.Online, d.LastSeen, want.Online, want.LastSeen)
		}
	}
}

func testCreateMany(t *testing.T, s Store) {
	ctx := context.Background()
	now := time.UnixMilli(1_700_000_000_000).UTC()
	mk := func(names ...string) ([]*outpost.Device, [][]byte) {
		var ds []*outpost.Device
		var hs [][]byte
		for _, n := range names {
			ds = append(ds, &outpost.Device{ID: outpost.NewDeviceID(), Name: n, CreatedAt: now})
			hs = append(hs, outpost.HashSecret("secret-"+n))
		}
		return ds, hs
	}
	ds, hs := mk("m1", "m2", "m3")
	if err := s.CreateDevices(ctx, ds, hs); err != nil {
		t.Fatal(err)
	}
	all, err := s.Devices(ctx, outpost.DeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(all), ids(ds); !slices.Equal(got, want) {
		t.Errorf("devices %v, want %v in creation order", got, want)
	}
	for i, d := range ds {
		h, err := s.SecretHash(ctx, d.ID)
		if err != nil || !bytes.Equal(h, hs[i]) {
			t.Errorf("device %s: hash %x, %v; want the one given", d.Name, h, err)
		}
	}
	// All or none: a taken name fails the whole batch.
	more, mh := mk("m4", "m2", "m5")
	wantCode(t, "create with a taken name", s.CreateDevices(ctx, more, mh), outpost.ECONFLICT)
	if _, err := s.Device(ctx, more[0].ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Errorf("device m4 of a failed batch: %v, want ENOTFOUND", err)
	}
	if err := s.CreateDevices(ctx, ds[:1], nil); err == nil {
		t.Error("devices without their hashes: no error")
	}
}

func testEachSecretHash(t *testing.T, s Store) {
	ctx := context.Background()
	want := map[string][]byte{}
	for _, n := range []string{"x", "y", "z"} {
		d := MustCreateDevice(t, s, n)
		want[d.ID] = outpost.HashSecret("secret-" + n)
	}
	got := map[string][]byte{}
	err := s.EachSecretHash(ctx, func(id string, h []byte) error {
		got[id] = bytes.Clone(h)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d hashes, want %d", len(got), len(want))
	}
	for id, h := range want {
		if !bytes.Equal(got[id], h) {
			t.Errorf("device %s: hash %x, want %x", id, got[id], h)
		}
	}
	stop := fmt.Errorf("stop")
	n := 0
	err = s.EachSecretHash(ctx, func(string, []byte) error { n++; return stop })
	if err != stop || n != 1 {
		t.Errorf("EachSecretHash after fn failed: %v after %d calls, want fn's error after 1", err, n)
	}
}

func testAppendResults(t *testing.T, s Store) {
	a := MustCreateDevice(t, s, "a")
	b := MustCreateDevice(t, s, "b")
	const (
		stored    = outpost.AppendStored
		duplicate = outpost.AppendDuplicate
		unknown   = outpost.AppendUnknownDevice
	)
	calls := []struct {
		name    string
		batches []*outpost.Batch
		want    []outpost.AppendResult
	}{
		{"first call", []*outpost.Batch{
			Batch(a.ID, "x", "f", 1),
			Batch(a.ID, "x", "f", 2), // same id in the same call
			Batch(a.ID, "", "f", 3),  // no id: never a duplicate
			Batch(a.ID, "", "f", 3),  //
			Batch("d-nobody", "x", "f", 4),
			Batch(b.ID, "x", "f", 5), // same id, other device
		}, []outpost.AppendResult{stored, duplicate, stored, stored, unknown, stored}},
		{"later call", []*outpost.Batch{
			Batch(a.ID, "x", "f", 6),
			Batch(a.ID, "y", "f", 7),
			Batch(b.ID, "y", "f", 8),
		}, []outpost.AppendResult{duplicate, stored, stored}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			if got := MustAppend(t, s, c.batches...); !slices.Equal(got, c.want) {
				t.Errorf("results %v, want %v", got, c.want)
			}
		})
	}
	want := map[string][]reading{
		a.ID: {{"f", 1, "1"}, {"f", 3, "1"}, {"f", 3, "1"}, {"f", 7, "1"}},
		b.ID: {{"f", 5, "1"}, {"f", 8, "1"}},
	}
	for id, w := range want {
		if got := view(MustReadings(t, s, outpost.ReadingFilter{DeviceID: id})); !slices.Equal(got, w) {
			t.Errorf("device %s: readings %v, want %v", id, got, w)
		}
	}
}

func testAppendEmpty(t *testing.T, s Store) {
	d := MustCreateDevice(t, s, "d")
	res, err := s.AppendBatches(context.Background(), nil)
	if err != nil || len(res) != 0 {
		t.Errorf("no batches: %v, %v", res, err)
	}
	// A batch without readings still claims its id.
	got := MustAppend(t, s, &outpost.Batch{DeviceID: d.ID, ID: "empty"}, &outpost.Batch{DeviceID: d.ID, ID: "empty"})
	if want := []outpost.AppendResult{outpost.AppendStored, outpost.AppendDuplicate}; !slices.Equal(got, want) {
		t.Errorf("empty batches: %v, want %v", got, want)
	}
	if rs := MustReadings(t, s, outpost.ReadingFilter{DeviceID: d.ID}); len(rs) != 0 {
		t.Errorf("readings %v, want none", view(rs))
	}
}

func testReadingsOrder(t *testing.T, s Store) {
	d := MustCreateDevice(t, s, "d")
	val := func(ts int64, v string) outpost.Reading {
		return outpost.Reading{Feed: "f", TS: ts, Value: json.RawMessage(v)}
	}
	MustAppend(t, s,
		&outpost.Batch{DeviceID: d.ID, Readings: []outpost.Reading{val(300, `"c1"`), val(100, `"a1"`), val(200, `"b1"`)}},
		&outpost.Batch{DeviceID: d.ID, Readings: []outpost.Reading{val(200, `"b2"`), val(100, `"a2"`)}},
	)
	MustAppend(t, s, &outpost.Batch{DeviceID: d.ID, Readings: []outpost.Reading{val(200, `"b3"`), val(50, `"z"`)}})
	want := []reading{
		{"f", 50, `"z"`},
		{"f", 100, `"a1"`}, {"f", 100, `"a2"`},
		{"f", 200, `"b1"`}, {"f", 200, `"b2"`}, {"f", 200, `"b3"`},
		{"f", 300, `"c1"`},
	}
	tests := []struct {
		name string
		f    outpost.ReadingFilter
		want []reading
	}{
		{"all feeds", outpost.ReadingFilter{}, want},
		{"one feed", outpost.ReadingFilter{Feed: "f"}, want},
		{"from since", outpost.ReadingFilter{Since: 1}, want},
		// A limit that cuts through readings with the same timestamp keeps
		// the latest arrivals without Since and the earliest with it.
		{"limit cuts a tie", outpost.ReadingFilter{Limit: 3}, want[4:]},
		{"limit cuts a tie before until", outpost.ReadingFilter{Until: 200, Limit: 1}, want[2:3]},
		{"limit cuts a tie from since", outpost.ReadingFilter{Since: 100, Limit: 1}, want[1:2]},
		{"limit cuts a later tie from since", outpost.ReadingFilter{Since: 150, Limit: 2}, want[3:5]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.DeviceID = d.ID
			if got := view(MustReadings(t, s, tt.f)); !slices.Equal(got, tt.want) {
				t.Errorf("\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func testReadingsWindow(t *testing.T, s Store) {
	d := MustCreateDevice(t, s, "d")
	other := MustCreateDevice(t, s, "other")
	MustAppend(t, s,
		Batch(d.ID, "", "f", 10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
		Batch(other.ID, "", "f", 10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
	)
	tests := []struct {
		name string
		f    outpost.ReadingFilter
		want []int64
	}{
		{"everything", outpost.ReadingFilter{}, []int64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}},
		{"limit takes the most recent", outpost.ReadingFilter{Limit: 3}, []int64{80, 90, 100}},
		{"limit from since takes the first", outpost.ReadingFilter{Since: 40, Limit: 3}, []int64{40, 50, 60}},
		{"since is inclusive", outpost.ReadingFilter{Since: 90}, []int64{90, 100}},
		{"since between readings", outpost.ReadingFilter{Since: 85}, []int64{90, 100}},
		{"until is exclusive", outpost.ReadingFilter{Until: 30}, []int64{10, 20}},
		{"until with limit", outpost.ReadingFilter{Until: 60, Limit: 2}, []int64{40, 50}},
		{"since and until", outpost.ReadingFilter{Since: 30, Until: 60}, []int64{30, 40, 50}},
		{"since and until with limit", outpost.ReadingFilter{Since: 30, Until: 90, Limit: 2}, []int64{30, 40}},
		{"since equals until", outpost.ReadingFilter{Since: 50, Until: 50}, nil},
		{"after the last", outpost.ReadingFilter{Since: 101}, nil},
		{"before the first", outpost.ReadingFilter{Until: 10}, nil},
		{"limit above count", outpost.ReadingFilter{Limit: 100}, []int64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}},
		{"other feed", outpost.ReadingFilter{Feed: "g"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.DeviceID = d.ID
			var got []int64
			for _, r := range MustReadings(t, s, tt.f) {
				got = append(got, r.TS)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func testReadingsDefaultLimit(t *testing.T, s Store) {
	d := MustCreateDevice(t, s, "d")
	ts := make([]int64, 1005)
	for i := range ts {
		ts[i] = int64(i + 1)
	}
	MustAppend(t, s, Batch(d.ID, "", "f", ts...))
	tests := []struct {
		name        string
		f           outpost.ReadingFilter
		first, last int64
	}{
		{"most recent 1000", outpost.ReadingFilter{DeviceID: d.ID}, 6, 1005},
		{"first 1000 from since", outpost.ReadingFilter{DeviceID: d.ID, Since: 1}, 1, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := MustReadings(t, s, tt.f)
			if len(rs) != 1000 {
				t.Fatalf("got %d readings, want 1000", len(rs))
			}
			if rs[0].TS != tt.first || rs[999].TS != tt.last {
				t.Errorf("got readings %d to %d, want %d to %d", rs[0].TS, rs[999].TS, tt.first, tt.last)
			}
		})
	}
}

func testAllFeeds(t *testing.T, s Store) {
	d := MustCreateDevice(t, s, "d")
	r := func(feed string, ts int64, v string) outpost.Reading {
		return outpost.Reading{Feed: feed, TS: ts, Value: json.RawMessage(v)}
	}
	MustAppend(t, s, &outpost.Batch{DeviceID: d.ID, Readings: []outpost.Reading{
		r("temp", 10, "1"), r("hum", 10, "2"), r("temp", 30, "3"), r("hum", 20, "4"),
	}})
	MustAppend(t, s, &outpost.Batch{DeviceID: d.ID, Readings: []outpost.Reading{
		r("volt", 10, "5"), r("hum", 40, "6"), r("temp", 40, "7"),
	}})
	tests := []struct {
		name string
		f    outpost.ReadingFilter
		want []reading
	}{
		{"merged", outpost.ReadingFilter{}, []reading{
			{"temp", 10, "1"}, {"hum", 10, "2"}, {"volt", 10, "5"}, {"hum", 20, "4"},
			{"temp", 30, "3"}, {"hum", 40, "6"}, {"temp", 40, "7"},
		}},
		{"most recent across feeds", outpost.ReadingFilter{Limit: 3}, []reading{
			{"temp", 30, "3"}, {"hum", 40, "6"}, {"temp", 40, "7"},
		}},
		{"first across feeds from since", outpost.ReadingFilter{Since: 10, Limit: 4}, []reading{
			{"temp", 10, "1"}, {"hum", 10, "2"}, {"volt", 10, "5"}, {"hum", 20, "4"},
		}},
		{"window across feeds", outpost.ReadingFilter{Since: 20, Until: 40}, []reading{
			{"hum", 20, "4"}, {"temp", 30, "3"},
		}},
		{"one feed", outpost.ReadingFilter{Feed: "hum"}, []reading{
			{"hum", 10, "2"}, {"hum", 20, "4"}, {"hum", 40, "6"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.DeviceID = d.ID
			if got := view(MustReadings(t, s, tt.f)); !slices.Equal(got, tt.want) {
				t.Errorf("\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func testFeeds(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	other := MustCreateDevice(t, s, "other")
	if fs, err := s.Feeds(ctx, d.ID); err != nil || len(fs) != 0 {
		t.Errorf("feeds before any reading: %v, %v", fs, err)
	}
	MustAppend(t, s,
		Batch(d.ID, "", "temp", 1, 2),
		Batch(d.ID, "", "env.humidity", 1),
		Batch(other.ID, "", "volt", 1),
	)
	MustAppend(t, s, Batch(d.ID, "", "temp", 3), Batch(d.ID, "", "a:b", 3))
	fs, err := s.Feeds(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(fs)
	if want := []string{"a:b", "env.humidity", "temp"}; !slices.Equal(fs, want) {
		t.Errorf("feeds %v, want %v", fs, want)
	}
}

func testValuesExact(t *testing.T, s Store) {
	d := MustCreateDevice(t, s, "d")
	values := []struct{ name, raw string }{
		{"tiny", `1e-7`},
		{"beyond float64 precision", `12345678901234567`},
		{"huge", `123456789012345678901234567890`},
		{"negative fraction", `-0.5`},
		{"trailing zero", `1.0`},
		{"negative zero", `-0`},
		{"exponent", `6.02E+23`},
		{"zero", `0`},
		{"true", `true`},
		{"false", `false`},
		{"unicode", `"température ✓ 😀 日本"`},
		{"escapes", `"quote \" backslash \\ slash \/ newline \n tab \t \u00e9 \ud83d\ude00"`},
		{"empty string", `""`},
	}
	b := &outpost.Batch{DeviceID: d.ID}
	for i, v := range values {
		b.Readings = append(b.Readings, outpost.Reading{Feed: "f", TS: int64(i + 1), Value: json.RawMessage(v.raw)})
	}
	MustAppend(t, s, b)
	rs := MustReadings(t, s, outpost.ReadingFilter{DeviceID: d.ID})
	if len(rs) != len(values) {
		t.Fatalf("got %d readings, want %d", len(rs), len(values))
	}
	for i, v := range values {
		t.Run(v.name, func(t *testing.T) {
			if string(rs[i].Value) != v.raw {
				t.Errorf("value %s came back as %s", v.raw, rs[i].Value)
			}
		})
	}
}

func testConcurrentAppends(t *testing.T, s Store) {
	const writers, batches = 4, 25
	devs := make([]*outpost.Device, writers)
	for i := range devs {
		devs[i] = MustCreateDevice(t, s, fmt.Sprintf("dev-%d", i))
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, writers*batches*2)
	for w := range writers {
		wg.Go(func() {
			for i := range batches {
				// Every batch is sent twice, as a redelivery would.
				b := Batch(devs[w].ID, fmt.Sprint(i), "f", int64(i+1), int64(i+1))
				if _, err := s.AppendBatches(ctx, []*outpost.Batch{b, b}); err != nil {
					errs <- err
				}
				if _, err := s.Readings(ctx, outpost.ReadingFilter{DeviceID: devs[(w+1)%writers].ID}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, d := range devs {
		if rs := MustReadings(t, s, outpost.ReadingFilter{DeviceID: d.ID}); len(rs) != 2*batches {
			t.Errorf("device %s: %d readings, want %d", d.Name, len(rs), 2*batches)
		}
	}
}
