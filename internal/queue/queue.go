// Package queue is the platform's down queue: messages for devices that
// are offline or in PULL mode, and queued RPC calls, kept in the store with
// an expiry and delivered in order per device.
//
// A PUSH device gets its queue as soon as it has subscribed to its down/
// topics (a message published before that would be lost), and new messages
// at once while it stays connected. A PULL device gets it when it publishes
// a pull request, followed by an end marker (protocol.PullEnd).
//
// Every message is published with QoS 1. It becomes sent when published
// and delivered when the device's PUBACK arrives; a call then waits for the
// device's answer until its deadline. State lives in the store, so the
// queue survives platform restarts: messages sent but not acknowledged, and
// calls delivered but not answered, are published again on the device's
// next connection (devices recognise a redelivery by its id), until their
// expiry or deadline. Delivery is therefore at least once.
package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Sender publishes to devices; the embedded broker implements it.
type Sender interface {
	// PublishQueued publishes a queued message with QoS 1, tagged with
	// its id so its acknowledgement can be reported.
	PublishQueued(deviceID, kind, msgID string, payload []byte) error
	// PublishToDevice publishes an untracked message with QoS 1.
	PublishToDevice(deviceID, kind string, payload []byte) error
}

// Limits and defaults.
const (
	DefaultTTL         = time.Hour
	MaxTTL             = 30 * 24 * time.Hour
	DefaultCallTimeout = 30 * time.Second
	MaxCallTimeout     = time.Hour
	// DefaultMaxPending bounds the messages waiting for one device.
	DefaultMaxPending = 1000
)

// Options configure a Queue.
type Options struct {
	// Sweep is the interval of the expiry sweep (default 1s).
	Sweep time.Duration
	// MaxPending bounds the messages waiting per device (default
	// DefaultMaxPending); Enqueue fails with ECONFLICT beyond it.
	MaxPending int
	// Workers deliver to devices that just subscribed (default 4).
	Workers int
	// OnMessage and OnCall are told every state change of a plain message
	// and of a call. They must not block.
	OnMessage func(*outpost.QueuedMessage)
	OnCall    func(*outpost.Call)
	Logger    *slog.Logger
}

// Stats are the queue's counters.
type Stats struct {
	Enqueued    atomic.Int64 // messages and calls queued
	Sent        atomic.Int64 // publishes, redeliveries included
	Delivered   atomic.Int64 // acknowledged by the device
	Expired     atomic.Int64 // dropped unsent (or unacknowledged) at expiry
	Succeeded   atomic.Int64
	Failed      atomic.Int64
	TimedOut    atomic.Int64
	LateAnswers atomic.Int64
	Pulls       atomic.Int64
}

// Queue delivers queued messages. Safe for concurrent use; Close stops
// its goroutines.
type Queue struct {
	store  outpost.QueueStore
	sender Sender
	opt    Options
	log    *slog.Logger
	stats  Stats

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	acks   chan ack

	locks [64]sync.Mutex // per-device delivery, striped

	mu       sync.Mutex
	sessions map[string]session
	kicked   map[string]bool // device → resend, waiting for a worker
	order    []string
	wake     chan struct{}
	// pending holds the devices that may have something to deliver, with
	// a version bumped at every enqueue: the devices with unfinished
	// messages or calls when the queue started, and every device enqueued
	// to since. A device leaves it once a resend round finds nothing. A
	// connecting device outside it costs no query. nil when the start-up
	// load failed: every device is then checked.
	pending map[string]uint64
	pendSeq uint64
}

type session struct {
	conn any
	pull bool
}

type ack struct{ deviceID, msgID string }

