package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Message kinds of the device model (see docs/protocol.md, sections 12 to
// 19).
const (
	// KindFeeds carries a FeedsMessage (up): register or remove feeds.
	KindFeeds = "feeds"
	// KindAttributes carries an AttributesMessage (up).
	KindAttributes = "attributes"
	// KindParameters carries a ParametersReport (up) or a
	// ParametersUpdate (down).
	KindParameters = "parameters"
	// KindTime carries a TimeRequest (up) or a TimeReply (down).
	KindTime = "time"
	// KindEvent carries an Event (up).
	KindEvent = "event"
	// KindNotification carries a Notification (up).
	KindNotification = "notification"
	// KindRaw is the first level of raw publishes: up/raw/{subtopic…}
	// carries any payload, delivered to applications as is.
	KindRaw = "raw"
	// KindFeed carries a FeedCommand (down): an application set the value
	// of an IN_OUT feed.
	KindFeed = "feed"
)

// Feed types.
const (
	// FeedIn is a feed the device reports and nobody else sets.
	FeedIn = "IN"
	// FeedInOut is a feed the device reports and applications may set
	// with a feed command.
	FeedInOut = "IN_OUT"
)

// Data types of feeds and attributes beyond ValueNumber, ValueBool and
// ValueString.
const (
	// ValueLocation is a JSON object {"lat":…,"lon":…[,"alt":…]}: latitude
	// in [-90,90], longitude in [-180,180], altitude in metres.
	ValueLocation = "location"
	// ValueHex is a JSON string of one or more hexadecimal digits.
	ValueHex = "hex"
)

// Error codes of the device model.
const (
	// CodeUnknownFeed: a reading for a feed the device has removed, or,
	// once the device registered feeds, for one it never registered; or a
	// feed command for a feed that is not a registered IN_OUT feed.
	CodeUnknownFeed = "unknown_feed"
	// CodeWrongType: a value does not match the data type of its feed,
	// attribute or parameter.
	CodeWrongType = "wrong_type"
)

// Limits of the device model. Exceeding one gets CodeTooLarge.
const (
	MaxFeedsPerDevice      = 1000
	MaxAttributesPerDevice = 256
	MaxParametersPerDevice = 256
	// MaxDisplayNameLen bounds a feed's display name.
	MaxDisplayNameLen = 128
	// MaxUnitLen bounds a unit (standard or custom).
	MaxUnitLen = 32
	// MaxAttributeNameLen bounds attribute names, MaxParameterKeyLen
	// parameter keys and MaxEventNameLen event names (all from the feed
	// alphabet [A-Za-z0-9_.:-]).
	MaxAttributeNameLen = 64
	MaxParameterKeyLen  = 64
	MaxEventNameLen     = 64
	// MaxParameterValue bounds one parameter value, in bytes of JSON.
	MaxParameterValue = 4096
	// MaxEventData bounds an event's data, in bytes of JSON.
	MaxEventData = 64 << 10
	// MaxTitleLen and MaxTextLen bound a notification.
	MaxTitleLen = 128
	MaxTextLen  = 4096
	// MaxRawTopicLen bounds the subtopic of a raw publish.
	MaxRawTopicLen = 128
)

// StandardUnits are the units the platform knows by name. A feed may also
// use any custom unit string of at most MaxUnitLen printable characters.
var StandardUnits = []string{
	// Temperature, humidity, pressure.
	"CELSIUS", "FAHRENHEIT", "KELVIN", "PERCENT", "RELATIVE_HUMIDITY", "PASCAL", "HECTOPASCAL", "KILOPASCAL", "BAR", "MILLIBAR", "ATMOSPHERE", "MILLIMETRE_OF_MERCURY",
	// Length, area, volume, mass.
	"METRE", "MILLIMETRE", "CENTIMETRE", "KILOMETRE", "INCH", "FOOT", "MILE", "SQUARE_METRE", "CUBIC_METRE", "LITRE", "MILLILITRE", "GRAM", "KILOGRAM", "TONNE", "POUND",
	// Time, speed, acceleration, angle, frequency.
	"SECOND", "MILLISECOND", "MINUTE", "HOUR", "DAY", "METRES_PER_SECOND", "KILOMETRES_PER_HOUR", "MILES_PER_HOUR", "KNOT", "METRES_PER_SQUARE_SECOND", "G", "DEGREE_ANGLE", "RADIAN", "HERTZ", "KILOHERTZ", "REVOLUTIONS_PER_MINUTE",
	// Electricity, energy, power.
	"VOLT", "MILLIVOLT", "AMPERE", "MILLIAMPERE", "OHM", "WATT", "KILOWATT", "WATT_HOUR", "KILOWATT_HOUR", "JOULE", "COULOMB", "FARAD", "VOLT_AMPERE", "VOLT_AMPERE_REACTIVE",
	// Light, sound, radiation, chemistry.
	"LUX", "CANDELA", "LUMEN", "DECIBEL", "DBM", "BECQUEREL", "SIEVERT", "MICROSIEVERT_PER_HOUR", "PARTS_PER_MILLION", "PARTS_PER_BILLION", "MICROGRAMS_PER_CUBIC_METRE", "PH", "MOLE",
	// Flow, data, counts.
	"LITRES_PER_MINUTE", "CUBIC_METRES_PER_HOUR", "BIT", "BYTE", "KILOBYTE", "MEGABYTE", "BITS_PER_SECOND", "COUNT", "BOOLEAN", "TEXT", "NUMERIC",
}

var standardUnits = func() map[string]bool {
	m := make(map[string]bool, len(StandardUnits))
	for _, u := range StandardUnits {
		m[u] = true
	}
	return m
}()

// StandardUnit reports whether u is one of StandardUnits.
func StandardUnit(u string) bool { return standardUnits[u] }

// FeedDef describes a feed a device registers.
//
// On the wire: {"ref":"t","name":"Temperature","type":"IN","data_type":"number","unit":"CELSIUS"}.
// Type defaults to IN; Name defaults to Ref.
type FeedDef struct {
	Ref      string `json:"ref"`
	Name     string `json:"name,omitempty"`
	Type     string `json:"type,omitempty"`
	DataType string `json:"data_type"`
	Unit     string `json:"unit,omitempty"`
}

// FeedsMessage is published by a device on up/feeds to register feeds
// (insert or update by reference) and to remove feeds.
type FeedsMessage struct {
	ID       string    `json:"id,omitempty"`
	Register []FeedDef `json:"register,omitempty"`
	Remove   []string  `json:"remove,omitempty"`
}

// Attribute is a named, typed value describing a device (model, serial
// number, firmware version, …).
type Attribute struct {
	Name     string          `json:"name"`
	DataType string          `json:"data_type"`
	Value    json.RawMessage `json:"value"`
}

// AttributesMessage is published by a device on up/attributes; each
// attribute is inserted or updated by name.
type AttributesMessage struct {
	ID         string      `json:"id,omitempty"`
	Attributes []Attribute `json:"attributes"`
}

// ParametersReport is published by a device on up/parameters: Reported
// holds the device's own current values (stored as "reported"), and Pull
// asks the platform to send the full parameter set on down/parameters.
type ParametersReport struct {
	ID       string                     `json:"id,omitempty"`
	Reported map[string]json.RawMessage `json:"reported,omitempty"`
	Pull     bool                       `json:"pull,omitempty"`
}

// ParametersUpdate is published by the platform on down/parameters. With
// Full set, Values is the whole parameter set; otherwise it holds changes
// only, and a null value means the key was removed. Version grows with
// every change, so a device can drop an update older than one it applied.
// A change goes through the down queue and carries its message id in ID,
// which the device acknowledges (Ack); a full set sent on request has none.
type ParametersUpdate struct {
	ID      string                     `json:"id,omitempty"`
	Version int64                      `json:"version"`
	Full    bool                       `json:"full,omitempty"`
	Values  map[string]json.RawMessage `json:"values"`
}

// TimeRequest is published by a device on up/time. Sent is the device's
// clock when it sent the request, in Unix milliseconds.
type TimeRequest struct {
	ID   string `json:"id"`
	Sent int64  `json:"sent,omitempty"`
}

// TimeReply is published by the platform on down/time: T is the platform
// clock in Unix milliseconds; ID and Sent echo the request.
type TimeReply struct {
	ID   string `json:"id"`
	Sent int64  `json:"sent,omitempty"`
	T    int64  `json:"t"`
}

// Event is published by a device on up/event: a named occurrence with any
// JSON data. T is when it happened (Unix ms; 0: on receipt).
type Event struct {
	// ID, when set (at most 64 bytes), makes redelivery safe: the
	// platform stores an event with a given id once per device.
	ID   string          `json:"id,omitempty"`
	Name string          `json:"name"`
	Data json.RawMessage `json:"data,omitempty"`
	T    int64           `json:"t,omitempty"`
}

// Notification is published by a device on up/notification: a message
// for people, with a title and a text.
type Notification struct {
	// ID: as Event.ID.
	ID    string `json:"id,omitempty"`
	Title string `json:"title"`
	Text  string `json:"text"`
	T     int64  `json:"t,omitempty"`
}

// FeedCommand is published by the platform on down/feed: an application
// set feed F to value V at time T (Unix ms). ID is the command's id and its
// message id in the down queue, which the device acknowledges (Ack).
type FeedCommand struct {
	ID    string          `json:"id"`
	Feed  string          `json:"f"`
	Value json.RawMessage `json:"v"`
	T     int64           `json:"t"`
}

// Location is the Go form of a location value.
type Location struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
	// Alt is the altitude in metres; 0 is omitted on the wire.
	Alt float64 `json:"alt,omitempty"`
}

