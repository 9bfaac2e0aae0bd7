// Package protocol defines the Outpost wire protocol: the MQTT topic scheme
// and the JSON messages exchanged between devices and the platform.
//
// Every side of Outpost — the device SDK, the platform and any third-party
// device written from docs/protocol.md — builds and parses messages through
// the functions in this package, so the document and the code cannot drift
// apart silently. The decoders here take outside input and are fuzzed.
//
// Topics have the shape
//
//	outpost/v1/{deviceID}/up/{kind}     device → platform
//	outpost/v1/{deviceID}/down/{kind}   platform → device
//
// A device may publish only under its own up/ subtree and subscribe only
// under its own namespace.
package protocol

import (
	"errors"
	"strings"
)

// Version is the protocol version carried in every topic ("v1").
const Version = 1

// Root is the first two levels of every Outpost topic.
const Root = "outpost/v1"

// Directions, the fourth topic level.
const (
	Up   = "up"   // device → platform
	Down = "down" // platform → device
)

// Message kinds, the fifth topic level.
const (
	// KindTelemetry carries a Telemetry batch (up).
	KindTelemetry = "telemetry"
	// KindRPC carries an RPCRequest (down) or an RPCResponse (up).
	KindRPC = "rpc"
	// KindError carries an ErrorReply (down): the platform rejected
	// something the device sent.
	KindError = "error"
)

// Limits on identifiers. They keep topics short and make every name safe to
// use in a topic level, a file name or a log line.
const (
	MaxDeviceIDLen = 64
	MaxFeedLen     = 64
	MaxMethodLen   = 64
)

// Topic returns the topic for a device, a direction (Up or Down) and a kind.
func Topic(deviceID, dir, kind string) string {
	return Root + "/" + deviceID + "/" + dir + "/" + kind
}

// UpTopic returns the topic a device publishes messages of kind on.
func UpTopic(deviceID, kind string) string { return Topic(deviceID, Up, kind) }

// DownTopic returns the topic the platform publishes messages of kind on for
// a device.
func DownTopic(deviceID, kind string) string { return Topic(deviceID, Down, kind) }

// DeviceFilter returns the subscription filter that covers everything the
// platform sends to a device.
func DeviceFilter(deviceID string) string { return Root + "/" + deviceID + "/" + Down + "/#" }

// ErrBadTopic is returned by ParseTopic for a topic outside the Outpost scheme.
var ErrBadTopic = errors.New("not an outpost topic")

// ParsedTopic is a topic split into its parts. Kind may contain further
// levels (for example "raw/sensors/a").
type ParsedTopic struct {
	DeviceID string
	Dir      string
	Kind     string
}

// ParseTopic splits an Outpost topic. It returns ErrBadTopic for anything
// else, including wildcards and empty levels.
func ParseTopic(topic string) (ParsedTopic, error) {
	rest, ok := strings.CutPrefix(topic, Root+"/")
	if !ok {
		return ParsedTopic{}, ErrBadTopic
	}
	id, rest, ok := strings.Cut(rest, "/")
	if !ok || ValidID(id) != nil {
		return ParsedTopic{}, ErrBadTopic
	}
	dir, kind, ok := strings.Cut(rest, "/")
	if !ok || (dir != Up && dir != Down) || kind == "" || strings.ContainsAny(kind, "+#") ||
		strings.HasPrefix(kind, "/") || strings.HasSuffix(kind, "/") || strings.Contains(kind, "//") {
		return ParsedTopic{}, ErrBadTopic
	}
	return ParsedTopic{DeviceID: id, Dir: dir, Kind: kind}, nil
}

// FilterAllowed reports whether a device may subscribe to filter: only
// filters whose first three levels are literally outpost/v1/{deviceID}.
// Anything wider (such as "#", "outpost/#" or "outpost/v1/+/down/#") would
// let it see other devices' traffic. An invalid deviceID (empty, or holding
// "/", "+" or "#") allows nothing: it could otherwise stand for a wildcard
// or for several levels.
func FilterAllowed(deviceID, filter string) bool {
	if ValidID(deviceID) != nil {
		return false
	}
	rest, ok := strings.CutPrefix(filter, Root+"/"+deviceID)
	if !ok {
		return false
	}
	return rest == "" || strings.HasPrefix(rest, "/")
}

// ValidID checks a device identifier: 1 to MaxDeviceIDLen characters from
// [A-Za-z0-9_-]. The same rule serves method and feed names with their own
// limits.
func ValidID(id string) error {
	return validName("device id", id, MaxDeviceIDLen, false)
}

// ValidFeed checks a feed reference: 1 to MaxFeedLen characters from
// [A-Za-z0-9_.:-].
func ValidFeed(ref string) error {
	return validName("feed reference", ref, MaxFeedLen, true)
}

// ValidMethod checks an RPC method name with the same alphabet as feeds.
func ValidMethod(name string) error {
	return validName("method name", name, MaxMethodLen, true)
}

func validName(what, s string, max int, dots bool) error {
	if s == "" {
		return errors.New(what + " is empty")
	}
	if len(s) > max {
		return errors.New(what + " is longer than " + itoa(max) + " bytes")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		case dots && (c == '.' || c == ':'):
		default:
			return errors.New(what + " contains a character outside [A-Za-z0-9_-" + map[bool]string{true: ".:", false: ""}[dots] + "]")
		}
	}
	return nil
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}