// New returns a running queue.
func New(store outpost.QueueStore, sender Sender, o Options) *Queue {
	if o.Sweep <= 0 {
		o.Sweep = time.Second
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.OnMessage == nil {
		o.OnMessage = func(*outpost.QueuedMessage) {}
	}
	if o.OnCall == nil {
		o.OnCall = func(*outpost.Call) {}
	}
	q := &Queue{
		store: store, sender: sender, opt: o, log: o.Logger,
		acks:     make(chan ack, 4096),
		sessions: map[string]session{},
		kicked:   map[string]bool{},
		wake:     make(chan struct{}, 1),
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.loadPending()
	q.wg.Add(2 + o.Workers)
	go q.sweeper()
	go q.acker()
	for range o.Workers {
		go q.worker()
	}
	return q
}

// Close stops the queue's goroutines and waits for them. Acknowledgements
// not yet written are lost; the messages are sent again on the device's
// next connection.
func (q *Queue) Close() error {
	q.cancel()
	q.wg.Wait()
	return nil
}

// Stats returns the counters.
func (q *Queue) Stats() *Stats { return &q.stats }

// Enqueue appends a message to a device's queue and returns it. payload is
// published as is on the device's down/{kind} topic; kind must be a valid
// topic kind other than rpc, pull and error. ttl (DefaultTTL if 0, at most
// MaxTTL) bounds how long the message waits for delivery; after it the
// message is dropped (state expired) and reported. A connected PUSH device
// gets the message before Enqueue returns; otherwise it waits for the
// device's next connection or pull.
//
// Errors: ENOTFOUND (no such device), EINVALID, ECONFLICT (the device
// already has Options.MaxPending messages waiting).
func (q *Queue) Enqueue(ctx context.Context, deviceID, kind string, payload []byte, ttl time.Duration) (*outpost.QueuedMessage, error) {
	if _, err := protocol.ParseTopic(protocol.DownTopic(deviceID, kind)); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "kind %q is not a valid topic kind", kind)
	}
	switch kind {
	case protocol.KindRPC, protocol.KindPull, protocol.KindError:
		return nil, outpost.Errorf(outpost.EINVALID, "kind %q is reserved", kind)
	}
	if len(payload) > protocol.MaxMessageBytes {
		return nil, outpost.Errorf(outpost.EINVALID, "payload exceeds %d bytes", protocol.MaxMessageBytes)
	}
	ttl, err := checkTTL(ttl)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	m := &outpost.QueuedMessage{ID: newID(), DeviceID: deviceID, Kind: kind, Payload: payload, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := q.store.EnqueueMessage(ctx, m, q.opt.MaxPending); err != nil {
		return nil, err
	}
	q.markPending(deviceID)
	q.stats.Enqueued.Add(1)
	q.opt.OnMessage(m)
	if q.pushable(deviceID) {
		if _, err := q.deliver(ctx, deviceID, false); err != nil {
			q.log.Warn("deliver queued message", "device_id", deviceID, "error", err)
		}
		if cur, err := q.store.QueuedMessage(ctx, m.ID); err == nil {
			m = cur
		}
	}
	return m, nil
}

// EnqueueCall queues an RPC call: method with JSON args (nil for none),
// waiting up to ttl to be sent, then timeout for the device's answer.
// Errors as Enqueue.
func (q *Queue) EnqueueCall(ctx context.Context, deviceID, method string, args json.RawMessage, ttl, timeout time.Duration) (*outpost.Call, error) {
	if err := protocol.ValidMethod(method); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "%v", err)
	}
	if len(args) > 0 && !json.Valid(args) {
		return nil, outpost.Errorf(outpost.EINVALID, "arguments are not valid JSON")
	}
	if len(args) > protocol.MaxMessageBytes-1024 {
		return nil, outpost.Errorf(outpost.EINVALID, "arguments exceed %d bytes", protocol.MaxMessageBytes-1024)
	}
	ttl, err := checkTTL(ttl)
	if err != nil {
		return nil, err
	}
	if timeout == 0 {
		timeout = DefaultCallTimeout
	}
	if timeout < time.Millisecond || timeout > MaxCallTimeout {
		return nil, outpost.Errorf(outpost.EINVALID, "timeout must be between 1ms and %s", MaxCallTimeout)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	id := newID()
	payload, err := json.Marshal(protocol.RPCRequest{ID: id, Method: method, Args: args})
	if err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "encode request: %v", err)
	}
	c := &outpost.Call{ID: id, DeviceID: deviceID, Method: method, Args: args, CreatedAt: now, ExpiresAt: now.Add(ttl), Timeout: timeout}
	m := &outpost.QueuedMessage{ID: id, DeviceID: deviceID, Kind: protocol.KindRPC, Payload: payload, CreatedAt: now, ExpiresAt: now.Add(ttl), Timeout: timeout}
	if err := q.store.EnqueueCall(ctx, c, m, q.opt.MaxPending); err != nil {
		return nil, err
	}
	q.markPending(deviceID)
	q.stats.Enqueued.Add(1)
	q.opt.OnCall(c)
	if q.pushable(deviceID) {
		if _, err := q.deliver(ctx, deviceID, false); err != nil {
			q.log.Warn("deliver queued call", "device_id", deviceID, "error", err)
		}
		if cur, err := q.store.Call(ctx, id); err == nil {
			c = cur
		}
	}
	return c, nil
}

