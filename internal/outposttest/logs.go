package outposttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Secrets never reach a log: every logger a test gets from Logger checks
// every line it writes for the secrets the tests have used (device
// passwords, the admin token), in clear and as the decimal byte lists Go
// prints for a []byte inside a struct. A line holding one fails the test
// that owns the logger (or, if it comes after that test ended, the whole
// test binary, through Main).

var secrets struct {
	sync.RWMutex
	tokens map[string]bool // secrets made only of token characters
	other  []string        // the rest, searched as substrings
}

// AddSecret registers a secret that must never appear in a log written
// through Logger. Platform.Do registers every "password" its responses
// carry, and Start the admin token; a test registers other secrets it
// uses. Secrets shorter than 8 bytes are ignored (too likely to occur by
// chance).
func AddSecret(s string) {
	if len(s) < 8 {
		return
	}
	secrets.Lock()
	defer secrets.Unlock()
	if strings.IndexFunc(s, func(r rune) bool { return !isTokenChar(r) }) < 0 {
		if secrets.tokens == nil {
			secrets.tokens = map[string]bool{}
		}
		secrets.tokens[s] = true
		return
	}
	secrets.other = append(secrets.other, s)
}

// addSecretsFrom registers the "password" of a JSON object.
func addSecretsFrom(body []byte) {
	if !bytes.Contains(body, []byte(`"password"`)) {
		return
	}
	var v struct {
		Password string `json:"password"`
	}
	if json.Unmarshal(body, &v) == nil {
		AddSecret(v.Password)
	}
}

func isTokenChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
}

// decimalBytes matches a []byte as fmt prints it inside a struct.
var decimalBytes = regexp.MustCompile(`\[[0-9]{1,3}(?: [0-9]{1,3})+\]`)

// findSecret returns the first registered secret in line, "" if none.
func findSecret(line string) string {
	secrets.RLock()
	defer secrets.RUnlock()
	if len(secrets.tokens) == 0 && len(secrets.other) == 0 {
		return ""
	}
	texts := []string{line}
	for _, m := range decimalBytes.FindAllString(line, -1) {
		var b []byte
		for _, f := range strings.Fields(strings.Trim(m, "[]")) {
			n, err := strconv.Atoi(f)
			if err != nil || n > 255 {
				b = nil
				break
			}
			b = append(b, byte(n))
		}
		texts = append(texts, string(b))
	}
	for _, t := range texts {
		for _, tok := range strings.FieldsFunc(t, func(r rune) bool { return !isTokenChar(r) }) {
			if secrets.tokens[tok] {
				return tok
			}
		}
		for _, s := range secrets.other {
			if strings.Contains(t, s) {
				return s
			}
		}
	}
	return ""
}

// sink collects what the loggers of one test write.
type sink struct {
	tb    testing.TB
	echo  bool // also write to the test log (OUTPOST_TEST_LOG)
	mu    sync.Mutex
	buf   []byte // the last logKeep bytes
	leaks []string
	done  bool // the test has ended
}

const logKeep = 1 << 20

var sinks struct {
	sync.Mutex
	m    map[testing.TB]*sink
	late []string
}

// Logger returns a logger for code under test (the platform, a device):
// it writes at debug level to the test's log text (LogText), and to the
// test log when OUTPOST_TEST_LOG is set. A line holding a secret
// registered with AddSecret fails the test.
func Logger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(sinkOf(tb), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func sinkOf(tb testing.TB) *sink {
	sinks.Lock()
	defer sinks.Unlock()
	if s := sinks.m[tb]; s != nil {
		return s
	}
	if sinks.m == nil {
		sinks.m = map[testing.TB]*sink{}
	}
	s := &sink{tb: tb, echo: os.Getenv("OUTPOST_TEST_LOG") != ""}
	sinks.m[tb] = s
	tb.Cleanup(func() {
		s.mu.Lock()
		s.done = true
		leaks := s.leaks
		s.mu.Unlock()
		sinks.Lock()
		delete(sinks.m, tb)
		sinks.Unlock()
		for _, l := range leaks {
			tb.Errorf("a secret reached the log: %s", l)
		}
	})
	return s
}

func (s *sink) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	leak := findSecret(line)
	s.mu.Lock()
	defer s.mu.Unlock()
	if leak != "" {
		report := fmt.Sprintf("%s: secret %.6s… in %q", s.tb.Name(), leak, truncate(line, 300))
		if s.done {
			sinks.Lock()
			sinks.late = append(sinks.late, report)
			sinks.Unlock()
		} else {
			s.leaks = append(s.leaks, report)
		}
	}
	if s.done {
		return len(p), nil
	}
	s.buf = append(s.buf, p...)
	if len(s.buf) > logKeep {
		s.buf = append(s.buf[:0], s.buf[len(s.buf)-logKeep/2:]...)
	}
	if s.echo {
		s.tb.Log(line)
	}
	return len(p), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// LogText returns the end (up to 1 MiB) of what the loggers of tb have
// written.
func LogText(tb testing.TB) string {
	s := sinkOf(tb)
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.buf)
}

// SecretsInLog returns the lines of tb's log that held a registered
// secret (each also fails the test when it ends).
func SecretsInLog(tb testing.TB) []string {
	s := sinkOf(tb)
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.leaks...)
}

func lateLeaks() []string {
	sinks.Lock()
	defer sinks.Unlock()
	return append([]string(nil), sinks.late...)
}
