package protocol

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// decodeTelemetry parses a telemetry message in one pass without
// reflection: it accepts and rejects exactly what json.Unmarshal into a
// Telemetry does, with the same result (a fuzz test compares the two), at
// a fraction of the cost and allocations — it runs for every message the
// platform ingests. Feed names repeated within a message share one string;
// each Value is a sub-slice of p, not a copy.
func decodeTelemetry(p []byte) (Telemetry, error) {
	d := telemetryDecoder{p: p}
	d.feeds = d.feedBuf[:0]
	t, err := d.telemetry()
	if err != nil {
		return Telemetry{}, err
	}
	return t, nil
}

type telemetryDecoder struct {
	p       []byte
	i       int
	feeds   []string // feed names seen in this message, reused
	feedBuf [8]string
}

// syntaxError is what json.Unmarshal reports for malformed JSON, in our
// words.
func (d *telemetryDecoder) syntaxError(what string) error {
	if d.i >= len(d.p) {
		return &Error{Code: CodeInvalid, Message: "telemetry: unexpected end of JSON input"}
	}
	return &Error{Code: CodeInvalid, Message: "telemetry: " + what + " at offset " + strconv.Itoa(d.i)}
}

func typeError(what string) error {
	return &Error{Code: CodeInvalid, Message: "telemetry: " + what}
}

