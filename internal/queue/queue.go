// Package queue is the platform's down queue: messages for devices that
// are offline or in PULL mode, and queued RPC calls, kept in the store with
// an expiry and delivered in order per device.
//
// A PUSH device gets its queue as soon as its session holds a subscription
// (granted now, or inherited by a resumed persistent session), and new
// messages at once while it stays connected. A message is published only
// when some granted filter of the live session matches its topic (a message
// published to an unsubscribed topic would be lost); the others wait. A
// PULL device gets its queue when it publishes a pull request, followed by
// an end marker (protocol.PullEnd).
//
// Every message is published with QoS 1, and only when the device's send
// window has room for it (Sender.Room), so a message becomes sent when it
// really goes out and a call's deadline starts then. It becomes delivered
// when the device acknowledges it by id on up/ack (Acknowledged), and a
// call also when the device answers it; the device's MQTT PUBACK does not
// count, because only the device knows it has the message, and because
// with an external broker the platform does not see PUBACKs. State lives in
// the store, so the queue survives platform restarts: messages sent but not
// acknowledged, and calls delivered but not answered, are published again
// on the device's next connection or pull (devices recognise a redelivery by
// its id), until their expiry or deadline. Delivery is therefore at least
// once.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Sender publishes to devices; the embedded broker implements it. No
// method blocks.
type Sender interface {
	// PublishQueued publishes a queued message with QoS 1, tagged with
	// its id.
	PublishQueued(deviceID, kind, msgID string, payload []byte) error
	// PublishToDevice publishes an untracked message with QoS 1.
	PublishToDevice(deviceID, kind string, payload []byte) error
	// Room returns how many messages can be published to the device now
	// without waiting for room in its send window (0 when it is not
	// connected). When that is less than want, the sender calls the
	// queue's RoomAvailable once room opens.
	Room(deviceID string, want int) int
	// Subscribed reports whether a message on the device's down/{kind}
	// topic would reach its live session: some granted subscription
	// matches the topic.
	Subscribed(deviceID, kind string) bool
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
	// Sweep is the interval of the expiry sweep (default 1s). The sweep
	// also retries deliveries that failed.
	Sweep time.Duration
	// MaxPending bounds the messages waiting per device (default
	// DefaultMaxPending); Enqueue fails with ECONFLICT beyond it.
	MaxPending int
	// Workers deliver to devices that subscribed or have room again
	// (default 4).
	Workers int
	// MaxPendingAcks bounds the acknowledgements received and not yet
	// recorded (default DefaultMaxPendingAcks); Acknowledged fails with
	// ErrAckBacklog beyond it.
	MaxPendingAcks int
	// OnMessage and OnCall are told every state change of a plain message
	// and of a call. They must not block.
	OnMessage func(*outpost.QueuedMessage)
	OnCall    func(*outpost.Call)
	Logger    *slog.Logger
	// Replies sends the error replies of rejected pull and ack messages
	// (Handle); required for Handle.
	Replies Rejecter
	// Devices, when set, makes Calls answer ENOTFOUND for an unknown
	// device instead of an empty list.
	Devices Devices
	// Metrics, when set, receives the queue's counters.
	Metrics prometheus.Registerer
	// Elsewhere, when set, is told of a message queued for a device
	// without a session here: with several replicas, the device's session
	// may be another replica's, which Notify should then wake. It must
	// not block.
	Elsewhere func(deviceID string)
}

// DefaultMaxPendingAcks is the default of Options.MaxPendingAcks.
const DefaultMaxPendingAcks = 65536

// ErrAckBacklog is returned by Acknowledged when too many
// acknowledgements wait to be recorded (the store is slow or failing): the
// device should send them again later.
var ErrAckBacklog = errors.New("queue: too many acknowledgements waiting to be recorded")

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
	AckRetries  atomic.Int64 // failed attempts to record acknowledgements
	// Sweeps counts expiry sweeps; SweepVisits the sessions they looked
	// at to retry a failed delivery (only those that failed).
	Sweeps, SweepVisits atomic.Int64
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

	locks [64]sync.Mutex // per-device delivery, striped

	mu       sync.Mutex
	sessions map[string]*session
	// retrying holds the devices whose session's last delivery failed:
	// the sweep tries them again, and looks at them and not at every
	// connected device (issue 16: the sweep ran each second over all).
	retrying map[string]struct{}
	kicked   map[string]bool // devices waiting for a worker
	order    []string
	wake     chan struct{}

	ackMu    sync.Mutex
	acks     map[string][]string // device → acknowledged ids not yet recorded
	ackCount int
	ackWake  chan struct{}
	// pending holds the devices that may have something to deliver, with
	// a version bumped at every enqueue: the devices with unfinished
	// messages or calls when the queue started, and every device enqueued
	// to since. A device leaves it once a resend round finds nothing. A
	// connecting device outside it costs no query. nil when the start-up
	// load failed: every device is then checked.
	pending map[string]uint64
	pendSeq uint64
}