func tooLarge(format string, args ...any) *Error {
	return &Error{Code: CodeTooLarge, Message: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *Error {
	return &Error{Code: CodeInvalid, Message: fmt.Sprintf(format, args...)}
}

// decodeStrict parses one JSON object of at most MaxMessageBytes into v.
func decodeStrict(what string, payload []byte, v any) error {
	if len(payload) > MaxMessageBytes {
		return tooLarge("%s: payload of %d bytes exceeds %d", what, len(payload), MaxMessageBytes)
	}
	p := bytes.TrimSpace(payload)
	if len(p) == 0 || p[0] != '{' {
		return invalid("%s: payload must be a JSON object", what)
	}
	return decodeJSON(what, p, v)
}

func checkMsgID(what, id string) error {
	if len(id) > MaxBatchIDLen {
		return invalid("%s: id longer than %d bytes", what, MaxBatchIDLen)
	}
	return nil
}

// DecodeFeeds parses a FeedsMessage. Each definition is checked apart by
// ValidateFeedDef, so that one bad feed need not cost the others.
func DecodeFeeds(payload []byte) (FeedsMessage, error) {
	var m FeedsMessage
	if err := decodeStrict("feeds", payload, &m); err != nil {
		return FeedsMessage{}, err
	}
	if err := checkMsgID("feeds", m.ID); err != nil {
		return FeedsMessage{}, err
	}
	if len(m.Register) == 0 && len(m.Remove) == 0 {
		return FeedsMessage{}, invalid(`feeds: nothing to do (want "register" or "remove")`)
	}
	if len(m.Register) > MaxFeedsPerDevice || len(m.Remove) > MaxFeedsPerDevice {
		return FeedsMessage{}, tooLarge("feeds: more than %d feeds in one message", MaxFeedsPerDevice)
	}
	return m, nil
}

// ValidateFeedDef checks a feed definition and fills in defaults (Type IN,
// Name = Ref). It returns nil or an *Error with CodeInvalid or CodeTooLarge
// (see ValidateReading on why not error).
func ValidateFeedDef(d *FeedDef) *Error {
	if err := ValidFeed(d.Ref); err != nil {
		return invalid("%v", err)
	}
	if d.Type == "" {
		d.Type = FeedIn
	}
	if d.Type != FeedIn && d.Type != FeedInOut {
		return invalid("feed %s: type must be IN or IN_OUT, not %.32q", d.Ref, d.Type)
	}
	if !ValidDataType(d.DataType) {
		return invalid("feed %s: data_type must be number, bool, string, location or hex, not %.32q", d.Ref, d.DataType)
	}
	if d.Name == "" {
		d.Name = d.Ref
	}
	if err := checkText("feed "+d.Ref+": name", d.Name, MaxDisplayNameLen); err != nil {
		return err
	}
	if d.Unit != "" {
		if err := checkText("feed "+d.Ref+": unit", d.Unit, MaxUnitLen); err != nil {
			return err
		}
	}
	return nil
}

// ValidDataType reports whether t is a data type of the protocol.
func ValidDataType(t string) bool {
	switch t {
	case ValueNumber, ValueBool, ValueString, ValueLocation, ValueHex:
		return true
	}
	return false
}

// checkText accepts valid UTF-8 of at most max bytes with no control
// characters.
func checkText(what, s string, max int) *Error {
	if len(s) > max {
		return tooLarge("%s is longer than %d bytes", what, max)
	}
	if !utf8.ValidString(s) {
		return invalid("%s is not valid UTF-8", what)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return invalid("%s contains a control character", what)
		}
	}
	return nil
}

// ValidateTyped checks that an encoded value has data type dataType. It
// returns nil, or an *Error with CodeWrongType for a mismatch, or
// CodeInvalid / CodeTooLarge for a value that is bad whatever the type
// (see ValidateReading on why not error).
func ValidateTyped(dataType string, v json.RawMessage) *Error {
	kind, err := ValueKind(v)
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			return pe
		}
		return invalid("%v", err)
	}
	want := dataType
	if dataType == ValueHex {
		want = ValueString
	}
	if kind != want {
		return &Error{Code: CodeWrongType, Message: fmt.Sprintf("value is a %s, want %s", kind, dataType)}
	}
	if dataType == ValueHex {
		var s string
		_ = json.Unmarshal(v, &s)
		if s == "" || strings.Trim(s, "0123456789abcdefABCDEF") != "" {
			return &Error{Code: CodeWrongType, Message: "value is not a string of hexadecimal digits"}
		}
	}
	return nil
}

