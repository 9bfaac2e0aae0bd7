package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// CallFunc receives the outcome of an asynchronous call: the device's JSON
// result, or the error Call would have returned (ErrOffline, ErrTimeout,
// ErrUnknownMethod, ErrNotFound, *RemoteError, a context error), or
// ErrClosed; and the param given to CallAsync.
type CallFunc func(res json.RawMessage, err error, param any)

// asyncPool is the client's asynchronous machinery. A call holds one of
// the queueSize slots from CallAsync until a worker picks up its outcome,
// so queue and done, each queueSize long, never block their senders.
type asyncPool struct {
	slots   chan struct{}   // outstanding calls
	queue   chan *asyncCall // to the senders
	done    chan *asyncCall // to the workers
	senders sync.WaitGroup
	workers sync.WaitGroup
}

type asyncCall struct {
	ctx context.Context
	// job, when set, is the work instead of a call (gateway requests).
	job              func(context.Context) (json.RawMessage, error)
	deviceID, method string
	args             json.RawMessage
	fn               CallFunc
	param            any
	res              json.RawMessage
	err              error
}

func (p *asyncPool) start(c *Client) {
	p.slots = make(chan struct{}, c.queueSize)
	p.queue = make(chan *asyncCall, c.queueSize)
	p.done = make(chan *asyncCall, c.queueSize)
	for range c.maxInFlight {
		p.senders.Go(c.send)
	}
	for range c.workers {
		p.workers.Go(c.work)
	}
}

// close runs once c.closed is set, so nothing sends on queue any more, and
// after c.lifetime has ended, so the senders finish quickly.
func (p *asyncPool) close() {
	close(p.queue)
	p.senders.Wait()
	close(p.done)
	p.workers.Wait()
}

// send performs queued calls; maxInFlight of them run.
func (c *Client) send() {
	for call := range c.async.queue {
		if c.lifetime.Err() != nil {
			call.err = ErrClosed
		} else if call.job != nil {
			call.res, call.err = c.runUntilClosed(call.ctx, call.job)
		} else {
			call.res, call.err = c.callUntilClosed(call.ctx, call.deviceID, call.method, call.args)
		}
		call.ctx = nil
		c.async.done <- call
	}
}

// work runs callbacks; c.workers of them run.
func (c *Client) work() {
	for call := range c.async.done {
		<-c.async.slots // before the callback, so a callback may queue a call
		if call.fn != nil {
			call.fn(call.res, call.err, call.param)
		}
	}
}

// callUntilClosed is Call, cut short with ErrClosed when the client closes.
func (c *Client) callUntilClosed(ctx context.Context, deviceID, method string, args json.RawMessage) (json.RawMessage, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(c.lifetime, func() { cancel(ErrClosed) })
	defer stop()
	res, err := c.Call(ctx, deviceID, method, argsOrNil(args))
	if err != nil && errors.Is(context.Cause(ctx), ErrClosed) {
		return nil, ErrClosed
	}
	return res, err
}

// runUntilClosed runs job, cut short with ErrClosed when the client
// closes.
func (c *Client) runUntilClosed(ctx context.Context, job func(context.Context) (json.RawMessage, error)) (json.RawMessage, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(c.lifetime, func() { cancel(ErrClosed) })
	defer stop()
	res, err := job(ctx)
	if err != nil && errors.Is(context.Cause(ctx), ErrClosed) {
		return nil, ErrClosed
	}
	return res, err
}

// queueJob queues job on the pool as CallAsync queues a call.
func (c *Client) queueJob(ctx context.Context, what string, job func(context.Context) (json.RawMessage, error), fn CallFunc, param any) error {
	select {
	case c.async.slots <- struct{}{}:
	case <-c.lifetime.Done():
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("fleet: %s: waiting for room in the queue: %w", what, ctx.Err())
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		<-c.async.slots
		return ErrClosed
	}
	c.async.queue <- &asyncCall{ctx: ctx, job: job, fn: fn, param: param}
	return nil
}

// CallAsync queues a call of method on a device and returns without
// waiting for it. When the call has an outcome, fn(result, err, param)
// runs on one of the client's worker goroutines (see WithWorkers); fn may
// be nil when the outcome does not matter.
//
// ctx bounds the call as it bounds Call: its deadline, or the client's
// default call timeout, is the time the device has to answer, and
// cancelling it abandons the call (fn then gets the context's error).
// args are encoded to JSON before CallAsync returns, so the caller may
// reuse them.
//
// CallAsync returns an error only when the call could not be queued: args
// do not encode, the client is closed (ErrClosed), or ctx ended while
// CallAsync waited for room in a full queue (see WithQueueSize). Otherwise
// fn runs exactly once, at the latest during Close. A callback may itself
// call CallAsync, but if the queue is full and every worker does so, they
// wait for each other forever: keep the queue larger than the calls a
// burst of callbacks queues.
func (c *Client) CallAsync(ctx context.Context, deviceID, method string, args any, fn CallFunc, param any) error {
	raw, err := encodeArgs(args)
	if err != nil {
		return fmt.Errorf("fleet: call %s: encode arguments: %w", method, err)
	}
	select {
	case c.async.slots <- struct{}{}:
	case <-c.lifetime.Done():
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("fleet: call %s: waiting for room in the queue: %w", method, ctx.Err())
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		<-c.async.slots
		return ErrClosed
	}
	c.async.queue <- &asyncCall{ctx: ctx, deviceID: deviceID, method: method, args: raw, fn: fn, param: param}
	return nil
}

// CallResult is the outcome of one call of a Broadcast.
type CallResult struct {
	DeviceID string
	// Result is the device's JSON result; nil when Err is set.
	Result json.RawMessage
	// Err is what Call would have returned for this device.
	Err error
	// Duration is how long the call took, as the client saw it.
	Duration time.Duration
}

// Broadcast calls method with args on every device in deviceIDs, up to
// WithMaxInFlight calls at a time, and waits for all of them. The results
// are in the order of deviceIDs, one per entry (a repeated id is called
// again). A failure on one device does not stop the others; ctx bounds
// every call as it bounds Call.
func (c *Client) Broadcast(ctx context.Context, deviceIDs []string, method string, args any) []CallResult {
	out := make([]CallResult, len(deviceIDs))
	raw, err := encodeArgs(args)
	if err != nil {
		err = fmt.Errorf("fleet: call %s: encode arguments: %w", method, err)
		for i, id := range deviceIDs {
			out[i] = CallResult{DeviceID: id, Err: err}
		}
		return out
	}
	sem := make(chan struct{}, c.maxInFlight)
	var wg sync.WaitGroup
	for i, id := range deviceIDs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			start := time.Now()
			res, err := c.Call(ctx, id, method, argsOrNil(raw))
			out[i] = CallResult{DeviceID: id, Result: res, Err: err, Duration: time.Since(start)}
		})
	}
	wg.Wait()
	return out
}

// encodeArgs turns call arguments into JSON now, so that the caller may
// change them once an asynchronous call is queued.
func encodeArgs(args any) (json.RawMessage, error) {
	switch a := args.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if a == nil {
			return nil, nil
		}
		return append(json.RawMessage(nil), a...), nil
	default:
		return json.Marshal(a)
	}
}

func argsOrNil(raw json.RawMessage) any {
	if raw == nil {
		return nil
	}
	return raw
}