func checkTTL(ttl time.Duration) (time.Duration, error) {
	if ttl == 0 {
		return DefaultTTL, nil
	}
	if ttl < time.Millisecond || ttl > MaxTTL {
		return 0, outpost.Errorf(outpost.EINVALID, "ttl must be between 1ms and %s", MaxTTL)
	}
	return ttl, nil
}

// Call returns a call. ENOTFOUND.
func (q *Queue) Call(ctx context.Context, id string) (*outpost.Call, error) {
	return q.store.Call(ctx, id)
}

// Calls lists a device's calls, newest first.
func (q *Queue) Calls(ctx context.Context, f outpost.CallFilter) ([]*outpost.Call, error) {
	if f.State != "" && !f.State.Valid() {
		return nil, outpost.Errorf(outpost.EINVALID, "unknown call state %q", f.State)
	}
	return q.store.Calls(ctx, f)
}

// CancelCall cancels a call that is still queued. ENOTFOUND, ECONFLICT.
func (q *Queue) CancelCall(ctx context.Context, id string) (*outpost.Call, error) {
	c, err := q.store.CancelCall(ctx, id, time.Now())
	if err != nil {
		return nil, err
	}
	q.opt.OnCall(c)
	return c, nil
}

// Answer records a device's response to a queued call. It reports false
// when the response belongs to no queued call of this device. An answer
// to a call that has already finished is kept as late.
func (q *Queue) Answer(ctx context.Context, deviceID string, resp protocol.RPCResponse, raw []byte) (bool, error) {
	a := outpost.CallAnswer{DeviceID: deviceID, ID: resp.ID, Result: resp.Result, Raw: raw, At: time.Now()}
	if resp.Error != nil {
		a.Error = &outpost.CallError{Code: resp.Error.Code, Message: resp.Error.Message}
	}
	c, late, err := q.store.AnswerCall(ctx, a)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND {
		return false, nil
	} else if err != nil {
		return false, err
	}
	switch {
	case late:
		q.stats.LateAnswers.Add(1)
		q.log.Info("late answer to a queued call", "device_id", deviceID, "call_id", c.ID, "state", c.State)
	case c.State == outpost.StateSucceeded:
		q.stats.Succeeded.Add(1)
	default:
		q.stats.Failed.Add(1)
	}
	q.opt.OnCall(c)
	return true, nil
}

// Pull serves a PULL device's request: every deliverable message in order
// (including ones sent before but not acknowledged or answered), then the
// end marker on down/pull.
func (q *Queue) Pull(ctx context.Context, deviceID, reqID string) (protocol.PullEnd, error) {
	q.stats.Pulls.Add(1)
	l := q.lock(deviceID)
	l.Lock()
	defer l.Unlock()
	n, err := q.deliverLocked(ctx, deviceID, true)
	if err != nil {
		return protocol.PullEnd{}, err
	}
	ids, err := q.store.TakeExpiredUnreported(ctx, deviceID)
	if err != nil {
		return protocol.PullEnd{}, err
	}
	end := protocol.PullEnd{ID: reqID, Delivered: n, Expired: len(ids), ExpiredIDs: ids[:min(len(ids), protocol.MaxPullExpiredIDs)]}
	b, _ := json.Marshal(end)
	if err := q.sender.PublishToDevice(deviceID, protocol.KindPull, b); err != nil {
		return protocol.PullEnd{}, fmt.Errorf("publish pull end: %w", err)
	}
	return end, nil
}