// parseLocation decodes a location object, rejecting unknown keys and
// coordinates out of range.
func parseLocation(v []byte) (Location, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(v, &raw); err != nil {
		return Location{}, err
	}
	if _, ok := raw["lat"]; !ok {
		return Location{}, errors.New(`location needs "lat" and "lon"`)
	}
	if _, ok := raw["lon"]; !ok {
		return Location{}, errors.New(`location needs "lat" and "lon"`)
	}
	for k := range raw {
		if k != "lat" && k != "lon" && k != "alt" {
			return Location{}, fmt.Errorf("location has unknown key %.32q", k)
		}
	}
	var l Location
	if err := json.Unmarshal(v, &l); err != nil {
		return Location{}, errors.New("location coordinates must be numbers")
	}
	if !(l.Lat >= -90 && l.Lat <= 90) || !(l.Lon >= -180 && l.Lon <= 180) || math.IsInf(l.Alt, 0) || math.IsNaN(l.Alt) {
		return Location{}, errors.New("location out of range (lat -90..90, lon -180..180)")
	}
	return l, nil
}

// DecodeAttributes parses an AttributesMessage. Each attribute is checked
// apart by ValidateAttribute.
func DecodeAttributes(payload []byte) (AttributesMessage, error) {
	var m AttributesMessage
	if err := decodeStrict("attributes", payload, &m); err != nil {
		return AttributesMessage{}, err
	}
	if err := checkMsgID("attributes", m.ID); err != nil {
		return AttributesMessage{}, err
	}
	if len(m.Attributes) == 0 {
		return AttributesMessage{}, invalid(`attributes: missing or empty "attributes" array`)
	}
	if len(m.Attributes) > MaxAttributesPerDevice {
		return AttributesMessage{}, tooLarge("attributes: more than %d in one message", MaxAttributesPerDevice)
	}
	return m, nil
}

