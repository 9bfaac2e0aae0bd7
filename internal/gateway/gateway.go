// Package gateway is the platform's side of gateways and the devices
// behind them (docs/protocol.md §26): one gateway connection speaks for
// many children, in its own gw/… kinds, and the platform turns what it
// says into the children's own telemetry, events and presence, and routes
// calls for a child through its gateway.
//
// It is one home behind the message router: Handles reports its kinds,
// Handle takes the synchronous ones, and Start takes a telemetry batch
// that mixes children, splits it into one outpost.Batch per child and
// submits them to the ingest writer, finishing the gateway's message once
// every child's part has committed. Each child's part carries its own
// batch id (the gateway's, prefixed), so a redelivered batch is stored
// once per child whatever part of it was committed before.
//
// Access control is by construction: a gateway names children only by
// its own addresses, and an address resolves only among its own
// children. Policy decides what an unknown address means: a new child
// (auto) or a refusal (provisioned). A device is the child of one gateway
// at most (the store enforces it).
//
// The service keeps each gateway's children in memory, loaded from the
// store on first use; the API's changes go through the service and keep
// it current. Platform replicas sharing a store each hold their own copy:
// a replica tells the others of its changes (Options.Changed → Stale, the
// copy is read again on next use), and with Options.Shared it reads a
// gateway again before refusing an address or registering a child at it,
// so a lost notice never refuses a child another replica added.
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Sender sends a message down to a device now (QoS 1), on its
// down/{kind} topic: error replies, sink configuration and send requests
// for a gateway.
type Sender interface {
	PublishToDevice(deviceID, kind string, payload []byte) error
}

// Submitter takes a batch for storage and calls done once it committed
// (the ingest writer).
type Submitter interface {
	Submit(ctx context.Context, b *outpost.Batch, done ingest.Done) error
}

// Router handles a message as if a device had sent it on up/{kind}: a
// child's event, notification, attributes or feeds. A rejection is a
// *protocol.Error.
type Router interface {
	HandleMessage(ctx context.Context, deviceID, kind string, payload []byte) error
}

// Presence is the platform's presence tracker.
type Presence interface {
	// Connected records session as the device's live session.
	Connected(id string, session outpost.SessionID)
	// Disconnected ends session; ignored when it is no longer current.
	Disconnected(id string, session outpost.SessionID, reason string) bool
	// Seen notes activity.
	Seen(id string)
	// Online reports whether the device has a live session.
	Online(id string) bool
}

// Deliverer hands an RPC answer to the caller waiting for it (the RPC
// relay). An error means nobody waits for it.
type Deliverer interface {
	Deliver(deviceID string, resp protocol.RPCResponse) error
}

// Publisher publishes an RPC request to a device, dropped if still
// waiting at deadline (the interface of the RPC relay).
type Publisher interface {
	PublishUntil(deviceID, kind string, payload []byte, deadline time.Time) error
}

// Event kinds published to Options.Events.
const (
	// EventNodeData carries a NodeDataEvent.
	EventNodeData = "node_data"
	// EventSinks carries a SinksEvent: a gateway reported its sinks.
	EventSinks = "sinks"
)

// ErrRateLimited fails a telemetry batch of a gateway over its rate
// limit (Options.Allow): transient, the gateway resends it later.
var ErrRateLimited = errors.New("over its rate limit")

// Reasons a child goes offline.
const (
	ReasonGatewayOffline = "gateway offline"
	ReasonLeft           = "left the gateway"
)

// Defaults.
const (
	// DefaultTimeout is how long SetSinkConfig and SendMessage wait for
	// the gateway's result unless told otherwise (Wirepas's 2 s).
	DefaultTimeout = 2 * time.Second
	// MaxTimeout bounds the wait.
	MaxTimeout = time.Minute
	// batchPrefix starts the batch id of a child's part of a gateway
	// batch, so that it never meets an id the child chose itself.
	batchPrefix = "gw:"
)

// Options configure a Service. Store and Sender are required; Submitter
// for telemetry, Router for child messages, Presence for presence and
// RPC, RPC for answers.
type Options struct {
	Store     outpost.GatewayStore
	Sender    Sender
	Submitter Submitter
	Router    Router
	Presence  Presence
	// Queue is the down queue: children's sessions and acknowledgements.
	Queue Queue
	// RPC hands answers to the RPC relay when there is no Router.
	RPC Deliverer
	// ReadingRule, when set, returns the check a device's readings must
	// pass beyond protocol.ValidateReading (the device model's feed rule:
	// registered feeds, data types); an error is transient.
	ReadingRule func(ctx context.Context, deviceID string) (func(protocol.Reading) *protocol.Error, error)
	// Allow, when set, says whether a gateway may send n more readings
	// now (the per-device rate limit); a batch it refuses fails with
	// ErrRateLimited, and the gateway sends it again later.
	Allow func(gatewayID string, n int) bool
	// Rejected, when set, is told of every error reply: the gateway, the
	// kind, the code and how many items it rejected (metrics).
	Rejected func(gatewayID, kind, code string, n int)
	// Events receives node data and sink reports (the live stream). It
	// must not block.
	Events func(kind, deviceID string, v any)
	// MaxChildren bounds the distinct children one message may name
	// (default and at most protocol.MaxChildrenPerMessage).
	MaxChildren int
	Logger      *slog.Logger
	// Shared says other processes (replicas) change gateways, children
	// and sinks in the same store: before refusing an unknown address,
	// or registering a child at it, the service reads the gateway again
	// (at most once a second, and after a conflict).
	Shared bool
	// Changed, when set, is told each time this process changed a
	// gateway's definition, children or sinks (or deleted a device):
	// replicas tell one another, and mark their copy Stale.
	Changed func(gatewayID string)
}

