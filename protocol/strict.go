package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxNumberLen bounds every JSON number in a message, in bytes as written
// (sign, digits, fraction and exponent). A float64 needs at most 24.
const MaxNumberLen = 64

// maxJSONDepth bounds the nesting of arrays and objects; encoding/json has
// the same bound.
const maxJSONDepth = 10_000

// smallObject is how many keys an object may hold before duplicate keys are
// looked up in a map rather than by comparing with every earlier key.
const smallObject = 16

// CheckJSON checks that data is exactly one JSON value, optionally
// surrounded by white space, that obeys the rules every Outpost message
// obeys beyond RFC 8259:
//
//   - strings are valid UTF-8, and \u escapes encode Unicode characters
//     (no lone surrogate halves);
//   - no object holds the same key twice;
//   - no number is longer than MaxNumberLen bytes;
//   - nesting is at most 10,000 levels deep.
//
// It returns a *Error with CodeInvalid (CodeTooLarge for a long number).
func CheckJSON(data []byte) error {
	return checkJSON(data, nil)
}

// Unmarshal decodes one JSON value into v, which must be a non-nil
// pointer, after checking it with CheckJSON. Unlike encoding/json, object
// keys match struct fields exactly: a key that matches a field only when
// case is ignored ("F" for "f") is an error, not a silent match. Keys that
// match no field are ignored. Errors are *Error values with CodeInvalid or
// CodeTooLarge.
func Unmarshal(data []byte, v any) error {
	if err := checkJSON(data, schemaOf(reflect.TypeOf(v))); err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return invalid("%v", err)
	}
	return nil
}

// decodeJSON is Unmarshal with the message's name in front of errors.
func decodeJSON(what string, data []byte, v any) error {
	if err := Unmarshal(data, v); err != nil {
		pe := err.(*Error)
		return &Error{Code: pe.Code, Message: what + ": " + pe.Message}
	}
	return nil
}

// schema describes what a Go type expects of a JSON value, as far as the
// strict check needs it: the exact field names of structs, and the schemas
// of their fields, of map values and of array elements. A nil *schema
// accepts any value.
type schema struct {
	fields []field // struct: fields by JSON name
	elem   *schema // map values, array elements
	object bool    // a struct (fields apply) rather than a map or array
}

type field struct {
	name string
	s    *schema
}

var schemas sync.Map // reflect.Type → *schema

func schemaOf(t reflect.Type) *schema {
	if t == nil {
		return nil
	}
	if s, ok := schemas.Load(t); ok {
		return s.(*schema)
	}
	s := buildSchema(t, map[reflect.Type]*schema{})
	schemas.Store(t, s)
	return s
}

var rawMessageType = reflect.TypeFor[json.RawMessage]()

func buildSchema(t reflect.Type, seen map[reflect.Type]*schema) *schema {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == rawMessageType {
		return nil
	}
	if s, ok := seen[t]; ok {
		return s
	}
	switch t.Kind() {
	case reflect.Struct:
		s := &schema{object: true}
		seen[t] = s
		addFields(s, t, seen)
		return s
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return nil
		}
		s := &schema{}
		seen[t] = s
		s.elem = buildSchema(t.Elem(), seen)
		return s
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return nil // []byte: a base64 string
		}
		s := &schema{}
		seen[t] = s
		s.elem = buildSchema(t.Elem(), seen)
		return s
	}
	return nil
}

func addFields(s *schema, t reflect.Type, seen map[reflect.Type]*schema) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				addFields(s, ft, seen) // promoted fields, as encoding/json does
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		s.fields = append(s.fields, field{name: name, s: buildSchema(f.Type, seen)})
	}
}

// lookup returns the schema of the field named key. A key that matches a
// field only when case is ignored is an error; one that matches nothing
// is an unknown field, accepted with any value.
func (s *schema) lookup(key []byte) (*schema, error) {
	for i := range s.fields {
		if string(key) == s.fields[i].name {
			return s.fields[i].s, nil
		}
	}
	for i := range s.fields {
		if bytes.EqualFold(key, []byte(s.fields[i].name)) {
			return nil, invalid("field %.32q: field names are case-sensitive (want %q)", key, s.fields[i].name)
		}
	}
	return nil, nil
}

// scanner is a validating JSON reader. It reads the whole value once and
// allocates only for keys with escapes and for objects of more than
// smallObject keys.
type scanner struct {
	data  []byte
	pos   int
	depth int
	keys  [][]byte // keys of the objects being read, innermost last
	buf   []byte   // unescaped key
}

var scanners = sync.Pool{New: func() any { return &scanner{keys: make([][]byte, 0, 32)} }}

