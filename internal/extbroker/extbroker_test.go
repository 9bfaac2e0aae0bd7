package extbroker_test

import (
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/internal/extbroker"
)

func TestParseURL(t *testing.T) {
	for _, tt := range []struct{ in, scheme, err string }{
		{"mqtt://u:p@127.0.0.1:1883", "tcp", ""},
		{"tcp://127.0.0.1:1883", "tcp", ""},
		{"mqtts://broker.example:8883", "ssl", ""},
		{"ssl://broker.example:8883", "ssl", ""},
		{"http://127.0.0.1:1883", "", "scheme"},
		{"mqtt://127.0.0.1", "", "HOST:PORT"},
		{"mqtt://:1883", "", "HOST:PORT"},
	} {
		u, err := extbroker.ParseURL(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: error %v, want one about %s", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || u.Scheme != tt.scheme {
			t.Errorf("%s: %v %v", tt.in, u, err)
		}
	}
}

// TestSessionOf: the same tag is the same session; different tags differ;
// no tag maps to 0 (no session).
func TestSessionOf(t *testing.T) {
	if extbroker.SessionOf("a") != extbroker.SessionOf("a") || extbroker.SessionOf("a") == extbroker.SessionOf("b") {
		t.Fatal("session ids do not follow tags")
	}
	for _, s := range []string{"", "a", "7f3a9c0d5e21b844"} {
		if extbroker.SessionOf(s) == 0 {
			t.Fatalf("tag %q maps to session 0", s)
		}
	}
}
