package outpost

import (
	"errors"
	"fmt"
)

// Error codes. The HTTP API maps each to a status and a snake_case code in
// its JSON error body; the CLI and fleet SDK map them back.
const (
	ECONFLICT      = "conflict"
	EINTERNAL      = "internal"
	EINVALID       = "invalid"
	ENOTFOUND      = "not_found"
	EUNAUTHORIZED  = "unauthorized"
	EOFFLINE       = "device_offline"
	ETIMEOUT       = "timeout"
	EUNKNOWNMETHOD = "unknown_method"
	EREMOTE        = "handler_error"
	ENOTSUPPORTED  = "not_supported"
	EUNAVAILABLE   = "unavailable"
)

// Error is a domain error with a code the edges branch on and a message
// safe to show to the caller.
type Error struct {
	Code    string
	Message string
}

// Error returns the message (the code is for mapping at the edge).
func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the message of the first *Error in err's chain, or a
// generic text for other errors so internal details do not leak.
func ErrorMessage(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// ErrOverloaded is what the home of a device message returns (wrapped)
// when it cannot take the message now (its queue is full, the device is
// over its rate): the message is not acknowledged and the device retries
// later. The broker maps it to MQTT 5 PUBACK 0x97 "quota exceeded" and,
// for MQTT 3.1.1 devices, to an "overloaded" error reply and a closed
// connection, so they resend on reconnect.
var ErrOverloaded = errors.New("overloaded")
