package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/protocol"
)

// Gateway makes a Client speak for other devices, its children, reached
// through the gateway's sinks (docs/protocol.md §26). It declares the
// sinks and announces the children on every connection, sends the
// children's readings through the client's durable outbox (several
// children per message, each child's readings in the order they were
// added), routes calls for children to handlers, and answers the
// platform's sink configuration and send requests.
//
// The platform must have declared the device a gateway
// (PUT /api/v1/gateways/{id}).
type Gateway struct {
	c *Client

	mu       sync.Mutex
	sinks    []protocol.Sink
	children map[string]string // address → sink
	methods  map[string]ChildHandler
	downMsg  ChildMessageHandler
	config   SinkConfigHandler
	send     SendHandler
	seen     map[string]struct{} // ids of child requests run
	seenRing []string

	prefix string
	seq    atomic.Uint64
}

// ChildHandler runs a method for the child at address.
type ChildHandler func(ctx context.Context, address string, args json.RawMessage) (any, error)

// ChildMessageHandler takes a queued message for the child at address
// (a feed command, a parameter change): kind and msg as the child would
// get them on down/{kind} itself. When it returns nil the gateway
// confirms the message (up/gw/ack); a message seen again (a redelivery)
// is confirmed without running the handler twice.
type ChildMessageHandler func(ctx context.Context, address, kind string, msg json.RawMessage) error

// SinkConfigHandler applies a change to a sink's configuration (only the
// fields to change) and returns the sink's whole configuration after it
// and a result code (protocol.ResultOK, or a refusal such as
// protocol.ResultInvalidConfig with a message in err).
type SinkConfigHandler func(ctx context.Context, sink string, change json.RawMessage) (config json.RawMessage, result string, err error)

// SendHandler sends data from a sink to a node (protocol.BroadcastAddress:
// every node) and returns a result code.
type SendHandler func(ctx context.Context, req protocol.SendRequest) (result string, err error)

// ChildReading is a reading of one child.
type ChildReading struct {
	Child string
	Reading
}

// NewGateway makes c a gateway. Call it before Connect; a client has at
// most one Gateway.
func NewGateway(c *Client) (*Gateway, error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	g := &Gateway{c: c, children: map[string]string{}, methods: map[string]ChildHandler{}, seen: map[string]struct{}{},
		prefix: hex.EncodeToString(b[:]) + "-" + strconv.FormatInt(time.Now().UnixMilli(), 36)}
	if !c.gw.CompareAndSwap(nil, g) {
		return nil, errors.New("device: the client is a gateway already")
	}
	return g, nil
}