// ValidateAttribute checks an attribute's name, data type and value. It
// returns nil or an *Error (see ValidateReading on why not error).
func ValidateAttribute(a Attribute) *Error {
	if err := validName("attribute name", a.Name, MaxAttributeNameLen, true); err != nil {
		return invalid("%v", err)
	}
	if !ValidDataType(a.DataType) {
		return invalid("attribute %s: data_type must be number, bool, string, location or hex, not %.32q", a.Name, a.DataType)
	}
	if err := ValidateTyped(a.DataType, a.Value); err != nil {
		return &Error{Code: err.Code, Message: "attribute " + a.Name + ": " + err.Message}
	}
	return nil
}

// DecodeParametersReport parses a ParametersReport and checks every key
// and value.
func DecodeParametersReport(payload []byte) (ParametersReport, error) {
	var m ParametersReport
	if err := decodeStrict("parameters", payload, &m); err != nil {
		return ParametersReport{}, err
	}
	if err := checkMsgID("parameters", m.ID); err != nil {
		return ParametersReport{}, err
	}
	if m.Reported == nil && !m.Pull {
		return ParametersReport{}, invalid(`parameters: nothing to do (want "reported" or "pull")`)
	}
	if err := ValidateParameters(m.Reported, false); err != nil {
		return ParametersReport{}, err
	}
	return m, nil
}

