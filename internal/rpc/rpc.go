// Package rpc relays remote procedure calls from applications to devices and
// carries the answers back.
//
// A call publishes an RPCRequest on the device's down/rpc topic and waits
// for the RPCResponse with the same id on up/rpc, or for its timeout. Every
// failure maps to a distinct outpost error code so callers can tell "the
// device is not there" from "the device did not answer in time" from "the
// device has no such method" from "the method failed".
package rpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Publisher sends a message to a device.
type Publisher interface {
	// PublishUntil publishes payload on the device's down/{kind} topic
	// with QoS 1 without blocking. The message may wait for room in the
	// device's send window (its Receive Maximum); if it is still waiting at
	// deadline, it is dropped unsent.
	PublishUntil(deviceID, kind string, payload []byte, deadline time.Time) error
}

// Presence tells whether a device holds a live session.
type Presence interface {
	Online(deviceID string) bool
}

// Limits on timeouts callers may ask for.
const (
	DefaultTimeout = outpost.DefaultRPCTimeout
	MaxTimeout     = outpost.MaxRPCTimeout
)

// Relay matches requests with responses. It is safe for concurrent use.
type Relay struct {
	pub      Publisher
	presence Presence
	devices  Devices // nil: offline ids are not looked up
	metrics  *metrics

	mu      sync.Mutex
	pending map[string]*call
}

type call struct {
	deviceID string
	ch       chan protocol.RPCResponse
}

// NewRelay returns a relay that publishes through pub.
func NewRelay(pub Publisher, presence Presence) *Relay {
	return New(Options{Publisher: pub, Presence: presence})
}

// Devices tells whether a device exists; the store implements it.
type Devices interface {
	Device(ctx context.Context, id string) (*outpost.Device, error)
}

// Options connect a Relay.
type Options struct {
	Publisher Publisher
	Presence  Presence
	// Devices, when set, tells a call to an unknown device (ENOTFOUND)
	// from one to a device that is offline (EOFFLINE).
	Devices Devices
	// Metrics, when set, receives the relay's counters.
	Metrics prometheus.Registerer
}

// New returns a relay.
func New(o Options) *Relay {
	r := &Relay{pub: o.Publisher, presence: o.Presence, devices: o.Devices, pending: map[string]*call{}}
	r.metrics = newMetrics(r, o.Metrics)
	return r
}

// Result is the outcome of a successful call.
type Result = outpost.RPCResult

// Call invokes method on a device with JSON args and waits up to timeout
// (DefaultTimeout if 0) for its answer.
//
// The request goes out as soon as the device's send window has room; the
// timeout runs from the call, waiting included, and a request still
// waiting when the timeout ends is never sent.
//
// Errors carry these outpost codes: EOFFLINE (no live session), ETIMEOUT
// (no answer in time), EUNKNOWNMETHOD (no such handler), EREMOTE (the
// handler failed; the message is its text), ENOTSUPPORTED, EINVALID,
// EUNAVAILABLE (the request could not even wait for the device: too many
// messages already wait for it, or the platform is shutting down).
func (r *Relay) Call(ctx context.Context, deviceID, method string, args json.RawMessage, timeout time.Duration) (*Result, error) {
	res, err := r.call(ctx, deviceID, method, args, timeout)
	r.metrics.observe(res, err)
	return res, err
}

func (r *Relay) call(ctx context.Context, deviceID, method string, args json.RawMessage, timeout time.Duration) (*Result, error) {
	// An online device exists; only an offline id needs the store, to
	// tell "offline" from "no such device".
	if r.devices != nil && !r.presence.Online(deviceID) {
		if _, err := r.devices.Device(ctx, deviceID); err != nil {
			return nil, err
		}
	}
	if err := protocol.ValidMethod(method); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "%v", err)
	}
	if len(args) > 0 && !json.Valid(args) {
		return nil, outpost.Errorf(outpost.EINVALID, "arguments are not valid JSON")
	}
	if len(args) > protocol.MaxMessageBytes-1024 {
		return nil, outpost.Errorf(outpost.EINVALID, "arguments exceed %d bytes", protocol.MaxMessageBytes-1024)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if timeout > MaxTimeout {
		return nil, outpost.Errorf(outpost.EINVALID, "timeout %s exceeds the maximum of %s", timeout, MaxTimeout)
	}
	if !r.presence.Online(deviceID) {
		return nil, outpost.Errorf(outpost.EOFFLINE, "device %s is offline", deviceID)
	}
	start := time.Now()
	deadline := start.Add(timeout)
	req := protocol.RPCRequest{ID: newID(), Method: method, Args: args, Deadline: deadline.UnixMilli()}
	payload, err := json.Marshal(req)
	if err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "encode request: %v", err)
	}
	c := &call{deviceID: deviceID, ch: make(chan protocol.RPCResponse, 1)}
	r.mu.Lock()
	r.pending[req.ID] = c
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.pending, req.ID)
		r.mu.Unlock()
	}()

	if err := r.pub.PublishUntil(deviceID, protocol.KindRPC, payload, deadline); err != nil {
		return nil, fmt.Errorf("%w (%w)", outpost.Errorf(outpost.EUNAVAILABLE, "device %s cannot take the request now", deviceID), err)
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case resp := <-c.ch:
		if resp.Error != nil {
			return nil, remoteError(deviceID, method, resp.Error)
		}
		return &Result{ID: req.ID, Result: resp.Result, Duration: time.Since(start)}, nil
	case <-timer.C:
		if !r.presence.Online(deviceID) {
			return nil, outpost.Errorf(outpost.ETIMEOUT, "device %s went offline and did not answer %s within %s", deviceID, method, timeout)
		}
		return nil, outpost.Errorf(outpost.ETIMEOUT, "device %s did not answer %s within %s", deviceID, method, timeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func remoteError(deviceID, method string, e *protocol.Error) error {
	switch e.Code {
	case protocol.CodeUnknownMethod:
		return outpost.Errorf(outpost.EUNKNOWNMETHOD, "device %s has no method %q", deviceID, method)
	case protocol.CodeNotSupported:
		return outpost.Errorf(outpost.ENOTSUPPORTED, "%s", e.Message)
	case protocol.CodeInvalid:
		return outpost.Errorf(outpost.EINVALID, "device %s rejected the request: %s", deviceID, e.Message)
	default:
		return outpost.Errorf(outpost.EREMOTE, "%s", e.Message)
	}
}

// ErrUnmatched is returned by Deliver for a response nobody waits for (late,
// duplicate, or not addressed to this device's calls).
var ErrUnmatched = errors.New("rpc: no pending call with this id for this device")

// Deliver hands a device's response to the waiting caller.
func (r *Relay) Deliver(deviceID string, resp protocol.RPCResponse) error {
	r.mu.Lock()
	c, ok := r.pending[resp.ID]
	if ok && c.deviceID == deviceID {
		delete(r.pending, resp.ID)
	} else {
		ok = false
	}
	r.mu.Unlock()
	if !ok {
		return ErrUnmatched
	}
	c.ch <- resp
	return nil
}

// Pending returns the number of calls waiting for an answer.
func (r *Relay) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