// session is a device's live connection as the queue sees it. Its fields
// are guarded by Queue.mu.
type session struct {
	conn outpost.SessionID
	pull bool
	// sent holds the ids published in the current round (the session, or
	// for a pull the pull), which are not published again in it.
	sent map[string]bool
	// pulling is the pull request being served, nil if none.
	pulling *pullState
}

type pullState struct {
	id        string
	delivered int
}

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
	if o.MaxPendingAcks <= 0 {
		o.MaxPendingAcks = DefaultMaxPendingAcks
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
		sessions: map[string]*session{},
		retrying: map[string]struct{}{},
		kicked:   map[string]bool{},
		wake:     make(chan struct{}, 1),
		acks:     map[string][]string{},
		ackWake:  make(chan struct{}, 1),
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	if o.Metrics != nil {
		q.register(o.Metrics)
	}
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
// not yet recorded get one last attempt; what still fails is lost, and the
// messages are sent again on the device's next connection.
func (q *Queue) Close() error {
	q.cancel()
	q.wg.Wait()
	return nil
}

// Stats returns the counters.
func (q *Queue) Stats() *Stats { return &q.stats }

// NewID returns a new message id: 24 hexadecimal digits.
func NewID() string { return newID() }

// Enqueue appends a message to a device's queue and returns it; its id is
// new (see EnqueueID).
func (q *Queue) Enqueue(ctx context.Context, deviceID, kind string, payload []byte, ttl time.Duration) (*outpost.QueuedMessage, error) {
	return q.EnqueueID(ctx, newID(), deviceID, kind, payload, ttl)
}

// EnqueueID appends a message with the given id (1 to 64 characters from
// [A-Za-z0-9_-], unique) to a device's queue and returns it. payload is
// published as is on the device's down/{kind} topic; it should carry the id
// (as a JSON "id" field) so that an MQTT 3.1.1 device, which cannot see
// MQTT 5 user properties, can acknowledge it. kind must be a valid topic
// kind other than rpc, pull and error. ttl (DefaultTTL if 0, at most
// MaxTTL) bounds how long the message waits for delivery; after it the
// message is dropped (state expired) and reported. A connected PUSH device
// subscribed to the topic gets the message before EnqueueID returns when
// its send window has room; otherwise it waits for the device's next
// connection, subscription, room or pull.
//
// Errors: ENOTFOUND (no such device), EINVALID, ECONFLICT (the device
// already has Options.MaxPending messages waiting, or the id is taken).
func (q *Queue) EnqueueID(ctx context.Context, id, deviceID, kind string, payload []byte, ttl time.Duration) (*outpost.QueuedMessage, error) {
	if protocol.ValidID(id) != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "message id %q is not 1 to 64 characters from [A-Za-z0-9_-]", id)
	}
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
	m := &outpost.QueuedMessage{ID: id, DeviceID: deviceID, Kind: kind, Payload: payload, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := q.store.EnqueueMessage(ctx, m, q.opt.MaxPending); err != nil {
		return nil, err
	}
	q.markPending(deviceID)
	q.stats.Enqueued.Add(1)
	q.opt.OnMessage(m)
	if q.pushable(deviceID) {
		if err := q.deliver(ctx, deviceID); err != nil {
			q.log.Warn("deliver queued message", "device_id", deviceID, "error", err)
		}
		if cur, err := q.store.QueuedMessage(ctx, m.ID); err == nil {
			m = cur
		}
	} else if q.opt.Elsewhere != nil {
		q.opt.Elsewhere(deviceID)
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
		if err := q.deliver(ctx, deviceID); err != nil {
			q.log.Warn("deliver queued call", "device_id", deviceID, "error", err)
		}
		if cur, err := q.store.Call(ctx, id); err == nil {
			c = cur
		}
	} else if q.opt.Elsewhere != nil {
		q.opt.Elsewhere(deviceID)
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
	if q.opt.Devices != nil {
		if _, err := q.opt.Devices.Device(ctx, f.DeviceID); err != nil {
			return nil, err
		}
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

// Answer records a device's response to a queued call, which also
// confirms that the device got the request. It reports false when the
// response belongs to no queued call of this device. An answer to a call
// that has already finished is kept as late.
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

// Pull starts serving a pull request of a connected device: every
// deliverable message in order (including ones sent before but not
// acknowledged or answered), as its send window takes them, then the end
// marker on down/pull. It does not wait: it runs on the device's
// connection, whose PUBACKs make the room. A new pull replaces one still
// being served. Pull reports false when the device has no live session
// (it has not subscribed), which then gets nothing.
func (q *Queue) Pull(deviceID, reqID string) bool {
	q.stats.Pulls.Add(1)
	q.mu.Lock()
	s := q.sessions[deviceID]
	if s != nil {
		s.pulling = &pullState{id: reqID}
		s.sent = nil
		q.kickLocked(deviceID)
	}
	q.mu.Unlock()
	if s == nil {
		return false
	}
	q.signal()
	return true
}

// DeviceSubscribed implements broker.DeliveryHandler. A new connection
// starts a new round: what was sent before and not acknowledged is sent
// again.
func (q *Queue) DeviceSubscribed(deviceID string, conn outpost.SessionID, pull bool) {
	q.mu.Lock()
	s := q.sessions[deviceID]
	if s == nil || s.conn != conn {
		s = &session{conn: conn, pull: pull} // sent is made when something is
		q.sessions[deviceID] = s
		delete(q.retrying, deviceID)
	}
	kick := !s.pull || s.pulling != nil
	if kick {
		q.kickLocked(deviceID)
	}
	q.mu.Unlock()
	if kick {
		q.signal()
	}
}

// DeviceGone implements broker.DeliveryHandler.
func (q *Queue) DeviceGone(deviceID string, conn outpost.SessionID) {
	q.mu.Lock()
	if s, ok := q.sessions[deviceID]; ok && s.conn == conn {
		delete(q.sessions, deviceID)
		delete(q.retrying, deviceID)
	}
	q.mu.Unlock()
}

// Notify tells the queue that another replica queued something for
// deviceID: if the device's session is here, a delivery round starts.
func (q *Queue) Notify(deviceID string) {
	q.markPending(deviceID)
	q.RoomAvailable(deviceID)
}

// RoomAvailable implements broker.DeliveryHandler: the device's send
// window has room again.
func (q *Queue) RoomAvailable(deviceID string) {
	q.mu.Lock()
	_, ok := q.sessions[deviceID]
	if ok {
		q.kickLocked(deviceID)
	}
	q.mu.Unlock()
	if ok {
		q.signal()
	}
}

// Acknowledged records that a device confirmed queued messages by id
// (up/ack). It never blocks: the ids are recorded in the store in the
// background, retried until the store takes them. It fails with
// ErrAckBacklog when Options.MaxPendingAcks acknowledgements already wait;
// the device should then send them again later. Unknown ids, and ids of
// another device's messages, are ignored.
func (q *Queue) Acknowledged(deviceID string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	q.ackMu.Lock()
	if q.ackCount+len(ids) > q.opt.MaxPendingAcks {
		q.ackMu.Unlock()
		return ErrAckBacklog
	}
	q.acks[deviceID] = append(q.acks[deviceID], ids...)
	q.ackCount += len(ids)
	q.ackMu.Unlock()
	select {
	case q.ackWake <- struct{}{}:
	default:
	}
	return nil
}

func (q *Queue) pushable(deviceID string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	s, ok := q.sessions[deviceID]
	return ok && !s.pull
}

// kickLocked schedules a delivery round for a device; q.mu is held.
func (q *Queue) kickLocked(deviceID string) {
	if !q.kicked[deviceID] {
		q.kicked[deviceID] = true
		q.order = append(q.order, deviceID)
	}
}

func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue) lock(deviceID string) *sync.Mutex {
	return &q.locks[outpost.Shard(deviceID, len(q.locks))]
}

// deliver runs a delivery round for a device: it publishes, in queue
// order, what is deliverable, not yet sent in this round, on a topic the
// session is subscribed to, as far as the send window has room; and ends a
// pull being served once everything of it is out.
func (q *Queue) deliver(ctx context.Context, deviceID string) error {
	l := q.lock(deviceID)
	l.Lock()
	defer l.Unlock()
	err := q.deliverLocked(ctx, deviceID)
	q.mu.Lock()
	if s := q.sessions[deviceID]; s != nil {
		if err != nil {
			q.retrying[deviceID] = struct{}{}
		} else {
			delete(q.retrying, deviceID)
		}
	}
	q.mu.Unlock()
	return err
}

func (q *Queue) deliverLocked(ctx context.Context, deviceID string) error {
	q.mu.Lock()
	s := q.sessions[deviceID]
	active := s != nil && (!s.pull || s.pulling != nil)
	q.mu.Unlock()
	if !active {
		return nil
	}
	// A device known to have nothing outstanding costs no query (a pull
	// still gets its end marker).
	ver, maybe := q.mayHavePending(deviceID)
	q.mu.Lock()
	pulling := s.pulling != nil
	q.mu.Unlock()
	if !maybe && !pulling {
		return nil
	}
	now := time.Now()
	if err := q.expire(ctx, deviceID, now); err != nil {
		return err
	}
	// One round: the pending messages of a device are bounded
	// (Options.MaxPending), and calls waiting for answers by their
	// deadlines.
	msgs, err := q.store.Deliverable(ctx, deviceID, now, true, 10*q.opt.MaxPending)
	if err != nil {
		return err
	}
	if len(msgs) == 0 {
		// Nothing sent and waiting, nothing queued: until the next
		// enqueue, this device's connections need no query.
		q.clearPending(deviceID, ver)
	}
	subscribed := map[string]bool{}
	for _, m := range msgs {
		if _, ok := subscribed[m.Kind]; !ok {
			subscribed[m.Kind] = q.sender.Subscribed(deviceID, m.Kind)
		}
	}
	q.mu.Lock()
	// Forget ids that are done (acknowledged, answered, expired): the set
	// keeps only what is still outstanding.
	var sent map[string]bool // nil while nothing is outstanding
	var todo []*outpost.QueuedMessage
	for _, m := range msgs {
		if s.sent[m.ID] {
			if sent == nil {
				sent = make(map[string]bool, len(s.sent))
			}
			sent[m.ID] = true
		} else if subscribed[m.Kind] {
			todo = append(todo, m)
		}
	}
	s.sent = sent
	q.mu.Unlock()
	room := 0
	if len(todo) > 0 {
		room = q.sender.Room(deviceID, len(todo))
	}
	n, err := q.publish(ctx, s, deviceID, todo[:min(room, len(todo))], now)
	if err != nil {
		return err
	}
	if n < len(todo) {
		return nil // the rest when the window has room (RoomAvailable)
	}
	q.mu.Lock()
	p := s.pulling // publish counted what it sent
	s.pulling = nil
	q.mu.Unlock()
	if p != nil {
		return q.endPull(ctx, deviceID, p)
	}
	return nil
}

// publish marks msgs sent and publishes them, in order. It returns how
// many went out.
func (q *Queue) publish(ctx context.Context, s *session, deviceID string, msgs []*outpost.QueuedMessage, now time.Time) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
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
			var err error
			if payloads[i], err = withDeadline(m.Payload, dl); err != nil {
				return 0, err
			}
		}
	}
	// Recorded before publishing, so an acknowledgement always finds the
	// message sent.
	calls, err := q.store.MarkSent(ctx, marks, now)
	if err != nil {
		return 0, err
	}
	for _, c := range calls {
		q.opt.OnCall(c)
	}
	total := 0
	defer func() {
		q.mu.Lock()
		for _, m := range msgs[:total] {
			if s.sent == nil {
				s.sent = map[string]bool{}
			}
			s.sent[m.ID] = true
		}
		if s.pulling != nil {
			s.pulling.delivered += total
		}
		q.mu.Unlock()
	}()
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