// DeviceSubscribed implements broker.DeliveryHandler.
func (q *Queue) DeviceSubscribed(deviceID string, conn any, pull bool) {
	q.mu.Lock()
	q.sessions[deviceID] = session{conn: conn, pull: pull}
	if !pull {
		q.kicked[deviceID] = true
		q.order = append(q.order, deviceID)
	}
	q.mu.Unlock()
	if !pull {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// DeviceGone implements broker.DeliveryHandler.
func (q *Queue) DeviceGone(deviceID string, conn any) {
	q.mu.Lock()
	if s, ok := q.sessions[deviceID]; ok && s.conn == conn {
		delete(q.sessions, deviceID)
	}
	q.mu.Unlock()
}

// Acknowledged implements broker.DeliveryHandler.
func (q *Queue) Acknowledged(deviceID, msgID string) {
	select {
	case q.acks <- ack{deviceID, msgID}:
	case <-q.ctx.Done():
	}
}

func (q *Queue) pushable(deviceID string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	s, ok := q.sessions[deviceID]
	return ok && !s.pull
}

func (q *Queue) lock(deviceID string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(deviceID))
	return &q.locks[h.Sum32()%uint32(len(q.locks))]
}

// deliver sends what is deliverable to a device; with resend also what
// was sent before and not acknowledged or answered.
func (q *Queue) deliver(ctx context.Context, deviceID string, resend bool) (int, error) {
	l := q.lock(deviceID)
	l.Lock()
	defer l.Unlock()
	return q.deliverLocked(ctx, deviceID, resend)
}

func (q *Queue) deliverLocked(ctx context.Context, deviceID string, resend bool) (int, error) {
	now := time.Now()
	if err := q.expire(ctx, deviceID, now); err != nil {
		return 0, err
	}
	// One round: the pending messages of a device are bounded
	// (Options.MaxPending), and calls waiting for answers by their
	// deadlines.
	msgs, err := q.store.Deliverable(ctx, deviceID, now, resend, 10*q.opt.MaxPending)
	if err != nil || len(msgs) == 0 {
		return 0, err
	}
	marks := make([]outpost.SendMark, len(msgs))
	payloads := make([][]byte, len(msgs))
	for i, m := range msgs {
		marks[i] = outpost.SendMark{ID: m.ID}
		payloads[i] = m.Payload
		if m.Timeout > 0 {
			// A call keeps its deadline once the device has it; otherwise
			// the device's time to answer starts now.
			dl := m.Deadline
			if m.State != outpost.StateDelivered || dl.IsZero() {
				dl = now.Add(m.Timeout)
			}
			marks[i].Deadline = dl
			if payloads[i], err = withDeadline(m.Payload, dl); err != nil {
				return 0, err
			}
		}
	}
	// Recorded before publishing, so a PUBACK always finds the message
	// sent.
	calls, err := q.store.MarkSent(ctx, marks, now)
	if err != nil {
		return 0, err
	}
	for _, c := range calls {
		q.opt.OnCall(c)
	}
	total := 0
	for i, m := range msgs {
		if err := q.sender.PublishQueued(deviceID, m.Kind, m.ID, payloads[i]); err != nil {
			return total, fmt.Errorf("publish queued message: %w", err)
		}
		q.stats.Sent.Add(1)
		total++
		if m.Timeout == 0 && m.State == outpost.StateQueued {
			m.State, m.SentAt = outpost.StateSent, now
			q.opt.OnMessage(m)
		}
	}
	return total, nil
}

// withDeadline sets the deadline of an encoded RPC request.
func withDeadline(payload []byte, dl time.Time) ([]byte, error) {
	var req protocol.RPCRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, fmt.Errorf("queued request: %w", err)
	}
	req.Deadline = dl.UnixMilli()
	return json.Marshal(req)
}