// SetSinks declares the gateway's sinks (name → configuration, a JSON
// object). They are published now if connected, and on every connection.
func (g *Gateway) SetSinks(ctx context.Context, sinks map[string]json.RawMessage) error {
	ss := make([]protocol.Sink, 0, len(sinks))
	for name, cfg := range sinks {
		ss = append(ss, protocol.Sink{Name: name, Config: cfg})
	}
	slices.SortFunc(ss, func(a, b protocol.Sink) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	payload, err := json.Marshal(protocol.GatewaySinks{Sinks: ss})
	if err != nil {
		return fmt.Errorf("device: sinks: %w", err)
	}
	if _, err := protocol.DecodeGatewaySinks(payload); err != nil {
		return fmt.Errorf("device: sinks: %w", err)
	}
	g.mu.Lock()
	g.sinks = ss
	g.mu.Unlock()
	return g.publishIfUp(ctx, protocol.KindGatewaySinks, payload)
}

// Join announces children (address → the sink that reaches them, or "").
// They are announced again on every connection until they Leave.
func (g *Gateway) Join(ctx context.Context, children map[string]string) error {
	g.mu.Lock()
	for a, s := range children {
		g.children[a] = s
	}
	g.mu.Unlock()
	var js []protocol.ChildJoin
	for a, s := range children {
		js = append(js, protocol.ChildJoin{Address: a, Sink: s})
	}
	return g.announce(ctx, js, nil)
}

// Leave announces that children are no longer reachable.
func (g *Gateway) Leave(ctx context.Context, addresses ...string) error {
	g.mu.Lock()
	for _, a := range addresses {
		delete(g.children, a)
	}
	g.mu.Unlock()
	return g.announce(ctx, nil, addresses)
}

func (g *Gateway) announce(ctx context.Context, join []protocol.ChildJoin, leave []string) error {
	for len(join)+len(leave) > 0 {
		var m protocol.GatewayChildren
		n := min(len(join), protocol.MaxChildrenPerMessage)
		m.Join, join = join[:n], join[n:]
		n = min(len(leave), protocol.MaxChildrenPerMessage-len(m.Join))
		m.Leave, leave = leave[:n], leave[n:]
		payload, err := json.Marshal(m)
		if err != nil {
			return fmt.Errorf("device: children: %w", err)
		}
		if _, err := protocol.DecodeGatewayChildren(payload); err != nil {
			return fmt.Errorf("device: children: %w", err)
		}
		if err := g.publishIfUp(ctx, protocol.KindGatewayChildren, payload); err != nil {
			return err
		}
	}
	return nil
}

// publishIfUp publishes now when connected; otherwise the next connection
// sends the state.
func (g *Gateway) publishIfUp(ctx context.Context, kind string, payload []byte) error {
	if !g.c.Connected() {
		return nil
	}
	return g.c.publishUp(ctx, kind, payload)
}

// connected re-declares the sinks and re-announces the children.
func (g *Gateway) connected() {
	g.mu.Lock()
	sinks := slices.Clone(g.sinks)
	var js []protocol.ChildJoin
	for a, s := range g.children {
		js = append(js, protocol.ChildJoin{Address: a, Sink: s})
	}
	g.mu.Unlock()
	g.c.wg.Add(1)
	go func() {
		defer g.c.wg.Done()
		ctx, cancel := context.WithTimeout(g.c.lifetime, 30*time.Second)
		defer cancel()
		if sinks != nil {
			payload, _ := json.Marshal(protocol.GatewaySinks{Sinks: sinks})
			if err := g.c.publishUp(ctx, protocol.KindGatewaySinks, payload); err != nil {
				g.c.opt.log.Warn("sinks not declared", "device_id", g.c.id, "error", err)
			}
		}
		if err := g.announce(ctx, js, nil); err != nil {
			g.c.opt.log.Warn("children not announced", "device_id", g.c.id, "error", err)
		}
	}()
}

// AddReadings queues readings of any children, in one or more
// gw/telemetry messages of the client's durable outbox: they survive a
// restart of the gateway and are sent in order with everything else the
// client queued, so each child's readings keep their order. Each message
// gets a batch id of its own, kept with it, so a resend is stored once.
func (g *Gateway) AddReadings(rs ...ChildReading) error {
	now := time.Now().UnixMilli()
	enc := make([]protocol.ChildReading, len(rs))
	for i, r := range rs {
		v, err := protocol.EncodeValue(r.Value)
		if err != nil {
			return fmt.Errorf("device: child %s feed %s: %w", r.Child, r.Feed, err)
		}
		ts := now
		if !r.Time.IsZero() {
			ts = r.Time.UnixMilli()
		}
		enc[i] = protocol.ChildReading{Child: r.Child, Feed: r.Feed, Value: v, TS: ts}
		if err := protocol.ValidateChildReading(enc[i]); err != nil {
			return fmt.Errorf("device: %w", err)
		}
	}
	for len(enc) > 0 {
		n := g.fit(enc)
		t := protocol.GatewayTelemetry{ID: g.prefix + "-" + strconv.FormatUint(g.seq.Add(1), 10), Readings: enc[:n]}
		payload, err := json.Marshal(t)
		if err != nil {
			return fmt.Errorf("device: gateway telemetry: %w", err)
		}
		if err := g.c.queueMessage(g.c.lifetime, protocol.KindGatewayTelemetry, payload); err != nil {
			return err
		}
		enc = enc[n:]
	}
	return nil
}

// fit returns how many of rs fit one message: the readings, fan-out and
// size limits.
func (g *Gateway) fit(rs []protocol.ChildReading) int {
	children := map[string]struct{}{}
	size := 64
	limit := g.c.maxPayload(protocol.KindGatewayTelemetry) - 128
	for i, r := range rs {
		children[r.Child] = struct{}{}
		size += len(r.Child) + len(r.Feed) + len(r.Value) + 48
		if i == protocol.MaxReadingsPerMessage || len(children) > protocol.MaxChildrenPerMessage || (size > limit && i > 0) {
			return i
		}
	}
	return len(rs)
}

// HandleChild registers a method that children answer (for every child;
// address tells which one is called). rpc_list is answered with the
// registered names.
func (g *Gateway) HandleChild(method string, h ChildHandler) error {
	if err := protocol.ValidMethod(method); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	g.mu.Lock()
	g.methods[method] = h
	g.mu.Unlock()
	return nil
}

// HandleChildMessage sets the handler of queued messages for children.
// Without one, they are confirmed and dropped.
func (g *Gateway) HandleChildMessage(h ChildMessageHandler) {
	g.mu.Lock()
	g.downMsg = h
	g.mu.Unlock()
}

// HandleSinkConfig sets the handler of sink configuration requests.
// Without one, requests are refused with protocol.ResultNotSupported.
func (g *Gateway) HandleSinkConfig(h SinkConfigHandler) {
	g.mu.Lock()
	g.config = h
	g.mu.Unlock()
}

// HandleSend sets the handler of send requests. Without one, requests are
// refused with protocol.ResultNotSupported.
func (g *Gateway) HandleSend(h SendHandler) {
	g.mu.Lock()
	g.send = h
	g.mu.Unlock()
}

// SendNodeData publishes data the nodes sent (up/gw/data).
func (g *Gateway) SendNodeData(ctx context.Context, msgs ...protocol.NodeMessage) error {
	payload, err := json.Marshal(protocol.NodeData{Messages: msgs})
	if err != nil {
		return fmt.Errorf("device: node data: %w", err)
	}
	if _, err := protocol.DecodeNodeData(payload); err != nil {
		return fmt.Errorf("device: node data: %w", err)
	}
	return g.c.publishUp(ctx, protocol.KindGatewayData, payload)
}

// SendChild publishes a message of a child (up/gw/child): kind is
// "event", "notification", "attributes" or "feeds", and msg what the
// child would publish on up/{kind} itself (docs/protocol.md §26.6).
func (g *Gateway) SendChild(ctx context.Context, address, kind string, msg any) error {
	raw, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("device: child %s %s: %w", address, kind, err)
	}
	payload, err := json.Marshal(protocol.ChildMessage{Child: address, Kind: kind, Msg: raw})
	if err != nil {
		return fmt.Errorf("device: child %s %s: %w", address, kind, err)
	}
	if _, err := protocol.DecodeChildMessage(payload); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	return g.c.publishUp(ctx, protocol.KindGatewayChild, payload)
}

