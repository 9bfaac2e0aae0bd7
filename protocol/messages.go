package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
)

// Size limits the platform enforces on what devices send. A device that
// exceeds one gets an ErrorReply with code CodeTooLarge or CodeInvalid.
const (
	// MaxMessageBytes is the largest payload the platform accepts on any
	// device topic.
	MaxMessageBytes = 256 << 10
	// MaxReadingsPerMessage bounds the readings in one Telemetry batch.
	MaxReadingsPerMessage = 10_000
	// MaxStringValue bounds a string reading value, in bytes of its JSON
	// encoding.
	MaxStringValue = 4096
	// MaxBatchIDLen bounds a batch identifier.
	MaxBatchIDLen = 64
	// MaxTimestamp is the largest accepted reading timestamp
	// (2100-01-01T00:00:00Z in milliseconds).
	MaxTimestamp = 4_102_444_800_000
)

// Error codes carried in ErrorReply and RPCResponse errors. They are part of
// the protocol: devices and applications branch on them.
const (
	// CodeInvalid: the message could not be parsed or broke a rule.
	CodeInvalid = "invalid"
	// CodeTooLarge: the message exceeds a size or count limit.
	CodeTooLarge = "too_large"
	// CodeUnknownKind: nothing handles this topic kind.
	CodeUnknownKind = "unknown_kind"
	// CodeUnknownMethod: the device has no handler for the RPC method.
	CodeUnknownMethod = "unknown_method"
	// CodeHandlerError: the device's RPC handler returned an error; the
	// message holds its text.
	CodeHandlerError = "handler_error"
	// CodeNotSupported: the device does not support the operation (for
	// example the built-in reset with no reset function).
	CodeNotSupported = "not_supported"
	// CodeInternal: the platform failed to process a valid message; the
	// device should retry later.
	CodeInternal = "internal"
	// CodeOverloaded: the platform's queues are full; the message was not
	// acknowledged and the device must resend it later (MQTT 3.1.1; MQTT 5
	// devices get PUBACK reason code 0x97 instead).
	CodeOverloaded = "overloaded"
)

// Reading is one value of one feed at one moment.
//
// On the wire: {"f":"temperature","v":21.5,"t":1700000000000}. The value is
// a JSON number, boolean or string. The timestamp is milliseconds since the
// Unix epoch; when it is absent or 0 the platform stamps the reading on
// receipt.
type Reading struct {
	Feed  string          `json:"f"`
	Value json.RawMessage `json:"v"`
	TS    int64           `json:"t,omitempty"`
}

// Telemetry is a batch of readings published on up/telemetry.
//
// ID names the batch; a device must not reuse one for different content.
// The platform stores a batch with a given ID once, however often it is
// redelivered. A batch without an ID is stored every time it arrives.
type Telemetry struct {
	ID       string    `json:"id,omitempty"`
	Readings []Reading `json:"r"`
}

// RPCRequest is published by the platform on down/rpc.
type RPCRequest struct {
	ID     string          `json:"id"`
	Method string          `json:"method"`
	Args   json.RawMessage `json:"args,omitempty"`
	// Deadline is when the caller stops waiting, in Unix milliseconds. A
	// device may skip a request whose deadline has passed. 0 means none.
	Deadline int64 `json:"deadline,omitempty"`
}

