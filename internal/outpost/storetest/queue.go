package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

var queueSeq atomic.Int64

func msg(deviceID, kind string, now time.Time, ttl time.Duration) *outpost.QueuedMessage {
	return &outpost.QueuedMessage{ID: fmt.Sprintf("m%06d", queueSeq.Add(1)), DeviceID: deviceID, Kind: kind, Payload: json.RawMessage(`{"n":1}`),
		CreatedAt: now, ExpiresAt: now.Add(ttl)}
}

func callOf(deviceID, method string, now time.Time, ttl, timeout time.Duration) (*outpost.Call, *outpost.QueuedMessage) {
	m := msg(deviceID, "rpc", now, ttl)
	m.Timeout = timeout
	c := &outpost.Call{ID: m.ID, DeviceID: deviceID, Method: method, Args: json.RawMessage(`[1]`), CreatedAt: now, ExpiresAt: m.ExpiresAt, Timeout: timeout}
	return c, m
}

func msgIDs(ms []*outpost.QueuedMessage) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func testQueueOrderAndStates(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	now := time.Now().UTC().Truncate(time.Millisecond)
	a := msg(d.ID, "cmd", now, time.Hour)
	c, cm := callOf(d.ID, "reboot", now, time.Hour, 10*time.Second)
	b := msg(d.ID, "cmd", now, time.Hour)
	for _, err := range []error{s.EnqueueMessage(ctx, a, 0), s.EnqueueCall(ctx, c, cm, 0), s.EnqueueMessage(ctx, b, 0)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Deliverable(ctx, d.ID, now, false, 0)
	if err != nil || fmt.Sprint(msgIDs(got)) != fmt.Sprint([]string{a.ID, c.ID, b.ID}) {
		t.Fatalf("deliverable %v, %v", msgIDs(got), err)
	}
	if got[1].Timeout != 10*time.Second || string(got[0].Payload) != `{"n":1}` {
		t.Fatalf("deliverable fields: %+v", got[1])
	}
	dl := now.Add(10 * time.Second)
	calls, err := s.MarkSent(ctx, []outpost.SendMark{{ID: a.ID}, {ID: c.ID, Deadline: dl}, {ID: b.ID}}, now)
	if err != nil || len(calls) != 1 || calls[0].State != outpost.StateSent || !calls[0].SentAt.Equal(now) {
		t.Fatalf("mark sent: %+v, %v", calls, err)
	}
	// Nothing new to send; with resend, everything unacknowledged.
	if got, _ := s.Deliverable(ctx, d.ID, now, false, 0); len(got) != 0 {
		t.Fatalf("deliverable after send: %v", msgIDs(got))
	}
	if got, _ := s.Deliverable(ctx, d.ID, now, true, 0); len(got) != 3 || !got[1].Deadline.Equal(dl) {
		t.Fatalf("resendable: %v", msgIDs(got))
	}
	msgs, calls, err := s.MarkDelivered(ctx, d.ID, []string{a.ID, c.ID}, now)
	if err != nil || len(msgs) != 1 || len(calls) != 1 || calls[0].State != outpost.StateDelivered {
		t.Fatalf("mark delivered: %v %v %v", msgs, calls, err)
	}
	// A second acknowledgement, or one from another device, changes nothing.
	if msgs, calls, _ := s.MarkDelivered(ctx, d.ID, []string{a.ID}, now); len(msgs)+len(calls) != 0 {
		t.Fatal("delivered twice")
	}
	if msgs, _, _ := s.MarkDelivered(ctx, "other", []string{b.ID}, now); len(msgs) != 0 {
		t.Fatal("delivered by another device")
	}
	// Delivered calls are resent (until answered), delivered messages not.
	if got, _ := s.Deliverable(ctx, d.ID, now, true, 0); fmt.Sprint(msgIDs(got)) != fmt.Sprint([]string{c.ID, b.ID}) {
		t.Fatalf("resendable after delivery: %v", msgIDs(got))
	}
	if m, err := s.QueuedMessage(ctx, a.ID); err != nil || m.State != outpost.StateDelivered || m.DeliveredAt.IsZero() {
		t.Fatalf("message a: %+v %v", m, err)
	}
	if _, err := s.Call(ctx, a.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("a plain message is not a call: %v", err)
	}
}

func testQueueExpiry(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	now := time.Now().UTC().Truncate(time.Millisecond)
	old := msg(d.ID, "cmd", now, time.Second)
	oldCall, oldCallMsg := callOf(d.ID, "x", now, time.Second, time.Second)
	sentCall, sentCallMsg := callOf(d.ID, "y", now, time.Second, 5*time.Second)
	keep := msg(d.ID, "cmd", now, time.Hour)
	for _, err := range []error{s.EnqueueMessage(ctx, old, 0), s.EnqueueCall(ctx, oldCall, oldCallMsg, 0), s.EnqueueCall(ctx, sentCall, sentCallMsg, 0), s.EnqueueMessage(ctx, keep, 0)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.MarkSent(ctx, []outpost.SendMark{{ID: sentCall.ID, Deadline: now.Add(5 * time.Second)}}, now); err != nil {
		t.Fatal(err)
	}
	// Past the TTL: the queued message and call expire; the sent call is
	// governed by its deadline, not by its TTL.
	later := now.Add(2 * time.Second)
	if got, _ := s.Deliverable(ctx, d.ID, later, false, 0); fmt.Sprint(msgIDs(got)) != fmt.Sprint([]string{keep.ID}) {
		t.Fatalf("deliverable after ttl: %v", msgIDs(got))
	}
	ex, err := s.ExpireDue(ctx, d.ID, later)
	if err != nil || len(ex.Messages) != 1 || len(ex.Calls) != 1 || ex.Calls[0].State != outpost.StateExpired || ex.Calls[0].Error == nil {
		t.Fatalf("expire: %+v %v", ex, err)
	}
	ex, err = s.ExpireDue(ctx, "", now.Add(6*time.Second))
	if err != nil || len(ex.Calls) != 1 || ex.Calls[0].State != outpost.StateTimedOut || ex.Calls[0].Error.Code != "timeout" {
		t.Fatalf("time out: %+v %v", ex, err)
	}
	reported, err := s.TakeExpiredUnreported(ctx, d.ID)
	if err != nil || fmt.Sprint(reported) != fmt.Sprint([]string{old.ID, oldCall.ID}) {
		t.Fatalf("expired unreported: %v %v", reported, err)
	}
	if again, _ := s.TakeExpiredUnreported(ctx, d.ID); len(again) != 0 {
		t.Fatalf("reported twice: %v", again)
	}
}

func testQueueAnswers(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	now := time.Now().UTC().Truncate(time.Millisecond)
	ok, okMsg := callOf(d.ID, "a", now, time.Hour, time.Second)
	bad, badMsg := callOf(d.ID, "b", now, time.Hour, time.Second)
	slow, slowMsg := callOf(d.ID, "c", now, time.Hour, time.Second)
	for _, p := range [][2]any{{ok, okMsg}, {bad, badMsg}, {slow, slowMsg}} {
		if err := s.EnqueueCall(ctx, p[0].(*outpost.Call), p[1].(*outpost.QueuedMessage), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.MarkSent(ctx, []outpost.SendMark{{ID: ok.ID, Deadline: now.Add(time.Second)}, {ID: bad.ID, Deadline: now.Add(time.Second)}, {ID: slow.ID, Deadline: now.Add(time.Second)}}, now); err != nil {
		t.Fatal(err)
	}
	// An answer may overtake the acknowledgement (sent → succeeded).
	c, late, err := s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: d.ID, ID: ok.ID, Result: json.RawMessage(`{"v":1}`), At: now})
	if err != nil || late || c.State != outpost.StateSucceeded || string(c.Result) != `{"v":1}` || c.FinishedAt.IsZero() {
		t.Fatalf("answer ok: %+v %v %v", c, late, err)
	}
	if _, calls, _ := s.MarkDelivered(ctx, d.ID, []string{ok.ID}, now); len(calls) != 0 {
		t.Fatal("a finished call went back to delivered")
	}
	c, _, err = s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: d.ID, ID: bad.ID, Error: &outpost.CallError{Code: "handler_error", Message: "boom"}, At: now})
	if err != nil || c.State != outpost.StateFailed || c.Error.Message != "boom" {
		t.Fatalf("answer bad: %+v %v", c, err)
	}
	if _, err := s.ExpireDue(ctx, "", now.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	c, late, err = s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: d.ID, ID: slow.ID, Result: json.RawMessage(`1`), Raw: json.RawMessage(`{"id":"x","result":1}`), At: now.Add(3 * time.Second)})
	if err != nil || !late || c.State != outpost.StateTimedOut || c.LateAt.IsZero() || string(c.LateResponse) == "" || c.Result != nil {
		t.Fatalf("late answer: %+v %v %v", c, late, err)
	}
	if _, _, err := s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: "other", ID: ok.ID, At: now}); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("answer from another device: %v", err)
	}
	list, err := s.Calls(ctx, outpost.CallFilter{DeviceID: d.ID})
	if err != nil || len(list) != 3 || list[0].ID != slow.ID {
		t.Fatalf("calls newest first: %v", err)
	}
	list, _ = s.Calls(ctx, outpost.CallFilter{DeviceID: d.ID, State: outpost.StateFailed})
	if len(list) != 1 || list[0].ID != bad.ID {
		t.Fatalf("calls by state: %+v", list)
	}
}

