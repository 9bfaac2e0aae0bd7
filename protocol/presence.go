package protocol

import "fmt"

// KindPresence is the up/ kind of a device's presence announcements
// (docs/protocol.md, "Presence announcements"). A device sends
// {"online":true,...} once connected and subscribed, and registers
// {"online":false,...} as its will message, so that a platform behind an
// external broker, which sees no connections, learns when the device
// comes and goes. The embedded broker sees the connections itself and
// only acknowledges these messages.
const KindPresence = "presence"

// MaxSessionLen bounds a presence announcement's session tag.
const MaxSessionLen = 64

// Presence is a presence announcement.
type Presence struct {
	// Online is true when the device connected, false when it left (its
	// will message, or a last message before it disconnects).
	Online bool `json:"online"`
	// Session names the connection: a random tag the device picks for
	// each connection, the same in the announcement and the will, so a
	// late will of a replaced connection is recognised.
	Session string `json:"session"`
	// Mode is the device's delivery mode on this connection: ModePull for
	// PULL, empty (or "push") for PUSH.
	Mode string `json:"mode,omitempty"`
}

// DecodePresence decodes and checks a presence announcement.
func DecodePresence(payload []byte) (Presence, error) {
	var p Presence
	if len(payload) > MaxMessageBytes {
		return p, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("presence of %d bytes exceeds %d", len(payload), MaxMessageBytes)}
	}
	if err := decodeJSON("presence", payload, &p); err != nil {
		return Presence{}, err
	}
	if p.Session == "" || len(p.Session) > MaxSessionLen {
		return Presence{}, &Error{Code: CodeInvalid, Message: fmt.Sprintf("presence: session must be 1 to %d bytes", MaxSessionLen)}
	}
	switch p.Mode {
	case "", "push", ModePull:
	default:
		return Presence{}, &Error{Code: CodeInvalid, Message: fmt.Sprintf("presence: mode %.32q is neither push nor pull", p.Mode)}
	}
	return p, nil
}
