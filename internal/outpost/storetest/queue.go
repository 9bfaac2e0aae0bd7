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

func testQueueErrors(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	now := time.Now().UTC().Truncate(time.Millisecond)
	m := msg(d.ID, "cmd", now, time.Hour)
	if err := s.EnqueueMessage(ctx, m, 0); err != nil {
		t.Fatal(err)
	}
	if m.State != outpost.StateQueued {
		t.Errorf("enqueued message state %q, want queued", m.State)
	}
	dup := *m
	wantCode(t, "same id again", s.EnqueueMessage(ctx, &dup, 0), outpost.ECONFLICT)
	c, cm := callOf(d.ID, "x", now, time.Hour, time.Second)
	cm.ID = "other-id"
	wantCode(t, "call and message differ", s.EnqueueCall(ctx, c, cm, 0), outpost.EINVALID)
	c, cm = callOf(d.ID, "x", now, time.Hour, time.Second)
	wantCode(t, "call to an unknown device", s.EnqueueCall(ctx, &outpost.Call{ID: c.ID, DeviceID: "d-nobody", Method: "x"},
		&outpost.QueuedMessage{ID: c.ID, DeviceID: "d-nobody", Kind: "rpc", Payload: cm.Payload, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, 0), outpost.ENOTFOUND)
	if err := s.EnqueueCall(ctx, c, cm, 0); err != nil || c.State != outpost.StateQueued {
		t.Fatalf("enqueue call: %v, state %q", err, c.State)
	}
	got, err := s.Call(ctx, c.ID)
	if err != nil || got.Method != "x" || string(got.Args) != `[1]` || got.Timeout != time.Second || !got.CreatedAt.Equal(now) || !got.ExpiresAt.Equal(now.Add(time.Hour)) || got.DeviceID != d.ID {
		t.Errorf("call read back: %+v, %v", got, err)
	}
	if got, err := s.QueuedMessage(ctx, m.ID); err != nil || got.Kind != "cmd" || string(got.Payload) != `{"n":1}` || !got.CreatedAt.Equal(now) || got.DeviceID != d.ID {
		t.Errorf("message read back: %+v, %v", got, err)
	}
	// A call is a queued message too.
	if got, err := s.QueuedMessage(ctx, c.ID); err != nil || got.Kind != "rpc" || got.Timeout != time.Second {
		t.Errorf("call as a message: %+v, %v", got, err)
	}
	tests := []struct {
		name string
		call func() error
		code string
	}{
		{"QueuedMessage unknown", func() error { _, err := s.QueuedMessage(ctx, "nope"); return err }, outpost.ENOTFOUND},
		{"Call unknown", func() error { _, err := s.Call(ctx, "nope"); return err }, outpost.ENOTFOUND},
		{"CancelCall unknown", func() error { _, err := s.CancelCall(ctx, "nope", now); return err }, outpost.ENOTFOUND},
		{"CancelCall of a plain message", func() error { _, err := s.CancelCall(ctx, m.ID, now); return err }, outpost.ENOTFOUND},
		{"AnswerCall of a plain message", func() error {
			_, _, err := s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: d.ID, ID: m.ID, Result: json.RawMessage(`1`), At: now})
			return err
		}, outpost.ENOTFOUND},
		{"AnswerCall unknown", func() error {
			_, _, err := s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: d.ID, ID: "nope", At: now})
			return err
		}, outpost.ENOTFOUND},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, tt.name, tt.call(), tt.code) })
	}
	// Only a queued call can be cancelled.
	if _, err := s.MarkSent(ctx, []outpost.SendMark{{ID: c.ID, Deadline: now.Add(time.Second)}}, now); err != nil {
		t.Fatal(err)
	}
	_, err = s.CancelCall(ctx, c.ID, now)
	wantCode(t, "cancel a sent call", err, outpost.ECONFLICT)
	// Nothing to mark is no error.
	if calls, err := s.MarkSent(ctx, nil, now); err != nil || len(calls) != 0 {
		t.Errorf("mark nothing sent: %v, %v", calls, err)
	}
	if ms, calls, err := s.MarkDelivered(ctx, d.ID, nil, now); err != nil || len(ms)+len(calls) != 0 {
		t.Errorf("mark nothing delivered: %v, %v, %v", ms, calls, err)
	}
	if calls, err := s.MarkSent(ctx, []outpost.SendMark{{ID: "nope"}}, now); err != nil || len(calls) != 0 {
		t.Errorf("mark an unknown id sent: %v, %v", calls, err)
	}
}