func (d *telemetryDecoder) ws() {
	for d.i < len(d.p) {
		switch d.p[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, 0 at the end.
func (d *telemetryDecoder) peek() byte {
	d.ws()
	if d.i >= len(d.p) {
		return 0
	}
	return d.p[d.i]
}

func (d *telemetryDecoder) telemetry() (Telemetry, error) {
	var t Telemetry
	switch d.peek() {
	case '{':
	case 'n':
		if err := d.literal("null"); err != nil {
			return t, err
		}
		return t, d.end()
	case 0:
		return t, d.syntaxError("")
	default:
		// Any other valid value is a type error, after the whole input
		// is found to be valid JSON (json.Unmarshal checks syntax first).
		if err := d.skip(0); err != nil {
			return t, err
		}
		if err := d.end(); err != nil {
			return t, err
		}
		return t, typeError("the message is not a JSON object")
	}
	// Type errors do not stop json.Unmarshal: it reports the first one
	// once the whole input has parsed.
	var typeErr error
	err := d.object(1, func(key string) error {
		switch key {
		case "id":
			switch d.peek() {
			case '"':
				s, err := d.str(false)
				if err != nil {
					return err
				}
				t.ID = s
				return nil
			case 'n':
				return d.literal("null")
			}
			if typeErr == nil {
				typeErr = typeError(`"id" must be a string`)
			}
			return d.skip(1)
		case "r":
			switch d.peek() {
			case '[':
				rs, err := d.readings(t.Readings, &typeErr)
				if err != nil {
					return err
				}
				t.Readings = rs
				return nil
			case 'n':
				t.Readings = nil
				return d.literal("null")
			}
			if typeErr == nil {
				typeErr = typeError(`"r" must be an array`)
			}
			return d.skip(1)
		}
		return d.skip(1)
	})
	if err != nil {
		return Telemetry{}, err
	}
	if err := d.end(); err != nil {
		return Telemetry{}, err
	}
	if typeErr != nil {
		return Telemetry{}, typeErr
	}
	return t, nil
}

// end checks that only white space follows.
func (d *telemetryDecoder) end() error {
	d.ws()
	if d.i != len(d.p) {
		return d.syntaxError("invalid character " + strconv.QuoteRune(rune(d.p[d.i])) + " after top-level value")
	}
	return nil
}

// readings parses the array of readings at d.i. Like json.Unmarshal, it
// decodes into the elements rs already has (an "r" given twice), then
// truncates; an empty array gives an empty, non-nil slice.
func (d *telemetryDecoder) readings(rs []Reading, typeErr *error) ([]Reading, error) {
	d.i++ // '['
	if d.peek() == ']' {
		d.i++
		return []Reading{}, nil
	}
	if rs == nil {
		rs = make([]Reading, 0, d.countHint())
	}
	n := 0
	for {
		var r Reading
		if n < len(rs) {
			r = rs[n]
		}
		switch d.peek() {
		case '{':
			if err := d.reading(&r, typeErr); err != nil {
				return nil, err
			}
		case 'n':
			if err := d.literal("null"); err != nil {
				return nil, err
			}
		default:
			if *typeErr == nil {
				*typeErr = typeError("a reading must be a JSON object")
			}
			if err := d.skip(2); err != nil {
				return nil, err
			}
		}
		if n < len(rs) {
			rs[n] = r
		} else {
			rs = append(rs, r)
		}
		n++
		switch d.peek() {
		case ',':
			d.i++
		case ']':
			d.i++
			return rs[:n], nil
		default:
			return nil, d.syntaxError("invalid character after array element")
		}
	}
}

// reading parses one reading object into r.
func (d *telemetryDecoder) reading(r *Reading, typeErr *error) error {
	return d.object(3, func(key string) error {
		switch key {
		case "f":
			switch d.peek() {
			case '"':
				s, err := d.str(true)
				if err != nil {
					return err
				}
				r.Feed = s
				return nil
			case 'n':
				return d.literal("null")
			}
			if *typeErr == nil {
				*typeErr = typeError(`a reading's "f" must be a string`)
			}
			return d.skip(3)
		case "v":
			start := d.i
			if err := d.skip(3); err != nil {
				return err
			}
			r.Value = json.RawMessage(d.p[start:d.i:d.i])
			return nil
		case "t":
			switch c := d.peek(); {
			case c == '-' || (c >= '0' && c <= '9'):
				start := d.i
				if err := d.number(); err != nil {
					return err
				}
				ts, err := strconv.ParseInt(string(d.p[start:d.i]), 10, 64)
				if err != nil {
					if *typeErr == nil {
						*typeErr = typeError(`a reading's "t" must be an integer (milliseconds), not ` + string(d.p[start:d.i]))
					}
					return nil
				}
				r.TS = ts
				return nil
			case c == 'n':
				return d.literal("null")
			}
			if *typeErr == nil {
				*typeErr = typeError(`a reading's "t" must be a number`)
			}
			return d.skip(3)
		}
		return d.skip(3)
	})
}

// countHint guesses the number of readings from the rest of the message
// (one '{' per reading), so that the slice is allocated once.
func (d *telemetryDecoder) countHint() int {
	n := 0
	for _, c := range d.p[d.i:] {
		if c == '{' {
			n++
		}
	}
	return min(n, MaxReadingsPerMessage+1)
}

// object parses an object at d.i, at nesting depth level, calling member
// with each key (lower-cased when it is one of ours, as json.Unmarshal
// matches names up to case) and d.i at its value; member must consume the
// value.
func (d *telemetryDecoder) object(level int, member func(key string) error) error {
	if level > maxDepth {
		return d.syntaxError("exceeded max depth")
	}
	d.i++ // '{'
	if d.peek() == '}' {
		d.i++
		return nil
	}
	for {
		if d.peek() != '"' {
			return d.syntaxError("invalid character looking for beginning of object key string")
		}
		start := d.i
		if err := d.skipString(); err != nil {
			return err
		}
		key := d.p[start+1 : d.i-1]
		if d.peek() != ':' {
			return d.syntaxError("invalid character after object key")
		}
		d.i++
		if d.peek() == 0 {
			return d.syntaxError("")
		}
		if err := member(ourName(key, d.p[start:d.i])); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return nil
		default:
			return d.syntaxError("invalid character after object key:value pair")
		}
	}
}

// ourName returns "id", "r", "f", "v" or "t" when key is one of them up to
// ASCII case (json.Unmarshal's other case folds, for 'k' and 's', concern
// none of them), after unescaping; "" for any other key. quoted is the key
// with its quotes and what follows.
func ourName(key, quoted []byte) string {
	if len(key) > 2 {
		if !bytes.ContainsRune(key, '\\') {
			return ""
		}
		var s string
		if err := json.Unmarshal(quoted[:len(key)+2], &s); err != nil {
			return ""
		}
		key = []byte(s)
	}
	for _, name := range [...]string{"id", "r", "f", "v", "t"} {
		if foldEq(key, name) {
			return name
		}
	}
	return ""
}

// maxDepth is json.Unmarshal's nesting limit.
const maxDepth = 10000

// skip checks and passes over one value inside a container at nesting
// depth level (0: the top level).
func (d *telemetryDecoder) skip(level int) error {
	switch c := d.peek(); {
	case c == '{':
		return d.object(level+1, func(string) error { return d.skip(level + 1) })
	case c == '[':
		if level+1 > maxDepth {
			return d.syntaxError("exceeded max depth")
		}
		d.i++
		if d.peek() == ']' {
			d.i++
			return nil
		}
		for {
			if err := d.skip(level + 1); err != nil {
				return err
			}
			switch d.peek() {
			case ',':
				d.i++
			case ']':
				d.i++
				return nil
			default:
				return d.syntaxError("invalid character after array element")
			}
		}
	case c == '"':
		return d.skipString()
	case c == '-' || (c >= '0' && c <= '9'):
		return d.number()
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	}
	return d.syntaxError("invalid character looking for beginning of value")
}

func (d *telemetryDecoder) literal(lit string) error {
	if len(d.p)-d.i < len(lit) || string(d.p[d.i:d.i+len(lit)]) != lit {
		for k := 0; k < len(lit) && d.i < len(d.p) && d.p[d.i] == lit[k]; k++ {
			d.i++
		}
		return d.syntaxError("invalid character in literal " + lit)
	}
	d.i += len(lit)
	return nil
}

// number passes over a JSON number.
func (d *telemetryDecoder) number() error {
	p, i := d.p, d.i
	if i < len(p) && p[i] == '-' {
		i++
	}
	switch {
	case i < len(p) && p[i] == '0':
		i++
	case i < len(p) && p[i] >= '1' && p[i] <= '9':
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
	default:
		d.i = i
		return d.syntaxError("invalid character in numeric literal")
	}
	if i < len(p) && p[i] == '.' {
		i++
		if i >= len(p) || p[i] < '0' || p[i] > '9' {
			d.i = i
			return d.syntaxError("invalid character after decimal point in numeric literal")
		}
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
	}
	if i < len(p) && (p[i] == 'e' || p[i] == 'E') {
		i++
		if i < len(p) && (p[i] == '+' || p[i] == '-') {
			i++
		}
		if i >= len(p) || p[i] < '0' || p[i] > '9' {
			d.i = i
			return d.syntaxError("invalid character in exponent of numeric literal")
		}
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
	}
	d.i = i
	return nil
}

// skipString passes over a string at d.i (its opening quote), checking
// its escapes and that it holds no control character.
func (d *telemetryDecoder) skipString() error {
	p, i := d.p, d.i+1
	for i < len(p) {
		switch c := p[i]; {
		case c == '"':
			d.i = i + 1
			return nil
		case c == '\\':
			i++
			if i >= len(p) {
				d.i = i
				return d.syntaxError("")
			}
			switch p[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				i++
				for k := 0; k < 4; k++ {
					if i >= len(p) || !isHex(p[i]) {
						d.i = i
						return d.syntaxError("invalid character in \\u hexadecimal character escape")
					}
					i++
				}
			default:
				d.i = i
				return d.syntaxError("invalid character in string escape code")
			}
		case c < 0x20:
			d.i = i
			return d.syntaxError("invalid character in string literal")
		default:
			i++
		}
	}
	d.i = i
	return d.syntaxError("")
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// str decodes a string at d.i. With intern, a plain string (no escape,
// ASCII) equal to one decoded before in this message is returned as that
// one: feed names repeat.
func (d *telemetryDecoder) str(intern bool) (string, error) {
	start := d.i
	if err := d.skipString(); err != nil {
		return "", err
	}
	raw := d.p[start+1 : d.i-1]
	for _, c := range raw {
		if c == '\\' || c >= utf8.RuneSelf {
			// Escapes, or bytes that json.Unmarshal replaces when they are
			// not UTF-8: its own rules.
			var s string
			if err := json.Unmarshal(d.p[start:d.i], &s); err != nil {
				return "", typeError(err.Error())
			}
			return s, nil
		}
	}
	if !intern {
		return string(raw), nil
	}
	for _, s := range d.feeds {
		if s == string(raw) {
			return s, nil
		}
	}
	s := string(raw)
	if len(d.feeds) < len(d.feedBuf) {
		d.feeds = append(d.feeds, s)
	}
	return s, nil
}

// foldEq reports whether key equals name (lower-case ASCII letters) up to
// ASCII case, as json.Unmarshal matches field names. (Its other folds, for
// 'k' and 's', concern no name of ours.)
func foldEq(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range len(key) {
		c := key[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}