// NodeDataEvent is a node's message as applications see it on the
// stream (kind node_data).
type NodeDataEvent struct {
	GatewayID string `json:"gateway_id"`
	Sink      string `json:"sink"`
	// Network is the sink's network_address, when its configuration has
	// one.
	Network  json.RawMessage `json:"network,omitempty"`
	Source   string          `json:"src"`
	DeviceID string          `json:"device_id,omitempty"`
	Dest     string          `json:"dst,omitempty"`
	SrcEP    int             `json:"src_ep"`
	DstEP    int             `json:"dst_ep"`
	TS       int64           `json:"ts"`
	Payload  []byte          `json:"payload"`
}

// SinksEvent is a gateway's sink report on the stream.
type SinksEvent struct {
	GatewayID string          `json:"gateway_id"`
	Sinks     []*outpost.Sink `json:"sinks"`
}

// Service is the gateway home. Safe for concurrent use.
type Service struct {
	opt Options
	log *slog.Logger

	mu       sync.Mutex
	gws      map[string]*gwState // gateway id → state, loaded on first use
	children map[string]*route   // child device id → its route, for loaded gateways
	pending  map[string]chan result
	stale    map[string]bool // loaded gateways another replica changed
}

// gwState is what the service knows of one gateway.
type gwState struct {
	mu     sync.Mutex
	gw     outpost.Gateway
	byAddr map[string]string // address → child device id
	sinks  map[string]json.RawMessage
	sess   outpost.SessionID   // current session; children online through it
	online map[string]struct{} // child device ids marked online through sess
	loaded time.Time           // last read from the store
}

// newSession numbers a session of a gateway's children with the
// presence tracker and the queue: even numbers with the top bit set,
// which neither the embedded broker (a counter from 1) nor the external
// broker's link (odd hashes) hands out.
func newSession() outpost.SessionID {
	return outpost.SessionID(1<<63 | sessionSeq.Add(1)<<1)
}

var sessionSeq atomic.Uint64

type route struct {
	gatewayID, address string
}

type result struct {
	res, message string
	config       json.RawMessage
}

// New returns a service.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Events == nil {
		o.Events = func(string, string, any) {}
	}
	if o.MaxChildren <= 0 || o.MaxChildren > protocol.MaxChildrenPerMessage {
		o.MaxChildren = protocol.MaxChildrenPerMessage
	}
	return &Service{opt: o, log: o.Logger, gws: map[string]*gwState{}, children: map[string]*route{}, pending: map[string]chan result{},
		stale: map[string]bool{}}
}

// Close releases the service. It owns no goroutine; waiting requests end
// with their callers' contexts.
func (s *Service) Close() error { return nil }

// Handles reports whether kind is one of the service's up/ kinds.
func Handles(kind string) bool { return protocol.GatewayKind(kind) }

// state returns the gateway's state, loading it; ENOTFOUND when the
// device is not a gateway.
func (s *Service) state(ctx context.Context, id string) (*gwState, error) {
	s.mu.Lock()
	st := s.gws[id]
	stale := s.stale[id]
	s.mu.Unlock()
	if st != nil && stale {
		st.mu.Lock()
		err := s.reloadLocked(ctx, st)
		st.mu.Unlock()
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			s.forget(id) // deleted through another replica
			return nil, err
		}
		if err != nil {
			return nil, err
		}
	}
	if st != nil {
		return st, nil
	}
	g, err := s.opt.Store.Gateway(ctx, id)
	if err != nil {
		return nil, err
	}
	cs, err := s.opt.Store.Children(ctx, id)
	if err != nil {
		return nil, err
	}
	sinks, err := s.opt.Store.Sinks(ctx, id)
	if err != nil {
		return nil, err
	}
	st = &gwState{gw: *g, byAddr: make(map[string]string, len(cs)), sinks: map[string]json.RawMessage{},
		sess: newSession(), online: map[string]struct{}{}, loaded: time.Now()}
	for _, c := range cs {
		st.byAddr[c.Address] = c.DeviceID
	}
	for _, k := range sinks {
		st.sinks[k.Name] = k.Config
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.gws[id]; cur != nil {
		return cur, nil // loaded meanwhile
	}
	s.gws[id] = st
	for _, c := range cs {
		s.children[c.DeviceID] = &route{gatewayID: id, address: c.Address}
	}
	return st, nil
}