// ValidateParameters checks a set of parameters: at most
// MaxParametersPerDevice keys from the feed alphabet, each value valid JSON
// of at most MaxParameterValue bytes. With allowNull, null values (meaning
// "remove") are accepted. It returns nil or an *Error with CodeInvalid or
// CodeTooLarge (see ValidateReading on why not error).
func ValidateParameters(m map[string]json.RawMessage, allowNull bool) *Error {
	if len(m) > MaxParametersPerDevice {
		return tooLarge("parameters: %d keys exceed %d", len(m), MaxParametersPerDevice)
	}
	for k, v := range m {
		if err := validName("parameter key", k, MaxParameterKeyLen, true); err != nil {
			return invalid("parameters: %v", err)
		}
		v = bytes.TrimSpace(v)
		if len(v) > MaxParameterValue {
			return tooLarge("parameter %s: value of %d bytes exceeds %d", k, len(v), MaxParameterValue)
		}
		if len(v) == 0 {
			return invalid("parameter %s: value is not JSON", k)
		}
		if err := checkJSON(v, nil); err != nil {
			return &Error{Code: err.(*Error).Code, Message: "parameter " + k + ": " + err.(*Error).Message}
		}
		if !allowNull && string(v) == "null" {
			return invalid("parameter %s: value is null", k)
		}
	}
	return nil
}

// DecodeParametersUpdate parses a ParametersUpdate sent by the platform.
func DecodeParametersUpdate(payload []byte) (ParametersUpdate, error) {
	var m ParametersUpdate
	if err := decodeStrict("parameters update", payload, &m); err != nil {
		return ParametersUpdate{}, err
	}
	if err := ValidateParameters(m.Values, !m.Full); err != nil {
		return ParametersUpdate{}, err
	}
	if m.Values == nil {
		m.Values = map[string]json.RawMessage{}
	}
	return m, nil
}