// endPull publishes the end marker of a pull whose messages are all out.
func (q *Queue) endPull(ctx context.Context, deviceID string, p *pullState) error {
	ids, err := q.store.TakeExpiredUnreported(ctx, deviceID)
	if err != nil {
		q.mu.Lock()
		if s := q.sessions[deviceID]; s != nil && s.pulling == nil {
			s.pulling = p // try again with the next round
		}
		q.mu.Unlock()
		return err
	}
	end := protocol.PullEnd{ID: p.id, Delivered: p.delivered, Expired: len(ids), ExpiredIDs: ids[:min(len(ids), protocol.MaxPullExpiredIDs)]}
	b, _ := json.Marshal(end)
	if err := q.sender.PublishToDevice(deviceID, protocol.KindPull, b); err != nil {
		return fmt.Errorf("publish pull end: %w", err)
	}
	return nil
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

// sweeper expires what is due and retries failed delivery rounds.
func (q *Queue) sweeper() {
	defer q.wg.Done()
	t := time.NewTicker(q.opt.Sweep)
	defer t.Stop()
	for {
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
			// Nothing can expire while no device has anything pending:
			// an idle platform does not query its store every second.
			if !q.nothingPending() {
				if err := q.expire(q.ctx, "", time.Now()); err != nil && q.ctx.Err() == nil {
					q.log.Error("queue expiry sweep", "error", err)
				}
			}
			q.mu.Lock()
			retry := false
			q.stats.Sweeps.Add(1)
			q.stats.SweepVisits.Add(int64(len(q.retrying)))
			for id := range q.retrying {
				if q.sessions[id] != nil {
					q.kickLocked(id)
					retry = true
				} else {
					delete(q.retrying, id)
				}
			}
			q.mu.Unlock()
			if retry {
				q.signal()
			}
		}
	}
}

