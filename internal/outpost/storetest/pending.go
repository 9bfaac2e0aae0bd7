package storetest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

func testPendingDevices(t *testing.T, s Store) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	MustCreateDevice(t, s, "idle")
	queued := MustCreateDevice(t, s, "queued")
	sent := MustCreateDevice(t, s, "sent")
	done := MustCreateDevice(t, s, "done")
	calling := MustCreateDevice(t, s, "calling")
	answered := MustCreateDevice(t, s, "answered")

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.EnqueueMessage(ctx, msg(queued.ID, "cmd", now, time.Hour), 0))
	ms := msg(sent.ID, "cmd", now, time.Hour)
	must(s.EnqueueMessage(ctx, ms, 0))
	md := msg(done.ID, "cmd", now, time.Hour)
	must(s.EnqueueMessage(ctx, md, 0))
	c1, m1 := callOf(calling.ID, "reboot", now, time.Hour, time.Minute)
	must(s.EnqueueCall(ctx, c1, m1, 0))
	c2, m2 := callOf(answered.ID, "reboot", now, time.Hour, time.Minute)
	must(s.EnqueueCall(ctx, c2, m2, 0))
	_, err := s.MarkSent(ctx, []outpost.SendMark{{ID: ms.ID}, {ID: md.ID}, {ID: c1.ID, Deadline: now.Add(time.Minute)}, {ID: c2.ID, Deadline: now.Add(time.Minute)}}, now)
	must(err)
	_, _, err = s.MarkDelivered(ctx, done.ID, []string{md.ID}, now)
	must(err)
	_, _, err = s.MarkDelivered(ctx, calling.ID, []string{c1.ID}, now)
	must(err)
	_, _, err = s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: answered.ID, ID: c2.ID, Result: []byte(`1`), At: now})
	must(err)

	got, err := s.PendingDevices(ctx)
	must(err)
	slices.Sort(got)
	want := []string{queued.ID, sent.ID, calling.ID} // a delivered message and an answered call are done
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("pending devices %v, want %v (queued, sent, call awaiting its answer)", got, want)
	}
}
