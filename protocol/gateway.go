package protocol

import (
	"encoding/json"
	"strings"
)

// Gateways (docs/protocol.md §26). A gateway is a device that speaks for
// other devices, its children, which it reaches over its own network (a
// radio mesh, a field bus) through named interfaces, its sinks. It uses
// only its own topics: the kinds below, under its own up/ and down/
// subtrees, carry the child's address inside the payload. A gateway may
// act only for its own children.

// Gateway message kinds.
const (
	// KindGatewaySinks (up) declares the gateway's sinks and their
	// configuration: a GatewaySinks, replacing the previous list.
	KindGatewaySinks = "gw/sinks"
	// KindGatewayChildren (up) announces children that joined and
	// children that left: a GatewayChildren.
	KindGatewayChildren = "gw/children"
	// KindGatewayTelemetry (up) carries readings of many children: a
	// GatewayTelemetry.
	KindGatewayTelemetry = "gw/telemetry"
	// KindGatewayChild carries one message of a child: up, an event, a
	// notification, attributes or feeds (a ChildMessage); down, a message
	// for the child from its down queue, such as a feed command or a
	// parameter change (a ChildDownMessage).
	KindGatewayChild = "gw/child"
	// KindGatewayAck (up) confirms queued messages of a child: a
	// ChildAck.
	KindGatewayAck = "gw/ack"
	// KindGatewayRPC carries an RPC request for a child (down,
	// ChildRPCRequest) and the child's answer (up, ChildRPCResponse).
	KindGatewayRPC = "gw/rpc"
	// KindGatewayConfig carries a request to change a sink's
	// configuration (down, SinkConfigRequest) and its result (up,
	// SinkConfigResult).
	KindGatewayConfig = "gw/config"
	// KindGatewaySend carries a request to send data to a node address
	// from a sink (down, SendRequest) and its result (up, SendResult).
	KindGatewaySend = "gw/send"
	// KindGatewayData (up) carries data the gateway's nodes sent: a
	// NodeData.
	KindGatewayData = "gw/data"
)

// GatewayKind reports whether kind is one of the gateway's up/ kinds.
func GatewayKind(kind string) bool { return strings.HasPrefix(kind, "gw/") }

// Error codes of gateway messages.
const (
	// CodeUnknownChild: the address names no child of this gateway, and
	// the gateway may not register children itself (policy provisioned).
	CodeUnknownChild = "unknown_child"
	// CodeForbidden: the gateway may not act for this device (a child of
	// another gateway, a device with credentials of its own that the
	// operator has not made its child), or the device is not a gateway.
	CodeForbidden = "forbidden"
)

// Gateway limits.
const (
	// MaxChildrenPerMessage bounds the distinct children one gateway
	// message names (its fan-out): join and leave entries, the children
	// of a telemetry batch.
	MaxChildrenPerMessage = 1000
	// MaxChildAddressLen bounds a child's address, 1 to 64 characters
	// from [A-Za-z0-9_.:-].
	MaxChildAddressLen = 64
	// MaxSinks bounds the sinks of one gateway; sink names follow the
	// feed alphabet (1 to 64 characters).
	MaxSinks = 64
	// MaxSinkConfig bounds a sink's configuration, a JSON object, in
	// bytes as encoded.
	MaxSinkConfig = 4096
	// MaxNodePayload bounds the data of one node message, in bytes
	// (before base64).
	MaxNodePayload = 4096
	// MaxNodeDataPerMessage bounds the node messages in one NodeData.
	MaxNodeDataPerMessage = 1000
	// MaxEndpoint is the largest source or destination endpoint.
	MaxEndpoint = 255
)

// BroadcastAddress is the destination of a SendRequest that every node
// of the sink's network receives.
const BroadcastAddress = "*"

