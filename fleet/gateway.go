package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Gateways, their sinks and the nodes behind them (docs/protocol.md §26),
// in the manner of the Wirepas MQTT library: list gateways and sinks, read
// and change a sink's configuration, send to a node or broadcast with
// source and destination endpoints, synchronously with a timeout or
// asynchronously with a callback and a caller's parameter, and subscribe
// to the nodes' data.

// KindNodeData is the stream kind of data sent by the nodes behind a
// gateway (see NodeData).
const KindNodeData = "node_data"

// Gateway is a device that speaks for its children.
type Gateway struct {
	ID string `json:"id"`
	// Policy is "auto" (children the gateway announces are registered)
	// or "provisioned" (only children registered with AddChild).
	Policy    string    `json:"policy"`
	CreatedAt time.Time `json:"created_at"`
}

// Child is a device reached through a gateway, at the gateway's address
// for it. DeviceID works everywhere a device id does (Call, Telemetry,
// the stream).
type Child struct {
	GatewayID string    `json:"gateway_id"`
	Address   string    `json:"address"`
	DeviceID  string    `json:"device_id"`
	Sink      string    `json:"sink,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Sink is one of a gateway's network interfaces with the configuration
// the gateway last reported.
type Sink struct {
	GatewayID string          `json:"gateway_id"`
	Name      string          `json:"name"`
	Config    json.RawMessage `json:"config"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// Network returns the sink's network address (the network_address field
// of its configuration), or nil.
func (s Sink) Network() json.RawMessage {
	var c struct {
		Network json.RawMessage `json:"network_address"`
	}
	if json.Unmarshal(s.Config, &c) != nil {
		return nil
	}
	return c.Network
}

// ResultCode is a gateway's answer to a request (Wirepas's gateway result
// codes). Anything but ResultOK is a failure.
type ResultCode string

// Result codes. A gateway may send others.
const (
	ResultOK              ResultCode = "ok"
	ResultInternalError   ResultCode = "internal_error"
	ResultInvalidSink     ResultCode = "invalid_sink"
	ResultInvalidConfig   ResultCode = "invalid_config"
	ResultInvalidDest     ResultCode = "invalid_destination"
	ResultInvalidEndpoint ResultCode = "invalid_endpoint"
	ResultTooLarge        ResultCode = "payload_too_large"
	ResultBusy            ResultCode = "busy"
	ResultNotSupported    ResultCode = "not_supported"
	// ResultTimeout is what asynchronous requests hand their callback
	// when the gateway did not answer in time (with ErrTimeout).
	ResultTimeout ResultCode = "timeout"
)

// BroadcastAddress is the destination every node of a sink's network
// receives.
const BroadcastAddress = "*"

// DefaultGatewayTimeout is how long a gateway has to answer a request
// unless MessageOptions say otherwise (Wirepas's 2 s).
const DefaultGatewayTimeout = 2 * time.Second

// MessageOptions tune SendMessage and SetSinkConfig.
type MessageOptions struct {
	// Timeout is how long the gateway has to answer (default
	// DefaultGatewayTimeout, at most a minute).
	Timeout time.Duration
	// QoS is the node network's delivery class (0 or 1) for SendMessage.
	QoS int
}

func gwPath(id string, rest ...string) string {
	p := "/api/v1/gateways/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// Gateways lists the gateways.
func (c *Client) Gateways(ctx context.Context) ([]Gateway, error) {
	var out struct {
		Gateways []Gateway `json:"gateways"`
	}
	if err := c.do(ctx, "GET", "/api/v1/gateways", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Gateways, nil
}

// SetGateway makes a device a gateway with policy "auto" or
// "provisioned", or changes its policy. ErrNotFound, ErrInvalid,
// ErrConflict (the device is a child).
func (c *Client) SetGateway(ctx context.Context, deviceID, policy string) (*Gateway, error) {
	var g Gateway
	if err := c.do(ctx, "PUT", gwPath(deviceID), nil, map[string]string{"policy": policy}, &g); err != nil {
		return nil, err
	}
	return &g, nil
}

// Children lists a gateway's children. ErrNotFound.
func (c *Client) Children(ctx context.Context, gatewayID string) ([]Child, error) {
	var out struct {
		Children []Child `json:"children"`
	}
	if err := c.do(ctx, "GET", gwPath(gatewayID, "children"), nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Children, nil
}

// AddChild registers a child of a gateway at address: the device
// deviceID, or a new device when deviceID is empty. ErrNotFound,
// ErrInvalid, ErrConflict (the address is taken, or the device is
// another gateway's child, or a gateway).
func (c *Client) AddChild(ctx context.Context, gatewayID, address, deviceID string) (*Child, error) {
	var body any
	if deviceID != "" {
		body = map[string]string{"device_id": deviceID}
	}
	var ch Child
	if err := c.do(ctx, "PUT", gwPath(gatewayID, "children", address), nil, body, &ch); err != nil {
		return nil, err
	}
	return &ch, nil
}

// RemoveChild removes a child from its gateway; the device stays.
// ErrNotFound.
func (c *Client) RemoveChild(ctx context.Context, gatewayID, address string) error {
	return c.do(ctx, "DELETE", gwPath(gatewayID, "children", address), nil, nil, nil)
}

// Sinks lists a gateway's sinks with their configuration; with gatewayID
// empty, the sinks of every gateway (Wirepas's get_sinks).
func (c *Client) Sinks(ctx context.Context, gatewayID string) ([]Sink, error) {
	if gatewayID == "" {
		gws, err := c.Gateways(ctx)
		if err != nil {
			return nil, err
		}
		var all []Sink
		for _, g := range gws {
			ss, err := c.Sinks(ctx, g.ID)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return nil, err
			}
			all = append(all, ss...)
		}
		return all, nil
	}
	var out struct {
		Sinks []Sink `json:"sinks"`
	}
	if err := c.do(ctx, "GET", gwPath(gatewayID, "sinks"), nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Sinks, nil
}

// SinkConfig returns a sink's configuration as the gateway last reported
// it. ErrNotFound.
func (c *Client) SinkConfig(ctx context.Context, gatewayID, sink string) (json.RawMessage, error) {
	var s Sink
	if err := c.do(ctx, "GET", gwPath(gatewayID, "sinks", sink), nil, nil, &s); err != nil {
		return nil, err
	}
	return s.Config, nil
}

// SetSinkConfig asks a gateway to change fields of a sink's configuration
// (config encodes to a JSON object with only the fields to change) and
// waits for its result code; a refusal is a result code, not an error.
// Errors: ErrTimeout when the gateway did not answer in time (the change
// may still happen), ErrOffline, ErrNotFound, ErrInvalid.
func (c *Client) SetSinkConfig(ctx context.Context, gatewayID, sink string, config any, o MessageOptions) (ResultCode, error) {
	raw, err := json.Marshal(config)
	if err != nil {
		return "", fmt.Errorf("fleet: encode sink config: %w", err)
	}
	body := map[string]any{"config": json.RawMessage(raw)}
	if o.Timeout > 0 {
		body["timeout"] = durationString(o.Timeout)
	}
	var out struct {
		Result ResultCode `json:"result"`
	}
	if err := c.do(ctx, "POST", gwPath(gatewayID, "sinks", sink, "config"), nil, body, &out); err != nil {
		return "", err
	}
	return out.Result, nil
}

// SendMessage sends payload from a gateway's sink to the node at dest
// (BroadcastAddress: every node of the sink's network), from endpoint
// srcEP to endpoint dstEP, and waits for the gateway's result code.
// Errors: ErrTimeout when the gateway did not answer within o.Timeout,
// ErrOffline, ErrNotFound (gateway or sink), ErrInvalid.
func (c *Client) SendMessage(ctx context.Context, gatewayID, sink, dest string, srcEP, dstEP int, payload []byte, o MessageOptions) (ResultCode, error) {
	if payload == nil {
		payload = []byte{}
	}
	body := map[string]any{"dst": dest, "src_ep": srcEP, "dst_ep": dstEP, "payload": payload}
	if o.QoS != 0 {
		body["qos"] = o.QoS
	}
	if o.Timeout > 0 {
		body["timeout"] = durationString(o.Timeout)
	}
	var out struct {
		Result ResultCode `json:"result"`
	}
	if err := c.do(ctx, "POST", gwPath(gatewayID, "sinks", sink, "send"), nil, body, &out); err != nil {
		return "", err
	}
	return out.Result, nil
}

// ResultFunc receives the outcome of an asynchronous gateway request: the
// gateway's result code (ResultTimeout with an error matching ErrTimeout
// when it did not answer in time; "" with any other error), and the
// param given with the request.
type ResultFunc func(res ResultCode, err error, param any)

// SendMessageAsync is SendMessage without waiting: the request is queued
// on the client's pool (see CallAsync, which it shares) and fn(result,
// err, param) runs on one of the client's worker goroutines. fn may be
// nil. It returns an error only when the request could not be queued.
func (c *Client) SendMessageAsync(ctx context.Context, gatewayID, sink, dest string, srcEP, dstEP int, payload []byte, o MessageOptions, fn ResultFunc, param any) error {
	payload = bytes.Clone(payload)
	return c.queueJob(ctx, "send message", func(ctx context.Context) (json.RawMessage, error) {
		res, err := c.SendMessage(ctx, gatewayID, sink, dest, srcEP, dstEP, payload, o)
		if err != nil {
			return nil, err
		}
		return json.Marshal(res)
	}, resultCallback(fn), param)
}

// SetSinkConfigAsync is SetSinkConfig without waiting, as
// SendMessageAsync.
func (c *Client) SetSinkConfigAsync(ctx context.Context, gatewayID, sink string, config any, o MessageOptions, fn ResultFunc, param any) error {
	raw, err := json.Marshal(config)
	if err != nil {
		return fmt.Errorf("fleet: encode sink config: %w", err)
	}
	return c.queueJob(ctx, "set sink config", func(ctx context.Context) (json.RawMessage, error) {
		res, err := c.SetSinkConfig(ctx, gatewayID, sink, json.RawMessage(raw), o)
		if err != nil {
			return nil, err
		}
		return json.Marshal(res)
	}, resultCallback(fn), param)
}

func resultCallback(fn ResultFunc) CallFunc {
	if fn == nil {
		return nil
	}
	return func(raw json.RawMessage, err error, param any) {
		var res ResultCode
		if err == nil {
			_ = json.Unmarshal(raw, &res)
		} else if errors.Is(err, ErrTimeout) {
			res = ResultTimeout
		}
		fn(res, err, param)
	}
}

// SinkResult is the outcome of one sink's part of a BroadcastMessage.
type SinkResult struct {
	GatewayID, Sink string
	Result          ResultCode
	Err             error
}

// BroadcastMessage sends payload to every node of a network from every
// sink of it (the sinks whose configuration's network_address is network,
// compared as JSON; nil: every sink of every gateway), as Wirepas's
// "send a broadcast from all sinks of a network". The sinks are asked at
// once and the results come back when every gateway answered or timed out.
func (c *Client) BroadcastMessage(ctx context.Context, network any, srcEP, dstEP int, payload []byte, o MessageOptions) ([]SinkResult, error) {
	sinks, err := c.Sinks(ctx, "")
	if err != nil {
		return nil, err
	}
	var want []byte
	if network != nil {
		if want, err = json.Marshal(network); err != nil {
			return nil, fmt.Errorf("fleet: encode network: %w", err)
		}
	}
	var picked []Sink
	for _, s := range sinks {
		if want == nil || bytes.Equal(bytes.TrimSpace(s.Network()), want) {
			picked = append(picked, s)
		}
	}
	out := make([]SinkResult, len(picked))
	done := make(chan struct{}, len(picked))
	for i, s := range picked {
		out[i] = SinkResult{GatewayID: s.GatewayID, Sink: s.Name}
		go func() {
			defer func() { done <- struct{}{} }()
			out[i].Result, out[i].Err = c.SendMessage(ctx, s.GatewayID, s.Name, BroadcastAddress, srcEP, dstEP, payload, o)
		}()
	}
	for range picked {
		<-done
	}
	return out, nil
}

// NodeData is a message a node sent, as the stream carries it
// (KindNodeData).
type NodeData struct {
	GatewayID string `json:"gateway_id"`
	Sink      string `json:"sink"`
	// Network is the sink's network address, if its configuration has
	// one.
	Network json.RawMessage `json:"network,omitempty"`
	Source  string          `json:"src"`
	// DeviceID is the source's device id when it is a child of the
	// gateway.
	DeviceID string `json:"device_id,omitempty"`
	Dest     string `json:"dst,omitempty"`
	SrcEP    int    `json:"src_ep"`
	DstEP    int    `json:"dst_ep"`
	// TS is when it was sent or received, in Unix milliseconds.
	TS      int64  `json:"ts"`
	Payload []byte `json:"payload"`
}

// NodeData decodes a KindNodeData event.
func (e Event) NodeData() (*NodeData, error) {
	var d NodeData
	return &d, e.decode(KindNodeData, &d)
}

// NodeDataFilter selects node data. Zero fields match all.
type NodeDataFilter struct {
	// Gateways keeps the data of these gateways.
	Gateways []string
	// Network keeps the data of sinks whose network address is this
	// value (compared as JSON: 1234 or "1234" as the gateway reports it).
	Network any
	// SrcEP and DstEP keep data with these endpoints.
	SrcEP, DstEP *int
}

// SubscribeNodeData hands handler every node message that matches f, on
// the live stream (see Subscribe for its life cycle).
func (c *Client) SubscribeNodeData(ctx context.Context, f NodeDataFilter, handler func(NodeData)) (*Subscription, error) {
	if handler == nil {
		return nil, errors.New("fleet: SubscribeNodeData needs a handler")
	}
	var want []byte
	if f.Network != nil {
		var err error
		if want, err = json.Marshal(f.Network); err != nil {
			return nil, fmt.Errorf("fleet: encode network: %w", err)
		}
	}
	return c.Subscribe(ctx, StreamFilter{DeviceIDs: f.Gateways, Kinds: []string{KindNodeData}}, func(e Event) {
		d, err := e.NodeData()
		if err != nil {
			return
		}
		if (want != nil && !bytes.Equal(d.Network, want)) || (f.SrcEP != nil && d.SrcEP != *f.SrcEP) || (f.DstEP != nil && d.DstEP != *f.DstEP) {
			return
		}
		handler(*d)
	})
}
