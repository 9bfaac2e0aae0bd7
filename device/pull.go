package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/protocol"
)

// WithPullMode makes the device a PULL device: the platform keeps what it
// queued for the device (calls, commands) until the device asks for it with
// Pull, instead of sending it as soon as the device connects. The mode is
// declared on every CONNECT (MQTT 5 user property "mode" = "pull").
func WithPullMode() Option {
	return func(o *options) error {
		o.pull = true
		return nil
	}
}

// PullResult is what one Pull fetched.
type PullResult struct {
	// Delivered is the number of messages the platform sent for this
	// pull (requests already answered before count too: the device
	// answered them again from memory).
	Delivered int
	// Expired is the number of messages that expired on the platform
	// since the previous pull without reaching the device; ExpiredIDs
	// names the first 100 of them.
	Expired    int
	ExpiredIDs []string
}

// Pull is the cycle of a device that connects now and then: it publishes
// the pending telemetry (as Publish does), asks the platform for
// everything queued for the device, waits until the platform has sent it
// all, then until every RPC handler it started has finished and its
// answer has been acknowledged. The client must be connected
// (ErrNotConnected). Handlers for other kinds of messages are not waited
// for.
func (c *Client) Pull(ctx context.Context) (PullResult, error) {
	if !c.Connected() {
		return PullResult{}, ErrNotConnected
	}
	if err := c.Publish(ctx); err != nil {
		return PullResult{}, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := "pull-" + hex.EncodeToString(b[:])
	ch := make(chan pullEnd, 1)
	c.pulls.mu.Lock()
	if c.pulls.waiting == nil {
		c.pulls.waiting = map[string]chan pullEnd{}
	}
	c.pulls.waiting[id] = ch
	c.pulls.mu.Unlock()
	defer func() {
		c.pulls.mu.Lock()
		delete(c.pulls.waiting, id)
		c.pulls.mu.Unlock()
	}()
	payload, _ := json.Marshal(protocol.PullRequest{ID: id})
	if err := c.publishUp(ctx, protocol.KindPull, payload); err != nil {
		return PullResult{}, err // names the pull already
	}
	var end pullEnd
	select {
	case end = <-ch:
	case <-ctx.Done():
		return PullResult{}, fmt.Errorf("device: pull: waiting for the platform: %w", ctx.Err())
	case <-c.fatalCh:
		return PullResult{}, c.Err()
	}
	for _, done := range end.running {
		select {
		case <-done:
		case <-ctx.Done():
			return PullResult{}, fmt.Errorf("device: pull: waiting for handlers: %w", ctx.Err())
		}
	}
	// The pulled messages are confirmed before Pull returns (ack.go).
	if err := c.flushAcks(ctx); err != nil {
		return PullResult{}, fmt.Errorf("device: pull: acknowledging messages: %w", err)
	}
	return PullResult{Delivered: end.Delivered, Expired: end.Expired, ExpiredIDs: end.ExpiredIDs}, nil
}

type pullEnd struct {
	protocol.PullEnd
	running []chan struct{} // requests not finished when the marker came
}

// pulls matches end markers with waiting Pull calls.
type pulls struct {
	mu      sync.Mutex
	waiting map[string]chan pullEnd
}

// pullEnded hands an end marker to its Pull, with the requests still
// running: the platform sends the marker after the pull's messages, and
// onPublish sees messages in order, so every request of the pull is
// tracked by now.
func (c *Client) pullEnded(payload []byte) {
	e, err := protocol.DecodePullEnd(payload)
	if err != nil {
		c.opt.log.Warn("bad pull end marker", "device_id", c.id, "error", err)
		return
	}
	c.pulls.mu.Lock()
	ch := c.pulls.waiting[e.ID]
	c.pulls.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- pullEnd{PullEnd: e, running: c.requests.running()}:
	default:
	}
}

// requests tracks RPC requests from arrival to acknowledged answer.
type requests struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

// track registers a request that arrived and returns the function that
// marks it finished; a request already running gets a no-op.
func (r *requests) track(id string) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[id]; ok {
		return func() {}
	}
	if r.m == nil {
		r.m = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	r.m[id] = ch
	return func() {
		r.mu.Lock()
		delete(r.m, id)
		r.mu.Unlock()
		close(ch)
	}
}

func (r *requests) running() []chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]chan struct{}, 0, len(r.m))
	for _, ch := range r.m {
		out = append(out, ch)
	}
	return out
}

// answers remembers the last answers sent, so that a request redelivered
// after its answer was lost (the platform restarted, the connection broke)
// is answered again without running the handler twice.
type answers struct {
	mu   sync.Mutex
	m    map[string][]byte
	ring []string
	next int
}

// Bounds of the answer memory: answers larger than maxRememberedAnswer are
// not kept (a redelivery of their request times out on the platform).
const (
	rememberedAnswers   = 256
	maxRememberedAnswer = 16 << 10
)

func (a *answers) remember(id string, payload []byte) {
	if len(payload) > maxRememberedAnswer {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string][]byte{}
		a.ring = make([]string, rememberedAnswers)
	}
	if old := a.ring[a.next]; old != "" {
		delete(a.m, old)
	}
	a.ring[a.next] = id
	a.next = (a.next + 1) % len(a.ring)
	a.m[id] = payload
}

func (a *answers) get(id string) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m[id]
}

// answerAgain re-sends the remembered answer to a redelivered request, if
// there is one (none while the handler still runs: it answers when done).
func (c *Client) answerAgain(req protocol.RPCRequest) {
	payload := c.answers.get(req.ID)
	if payload == nil {
		return
	}
	ctx, cancel := context.WithTimeout(c.lifetime, 10*time.Second)
	defer cancel()
	if err := c.publishUp(ctx, protocol.KindRPC, payload); err != nil {
		c.opt.log.Warn("rpc answer not delivered again", "device_id", c.id, "id", req.ID, "error", err)
	}
}