// acker records acknowledgements in the store, many per transaction. A
// failed attempt keeps them and tries again after a pause (doubling up to
// ackMaxPause); nothing is dropped until Close.
func (q *Queue) acker() {
	defer q.wg.Done()
	pause := ackMinPause
	for {
		select {
		case <-q.ctx.Done():
			// One last attempt, so that acknowledgements received just
			// before shutdown are not lost.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			q.recordAcks(ctx)
			cancel()
			return
		case <-q.ackWake:
		}
		if q.recordAcks(q.ctx) {
			pause = ackMinPause
			continue
		}
		t := time.NewTimer(pause)
		select {
		case <-q.ctx.Done():
		case <-t.C:
		}
		t.Stop()
		pause = min(2*pause, ackMaxPause)
		select {
		case q.ackWake <- struct{}{}:
		default:
		}
	}
}

const (
	ackMinPause = 50 * time.Millisecond
	ackMaxPause = 5 * time.Second
)

// recordAcks writes the pending acknowledgements. It reports false when
// some could not be written; they stay pending.
func (q *Queue) recordAcks(ctx context.Context) bool {
	q.ackMu.Lock()
	byDev := q.acks
	q.acks, q.ackCount = map[string][]string{}, 0
	q.ackMu.Unlock()
	ok := true
	now := time.Now()
	for dev, ids := range byDev {
		msgs, calls, err := q.store.MarkDelivered(ctx, dev, ids, now)
		if err != nil {
			ok = false
			q.stats.AckRetries.Add(1)
			if q.ctx.Err() == nil {
				q.log.Warn("record delivery; will retry", "device_id", dev, "ids", len(ids), "error", err)
			} else {
				q.log.Error("record delivery at shutdown; the device gets these messages again", "device_id", dev, "ids", len(ids), "error", err)
			}
			q.ackMu.Lock()
			q.acks[dev] = append(ids, q.acks[dev]...)
			q.ackCount += len(ids)
			q.ackMu.Unlock()
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
	return ok
}

func (q *Queue) worker() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		var dev string
		for len(q.order) > 0 && dev == "" {
			d := q.order[0]
			q.order = q.order[1:]
			if q.kicked[d] {
				dev = d
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
			q.signal()
		}
		if err := q.deliver(q.ctx, dev); err != nil && q.ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			q.log.Warn("deliver queue", "device_id", dev, "error", err)
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

// nothingPending reports that no device has anything to deliver (the
// pending set is known and empty).
func (q *Queue) nothingPending() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pending != nil && len(q.pending) == 0
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

func newID() string { return outpost.NewMessageID() }