// RPCResponse is published by the device on up/rpc. Exactly one of Result
// and Error is set; a handler that returns nothing yields "result":null.
type RPCResponse struct {
	ID     string          `json:"id"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a coded error in a protocol message.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error returns "code: message".
func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrorReply is published by the platform on down/error when it rejects
// (part of) a message a device sent. Topic is the kind it was sent on and ID
// the batch or request id it carried, when there was one. Rejected counts the
// readings dropped from a telemetry batch; the rest of the batch was stored.
type ErrorReply struct {
	Kind     string `json:"kind"`
	ID       string `json:"id,omitempty"`
	Code     string `json:"code"`
	Message  string `json:"message"`
	Rejected int    `json:"rejected,omitempty"`
}

// telemetrySchema is what the strict check expects of a Telemetry.
var telemetrySchema = schemaOf(reflect.TypeOf(&Telemetry{}))

// DecodeTelemetry parses and checks a telemetry payload. It fails on
// malformed JSON, a missing readings array, an oversized batch or a bad
// batch id. Individual readings are checked by ValidateReading so that one
// bad reading need not cost the rest of the batch. It accepts what
// json.Unmarshal accepts, with the same result, but each reading's Value
// is a sub-slice of payload: the caller must not modify payload while it
// uses them. It is as strict as every decoder of device input: valid
// UTF-8, no duplicate keys, field names exactly as documented, numbers of
// at most MaxNumberLen bytes.
func DecodeTelemetry(payload []byte) (Telemetry, error) {
	var t Telemetry
	if len(payload) > MaxMessageBytes {
		return t, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("payload of %d bytes exceeds %d", len(payload), MaxMessageBytes)}
	}
	// The strict check (UTF-8, duplicate keys, exact field names, number
	// lengths) runs first; the one-pass decoder then accepts what
	// json.Unmarshal would.
	if err := checkJSON(payload, telemetrySchema); err != nil {
		pe := err.(*Error)
		return Telemetry{}, &Error{Code: pe.Code, Message: "telemetry: " + pe.Message}
	}
	t, err := decodeTelemetry(payload)
	if err != nil {
		return Telemetry{}, err
	}
	if t.Readings == nil {
		return Telemetry{}, &Error{Code: CodeInvalid, Message: `telemetry: missing "r" array`}
	}
	if len(t.Readings) > MaxReadingsPerMessage {
		return Telemetry{}, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("telemetry: %d readings exceed %d per message", len(t.Readings), MaxReadingsPerMessage)}
	}
	if len(t.ID) > MaxBatchIDLen {
		return Telemetry{}, &Error{Code: CodeInvalid, Message: fmt.Sprintf("telemetry: batch id longer than %d bytes", MaxBatchIDLen)}
	}
	return t, nil
}

// ValidateReading checks one reading: feed reference, value type and size,
// timestamp range. It returns nil or an *Error with CodeInvalid or
// CodeTooLarge.
//
// Like the other Validate functions it returns *Error rather than error,
// so that callers read the code without a type assertion that could fail.
// Test the result against nil before storing it in a variable of type
// error: a nil *Error in an error variable is not a nil error.
func ValidateReading(r Reading) *Error {
	if err := ValidFeed(r.Feed); err != nil {
		return &Error{Code: CodeInvalid, Message: err.Error()}
	}
	if r.TS < 0 || r.TS > MaxTimestamp {
		return &Error{Code: CodeInvalid, Message: fmt.Sprintf("feed %s: timestamp %d out of range (milliseconds since 1970, before 2100)", r.Feed, r.TS)}
	}
	if _, err := ValueKind(r.Value); err != nil {
		code, msg := CodeInvalid, err.Error()
		var pe *Error
		if errors.As(err, &pe) { // keep the code out of the message
			code, msg = pe.Code, pe.Message
		}
		return &Error{Code: code, Message: "feed " + r.Feed + ": " + msg}
	}
	return nil
}

// Value kinds reported by ValueKind.
const (
	ValueNumber = "number"
	ValueBool   = "bool"
	ValueString = "string"
)

// ValueKind returns the kind of an encoded reading value, or an error when
// the value is not a finite number, a boolean, a string of at most
// MaxStringValue bytes or a location object (see ValueLocation).
func ValueKind(v json.RawMessage) (string, error) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return "", errors.New("value is missing")
	}
	switch c := v[0]; {
	case c == 't' || c == 'f':
		if string(v) == "true" || string(v) == "false" {
			return ValueBool, nil
		}
	case c == '"':
		if len(v) > MaxStringValue {
			return "", &Error{Code: CodeTooLarge, Message: fmt.Sprintf("string value of %d bytes exceeds %d", len(v), MaxStringValue)}
		}
		// Valid UTF-8, no lone surrogate escapes: stored as sent, the value
		// must come back out of the API as valid JSON.
		if err := checkJSON(v, nil); err != nil {
			return "", errors.New("string value: " + err.(*Error).Message)
		}
		return ValueString, nil
	case c == '-' || (c >= '0' && c <= '9'):
		if err := checkJSON(v, nil); err != nil {
			var pe *Error
			if errors.As(err, &pe) && pe.Code == CodeTooLarge {
				return "", &Error{Code: CodeTooLarge, Message: fmt.Sprintf("number of %d bytes exceeds %d", len(v), MaxNumberLen)}
			}
			break
		}
		f, err := strconv.ParseFloat(string(v), 64)
		if err == nil && !math.IsInf(f, 0) {
			return ValueNumber, nil
		}
	case c == 'n':
		return "", errors.New("value is null")
	case c == '{':
		if len(v) > MaxStringValue {
			return "", &Error{Code: CodeTooLarge, Message: fmt.Sprintf("location value of %d bytes exceeds %d", len(v), MaxStringValue)}
		}
		if err := checkJSON(v, nil); err != nil {
			return "", errors.New("location: " + err.(*Error).Message)
		}
		if _, err := parseLocation(v); err != nil {
			return "", err
		}
		return ValueLocation, nil
	}
	return "", errors.New("value must be a number, a boolean, a string or a location object")
}

// EncodeValue encodes a Go value as a reading value. It accepts the Go
// numeric types, bool, string, Location and json.RawMessage holding one of
// those.
func EncodeValue(v any) (json.RawMessage, error) {
	var raw json.RawMessage
	switch x := v.(type) {
	case json.RawMessage:
		raw = x
	case Location:
		raw, _ = json.Marshal(x)
	case *Location:
		if x == nil {
			return nil, errors.New("nil location")
		}
		raw, _ = json.Marshal(x)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("value %v is not a finite number", x)
		}
		raw = strconv.AppendFloat(nil, x, 'g', -1, 64)
	case float32:
		// Format with float32 precision: float32(21.7) is sent as 21.7,
		// not as its float64 expansion 21.700000762939453.
		f := float64(x)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("value %v is not a finite number", x)
		}
		raw = strconv.AppendFloat(nil, f, 'g', -1, 32)
	case int:
		raw = strconv.AppendInt(nil, int64(x), 10)
	case int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, bool, string:
		b, err := json.Marshal(x)
		if err != nil {
			return nil, err
		}
		raw = b
	default:
		return nil, fmt.Errorf("unsupported value type %T (want a number, bool or string)", v)
	}
	if _, err := ValueKind(raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// DecodeRPCRequest parses an RPC request published to a device.
func DecodeRPCRequest(payload []byte) (RPCRequest, error) {
	var r RPCRequest
	if len(payload) > MaxMessageBytes {
		return r, &Error{Code: CodeTooLarge, Message: "rpc request too large"}
	}
	if err := decodeJSON("rpc request", payload, &r); err != nil {
		return RPCRequest{}, err
	}
	if r.ID == "" || len(r.ID) > MaxBatchIDLen {
		return RPCRequest{}, &Error{Code: CodeInvalid, Message: "rpc request: id must be 1 to 64 bytes"}
	}
	if err := ValidMethod(r.Method); err != nil {
		return RPCRequest{}, &Error{Code: CodeInvalid, Message: "rpc request: " + err.Error()}
	}
	return r, nil
}

// DecodeRPCResponse parses an RPC response published by a device.
func DecodeRPCResponse(payload []byte) (RPCResponse, error) {
	var r RPCResponse
	if len(payload) > MaxMessageBytes {
		return r, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("rpc response of %d bytes exceeds %d", len(payload), MaxMessageBytes)}
	}
	if err := decodeJSON("rpc response", payload, &r); err != nil {
		return RPCResponse{}, err
	}
	if r.ID == "" || len(r.ID) > MaxBatchIDLen {
		return RPCResponse{}, &Error{Code: CodeInvalid, Message: "rpc response: id must be 1 to 64 bytes"}
	}
	if r.Error != nil && r.Error.Code == "" {
		r.Error.Code = CodeHandlerError
	}
	if r.Error == nil && len(r.Result) == 0 {
		r.Result = json.RawMessage("null")
	}
	return r, nil
}

// DecodeErrorReply parses an error reply published to a device.
func DecodeErrorReply(payload []byte) (ErrorReply, error) {
	var e ErrorReply
	if err := decodeJSON("error reply", payload, &e); err != nil {
		return ErrorReply{}, err
	}
	return e, nil
}