// Sending again: a sent call gets a new deadline, a delivered one keeps
// its own; what passed its expiry or deadline is not sent again; limit
// cuts the queue in order.
func testQueueResend(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	now := time.Now().UTC().Truncate(time.Millisecond)
	short := msg(d.ID, "cmd", now, 2*time.Second)
	long := msg(d.ID, "cmd", now, time.Hour)
	c, cm := callOf(d.ID, "x", now, time.Hour, 5*time.Second)
	del, delMsg := callOf(d.ID, "y", now, time.Hour, 5*time.Second)
	for _, err := range []error{s.EnqueueMessage(ctx, short, 0), s.EnqueueMessage(ctx, long, 0), s.EnqueueCall(ctx, c, cm, 0), s.EnqueueCall(ctx, del, delMsg, 0)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Deliverable(ctx, d.ID, now, false, 2); err != nil || fmt.Sprint(msgIDs(got)) != fmt.Sprint([]string{short.ID, long.ID}) {
		t.Fatalf("deliverable with limit 2: %v, %v", msgIDs(got), err)
	}
	dl := now.Add(5 * time.Second)
	if _, err := s.MarkSent(ctx, []outpost.SendMark{{ID: short.ID}, {ID: long.ID}, {ID: c.ID, Deadline: dl}, {ID: del.ID, Deadline: dl}}, now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.MarkDelivered(ctx, d.ID, []string{del.ID}, now); err != nil {
		t.Fatal(err)
	}
	// Sent again a second later: the sent call's deadline moves, the
	// delivered call's does not.
	later := now.Add(time.Second)
	calls, err := s.MarkSent(ctx, []outpost.SendMark{{ID: c.ID, Deadline: later.Add(5 * time.Second)}, {ID: del.ID, Deadline: later.Add(5 * time.Second)}}, later)
	if err != nil || len(calls) != 1 || calls[0].ID != c.ID || !calls[0].SentAt.Equal(later) {
		t.Fatalf("sent again: %+v, %v; want only the sent call", calls, err)
	}
	if m, err := s.QueuedMessage(ctx, c.ID); err != nil || !m.Deadline.Equal(later.Add(5*time.Second)) {
		t.Errorf("resent call: %+v, %v; want the new deadline", m, err)
	}
	if m, err := s.QueuedMessage(ctx, del.ID); err != nil || !m.Deadline.Equal(dl) || m.State != outpost.StateDelivered {
		t.Errorf("delivered call: %+v, %v; want its first deadline, still delivered", m, err)
	}
	tests := []struct {
		at   time.Time
		want []string
	}{
		{now.Add(time.Second), []string{short.ID, long.ID, c.ID, del.ID}},
		{now.Add(3 * time.Second), []string{long.ID, c.ID, del.ID}}, // short expired
		{now.Add(5 * time.Second), []string{long.ID, c.ID}},         // del past its deadline
		{now.Add(6 * time.Second), []string{long.ID}},               // c past its new one
	}
	for _, tt := range tests {
		got, err := s.Deliverable(ctx, d.ID, tt.at, true, 0)
		if err != nil || fmt.Sprint(msgIDs(got)) != fmt.Sprint(tt.want) {
			t.Errorf("resendable at +%v: %v, %v; want %v", tt.at.Sub(now), msgIDs(got), err, tt.want)
		}
	}
}

// maxPending counts messages queued or sent, not those delivered.
func testQueuePending(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	now := time.Now().UTC().Truncate(time.Millisecond)
	a, b := msg(d.ID, "cmd", now, time.Hour), msg(d.ID, "cmd", now, time.Hour)
	if err := s.EnqueueMessage(ctx, a, 2); err != nil {
		t.Fatal(err)
	}
	c, cm := callOf(d.ID, "x", now, time.Hour, time.Second)
	if err := s.EnqueueCall(ctx, c, cm, 2); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "third", s.EnqueueMessage(ctx, b, 2), outpost.ECONFLICT)
	c2, cm2 := callOf(d.ID, "x", now, time.Hour, time.Second)
	wantCode(t, "third as a call", s.EnqueueCall(ctx, c2, cm2, 2), outpost.ECONFLICT)
	if _, err := s.MarkSent(ctx, []outpost.SendMark{{ID: a.ID}}, now); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "third while one is sent", s.EnqueueMessage(ctx, b, 2), outpost.ECONFLICT)
	if _, _, err := s.MarkDelivered(ctx, d.ID, []string{a.ID}, now); err != nil {
		t.Fatal(err)
	}
	if err := s.EnqueueMessage(ctx, b, 2); err != nil {
		t.Fatalf("after a delivery: %v", err)
	}
	// The refused ones were not stored.
	_, err := s.Call(ctx, c2.ID)
	wantCode(t, "refused call", err, outpost.ENOTFOUND)
}