// expire finishes what is due, of one device or all ("").
func (q *Queue) expire(ctx context.Context, deviceID string, now time.Time) error {
	ex, err := q.store.ExpireDue(ctx, deviceID, now)
	if err != nil {
		return err
	}
	for _, m := range ex.Messages {
		q.stats.Expired.Add(1)
		q.log.Info("queued message expired", "device_id", m.DeviceID, "message_id", m.ID, "kind", m.Kind)
		q.opt.OnMessage(m)
	}
	for _, c := range ex.Calls {
		if c.State == outpost.StateTimedOut {
			q.stats.TimedOut.Add(1)
		} else {
			q.stats.Expired.Add(1)
		}
		q.log.Info("queued call finished unanswered", "device_id", c.DeviceID, "call_id", c.ID, "state", c.State)
		q.opt.OnCall(c)
	}
	return nil
}

func (q *Queue) sweeper() {
	defer q.wg.Done()
	t := time.NewTicker(q.opt.Sweep)
	defer t.Stop()
	for {
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
			if err := q.expire(q.ctx, "", time.Now()); err != nil && q.ctx.Err() == nil {
				q.log.Error("queue expiry sweep", "error", err)
			}
		}
	}
}

func (q *Queue) acker() {
	defer q.wg.Done()
	for {
		var first ack
		select {
		case <-q.ctx.Done():
			return
		case first = <-q.acks:
		}
		byDev := map[string][]string{first.deviceID: {first.msgID}}
	drain:
		for range 1000 {
			select {
			case a := <-q.acks:
				byDev[a.deviceID] = append(byDev[a.deviceID], a.msgID)
			default:
				break drain
			}
		}
		now := time.Now()
		for dev, ids := range byDev {
			msgs, calls, err := q.store.MarkDelivered(q.ctx, dev, ids, now)
			if err != nil {
				if q.ctx.Err() == nil {
					q.log.Error("record delivery", "device_id", dev, "error", err)
				}
				continue
			}
			q.stats.Delivered.Add(int64(len(msgs) + len(calls)))
			for _, m := range msgs {
				q.opt.OnMessage(m)
			}
			for _, c := range calls {
				q.opt.OnCall(c)
			}
		}
	}
}

func (q *Queue) worker() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		var dev string
		var resend bool
		for len(q.order) > 0 && dev == "" {
			d := q.order[0]
			q.order = q.order[1:]
			if r, ok := q.kicked[d]; ok {
				dev, resend = d, r
				delete(q.kicked, d)
			}
		}
		more := len(q.order) > 0
		q.mu.Unlock()
		if dev == "" {
			select {
			case <-q.ctx.Done():
				return
			case <-q.wake:
			}
			continue
		}
		if more {
			select {
			case q.wake <- struct{}{}:
			default:
			}
		}
		if !q.pushable(dev) {
			continue
		}
		ver, maybe := q.mayHavePending(dev)
		if !maybe {
			continue
		}
		n, err := q.deliver(q.ctx, dev, resend)
		if err != nil && q.ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			q.log.Warn("deliver queue", "device_id", dev, "error", err)
		}
		if err == nil && n == 0 && resend {
			q.clearPending(dev, ver)
		}
	}
}

// loadPending fills the pending set from the store.
func (q *Queue) loadPending() {
	ctx, cancel := context.WithTimeout(q.ctx, 30*time.Second)
	defer cancel()
	ids, err := q.store.PendingDevices(ctx)
	if err != nil {
		q.log.Warn("down queue: devices with pending messages unknown; every connecting device is checked", "error", err)
		return
	}
	q.pending = make(map[string]uint64, len(ids))
	for _, id := range ids {
		q.pending[id] = 0
	}
}

// markPending notes that a device has something to deliver.
func (q *Queue) markPending(deviceID string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending != nil {
		q.pendSeq++
		q.pending[deviceID] = q.pendSeq
	}
}

// mayHavePending reports whether a device may have something to deliver,
// with the version to pass to clearPending.
func (q *Queue) mayHavePending(deviceID string) (uint64, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending == nil {
		return 0, true
	}
	v, ok := q.pending[deviceID]
	return v, ok
}

// clearPending takes a device out of the pending set after a round found
// nothing to deliver, unless something was enqueued for it meanwhile.
func (q *Queue) clearPending(deviceID string, ver uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if v, ok := q.pending[deviceID]; ok && v == ver {
		delete(q.pending, deviceID)
	}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