// Gateway result codes, in SinkConfigResult and SendResult (Wirepas's
// gateway result codes, in the protocol's spelling). A gateway may send
// other codes of the same alphabet; anything but ResultOK is a failure.
const (
	ResultOK              = "ok"
	ResultInternalError   = "internal_error"
	ResultInvalidSink     = "invalid_sink"
	ResultInvalidConfig   = "invalid_config"
	ResultInvalidDest     = "invalid_destination"
	ResultInvalidEndpoint = "invalid_endpoint"
	ResultTooLarge        = "payload_too_large"
	ResultBusy            = "busy"
	ResultNotSupported    = "not_supported"
	// ResultTimeout is never sent by a gateway: the platform and the
	// fleet SDK report it when no result came in time.
	ResultTimeout = "timeout"
)

// GatewayPolicy says how a gateway's children come to exist.
type GatewayPolicy string

// Gateway policies.
const (
	// PolicyProvisioned: only children the operator registered; an
	// unknown address is refused with CodeUnknownChild. The default.
	PolicyProvisioned GatewayPolicy = "provisioned"
	// PolicyAuto: an unknown address that the gateway announces or sends
	// data for becomes a new child device.
	PolicyAuto GatewayPolicy = "auto"
)

// Valid reports whether p is a known policy.
func (p GatewayPolicy) Valid() bool { return p == PolicyProvisioned || p == PolicyAuto }

// Sink is one of a gateway's network interfaces.
type Sink struct {
	Name string `json:"name"`
	// Config is the sink's configuration, a JSON object whose fields the
	// gateway chooses (for example network_address, channel, role).
	Config json.RawMessage `json:"config,omitempty"`
}

// GatewaySinks is published on up/gw/sinks.
type GatewaySinks struct {
	Sinks []Sink `json:"sinks"`
}

// ChildJoin announces one child.
type ChildJoin struct {
	// Address is the gateway's address for the child.
	Address string `json:"c"`
	// Sink, optional, names the sink that reaches the child.
	Sink string `json:"sink,omitempty"`
}

// GatewayChildren is published on up/gw/children.
type GatewayChildren struct {
	ID    string      `json:"id,omitempty"`
	Join  []ChildJoin `json:"join,omitempty"`
	Leave []string    `json:"leave,omitempty"`
}

// ChildReading is a reading of one child in a GatewayTelemetry.
type ChildReading struct {
	Child string          `json:"c"`
	Feed  string          `json:"f"`
	Value json.RawMessage `json:"v"`
	TS    int64           `json:"t,omitempty"`
}

// Reading returns the reading without its child.
func (r ChildReading) Reading() Reading { return Reading{Feed: r.Feed, Value: r.Value, TS: r.TS} }

// GatewayTelemetry is published on up/gw/telemetry: readings of several
// children in one batch.
type GatewayTelemetry struct {
	ID       string         `json:"id,omitempty"`
	Readings []ChildReading `json:"r"`
}

// ChildKinds are the kinds a ChildMessage may carry.
var ChildKinds = []string{"event", "notification", "attributes", "feeds"}

// ChildMessage is published on up/gw/child: one message of a child, as
// the child would publish it on up/{kind} itself.
type ChildMessage struct {
	Child string          `json:"c"`
	Kind  string          `json:"kind"`
	Msg   json.RawMessage `json:"msg"`
}

// ChildDownMessage is published by the platform on down/gw/child: a
// message for the child at Child, as the child would get it on
// down/{Kind} itself.
type ChildDownMessage struct {
	Child string          `json:"c"`
	Kind  string          `json:"kind"`
	Msg   json.RawMessage `json:"msg"`
}

// ChildAck is published by the gateway on up/gw/ack: the ids of queued
// messages the child at Child took in (as up/ack for a device).
type ChildAck struct {
	Child string   `json:"c"`
	IDs   []string `json:"ids"`
}

// ChildRPCRequest is published by the platform on down/gw/rpc: an
// RPCRequest for the child at Child.
type ChildRPCRequest struct {
	Child    string          `json:"c"`
	ID       string          `json:"id"`
	Method   string          `json:"method"`
	Args     json.RawMessage `json:"args,omitempty"`
	Deadline int64           `json:"deadline,omitempty"`
}

