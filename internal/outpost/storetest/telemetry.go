package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// EachReading yields what Readings returns, in the same order, stops at
// the first error of fn and returns it, and reports an unknown device
// before calling fn.
func testEachReading(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	r := func(feed string, ts int64, v string) outpost.Reading {
		return outpost.Reading{Feed: feed, TS: ts, Value: json.RawMessage(v)}
	}
	MustAppend(t, s, &outpost.Batch{DeviceID: d.ID, Readings: []outpost.Reading{
		r("temp", 10, "1"), r("hum", 10, "2"), r("temp", 30, `"x"`), r("hum", 20, "4"), r("temp", 30, "true"),
	}})
	for _, f := range []outpost.ReadingFilter{
		{}, {Limit: 2}, {Since: 10, Limit: 3}, {Since: 20, Until: 31}, {Feed: "hum"}, {Feed: "none"},
	} {
		t.Run(fmt.Sprintf("%+v", f), func(t *testing.T) {
			f.DeviceID = d.ID
			var got []outpost.Reading
			if err := s.EachReading(ctx, f, func(r outpost.Reading) error {
				got = append(got, r)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if want := view(MustReadings(t, s, f)); !slices.Equal(view(got), want) {
				t.Errorf("\n got %v\nwant %v", view(got), want)
			}
		})
	}
	t.Run("stops at an error", func(t *testing.T) {
		stop := errors.New("enough")
		n := 0
		err := s.EachReading(ctx, outpost.ReadingFilter{DeviceID: d.ID}, func(outpost.Reading) error {
			n++
			if n == 2 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || n != 2 {
			t.Errorf("after %d readings: %v, want the error of the 2nd", n, err)
		}
	})
	t.Run("unknown device", func(t *testing.T) {
		called := false
		err := s.EachReading(ctx, outpost.ReadingFilter{DeviceID: "d-nobody"}, func(outpost.Reading) error {
			called = true
			return nil
		})
		wantCode(t, "each reading", err, outpost.ENOTFOUND)
		if called {
			t.Error("fn called for an unknown device")
		}
	})
}

// Readings far apart in time (1970, weeks ago, across a UTC midnight, in
// the future, in 2099) come back merged in time order, windowed and
// limited as when they are close: an engine that keeps readings in time
// partitions must not let them show.
func testReadingsAcrossTime(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "d")
	now := time.Now().UTC()
	midnight := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC).UnixMilli()
	day := int64(24 * time.Hour / time.Millisecond)
	ts := []int64{
		5,
		midnight - 40*day,
		midnight - 3*day + 7,
		midnight - 1, midnight, midnight + 1,
		max(now.UnixMilli(), midnight+2),
		midnight + 2*day,
		time.Date(2099, 12, 31, 23, 59, 59, 0, time.UTC).UnixMilli(),
	}
	// Two feeds, sent out of order over two calls.
	var first, second []outpost.Reading
	for i := len(ts) - 1; i >= 0; i-- {
		r := outpost.Reading{Feed: []string{"a", "b"}[i%2], TS: ts[i], Value: json.RawMessage(fmt.Sprint(i))}
		if i%3 == 0 {
			first = append(first, r)
		} else {
			second = append(second, r)
		}
	}
	res := MustAppend(t, s, &outpost.Batch{DeviceID: d.ID, ID: "first", Readings: first}, &outpost.Batch{DeviceID: d.ID, ID: "second", Readings: second})
	if !slices.Equal(res, []outpost.AppendResult{outpost.AppendStored, outpost.AppendStored}) {
		t.Fatalf("append: %v", res)
	}
	// The same again is a duplicate, wherever its readings went.
	if res := MustAppend(t, s, &outpost.Batch{DeviceID: d.ID, ID: "first", Readings: first}); res[0] != outpost.AppendDuplicate {
		t.Fatalf("redelivery: %v", res)
	}
	all := make([]reading, len(ts))
	for i, x := range ts {
		all[i] = reading{[]string{"a", "b"}[i%2], x, fmt.Sprint(i)}
	}
	only := func(feed string) []reading {
		var out []reading
		for _, r := range all {
			if r.Feed == feed {
				out = append(out, r)
			}
		}
		return out
	}
	tests := []struct {
		name string
		f    outpost.ReadingFilter
		want []reading
	}{
		{"all", outpost.ReadingFilter{}, all},
		{"most recent", outpost.ReadingFilter{Limit: 3}, all[6:]},
		{"first from since", outpost.ReadingFilter{Since: midnight - 3*day, Limit: 2}, all[2:4]},
		{"until midnight", outpost.ReadingFilter{Since: 1, Until: midnight}, all[:4]},
		{"from midnight", outpost.ReadingFilter{Since: midnight, Until: midnight + 2*day}, all[4:7]},
		{"last before midnight", outpost.ReadingFilter{Until: midnight, Limit: 1}, all[3:4]},
		{"one feed", outpost.ReadingFilter{Feed: "b"}, only("b")},
		{"one feed, most recent", outpost.ReadingFilter{Feed: "a", Limit: 2}, only("a")[3:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.DeviceID = d.ID
			if got := view(MustReadings(t, s, tt.f)); !slices.Equal(got, tt.want) {
				t.Errorf("\n got %v\nwant %v", got, tt.want)
			}
		})
	}
	if fs, err := s.Feeds(ctx, d.ID); err != nil || len(fs) != 2 {
		t.Errorf("feeds %v, %v", fs, err)
	}
}