func checkJSON(data []byte, s *schema) error {
	sc := scanners.Get().(*scanner)
	sc.data, sc.pos, sc.depth = data, 0, 0
	err := sc.check(s)
	clear(sc.keys[:cap(sc.keys)]) // keep no reference to data
	sc.data, sc.keys = nil, sc.keys[:0]
	if cap(sc.keys) <= 1024 && cap(sc.buf) <= 4096 {
		scanners.Put(sc)
	}
	return err
}

func (sc *scanner) check(s *schema) error {
	sc.space()
	if err := sc.value(s); err != nil {
		return err
	}
	sc.space()
	if sc.pos != len(sc.data) {
		return invalid("trailing data after the JSON value at byte %d", sc.pos)
	}
	return nil
}

func (sc *scanner) space() {
	for sc.pos < len(sc.data) {
		switch sc.data[sc.pos] {
		case ' ', '\t', '\n', '\r':
			sc.pos++
		default:
			return
		}
	}
}

func (sc *scanner) errorf(format string, args ...any) error {
	return invalid("%s at byte %d", fmt.Sprintf(format, args...), sc.pos)
}

func (sc *scanner) value(s *schema) error {
	if sc.pos >= len(sc.data) {
		return sc.errorf("unexpected end of JSON")
	}
	switch c := sc.data[sc.pos]; {
	case c == '{':
		return sc.object(s)
	case c == '[':
		return sc.array(s)
	case c == '"':
		_, _, err := sc.str()
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		return sc.number()
	case c == 't':
		return sc.literal("true")
	case c == 'f':
		return sc.literal("false")
	case c == 'n':
		return sc.literal("null")
	}
	return sc.errorf("invalid character %q looking for a value", sc.data[sc.pos])
}

func (sc *scanner) literal(lit string) error {
	if !bytes.HasPrefix(sc.data[sc.pos:], []byte(lit)) {
		return sc.errorf("invalid literal")
	}
	sc.pos += len(lit)
	return nil
}

func (sc *scanner) enter() error {
	sc.depth++
	if sc.depth > maxJSONDepth {
		return sc.errorf("nesting deeper than %d levels", maxJSONDepth)
	}
	return nil
}

func (sc *scanner) array(s *schema) error {
	if err := sc.enter(); err != nil {
		return err
	}
	var elem *schema
	if s != nil && !s.object {
		elem = s.elem
	}
	sc.pos++ // [
	sc.space()
	if sc.pos < len(sc.data) && sc.data[sc.pos] == ']' {
		sc.pos++
		sc.depth--
		return nil
	}
	for {
		sc.space()
		if err := sc.value(elem); err != nil {
			return err
		}
		sc.space()
		if sc.pos >= len(sc.data) {
			return sc.errorf("unexpected end of JSON in an array")
		}
		switch sc.data[sc.pos] {
		case ',':
			sc.pos++
		case ']':
			sc.pos++
			sc.depth--
			return nil
		default:
			return sc.errorf("invalid character %q after an array element", sc.data[sc.pos])
		}
	}
}

func (sc *scanner) object(s *schema) error {
	if err := sc.enter(); err != nil {
		return err
	}
	sc.pos++ // {
	first := len(sc.keys)
	err := sc.members(s, first)
	sc.keys = sc.keys[:first]
	return err
}

func (sc *scanner) members(s *schema, first int) error {
	var big map[string]struct{}
	sc.space()
	if sc.pos < len(sc.data) && sc.data[sc.pos] == '}' {
		sc.pos++
		sc.depth--
		return nil
	}
	for {
		sc.space()
		if sc.pos >= len(sc.data) || sc.data[sc.pos] != '"' {
			return sc.errorf("object key must be a string")
		}
		at := sc.pos
		key, escaped, err := sc.str()
		if err != nil {
			return err
		}
		if escaped {
			key = sc.unescape(key)
		}
		// Duplicates: compare with the earlier keys of this object.
		n := len(sc.keys) - first
		if big != nil {
			if _, dup := big[string(key)]; dup {
				return invalid("duplicate key %.32q at byte %d", key, at)
			}
			big[string(key)] = struct{}{}
		} else {
			for _, k := range sc.keys[first:] {
				if bytes.Equal(k, key) {
					return invalid("duplicate key %.32q at byte %d", key, at)
				}
			}
			if n+1 > smallObject {
				big = make(map[string]struct{}, 2*smallObject)
				for _, k := range sc.keys[first:] {
					big[string(k)] = struct{}{}
				}
				big[string(key)] = struct{}{}
			} else {
				if escaped {
					key = bytes.Clone(key) // buf is reused
				}
				sc.keys = append(sc.keys, key)
			}
		}
		var sub *schema
		if s != nil {
			if s.object {
				if sub, err = s.lookup(key); err != nil {
					return err
				}
			} else {
				sub = s.elem
			}
		}
		sc.space()
		if sc.pos >= len(sc.data) || sc.data[sc.pos] != ':' {
			return sc.errorf("expected ':' after an object key")
		}
		sc.pos++
		sc.space()
		if err := sc.value(sub); err != nil {
			return err
		}
		sc.space()
		if sc.pos >= len(sc.data) {
			return sc.errorf("unexpected end of JSON in an object")
		}
		switch sc.data[sc.pos] {
		case ',':
			sc.pos++
		case '}':
			sc.pos++
			sc.depth--
			return nil
		default:
			return sc.errorf("invalid character %q after an object value", sc.data[sc.pos])
		}
	}
}