// Request returns the request without its child.
func (r ChildRPCRequest) Request() RPCRequest {
	return RPCRequest{ID: r.ID, Method: r.Method, Args: r.Args, Deadline: r.Deadline}
}

// ChildRPCResponse is published by the gateway on up/gw/rpc: the
// answer of the child at Child.
type ChildRPCResponse struct {
	Child  string          `json:"c"`
	ID     string          `json:"id"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Response returns the response without its child.
func (r ChildRPCResponse) Response() RPCResponse {
	return RPCResponse{ID: r.ID, Result: r.Result, Error: r.Error}
}

// SinkConfigRequest is published by the platform on down/gw/config.
type SinkConfigRequest struct {
	ID   string `json:"id"`
	Sink string `json:"sink"`
	// Config holds the fields to change; the gateway keeps the others.
	Config json.RawMessage `json:"config"`
}

// SinkConfigResult is published by the gateway on up/gw/config.
type SinkConfigResult struct {
	ID      string `json:"id"`
	Sink    string `json:"sink,omitempty"`
	Result  string `json:"res"`
	Message string `json:"message,omitempty"`
	// Config is the sink's whole configuration after the change.
	Config json.RawMessage `json:"config,omitempty"`
}

// SendRequest is published by the platform on down/gw/send: send
// Payload from Sink to the node Dest (BroadcastAddress: every node).
type SendRequest struct {
	ID      string `json:"id"`
	Sink    string `json:"sink"`
	Dest    string `json:"dst"`
	SrcEP   int    `json:"src_ep"`
	DstEP   int    `json:"dst_ep"`
	QoS     int    `json:"qos,omitempty"`
	Payload []byte `json:"payload"`
}

// SendResult is published by the gateway on up/gw/send.
type SendResult struct {
	ID      string `json:"id"`
	Result  string `json:"res"`
	Message string `json:"message,omitempty"`
}

// NodeMessage is one message a node sent, received by a sink.
type NodeMessage struct {
	Sink    string `json:"sink"`
	Source  string `json:"src"`
	Dest    string `json:"dst,omitempty"`
	SrcEP   int    `json:"src_ep"`
	DstEP   int    `json:"dst_ep"`
	T       int64  `json:"t,omitempty"`
	Payload []byte `json:"payload"`
}

// NodeData is published by the gateway on up/gw/data.
type NodeData struct {
	Messages []NodeMessage `json:"d"`
}

// GatewayErrorReply is the error reply (down/error) for a gateway
// message: an ErrorReply with the child it concerns, when it concerns
// one.
type GatewayErrorReply struct {
	Kind     string `json:"kind"`
	ID       string `json:"id,omitempty"`
	Child    string `json:"c,omitempty"`
	Code     string `json:"code"`
	Message  string `json:"message"`
	Rejected int    `json:"rejected,omitempty"`
}

// ValidChildAddress checks a child's address: 1 to MaxChildAddressLen
// characters from [A-Za-z0-9_.:-].
func ValidChildAddress(a string) error {
	return validName("child address", a, MaxChildAddressLen, true)
}

// ValidSinkName checks a sink name: 1 to 64 characters from
// [A-Za-z0-9_.:-].
func ValidSinkName(s string) error { return validName("sink name", s, MaxFeedLen, true) }

// ValidResultCode checks a result code: 1 to 64 characters from
// [A-Za-z0-9_.:-].
func ValidResultCode(s string) error { return validName("result code", s, 64, true) }

// ValidSinkConfig checks a sink configuration: a JSON object of at most
// MaxSinkConfig bytes.
func ValidSinkConfig(c json.RawMessage) *Error {
	if len(c) > MaxSinkConfig {
		return tooLarge("sink configuration of %d bytes exceeds %d", len(c), MaxSinkConfig)
	}
	if len(c) == 0 || c[0] != '{' {
		return invalid("sink configuration must be a JSON object")
	}
	if err := CheckJSON(c); err != nil {
		return err.(*Error)
	}
	return nil
}

func checkEndpoints(what string, src, dst int) *Error {
	if src < 0 || src > MaxEndpoint || dst < 0 || dst > MaxEndpoint {
		return invalid("%s: endpoints must be 0 to %d", what, MaxEndpoint)
	}
	return nil
}

func checkReqID(what, id string) *Error {
	if id == "" || len(id) > MaxBatchIDLen {
		return invalid("%s: id must be 1 to %d bytes", what, MaxBatchIDLen)
	}
	return nil
}

// DecodeGatewaySinks parses and checks a GatewaySinks: at most MaxSinks
// sinks with valid, distinct names and valid configurations.
func DecodeGatewaySinks(payload []byte) (GatewaySinks, error) {
	var m GatewaySinks
	if err := decodeStrict("sinks", payload, &m); err != nil {
		return GatewaySinks{}, err
	}
	if m.Sinks == nil {
		return GatewaySinks{}, invalid(`sinks: missing "sinks" array`)
	}
	if len(m.Sinks) > MaxSinks {
		return GatewaySinks{}, tooLarge("sinks: %d sinks exceed %d", len(m.Sinks), MaxSinks)
	}
	seen := make(map[string]bool, len(m.Sinks))
	for i := range m.Sinks {
		s := &m.Sinks[i]
		if err := ValidSinkName(s.Name); err != nil {
			return GatewaySinks{}, invalid("sinks: %v", err)
		}
		if seen[s.Name] {
			return GatewaySinks{}, invalid("sinks: sink %s given twice", s.Name)
		}
		seen[s.Name] = true
		if len(s.Config) == 0 || string(s.Config) == "null" {
			s.Config = json.RawMessage("{}")
		}
		if err := ValidSinkConfig(s.Config); err != nil {
			return GatewaySinks{}, &Error{Code: err.Code, Message: "sinks: sink " + s.Name + ": " + err.Message}
		}
	}
	return m, nil
}

// DecodeGatewayChildren parses and checks a GatewayChildren: valid,
// distinct addresses, at most MaxChildrenPerMessage in all.
func DecodeGatewayChildren(payload []byte) (GatewayChildren, error) {
	var m GatewayChildren
	if err := decodeStrict("children", payload, &m); err != nil {
		return GatewayChildren{}, err
	}
	if err := checkMsgID("children", m.ID); err != nil {
		return GatewayChildren{}, err
	}
	if len(m.Join) == 0 && len(m.Leave) == 0 {
		return GatewayChildren{}, invalid(`children: nothing to do (want "join" or "leave")`)
	}
	if len(m.Join)+len(m.Leave) > MaxChildrenPerMessage {
		return GatewayChildren{}, tooLarge("children: %d children exceed %d per message", len(m.Join)+len(m.Leave), MaxChildrenPerMessage)
	}
	seen := make(map[string]bool, len(m.Join)+len(m.Leave))
	for _, j := range m.Join {
		if err := ValidChildAddress(j.Address); err != nil {
			return GatewayChildren{}, invalid("children: %v", err)
		}
		if j.Sink != "" {
			if err := ValidSinkName(j.Sink); err != nil {
				return GatewayChildren{}, invalid("children: child %s: %v", j.Address, err)
			}
		}
		if seen[j.Address] {
			return GatewayChildren{}, invalid("children: child %s given twice", j.Address)
		}
		seen[j.Address] = true
	}
	for _, a := range m.Leave {
		if err := ValidChildAddress(a); err != nil {
			return GatewayChildren{}, invalid("children: %v", err)
		}
		if seen[a] {
			return GatewayChildren{}, invalid("children: child %s given twice", a)
		}
		seen[a] = true
	}
	return m, nil
}

// DecodeGatewayTelemetry parses and checks a GatewayTelemetry. Like
// DecodeTelemetry it checks the batch as a whole (readings array, id, at
// most MaxReadingsPerMessage readings) and, beyond it, the fan-out: at
// most MaxChildrenPerMessage distinct children. Each reading is checked
// apart, with ValidateChildReading, so that one bad reading need not cost
// the rest.
func DecodeGatewayTelemetry(payload []byte) (GatewayTelemetry, error) {
	var m GatewayTelemetry
	if err := decodeStrict("gateway telemetry", payload, &m); err != nil {
		return GatewayTelemetry{}, err
	}
	if m.Readings == nil {
		return GatewayTelemetry{}, invalid(`gateway telemetry: missing "r" array`)
	}
	if len(m.Readings) > MaxReadingsPerMessage {
		return GatewayTelemetry{}, tooLarge("gateway telemetry: %d readings exceed %d per message", len(m.Readings), MaxReadingsPerMessage)
	}
	if len(m.ID) > MaxBatchIDLen {
		return GatewayTelemetry{}, invalid("gateway telemetry: batch id longer than %d bytes", MaxBatchIDLen)
	}
	children := map[string]struct{}{}
	for _, r := range m.Readings {
		children[r.Child] = struct{}{}
		if len(children) > MaxChildrenPerMessage {
			return GatewayTelemetry{}, tooLarge("gateway telemetry: readings of more than %d children in one message", MaxChildrenPerMessage)
		}
	}
	return m, nil
}

// ValidateChildReading checks one reading of a GatewayTelemetry: the
// child's address, then the reading as ValidateReading does.
func ValidateChildReading(r ChildReading) *Error {
	if err := ValidChildAddress(r.Child); err != nil {
		return invalid("%v", err)
	}
	return ValidateReading(r.Reading())
}

// DecodeChildMessage parses and checks a ChildMessage: a valid address,
// one of ChildKinds, and a JSON object as msg (checked by the decoder of
// its kind when it is handled).
func DecodeChildMessage(payload []byte) (ChildMessage, error) {
	var m ChildMessage
	if err := decodeStrict("child message", payload, &m); err != nil {
		return ChildMessage{}, err
	}
	if err := ValidChildAddress(m.Child); err != nil {
		return ChildMessage{}, invalid("child message: %v", err)
	}
	ok := false
	for _, k := range ChildKinds {
		ok = ok || m.Kind == k
	}
	if !ok {
		return ChildMessage{}, invalid("child message: kind must be one of %s, not %.32q", strings.Join(ChildKinds, ", "), m.Kind)
	}
	if len(m.Msg) == 0 || m.Msg[0] != '{' {
		return ChildMessage{}, invalid("child message: msg must be a JSON object")
	}
	return m, nil
}

// DecodeChildDownMessage parses a message for a child, published by the
// platform on down/gw/child.
func DecodeChildDownMessage(payload []byte) (ChildDownMessage, error) {
	var m ChildDownMessage
	if err := decodeStrict("child down message", payload, &m); err != nil {
		return ChildDownMessage{}, err
	}
	if err := ValidChildAddress(m.Child); err != nil {
		return ChildDownMessage{}, invalid("child down message: %v", err)
	}
	if m.Kind == "" || strings.ContainsAny(m.Kind, "+#") || strings.HasPrefix(m.Kind, "/") || strings.HasSuffix(m.Kind, "/") || strings.Contains(m.Kind, "//") || len(m.Kind) > 256 {
		return ChildDownMessage{}, invalid("child down message: bad kind %.64q", m.Kind)
	}
	if len(m.Msg) == 0 {
		return ChildDownMessage{}, invalid(`child down message: missing "msg"`)
	}
	return m, nil
}

// DecodeChildAck parses and checks a ChildAck: a valid address and 1 to
// MaxAckIDs ids of 1 to 64 bytes.
func DecodeChildAck(payload []byte) (ChildAck, error) {
	var m ChildAck
	if err := decodeStrict("child ack", payload, &m); err != nil {
		return ChildAck{}, err
	}
	if err := ValidChildAddress(m.Child); err != nil {
		return ChildAck{}, invalid("child ack: %v", err)
	}
	if len(m.IDs) == 0 {
		return ChildAck{}, invalid(`child ack: missing or empty "ids"`)
	}
	if len(m.IDs) > MaxAckIDs {
		return ChildAck{}, tooLarge("child ack: %d ids exceed %d", len(m.IDs), MaxAckIDs)
	}
	for _, id := range m.IDs {
		if id == "" || len(id) > MaxBatchIDLen {
			return ChildAck{}, invalid("child ack: ids must be 1 to %d bytes", MaxBatchIDLen)
		}
	}
	return m, nil
}

// DecodeChildRPCRequest parses an RPC request for a child, published by
// the platform on down/gw/rpc.
func DecodeChildRPCRequest(payload []byte) (ChildRPCRequest, error) {
	var r ChildRPCRequest
	if err := decodeStrict("child rpc request", payload, &r); err != nil {
		return ChildRPCRequest{}, err
	}
	if err := ValidChildAddress(r.Child); err != nil {
		return ChildRPCRequest{}, invalid("child rpc request: %v", err)
	}
	if err := checkReqID("child rpc request", r.ID); err != nil {
		return ChildRPCRequest{}, err
	}
	if err := ValidMethod(r.Method); err != nil {
		return ChildRPCRequest{}, invalid("child rpc request: %v", err)
	}
	return r, nil
}

// DecodeChildRPCResponse parses a child's RPC answer, published by the
// gateway on up/gw/rpc. Like DecodeRPCResponse, an error without a code
// gets CodeHandlerError and a response without result and error means
// "result": null.
func DecodeChildRPCResponse(payload []byte) (ChildRPCResponse, error) {
	var r ChildRPCResponse
	if err := decodeStrict("child rpc response", payload, &r); err != nil {
		return ChildRPCResponse{}, err
	}
	if err := ValidChildAddress(r.Child); err != nil {
		return ChildRPCResponse{}, invalid("child rpc response: %v", err)
	}
	if err := checkReqID("child rpc response", r.ID); err != nil {
		return ChildRPCResponse{}, err
	}
	if r.Error != nil && r.Error.Code == "" {
		r.Error.Code = CodeHandlerError
	}
	if r.Error == nil && len(r.Result) == 0 {
		r.Result = json.RawMessage("null")
	}
	return r, nil
}

// DecodeSinkConfigRequest parses a sink configuration request published
// by the platform on down/gw/config.
func DecodeSinkConfigRequest(payload []byte) (SinkConfigRequest, error) {
	var r SinkConfigRequest
	if err := decodeStrict("sink config request", payload, &r); err != nil {
		return SinkConfigRequest{}, err
	}
	if err := checkReqID("sink config request", r.ID); err != nil {
		return SinkConfigRequest{}, err
	}
	if err := ValidSinkName(r.Sink); err != nil {
		return SinkConfigRequest{}, invalid("sink config request: %v", err)
	}
	if err := ValidSinkConfig(r.Config); err != nil {
		return SinkConfigRequest{}, &Error{Code: err.Code, Message: "sink config request: " + err.Message}
	}
	return r, nil
}

// DecodeSinkConfigResult parses the result of a sink configuration
// request, published by the gateway on up/gw/config.
func DecodeSinkConfigResult(payload []byte) (SinkConfigResult, error) {
	var r SinkConfigResult
	if err := decodeStrict("sink config result", payload, &r); err != nil {
		return SinkConfigResult{}, err
	}
	if err := checkReqID("sink config result", r.ID); err != nil {
		return SinkConfigResult{}, err
	}
	if r.Sink != "" {
		if err := ValidSinkName(r.Sink); err != nil {
			return SinkConfigResult{}, invalid("sink config result: %v", err)
		}
	}
	if err := ValidResultCode(r.Result); err != nil {
		return SinkConfigResult{}, invalid("sink config result: %v", err)
	}
	if err := checkText("sink config result: message", r.Message, MaxTextLen); err != nil {
		return SinkConfigResult{}, err
	}
	if len(r.Config) > 0 && string(r.Config) != "null" {
		if err := ValidSinkConfig(r.Config); err != nil {
			return SinkConfigResult{}, &Error{Code: err.Code, Message: "sink config result: " + err.Message}
		}
	} else {
		r.Config = nil
	}
	return r, nil
}

// DecodeSendRequest parses a send request published by the platform on
// down/gw/send.
func DecodeSendRequest(payload []byte) (SendRequest, error) {
	var r SendRequest
	if err := decodeStrict("send request", payload, &r); err != nil {
		return SendRequest{}, err
	}
	if err := checkReqID("send request", r.ID); err != nil {
		return SendRequest{}, err
	}
	if err := ValidSinkName(r.Sink); err != nil {
		return SendRequest{}, invalid("send request: %v", err)
	}
	if r.Dest != BroadcastAddress {
		if err := ValidChildAddress(r.Dest); err != nil {
			return SendRequest{}, invalid("send request: destination: %v", err)
		}
	}
	if err := checkEndpoints("send request", r.SrcEP, r.DstEP); err != nil {
		return SendRequest{}, err
	}
	if r.QoS < 0 || r.QoS > 1 {
		return SendRequest{}, invalid("send request: qos must be 0 or 1")
	}
	if len(r.Payload) > MaxNodePayload {
		return SendRequest{}, tooLarge("send request: payload of %d bytes exceeds %d", len(r.Payload), MaxNodePayload)
	}
	return r, nil
}

// DecodeSendResult parses the result of a send request, published by the
// gateway on up/gw/send.
func DecodeSendResult(payload []byte) (SendResult, error) {
	var r SendResult
	if err := decodeStrict("send result", payload, &r); err != nil {
		return SendResult{}, err
	}
	if err := checkReqID("send result", r.ID); err != nil {
		return SendResult{}, err
	}
	if err := ValidResultCode(r.Result); err != nil {
		return SendResult{}, invalid("send result: %v", err)
	}
	if err := checkText("send result: message", r.Message, MaxTextLen); err != nil {
		return SendResult{}, err
	}
	return r, nil
}

// DecodeNodeData parses and checks a NodeData: 1 to
// MaxNodeDataPerMessage messages, each with a valid sink, source,
// destination (if any), endpoints, time and payload.
func DecodeNodeData(payload []byte) (NodeData, error) {
	var m NodeData
	if err := decodeStrict("node data", payload, &m); err != nil {
		return NodeData{}, err
	}
	if len(m.Messages) == 0 {
		return NodeData{}, invalid(`node data: missing or empty "d" array`)
	}
	if len(m.Messages) > MaxNodeDataPerMessage {
		return NodeData{}, tooLarge("node data: %d messages exceed %d", len(m.Messages), MaxNodeDataPerMessage)
	}
	for _, d := range m.Messages {
		if err := ValidSinkName(d.Sink); err != nil {
			return NodeData{}, invalid("node data: %v", err)
		}
		if err := ValidChildAddress(d.Source); err != nil {
			return NodeData{}, invalid("node data: source: %v", err)
		}
		if d.Dest != "" && d.Dest != BroadcastAddress {
			if err := ValidChildAddress(d.Dest); err != nil {
				return NodeData{}, invalid("node data: destination: %v", err)
			}
		}
		if err := checkEndpoints("node data", d.SrcEP, d.DstEP); err != nil {
			return NodeData{}, err
		}
		if d.T < 0 || d.T > MaxTimestamp {
			return NodeData{}, invalid("node data: t %d out of range", d.T)
		}
		if len(d.Payload) > MaxNodePayload {
			return NodeData{}, tooLarge("node data: payload of %d bytes exceeds %d", len(d.Payload), MaxNodePayload)
		}
	}
	return m, nil
}

// DecodeGatewayErrorReply parses an error reply to a gateway message.
func DecodeGatewayErrorReply(payload []byte) (GatewayErrorReply, error) {
	var e GatewayErrorReply
	if err := decodeStrict("error reply", payload, &e); err != nil {
		return GatewayErrorReply{}, err
	}
	return e, nil
}