// DecodeTimeRequest parses a TimeRequest.
func DecodeTimeRequest(payload []byte) (TimeRequest, error) {
	var m TimeRequest
	if err := decodeStrict("time", payload, &m); err != nil {
		return TimeRequest{}, err
	}
	if len(m.ID) > MaxBatchIDLen {
		return TimeRequest{}, invalid("time: id longer than %d bytes", MaxBatchIDLen)
	}
	if m.Sent < 0 || m.Sent > MaxTimestamp {
		return TimeRequest{}, invalid("time: sent %d out of range", m.Sent)
	}
	return m, nil
}

// DecodeTimeReply parses a TimeReply sent by the platform.
func DecodeTimeReply(payload []byte) (TimeReply, error) {
	var m TimeReply
	if err := decodeStrict("time reply", payload, &m); err != nil {
		return TimeReply{}, err
	}
	if m.T <= 0 || m.T > MaxTimestamp {
		return TimeReply{}, invalid("time reply: t %d out of range", m.T)
	}
	return m, nil
}

// DecodeEvent parses and checks an Event.
func DecodeEvent(payload []byte) (Event, error) {
	var m Event
	if err := decodeStrict("event", payload, &m); err != nil {
		return Event{}, err
	}
	if len(m.ID) > MaxBatchIDLen {
		return Event{}, invalid("event: id longer than %d bytes", MaxBatchIDLen)
	}
	if err := validName("event name", m.Name, MaxEventNameLen, true); err != nil {
		return Event{}, invalid("event: %v", err)
	}
	if len(m.Data) > MaxEventData {
		return Event{}, tooLarge("event %s: data of %d bytes exceeds %d", m.Name, len(m.Data), MaxEventData)
	}
	if m.T < 0 || m.T > MaxTimestamp {
		return Event{}, invalid("event %s: t %d out of range", m.Name, m.T)
	}
	return m, nil
}

// DecodeNotification parses and checks a Notification.
func DecodeNotification(payload []byte) (Notification, error) {
	var m Notification
	if err := decodeStrict("notification", payload, &m); err != nil {
		return Notification{}, err
	}
	if m.Title == "" {
		return Notification{}, invalid("notification: title is empty")
	}
	if err := checkText("notification: title", m.Title, MaxTitleLen); err != nil {
		return Notification{}, err
	}
	if len(m.ID) > MaxBatchIDLen {
		return Notification{}, invalid("notification: id longer than %d bytes", MaxBatchIDLen)
	}
	if len(m.Text) > MaxTextLen {
		return Notification{}, tooLarge("notification: text is longer than %d bytes", MaxTextLen)
	}
	if !utf8.ValidString(m.Text) {
		return Notification{}, invalid("notification: text is not valid UTF-8")
	}
	if m.T < 0 || m.T > MaxTimestamp {
		return Notification{}, invalid("notification: t %d out of range", m.T)
	}
	return m, nil
}

// DecodeFeedCommand parses a FeedCommand sent by the platform.
func DecodeFeedCommand(payload []byte) (FeedCommand, error) {
	var m FeedCommand
	if err := decodeStrict("feed command", payload, &m); err != nil {
		return FeedCommand{}, err
	}
	if err := ValidFeed(m.Feed); err != nil {
		return FeedCommand{}, invalid("feed command: %v", err)
	}
	if _, err := ValueKind(m.Value); err != nil {
		return FeedCommand{}, invalid("feed command %s: %v", m.Feed, err)
	}
	return m, nil
}

// RawSubtopic returns the subtopic of a raw publish kind ("raw/a/b" →
// "a/b", "raw" → "") and whether kind is one.
func RawSubtopic(kind string) (string, bool) {
	if kind == KindRaw {
		return "", true
	}
	sub, ok := strings.CutPrefix(kind, KindRaw+"/")
	return sub, ok
}