// str reads a string and returns its raw content (between the quotes) and
// whether it holds escapes. It checks UTF-8, control characters, escapes
// and surrogate pairs.
func (sc *scanner) str() ([]byte, bool, error) {
	sc.pos++ // "
	start := sc.pos
	escaped := false
	for sc.pos < len(sc.data) {
		c := sc.data[sc.pos]
		switch {
		case c == '"':
			s := sc.data[start:sc.pos]
			sc.pos++
			return s, escaped, nil
		case c == '\\':
			escaped = true
			if err := sc.escape(); err != nil {
				return nil, false, err
			}
		case c < 0x20:
			return nil, false, sc.errorf("control character in a string")
		case c < utf8.RuneSelf:
			sc.pos++
		default:
			r, size := utf8.DecodeRune(sc.data[sc.pos:])
			if r == utf8.RuneError && size == 1 {
				return nil, false, sc.errorf("string is not valid UTF-8")
			}
			sc.pos += size
		}
	}
	return nil, false, sc.errorf("unterminated string")
}

// escape checks one escape sequence at sc.pos (the backslash).
func (sc *scanner) escape() error {
	if sc.pos+1 >= len(sc.data) {
		return sc.errorf("unterminated string")
	}
	switch sc.data[sc.pos+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		sc.pos += 2
		return nil
	case 'u':
	default:
		return sc.errorf("invalid escape in a string")
	}
	r, ok := hex4(sc.data[sc.pos+2:])
	if !ok {
		return sc.errorf(`invalid \u escape`)
	}
	sc.pos += 6
	if !utf16.IsSurrogate(r) {
		return nil
	}
	if r >= 0xdc00 || sc.pos+1 >= len(sc.data) || sc.data[sc.pos] != '\\' || sc.data[sc.pos+1] != 'u' {
		return sc.errorf(`\u escape is half of a surrogate pair`)
	}
	r2, ok := hex4(sc.data[sc.pos+2:])
	if !ok || utf16.DecodeRune(r, r2) == utf8.RuneError {
		return sc.errorf(`\u escape is half of a surrogate pair`)
	}
	sc.pos += 6
	return nil
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// unescape decodes the content of a string already checked by str into
// sc.buf.
func (sc *scanner) unescape(s []byte) []byte {
	b := sc.buf[:0]
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			b = append(b, c)
			i++
			continue
		}
		switch s[i+1] {
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, _ := hex4(s[i+2:])
			i += 6
			if utf16.IsSurrogate(r) {
				r2, _ := hex4(s[i+2:])
				r = utf16.DecodeRune(r, r2)
				i += 6
			}
			b = utf8.AppendRune(b, r)
			continue
		default: // " \ /
			b = append(b, s[i+1])
		}
		i += 2
	}
	sc.buf = b
	return b
}

// number reads a number following the JSON grammar and bounds its length.
func (sc *scanner) number() error {
	start := sc.pos
	d := sc.data
	if d[sc.pos] == '-' {
		sc.pos++
	}
	switch {
	case sc.pos < len(d) && d[sc.pos] == '0':
		sc.pos++
	case sc.pos < len(d) && d[sc.pos] >= '1' && d[sc.pos] <= '9':
		sc.digits()
	default:
		return sc.errorf("invalid number")
	}
	if sc.pos < len(d) && d[sc.pos] == '.' {
		sc.pos++
		if sc.digits() == 0 {
			return sc.errorf("invalid number")
		}
	}
	if sc.pos < len(d) && (d[sc.pos] == 'e' || d[sc.pos] == 'E') {
		sc.pos++
		if sc.pos < len(d) && (d[sc.pos] == '+' || d[sc.pos] == '-') {
			sc.pos++
		}
		if sc.digits() == 0 {
			return sc.errorf("invalid number")
		}
	}
	if n := sc.pos - start; n > MaxNumberLen {
		return &Error{Code: CodeTooLarge, Message: fmt.Sprintf("number of %d bytes at byte %d exceeds %d", n, start, MaxNumberLen)}
	}
	return nil
}

func (sc *scanner) digits() int {
	n := 0
	for sc.pos < len(sc.data) && sc.data[sc.pos] >= '0' && sc.data[sc.pos] <= '9' {
		sc.pos++
		n++
	}
	return n
}