// SendChildEvent publishes an event of a child.
func (g *Gateway) SendChildEvent(ctx context.Context, address, name string, data any) error {
	ev := protocol.Event{ID: newMsgID(), Name: name, T: time.Now().UnixMilli()}
	if data != nil {
		raw, err := json.Marshal(data)
		if err != nil {
			return fmt.Errorf("device: event %s: %w", name, err)
		}
		ev.Data = raw
	}
	return g.SendChild(ctx, address, "event", ev)
}

func newMsgID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// onGatewayPublish hands the platform's gw/ requests to the gateway.
func (c *Client) onGatewayPublish(kind string, payload []byte) bool {
	g := c.gw.Load()
	return g != nil && g.onPublish(kind, payload)
}

// onPublish takes the platform's gw/ requests.
func (g *Gateway) onPublish(kind string, payload []byte) bool {
	switch kind {
	case protocol.KindGatewayRPC:
		req, err := protocol.DecodeChildRPCRequest(payload)
		if err != nil {
			g.c.opt.log.Warn("bad child rpc request", "device_id", g.c.id, "error", err)
			return true
		}
		if !g.firstTime(req.ID) {
			return true // a redelivery: never run twice
		}
		g.c.wg.Add(1)
		go g.serveChild(req)
	case protocol.KindGatewayChild:
		m, err := protocol.DecodeChildDownMessage(payload)
		if err != nil {
			g.c.opt.log.Warn("bad child message", "device_id", g.c.id, "error", err)
			return true
		}
		g.c.wg.Add(1)
		go g.serveChildMessage(m)
	case protocol.KindGatewayConfig:
		req, err := protocol.DecodeSinkConfigRequest(payload)
		if err != nil {
			g.c.opt.log.Warn("bad sink config request", "device_id", g.c.id, "error", err)
			return true
		}
		g.c.wg.Add(1)
		go g.serveConfig(req)
	case protocol.KindGatewaySend:
		req, err := protocol.DecodeSendRequest(payload)
		if err != nil {
			g.c.opt.log.Warn("bad send request", "device_id", g.c.id, "error", err)
			return true
		}
		g.c.wg.Add(1)
		go g.serveSend(req)
	default:
		return false
	}
	return true
}

func (g *Gateway) firstTime(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.seen[id]; ok {
		return false
	}
	g.seen[id] = struct{}{}
	g.seenRing = append(g.seenRing, id)
	if len(g.seenRing) > 1024 {
		delete(g.seen, g.seenRing[0])
		g.seenRing = g.seenRing[1:]
	}
	return true
}