// resolve returns the device id of the child at addr, creating it when
// the gateway's policy allows. It returns a *protocol.Error
// (CodeUnknownChild) for an address the gateway may not use, or a
// transient error. Called with st.mu held.
func (s *Service) resolve(ctx context.Context, st *gwState, addr, sink string) (string, error) {
	if id, ok := st.byAddr[addr]; ok {
		return id, nil
	}
	if s.opt.Shared && time.Since(st.loaded) >= reloadEvery {
		// Another replica may have added it: read again before refusing
		// or registering.
		if err := s.reloadLocked(ctx, st); err != nil {
			return "", err
		}
		if id, ok := st.byAddr[addr]; ok {
			return id, nil
		}
	}
	if st.gw.Policy != string(protocol.PolicyAuto) {
		return "", &protocol.Error{Code: protocol.CodeUnknownChild, Message: fmt.Sprintf("gateway %s has no child at address %s, and registers none itself (policy provisioned)", st.gw.ID, addr)}
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	d := &outpost.Device{ID: outpost.NewDeviceID(), Name: st.gw.ID + "." + addr, CreatedAt: now}
	c := &outpost.Child{GatewayID: st.gw.ID, Address: addr, Sink: sink, CreatedAt: now}
	// A child made here has no credentials of its own: nobody knows the
	// secret its hash is of (the operator may rotate it to give one).
	if err := s.opt.Store.CreateChild(ctx, c, d, outpost.HashSecret(outpost.NewToken())); err != nil {
		if s.opt.Shared && outpost.ErrorCode(err) == outpost.ECONFLICT {
			// Registered meanwhile through another replica.
			if rerr := s.reloadLocked(ctx, st); rerr != nil {
				return "", rerr
			}
			if id, ok := st.byAddr[addr]; ok {
				return id, nil
			}
		}
		return "", fmt.Errorf("register child %s of gateway %s: %w", addr, st.gw.ID, err)
	}
	st.byAddr[addr] = d.ID
	s.mu.Lock()
	s.children[d.ID] = &route{gatewayID: st.gw.ID, address: addr}
	s.mu.Unlock()
	s.changed(st.gw.ID)
	s.log.Info("child registered", "gateway_id", st.gw.ID, "address", addr, "device_id", d.ID)
	return d.ID, nil
}

// register creates, in one transaction, the children at the addresses
// (address → sink) that the gateway has none at yet, when its policy
// allows; resolve then finds them. A conflict (an address registered
// meanwhile through the API) leaves them to resolve, one by one. Called
// with st.mu held.
func (s *Service) register(ctx context.Context, st *gwState, addrs []string, sinks map[string]string) error {
	if st.gw.Policy != string(protocol.PolicyAuto) || len(addrs) == 0 {
		return nil
	}
	if s.opt.Shared && time.Since(st.loaded) >= reloadEvery {
		missing := false
		for _, a := range addrs {
			_, ok := st.byAddr[a]
			missing = missing || !ok
		}
		if missing {
			if err := s.reloadLocked(ctx, st); err != nil {
				return err
			}
		}
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	cs := make([]*outpost.Child, 0, len(addrs))
	ds := make([]*outpost.Device, 0, len(addrs))
	hs := make([][]byte, 0, len(addrs))
	for _, a := range addrs {
		if _, ok := st.byAddr[a]; ok {
			continue
		}
		cs = append(cs, &outpost.Child{GatewayID: st.gw.ID, Address: a, Sink: sinks[a], CreatedAt: now})
		ds = append(ds, &outpost.Device{ID: outpost.NewDeviceID(), Name: st.gw.ID + "." + a, CreatedAt: now})
		hs = append(hs, outpost.HashSecret(outpost.NewToken()))
	}
	if len(cs) == 0 {
		return nil
	}
	err := s.opt.Store.CreateChildren(ctx, cs, ds, hs)
	if outpost.ErrorCode(err) == outpost.ECONFLICT {
		return nil
	} else if err != nil {
		return fmt.Errorf("register %d children of gateway %s: %w", len(cs), st.gw.ID, err)
	}
	s.mu.Lock()
	for i, c := range cs {
		st.byAddr[c.Address] = ds[i].ID
		s.children[ds[i].ID] = &route{gatewayID: st.gw.ID, address: c.Address}
	}
	s.mu.Unlock()
	s.changed(st.gw.ID)
	s.log.Info("children registered", "gateway_id", st.gw.ID, "count", len(cs))
	return nil
}

// reloadEvery bounds how often a miss reads a gateway again (Shared).
const reloadEvery = time.Second

// reloadLocked reads st's gateway, children and sinks again from the
// store: another replica changed them. A child no longer at its address
// goes offline through this gateway and loses its route. Called with
// st.mu held.
func (s *Service) reloadLocked(ctx context.Context, st *gwState) error {
	id := st.gw.ID
	g, err := s.opt.Store.Gateway(ctx, id)
	if err != nil {
		return err
	}
	cs, err := s.opt.Store.Children(ctx, id)
	if err != nil {
		return err
	}
	sinks, err := s.opt.Store.Sinks(ctx, id)
	if err != nil {
		return err
	}
	byAddr := make(map[string]string, len(cs))
	for _, c := range cs {
		byAddr[c.Address] = c.DeviceID
	}
	var gone []string
	s.mu.Lock()
	for addr, dev := range st.byAddr {
		if byAddr[addr] == dev {
			continue
		}
		gone = append(gone, dev)
		if r := s.children[dev]; r != nil && r.gatewayID == id {
			delete(s.children, dev)
		}
	}
	for addr, dev := range byAddr {
		s.children[dev] = &route{gatewayID: id, address: addr}
	}
	delete(s.stale, id)
	s.mu.Unlock()
	for _, dev := range gone {
		if _, on := st.online[dev]; on {
			s.goOffline(dev, st.sess, ReasonLeft)
			delete(st.online, dev)
		}
	}
	st.gw, st.byAddr = *g, byAddr
	st.sinks = make(map[string]json.RawMessage, len(sinks))
	for _, k := range sinks {
		st.sinks[k.Name] = k.Config
	}
	st.loaded = time.Now()
	return nil
}

// Stale marks what the service holds of a gateway (or of the gateway of
// a child) as changed by another replica: it is read again on next use.
// It never blocks on the store.
func (s *Service) Stale(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.gws[id]; ok {
		s.stale[id] = true
	}
	if r := s.children[id]; r != nil {
		s.stale[r.gatewayID] = true
	}
}

// changed tells the other replicas (Options.Changed).
func (s *Service) changed(gatewayID string) {
	if s.opt.Changed != nil {
		s.opt.Changed(gatewayID)
	}
}

// markOnline makes a child online through the gateway's current session.
// Called with st.mu held.
func (s *Service) markOnline(st *gwState, child string) {
	if _, ok := st.online[child]; ok {
		if s.opt.Presence != nil {
			if s.opt.Presence.Online(child) {
				s.opt.Presence.Seen(child)
			} else {
				// The child's own connection took the session over and
				// ended: it is online through the gateway again.
				s.opt.Presence.Connected(child, st.sess)
			}
		}
		return
	}
	st.online[child] = struct{}{}
	if s.opt.Presence != nil {
		s.opt.Presence.Connected(child, st.sess)
	}
	if s.opt.Queue != nil {
		// The child's queue goes out through the gateway from now on
		// (RouteQueue).
		s.opt.Queue.DeviceSubscribed(child, st.sess, false)
	}
}

// goOffline ends a child's session through its gateway: presence and
// queue. The caller removes it from st.online.
func (s *Service) goOffline(child string, sess outpost.SessionID, reason string) {
	if s.opt.Presence != nil {
		s.opt.Presence.Disconnected(child, sess, reason)
	}
	if s.opt.Queue != nil {
		s.opt.Queue.DeviceGone(child, sess)
	}
}

// reply sends an error reply to the gateway and returns the error for the
// broker (a rejection for good).
func (s *Service) reply(gatewayID string, e protocol.GatewayErrorReply) error {
	if s.opt.Rejected != nil {
		s.opt.Rejected(gatewayID, e.Kind, e.Code, e.Rejected)
	}
	if b, err := json.Marshal(e); err == nil && s.opt.Sender != nil {
		if err := s.opt.Sender.PublishToDevice(gatewayID, protocol.KindError, b); err != nil {
			s.log.Debug("send error reply", "device_id", gatewayID, "error", err)
		}
	}
	return &protocol.Error{Code: e.Code, Message: e.Message}
}

func (s *Service) reject(gatewayID, kind, id, child string, err error) error {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		return err // transient: not acknowledged, the gateway resends
	}
	return s.reply(gatewayID, protocol.GatewayErrorReply{Kind: kind, ID: id, Child: child, Code: pe.Code, Message: pe.Message})
}

// Handle handles a gateway message of a synchronous kind (and telemetry,
// waiting for its commit). Rejections are answered with an error reply
// to the gateway and returned as *protocol.Error; other errors are
// transient (the message is not acknowledged).
func (s *Service) Handle(ctx context.Context, gatewayID, kind string, payload []byte) error {
	if kind == protocol.KindGatewayTelemetry {
		ch := make(chan error, 1)
		async, err := s.Start(ctx, ctx, gatewayID, payload, func(err error) { ch <- err })
		if !async {
			return err
		}
		select {
		case err := <-ch:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	st, err := s.state(ctx, gatewayID)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND {
		return s.reply(gatewayID, protocol.GatewayErrorReply{Kind: kind, Code: protocol.CodeForbidden, Message: fmt.Sprintf("device %s is not a gateway", gatewayID)})
	} else if err != nil {
		return err
	}
	switch kind {
	case protocol.KindGatewaySinks:
		return s.handleSinks(ctx, st, payload)
	case protocol.KindGatewayChildren:
		return s.handleChildren(ctx, st, payload)
	case protocol.KindGatewayChild:
		return s.handleChild(ctx, st, payload)
	case protocol.KindGatewayRPC:
		r, err := protocol.DecodeChildRPCResponse(payload)
		if err != nil {
			return s.reject(gatewayID, kind, "", "", err)
		}
		st.mu.Lock()
		child, ok := st.byAddr[r.Child]
		st.mu.Unlock()
		if !ok {
			return s.reply(gatewayID, protocol.GatewayErrorReply{Kind: kind, ID: r.ID, Child: r.Child, Code: protocol.CodeUnknownChild, Message: fmt.Sprintf("no child at address %s", r.Child)})
		}
		if s.opt.Router != nil {
			// As if the child had answered on up/rpc: a waiting call or a
			// queued one.
			b, err := json.Marshal(r.Response())
			if err != nil {
				return err
			}
			if err := s.opt.Router.HandleMessage(ctx, child, protocol.KindRPC, b); err != nil {
				return s.reject(gatewayID, kind, r.ID, r.Child, err)
			}
		} else if s.opt.RPC != nil {
			_ = s.opt.RPC.Deliver(child, r.Response()) // a late answer is dropped
		}
		return nil
	case protocol.KindGatewayAck:
		a, err := protocol.DecodeChildAck(payload)
		if err != nil {
			return s.reject(gatewayID, kind, "", "", err)
		}
		st.mu.Lock()
		child, ok := st.byAddr[a.Child]
		st.mu.Unlock()
		if !ok {
			return s.reply(gatewayID, protocol.GatewayErrorReply{Kind: kind, Child: a.Child, Code: protocol.CodeUnknownChild, Message: fmt.Sprintf("no child at address %s", a.Child)})
		}
		if s.opt.Queue != nil {
			return s.opt.Queue.Acknowledged(child, a.IDs) // a backlog: transient, resent
		}
		return nil
	case protocol.KindGatewayConfig:
		r, err := protocol.DecodeSinkConfigResult(payload)
		if err != nil {
			return s.reject(gatewayID, kind, "", "", err)
		}
		if r.Result == protocol.ResultOK && r.Sink != "" && r.Config != nil {
			if err := s.storeSinkConfig(ctx, st, r.Sink, r.Config); err != nil {
				return err
			}
		}
		s.answer(r.ID, result{res: r.Result, message: r.Message, config: r.Config})
		return nil
	case protocol.KindGatewaySend:
		r, err := protocol.DecodeSendResult(payload)
		if err != nil {
			return s.reject(gatewayID, kind, "", "", err)
		}
		s.answer(r.ID, result{res: r.Result, message: r.Message})
		return nil
	case protocol.KindGatewayData:
		return s.handleData(st, payload)
	}
	return s.reply(gatewayID, protocol.GatewayErrorReply{Kind: kind, Code: protocol.CodeUnknownKind, Message: fmt.Sprintf("unknown message kind %.64q", kind)})
}

func (s *Service) handleSinks(ctx context.Context, st *gwState, payload []byte) error {
	m, err := protocol.DecodeGatewaySinks(payload)
	if err != nil {
		return s.reject(st.gw.ID, protocol.KindGatewaySinks, "", "", err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	sinks := make([]*outpost.Sink, len(m.Sinks))
	for i, k := range m.Sinks {
		sinks[i] = &outpost.Sink{GatewayID: st.gw.ID, Name: k.Name, Config: k.Config, UpdatedAt: now}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := s.opt.Store.SetSinks(ctx, st.gw.ID, sinks); err != nil {
		return err
	}
	s.changed(st.gw.ID)
	st.sinks = make(map[string]json.RawMessage, len(sinks))
	for _, k := range sinks {
		st.sinks[k.Name] = k.Config
	}
	s.opt.Events(EventSinks, st.gw.ID, SinksEvent{GatewayID: st.gw.ID, Sinks: sinks})
	return nil
}

// storeSinkConfig records the configuration a gateway reported for one
// sink after a change.
func (s *Service) storeSinkConfig(ctx context.Context, st *gwState, name string, cfg json.RawMessage) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, ok := st.sinks[name]; !ok {
		return nil // not a sink it declared: nothing to update
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	sinks := make([]*outpost.Sink, 0, len(st.sinks))
	for n, c := range st.sinks {
		if n == name {
			c = cfg
		}
		sinks = append(sinks, &outpost.Sink{GatewayID: st.gw.ID, Name: n, Config: c, UpdatedAt: now})
	}
	if err := s.opt.Store.SetSinks(ctx, st.gw.ID, sinks); err != nil {
		return err
	}
	s.changed(st.gw.ID)
	st.sinks[name] = cfg
	return nil
}

func (s *Service) handleChildren(ctx context.Context, st *gwState, payload []byte) error {
	kind := protocol.KindGatewayChildren
	m, err := protocol.DecodeGatewayChildren(payload)
	if err != nil {
		return s.reject(st.gw.ID, kind, "", "", err)
	}
	if n := len(m.Join) + len(m.Leave); n > s.opt.MaxChildren {
		return s.reply(st.gw.ID, protocol.GatewayErrorReply{Kind: kind, ID: m.ID, Code: protocol.CodeTooLarge, Message: fmt.Sprintf("children: %d children exceed %d per message", n, s.opt.MaxChildren)})
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	var bad int
	var first *protocol.Error
	var firstChild string
	fail := func(addr string, err error) error {
		var pe *protocol.Error
		if !errors.As(err, &pe) {
			return err
		}
		bad++
		if first == nil {
			first, firstChild = pe, addr
		}
		return nil
	}
	addrs := make([]string, 0, len(m.Join))
	sinks := make(map[string]string, len(m.Join))
	for _, j := range m.Join {
		addrs = append(addrs, j.Address)
		sinks[j.Address] = j.Sink
	}
	if err := s.register(ctx, st, addrs, sinks); err != nil {
		return err
	}
	for _, j := range m.Join {
		child, err := s.resolve(ctx, st, j.Address, j.Sink)
		if err != nil {
			if err := fail(j.Address, err); err != nil {
				return err
			}
			continue
		}
		s.markOnline(st, child)
	}
	for _, a := range m.Leave {
		child, ok := st.byAddr[a]
		if !ok {
			fail(a, &protocol.Error{Code: protocol.CodeUnknownChild, Message: fmt.Sprintf("no child at address %s", a)})
			continue
		}
		if _, on := st.online[child]; on {
			delete(st.online, child)
			s.goOffline(child, st.sess, ReasonLeft)
		}
	}
	if bad > 0 {
		err := s.reply(st.gw.ID, protocol.GatewayErrorReply{Kind: kind, ID: m.ID, Child: firstChild, Code: first.Code, Message: first.Message, Rejected: bad})
		if bad == len(m.Join)+len(m.Leave) {
			return err
		}
	}
	return nil
}

func (s *Service) handleChild(ctx context.Context, st *gwState, payload []byte) error {
	kind := protocol.KindGatewayChild
	m, err := protocol.DecodeChildMessage(payload)
	if err != nil {
		return s.reject(st.gw.ID, kind, "", "", err)
	}
	st.mu.Lock()
	child, err := s.resolve(ctx, st, m.Child, "")
	if err == nil {
		s.markOnline(st, child)
	}
	st.mu.Unlock()
	if err != nil {
		return s.reject(st.gw.ID, kind, "", m.Child, err)
	}
	if s.opt.Router == nil {
		return s.reply(st.gw.ID, protocol.GatewayErrorReply{Kind: kind, Child: m.Child, Code: protocol.CodeNotSupported, Message: "child messages are not handled by this platform"})
	}
	if err := s.opt.Router.HandleMessage(ctx, child, m.Kind, m.Msg); err != nil {
		return s.reject(st.gw.ID, kind, "", m.Child, err)
	}
	return nil
}

func (s *Service) handleData(st *gwState, payload []byte) error {
	m, err := protocol.DecodeNodeData(payload)
	if err != nil {
		return s.reject(st.gw.ID, protocol.KindGatewayData, "", "", err)
	}
	now := time.Now().UnixMilli()
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, d := range m.Messages {
		ev := NodeDataEvent{GatewayID: st.gw.ID, Sink: d.Sink, Network: networkOf(st.sinks[d.Sink]), Source: d.Source,
			DeviceID: st.byAddr[d.Source], Dest: d.Dest, SrcEP: d.SrcEP, DstEP: d.DstEP, TS: d.T, Payload: d.Payload}
		if ev.TS == 0 {
			ev.TS = now
		}
		s.opt.Events(EventNodeData, st.gw.ID, ev)
	}
	return nil
}

// networkOf returns the network_address field of a sink configuration.
func networkOf(cfg json.RawMessage) json.RawMessage {
	if len(cfg) == 0 {
		return nil
	}
	var c struct {
		Network json.RawMessage `json:"network_address"`
	}
	if json.Unmarshal(cfg, &c) != nil {
		return nil
	}
	return c.Network
}

// Start begins handling a gateway's telemetry batch (the router's
// asynchronous entry for protocol.KindGatewayTelemetry): it is split into
// one batch per child, each submitted to the Submitter; Start then
// returns async true and done is called once, after every part has
// committed (with the first failure, if any: the gateway resends the
// whole batch, and the parts already stored are recognised by their ids).
// ctx bounds only the wait for room in the Submitter's queue (it may be
// done already); storeCtx bounds the store work (children's lookup and
// registration).
func (s *Service) Start(ctx, storeCtx context.Context, gatewayID string, payload []byte, done func(error)) (async bool, err error) {
	kind := protocol.KindGatewayTelemetry
	sctx := storeCtx
	st, err := s.state(sctx, gatewayID)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND {
		return false, s.reply(gatewayID, protocol.GatewayErrorReply{Kind: kind, Code: protocol.CodeForbidden, Message: fmt.Sprintf("device %s is not a gateway", gatewayID)})
	} else if err != nil {
		return false, err
	}
	t, err := protocol.DecodeGatewayTelemetry(payload)
	if err != nil {
		return false, s.reject(gatewayID, kind, "", "", err)
	}
	if s.opt.Allow != nil && !s.opt.Allow(gatewayID, len(t.Readings)) {
		return false, fmt.Errorf("gateway telemetry: %w: gateway %s %w", outpost.ErrOverloaded, gatewayID, ErrRateLimited)
	}
	batches, err := s.split(sctx, st, t)
	if err != nil || len(batches) == 0 {
		return false, err
	}
	if s.opt.Submitter == nil {
		return false, s.reply(gatewayID, protocol.GatewayErrorReply{Kind: kind, ID: t.ID, Code: protocol.CodeNotSupported, Message: "telemetry is not handled by this platform"})
	}
	j := &join{left: len(batches), done: func(err error) { done(overloaded(err)) }}
	for i, b := range batches {
		if err := s.opt.Submitter.Submit(ctx, b, j.part); err != nil {
			err = overloaded(err)
			if i == 0 {
				return false, err // nothing submitted: not acknowledged
			}
			// The parts already submitted finish first; the message then
			// fails and is resent.
			j.fail(len(batches)-i, err)
			return true, nil
		}
	}
	return true, nil
}

// overloaded marks a full ingest queue as back-pressure (the gateway
// waits and resends).
func overloaded(err error) error {
	if errors.Is(err, ingest.ErrQueueFull) && !errors.Is(err, outpost.ErrOverloaded) {
		return fmt.Errorf("gateway telemetry: %w: %w", outpost.ErrOverloaded, err)
	}
	return err
}

// join calls done once, after every part.
type join struct {
	mu    sync.Mutex
	left  int
	first error
	done  func(error)
}

func (j *join) part(_ outpost.AppendResult, err error) { j.fail(1, err) }

func (j *join) fail(n int, err error) {
	j.mu.Lock()
	if err != nil && j.first == nil {
		j.first = err
	}
	j.left -= n
	last := j.left == 0
	first := j.first
	j.mu.Unlock()
	if last {
		j.done(first)
	}
}

// split checks a gateway batch's readings and groups them by child, in
// the order of each child's first reading, keeping each child's order.
// Bad readings and readings for addresses the gateway may not use are
// dropped and reported in one error reply; if none is left, the message
// is rejected for good.
func (s *Service) split(ctx context.Context, st *gwState, t protocol.GatewayTelemetry) ([]*outpost.Batch, error) {
	kind := protocol.KindGatewayTelemetry
	var bad int
	var first *protocol.Error
	var firstChild string
	byChild := map[string]*outpost.Batch{}
	var order []*outpost.Batch
	now := time.Now().UnixMilli()
	st.mu.Lock()
	defer st.mu.Unlock()
	// New children first, in one transaction: at most MaxChildren in all.
	var fresh []string
	seen := map[string]bool{}
	for _, r := range t.Readings {
		if seen[r.Child] {
			continue
		}
		seen[r.Child] = true
		if _, ok := st.byAddr[r.Child]; !ok && len(seen) <= s.opt.MaxChildren && protocol.ValidChildAddress(r.Child) == nil {
			fresh = append(fresh, r.Child)
		}
	}
	if err := s.register(ctx, st, fresh, nil); err != nil {
		return nil, err
	}
	refused := map[string]*protocol.Error{}
	rules := map[string]func(protocol.Reading) *protocol.Error{}
	for _, r := range t.Readings {
		err := protocol.ValidateChildReading(r)
		var child string
		if err == nil {
			if e := refused[r.Child]; e != nil {
				err = e
			} else if b := byChild[r.Child]; b != nil {
				child = b.DeviceID
			} else if len(byChild) >= s.opt.MaxChildren {
				err = &protocol.Error{Code: protocol.CodeTooLarge, Message: fmt.Sprintf("readings of more than %d children in one message", s.opt.MaxChildren)}
			} else {
				id, rerr := s.resolve(ctx, st, r.Child, "")
				var pe *protocol.Error
				switch {
				case errors.As(rerr, &pe):
					refused[r.Child], err = pe, pe
				case rerr != nil:
					return nil, rerr // transient
				default:
					child = id
				}
			}
		}
		if err == nil && s.opt.ReadingRule != nil {
			rule, ok := rules[child]
			if !ok {
				var rerr error
				if rule, rerr = s.opt.ReadingRule(ctx, child); rerr != nil {
					return nil, rerr // transient
				}
				rules[child] = rule
			}
			if rule != nil {
				err = rule(r.Reading())
			}
		}
		if err != nil {
			bad++
			if first == nil {
				first, firstChild = err, r.Child
			}
			continue
		}
		b := byChild[r.Child]
		if b == nil {
			b = &outpost.Batch{DeviceID: child}
			if t.ID != "" {
				b.ID = batchPrefix + t.ID
			}
			byChild[r.Child] = b
			order = append(order, b)
			s.markOnline(st, child)
		}
		ts := r.TS
		if ts == 0 {
			ts = now
		}
		b.Readings = append(b.Readings, outpost.Reading{Feed: r.Feed, TS: ts, Value: r.Value})
	}
	if bad > 0 {
		err := s.reply(st.gw.ID, protocol.GatewayErrorReply{Kind: kind, ID: t.ID, Child: firstChild, Code: first.Code, Message: first.Message, Rejected: bad})
		if len(order) == 0 {
			return nil, err
		}
	}
	return order, nil
}

// GatewayOnline tells the service that a gateway has a new session: its
// children come online again as it announces them or sends for them.
func (s *Service) GatewayOnline(ctx context.Context, gatewayID string) {
	s.GatewayOffline(ctx, gatewayID) // children of an older session, if its end was missed
}

// GatewayOffline takes every child that was online through the gateway
// offline, with the reason "gateway offline". Call it when the gateway's
// session ends, never from inside the presence tracker's change callback.
func (s *Service) GatewayOffline(ctx context.Context, gatewayID string) {
	s.mu.Lock()
	st := s.gws[gatewayID]
	s.mu.Unlock()
	if st == nil {
		return // never loaded: no child went online through it
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	old := st.sess
	st.sess = newSession()
	for child := range st.online {
		s.goOffline(child, old, ReasonGatewayOffline)
	}
	clear(st.online)
}

// Route returns the gateway and address a device is reached through
// right now: ok only for a child its gateway has announced (or sent for)
// in its current session. Another child is reached directly, if at all.
func (s *Service) Route(deviceID string) (gatewayID, address string, ok bool) {
	s.mu.Lock()
	r := s.children[deviceID]
	var st *gwState
	if r != nil {
		st = s.gws[r.gatewayID]
	}
	s.mu.Unlock()
	if st == nil {
		return "", "", false
	}
	st.mu.Lock()
	_, on := st.online[deviceID]
	st.mu.Unlock()
	return r.gatewayID, r.address, on
}

// RoutePublisher wraps the RPC relay's publisher: a request for a child
// that its gateway reaches goes to the gateway as a ChildRPCRequest on
// down/gw/rpc; anything else goes to next unchanged.
func (s *Service) RoutePublisher(next Publisher) Publisher { return routePublisher{s: s, next: next} }

type routePublisher struct {
	s    *Service
	next Publisher
}

func (p routePublisher) PublishUntil(deviceID, kind string, payload []byte, deadline time.Time) error {
	if kind != protocol.KindRPC {
		return p.next.PublishUntil(deviceID, kind, payload, deadline)
	}
	gw, addr, ok := p.s.Route(deviceID)
	if !ok {
		return p.next.PublishUntil(deviceID, kind, payload, deadline)
	}
	req, err := protocol.DecodeRPCRequest(payload)
	if err != nil {
		return fmt.Errorf("route rpc request: %w", err)
	}
	b, err := json.Marshal(protocol.ChildRPCRequest{Child: addr, ID: req.ID, Method: req.Method, Args: req.Args, Deadline: req.Deadline})
	if err != nil {
		return fmt.Errorf("route rpc request: %w", err)
	}
	return p.next.PublishUntil(gw, protocol.KindGatewayRPC, b, deadline)
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Service) answer(id string, r result) {
	s.mu.Lock()
	ch := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	if ch != nil {
		ch <- r // buffered: never blocks
	}
}

// request publishes a request to a gateway and waits for its result.
func (s *Service) request(ctx context.Context, gatewayID, kind, id string, v any, timeout time.Duration) (result, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if timeout > MaxTimeout {
		return result{}, outpost.Errorf(outpost.EINVALID, "timeout %s exceeds the maximum of %s", timeout, MaxTimeout)
	}
	if s.opt.Presence != nil && !s.opt.Presence.Online(gatewayID) {
		return result{}, outpost.Errorf(outpost.EOFFLINE, "gateway %s is offline", gatewayID)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return result{}, outpost.Errorf(outpost.EINVALID, "encode request: %v", err)
	}
	ch := make(chan result, 1)
	s.mu.Lock()
	s.pending[id] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}()
	if err := s.opt.Sender.PublishToDevice(gatewayID, kind, b); err != nil {
		return result{}, fmt.Errorf("%w (%w)", outpost.Errorf(outpost.EUNAVAILABLE, "gateway %s cannot take the request now", gatewayID), err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r, nil
	case <-timer.C:
		return result{}, outpost.Errorf(outpost.ETIMEOUT, "gateway %s did not answer within %s", gatewayID, timeout)
	case <-ctx.Done():
		return result{}, ctx.Err()
	}
}
