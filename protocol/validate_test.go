package protocol_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

// The validators return *protocol.Error, not error: the platform calls them
// inside broker hooks and reads the code of what they return, and a type
// assertion on an error that turned out to be a plain error panicked there.
// These lines stop compiling if a validator goes back to returning error.
var (
	_ func(protocol.Reading) *protocol.Error                 = protocol.ValidateReading
	_ func(*protocol.FeedDef) *protocol.Error                = protocol.ValidateFeedDef
	_ func(string, json.RawMessage) *protocol.Error          = protocol.ValidateTyped
	_ func(protocol.Attribute) *protocol.Error               = protocol.ValidateAttribute
	_ func(map[string]json.RawMessage, bool) *protocol.Error = protocol.ValidateParameters
)

// Every way a validator can fail yields a coded error with a message,
// including the paths that start from a plain error inside the package
// (names, locations, missing values).
func TestValidatorsReturnCodedErrors(t *testing.T) {
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	for _, tc := range []struct {
		name string
		err  *protocol.Error
		code string
	}{
		{"reading: bad feed name", protocol.ValidateReading(protocol.Reading{Feed: "a b", Value: raw("1")}), protocol.CodeInvalid},
		{"reading: missing value", protocol.ValidateReading(protocol.Reading{Feed: "a"}), protocol.CodeInvalid},
		{"reading: bad location", protocol.ValidateReading(protocol.Reading{Feed: "a", Value: raw(`{"lat":1}`)}), protocol.CodeInvalid},
		{"reading: long string", protocol.ValidateReading(protocol.Reading{Feed: "a", Value: raw(`"` + strings.Repeat("x", protocol.MaxStringValue) + `"`)}), protocol.CodeTooLarge},
		{"feed: bad ref", protocol.ValidateFeedDef(&protocol.FeedDef{Ref: "", DataType: "number"}), protocol.CodeInvalid},
		{"feed: control character in name", protocol.ValidateFeedDef(&protocol.FeedDef{Ref: "a", Name: "a\x01", DataType: "number"}), protocol.CodeInvalid},
		{"typed: null", protocol.ValidateTyped("number", raw("null")), protocol.CodeInvalid},
		{"typed: wrong type", protocol.ValidateTyped("number", raw(`"x"`)), protocol.CodeWrongType},
		{"attribute: bad name", protocol.ValidateAttribute(protocol.Attribute{Name: "a b", DataType: "number", Value: raw("1")}), protocol.CodeInvalid},
		{"attribute: bad location", protocol.ValidateAttribute(protocol.Attribute{Name: "pos", DataType: "location", Value: raw(`{"lat":1,"x":2}`)}), protocol.CodeInvalid},
		{"parameters: bad key", protocol.ValidateParameters(map[string]json.RawMessage{"a b": raw("1")}, false), protocol.CodeInvalid},
		{"parameters: null", protocol.ValidateParameters(map[string]json.RawMessage{"a": raw("null")}, false), protocol.CodeInvalid},
	} {
		if tc.err == nil || tc.err.Code != tc.code || tc.err.Message == "" {
			t.Errorf("%s: got %#v, want code %s with a message", tc.name, tc.err, tc.code)
		}
	}
	if err := protocol.ValidateAttribute(protocol.Attribute{Name: "pos", DataType: "location", Value: raw(`{"lat":1,"x":2}`)}); err != nil && !strings.HasPrefix(err.Message, "attribute pos: ") {
		t.Errorf("attribute error message %q does not name the attribute", err.Message)
	}
}