func (g *Gateway) serveChild(req protocol.ChildRPCRequest) {
	defer g.c.wg.Done()
	ctx, cancel := context.WithCancel(g.c.lifetime)
	if req.Deadline > 0 {
		if time.Now().After(time.UnixMilli(req.Deadline)) {
			cancel()
			return // the caller has given up
		}
		cancel()
		ctx, cancel = context.WithDeadline(g.c.lifetime, time.UnixMilli(req.Deadline))
	}
	defer cancel()
	g.mu.Lock()
	h := g.methods[req.Method]
	names := make([]string, 0, len(g.methods)+1)
	for n := range g.methods {
		names = append(names, n)
	}
	g.mu.Unlock()
	resp := protocol.ChildRPCResponse{Child: req.Child, ID: req.ID}
	var res any
	var err error
	switch {
	case h != nil:
		res, err = h(ctx, req.Child, req.Args)
	case req.Method == "rpc_list":
		names = append(names, "rpc_list")
		slices.Sort(names)
		res = names
	default:
		err = &protocol.Error{Code: protocol.CodeUnknownMethod, Message: "no method " + req.Method}
	}
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			resp.Error = pe
		} else {
			resp.Error = &protocol.Error{Code: protocol.CodeHandlerError, Message: err.Error()}
		}
	} else if resp.Result, err = json.Marshal(res); err != nil {
		resp.Error = &protocol.Error{Code: protocol.CodeHandlerError, Message: "encode result: " + err.Error()}
	}
	g.reply(protocol.KindGatewayRPC, resp)
}

func (g *Gateway) serveChildMessage(m protocol.ChildDownMessage) {
	defer g.c.wg.Done()
	var head struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(m.Msg, &head)
	key := m.Child + "/" + head.ID
	g.mu.Lock()
	h := g.downMsg
	_, seen := g.seen[key]
	g.mu.Unlock()
	if h != nil && (head.ID == "" || !seen) {
		ctx, cancel := context.WithTimeout(g.c.lifetime, time.Minute)
		err := h(ctx, m.Child, m.Kind, m.Msg)
		cancel()
		if err != nil {
			g.c.opt.log.Warn("child message not taken", "device_id", g.c.id, "child", m.Child, "kind", m.Kind, "error", err)
			return // not confirmed: sent again later
		}
	}
	if head.ID != "" {
		g.firstTime(key) // taken in: a redelivery is only confirmed
		g.reply(protocol.KindGatewayAck, protocol.ChildAck{Child: m.Child, IDs: []string{head.ID}})
	}
}

func (g *Gateway) serveConfig(req protocol.SinkConfigRequest) {
	defer g.c.wg.Done()
	ctx, cancel := context.WithTimeout(g.c.lifetime, time.Minute)
	defer cancel()
	g.mu.Lock()
	h := g.config
	g.mu.Unlock()
	out := protocol.SinkConfigResult{ID: req.ID, Sink: req.Sink, Result: protocol.ResultNotSupported}
	if h != nil {
		cfg, res, err := h(ctx, req.Sink, req.Config)
		out.Result = res
		if out.Result == "" {
			out.Result = protocol.ResultOK
			if err != nil {
				out.Result = protocol.ResultInternalError
			}
		}
		if err != nil {
			out.Message = err.Error()
		}
		if out.Result == protocol.ResultOK {
			out.Config = cfg
			g.mu.Lock()
			for i := range g.sinks {
				if g.sinks[i].Name == req.Sink && cfg != nil {
					g.sinks[i].Config = cfg
				}
			}
			g.mu.Unlock()
		}
	}
	g.reply(protocol.KindGatewayConfig, out)
}

func (g *Gateway) serveSend(req protocol.SendRequest) {
	defer g.c.wg.Done()
	ctx, cancel := context.WithTimeout(g.c.lifetime, time.Minute)
	defer cancel()
	g.mu.Lock()
	h := g.send
	g.mu.Unlock()
	out := protocol.SendResult{ID: req.ID, Result: protocol.ResultNotSupported}
	if h != nil {
		res, err := h(ctx, req)
		out.Result = res
		if out.Result == "" {
			out.Result = protocol.ResultOK
			if err != nil {
				out.Result = protocol.ResultInternalError
			}
		}
		if err != nil {
			out.Message = err.Error()
		}
	}
	g.reply(protocol.KindGatewaySend, out)
}

func (g *Gateway) reply(kind string, v any) {
	payload, err := json.Marshal(v)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(g.c.lifetime, 10*time.Second)
	defer cancel()
	if err := g.c.publishUp(ctx, kind, payload); err != nil {
		g.c.opt.log.Warn("gateway answer not delivered", "device_id", g.c.id, "kind", kind, "error", err)
	}
}