func testQueueLimits(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	now := time.Now().UTC()
	if err := s.EnqueueMessage(ctx, msg("no-such-device", "cmd", now, time.Hour), 0); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("unknown device: %v", err)
	}
	for range 3 {
		if err := s.EnqueueMessage(ctx, msg(d.ID, "cmd", now, time.Hour), 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.EnqueueMessage(ctx, msg(d.ID, "cmd", now, time.Hour), 3); outpost.ErrorCode(err) != outpost.ECONFLICT {
		t.Fatalf("over the limit: %v", err)
	}
	c, m := callOf(d.ID, "x", now, time.Hour, time.Second)
	c2, m2 := callOf(d.ID, "y", now, time.Hour, time.Second)
	if err := s.EnqueueCall(ctx, c, m, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.EnqueueCall(ctx, c2, m2, 0); err != nil {
		t.Fatal(err)
	}
	if got, err := s.CancelCall(ctx, c.ID, now); err != nil || got.State != outpost.StateCancelled {
		t.Fatalf("cancel: %+v %v", got, err)
	}
	if _, err := s.CancelCall(ctx, c.ID, now); outpost.ErrorCode(err) != outpost.ECONFLICT {
		t.Fatalf("cancel twice: %v", err)
	}
	// Deleting the device drops its queue.
	if err := s.DeleteDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Call(ctx, c2.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Fatalf("call of a deleted device: %v", err)
	}
}