// An answer to a finished call is kept as late and changes nothing else;
// a PUBACK after the answer keeps the delivery time only.
func testQueueLateAnswers(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	now := time.Now().UTC().Truncate(time.Millisecond)
	c, cm := callOf(d.ID, "x", now, time.Hour, time.Minute)
	if err := s.EnqueueCall(ctx, c, cm, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkSent(ctx, []outpost.SendMark{{ID: c.ID, Deadline: now.Add(time.Minute)}}, now); err != nil {
		t.Fatal(err)
	}
	got, late, err := s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: d.ID, ID: c.ID, Result: nil, At: now})
	if err != nil || late || got.State != outpost.StateSucceeded || string(got.Result) != "null" {
		t.Fatalf("answer without a result: %+v, %v, %v; want succeeded with null", got, late, err)
	}
	at := now.Add(time.Second)
	_, calls, err := s.MarkDelivered(ctx, d.ID, []string{c.ID}, at)
	if err != nil || len(calls) != 0 {
		t.Fatalf("PUBACK after the answer: %v, %v", calls, err)
	}
	if got, err := s.Call(ctx, c.ID); err != nil || got.State != outpost.StateSucceeded || !got.DeliveredAt.Equal(at) {
		t.Errorf("call after a late PUBACK: %+v, %v; want succeeded, delivered at %v", got, err, at)
	}
	got, late, err = s.AnswerCall(ctx, outpost.CallAnswer{DeviceID: d.ID, ID: c.ID, Error: &outpost.CallError{Code: "x", Message: "y"}, Raw: json.RawMessage(`{"id":"a","error":"y"}`), At: at})
	if err != nil || !late || got.State != outpost.StateSucceeded || got.Error != nil || string(got.LateResponse) != `{"id":"a","error":"y"}` || !got.LateAt.Equal(at) || got.FinishedAt.Equal(at) {
		t.Errorf("second answer: %+v, %v, %v; want late, kept, the call unchanged", got, late, err)
	}
}

func testQueueExpireOneDevice(t *testing.T, s Store) {
	ctx := context.Background()
	a := MustCreateDevice(t, s, "a")
	b := MustCreateDevice(t, s, "b")
	now := time.Now().UTC().Truncate(time.Millisecond)
	ma, mb := msg(a.ID, "cmd", now, time.Second), msg(b.ID, "cmd", now, time.Second)
	for _, err := range []error{s.EnqueueMessage(ctx, ma, 0), s.EnqueueMessage(ctx, mb, 0)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	ex, err := s.ExpireDue(ctx, a.ID, now.Add(time.Second))
	if err != nil || len(ex.Messages) != 1 || ex.Messages[0].ID != ma.ID || ex.Messages[0].State != outpost.StateExpired || len(ex.Calls) != 0 {
		t.Fatalf("expire device a: %+v, %v", ex, err)
	}
	if m, err := s.QueuedMessage(ctx, mb.ID); err != nil || m.State != outpost.StateQueued {
		t.Fatalf("device b's message: %+v, %v", m, err)
	}
	if ex, err := s.ExpireDue(ctx, "", now.Add(time.Second)); err != nil || len(ex.Messages) != 1 || ex.Messages[0].ID != mb.ID {
		t.Fatalf("expire all: %+v, %v", ex, err)
	}
	if ex, err := s.ExpireDue(ctx, "", now.Add(time.Hour)); err != nil || len(ex.Messages)+len(ex.Calls) != 0 {
		t.Fatalf("expire again: %+v, %v", ex, err)
	}
}

func testQueueCallsList(t *testing.T, s Store) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "q")
	other := MustCreateDevice(t, s, "other")
	now := time.Now().UTC().Truncate(time.Millisecond)
	var ids []string
	for range 3 {
		c, m := callOf(d.ID, "x", now, time.Hour, time.Second)
		if err := s.EnqueueCall(ctx, c, m, 0); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.ID)
	}
	if err := s.EnqueueMessage(ctx, msg(d.ID, "cmd", now, time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	c, m := callOf(other.ID, "x", now, time.Hour, time.Second)
	if err := s.EnqueueCall(ctx, c, m, 0); err != nil {
		t.Fatal(err)
	}
	callIDs := func(cs []*outpost.Call) []string {
		out := []string{}
		for _, c := range cs {
			out = append(out, c.ID)
		}
		return out
	}
	tests := []struct {
		f    outpost.CallFilter
		want []string
	}{
		{outpost.CallFilter{DeviceID: d.ID}, []string{ids[2], ids[1], ids[0]}},
		{outpost.CallFilter{DeviceID: d.ID, Limit: 2}, []string{ids[2], ids[1]}},
		{outpost.CallFilter{DeviceID: d.ID, State: outpost.StateQueued}, []string{ids[2], ids[1], ids[0]}},
		{outpost.CallFilter{DeviceID: d.ID, State: outpost.StateSent}, []string{}},
		{outpost.CallFilter{DeviceID: "d-nobody"}, []string{}},
	}
	for _, tt := range tests {
		cs, err := s.Calls(ctx, tt.f)
		if err != nil || fmt.Sprint(callIDs(cs)) != fmt.Sprint(tt.want) {
			t.Errorf("calls %+v: %v, %v; want %v", tt.f, callIDs(cs), err, tt.want)
		}
	}
}
