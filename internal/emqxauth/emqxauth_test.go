package emqxauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/internal/emqxauth"
)

// knownSecrets is a device store holding fixed secrets.
type knownSecrets map[string]string

var errBadCredentials = errors.New("bad credentials")

func (k knownSecrets) AuthenticateDevice(_ context.Context, id, secret string) error {
	if s, ok := k[id]; ok && s == secret {
		return nil
	}
	return errBadCredentials
}

// brokenStore fails every check, as a store that is down would.
type brokenStore struct{}

func (brokenStore) AuthenticateDevice(context.Context, string, string) error {
	return errors.New("database is down")
}

const (
	devA     = "d-aaaaaaaaaaaaaaaa"
	devB     = "d-bbbbbbbbbbbbbbbb"
	secretA  = "s3cret-of-a"
	platUser = "outpost:platform"
	platPass = "platform-password"
	shared   = "emqx-shared-secret"
)

func newHandler(t *testing.T, mod ...func(*emqxauth.Config)) *emqxauth.Handler {
	t.Helper()
	cfg := emqxauth.Config{
		Devices:      knownSecrets{devA: secretA, devB: "s3cret-of-b"},
		PlatformUser: platUser, PlatformPassword: platPass,
	}
	for _, m := range mod {
		m(&cfg)
	}
	h, err := emqxauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// post sends body as EMQX does (POST, application/json) and decodes the
// answer, which must be 200 with a JSON body.
func post(t *testing.T, h http.Handler, body string, hdr ...string) map[string]any {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/emqx/x", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return do(t, h, req)
}

func do(t *testing.T, h http.Handler, req *http.Request) map[string]any {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, want 200 (EMQX reads any other status as ignore): %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q, want application/json", ct)
	}
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("answer %q: %v", rec.Body, err)
	}
	return out
}

// authnBody renders EMQX's authentication body template the way EMQX
// does: every placeholder as a string, with the fields of a recommended
// template (docs/deploy.md) and a few more EMQX can send.
func authnBody(user, pass, clientID string) string {
	b, _ := json.Marshal(map[string]any{
		"username":         user,
		"password":         pass,
		"clientid":         clientID,
		"peerhost":         "10.1.2.3",
		"proto_name":       "MQTT",
		"proto_ver":        "5",
		"mountpoint":       "",
		"cert_common_name": "",
		"cert_subject":     "",
		"zone":             "default",
		"listener":         "tcp:default",
		"client_attrs":     map[string]string{},
	})
	return string(b)
}

func TestAuthenticate(t *testing.T) {
	h := newHandler(t).Authenticate()
	cases := []struct {
		name, user, pass, clientID string
		want                       string
		super                      bool
	}{
		{"device with its secret", devA, secretA, devA, emqxauth.Allow, false},
		{"wrong password", devA, "wrong", devA, emqxauth.Deny, false},
		{"another device's password", devA, "s3cret-of-b", devA, emqxauth.Deny, false},
		{"unknown device", "d-cccccccccccccccc", secretA, "d-cccccccccccccccc", emqxauth.Deny, false},
		{"username not a device id", "a/b", secretA, "a/b", emqxauth.Deny, false},
		{"wildcard username", "+", secretA, "+", emqxauth.Deny, false},
		{"empty username", "", secretA, "", emqxauth.Deny, false},
		{"empty password", devA, "", devA, emqxauth.Deny, false},
		{"password over 256 bytes", devA, strings.Repeat("p", 257), devA, emqxauth.Deny, false},
		{"unrendered placeholder", devA, "${password}", devA, emqxauth.Deny, false},
		{"another device's client id", devA, secretA, devB, emqxauth.Deny, false},
		{"random client id", devA, secretA, "emqx_abc123", emqxauth.Deny, false},
		{"platform", platUser, platPass, "outpost-replica-1", emqxauth.Allow, true},
		{"platform wrong password", platUser, "nope", "outpost-replica-1", emqxauth.Deny, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := post(t, h, authnBody(c.user, c.pass, c.clientID))
			if got["result"] != c.want || got["is_superuser"] != c.super {
				t.Fatalf("got %v, want result %s is_superuser %v", got, c.want, c.super)
			}
		})
	}
}

func TestAuthenticateAnyClientID(t *testing.T) {
	h := newHandler(t, func(c *emqxauth.Config) { c.AnyClientID = true }).Authenticate()
	if got := post(t, h, authnBody(devA, secretA, "emqx_abc123")); got["result"] != emqxauth.Allow {
		t.Fatalf("got %v", got)
	}
}

// A store that fails denies: never "ignore", never an error status.
func TestAuthenticateStoreDown(t *testing.T) {
	h := newHandler(t, func(c *emqxauth.Config) { c.Devices = brokenStore{} }).Authenticate()
	if got := post(t, h, authnBody(devA, secretA, devA)); got["result"] != emqxauth.Deny {
		t.Fatalf("got %v", got)
	}
}

// authzBody renders EMQX's authorization body template: qos and retain as
// strings, as EMQX's placeholders render them.
func authzBody(user, action, topic string) string {
	b, _ := json.Marshal(map[string]any{
		"username":   user,
		"clientid":   user,
		"peerhost":   "10.1.2.3",
		"topic":      topic,
		"action":     action,
		"qos":        "1",
		"retain":     "false",
		"mountpoint": "",
		"proto_name": "MQTT",
		"zone":       "default",
	})
	return string(b)
}

func TestAuthorize(t *testing.T) {
	h := newHandler(t).Authorize()
	pub, sub := emqxauth.ActionPublish, emqxauth.ActionSubscribe
	own := "outpost/v1/" + devA
	other := "outpost/v1/" + devB
	cases := []struct {
		user, action, topic string
		want                string
	}{
		{devA, pub, own + "/up/telemetry", emqxauth.Allow},
		{devA, pub, own + "/up/raw/sensors/a", emqxauth.Allow},
		{devA, pub, own + "/up/files/status", emqxauth.Allow},
		{devA, pub, other + "/up/telemetry", emqxauth.Deny}, // foreign topic
		{devA, pub, own + "/down/rpc", emqxauth.Deny},       // its own down/
		{devA, pub, other + "/down/rpc", emqxauth.Deny},     // forging the platform
		{devA, pub, own + "/up", emqxauth.Deny},             // no kind
		{devA, pub, own + "/up//x", emqxauth.Deny},          // empty level
		{devA, pub, own + "/up/x/", emqxauth.Deny},          // trailing empty level
		{devA, pub, own + "/up/+", emqxauth.Deny},           // wildcard in a topic name
		{devA, pub, "outpost/v1/+/up/telemetry", emqxauth.Deny},
		{devA, pub, "elsewhere", emqxauth.Deny},
		{devA, pub, "$SYS/x", emqxauth.Deny},
		{devA, sub, own + "/down/#", emqxauth.Allow},
		{devA, sub, own, emqxauth.Allow},
		{devA, sub, own + "/#", emqxauth.Allow},
		{devA, sub, own + "/+/rpc", emqxauth.Allow},
		{devA, sub, own + "/up/telemetry", emqxauth.Allow}, // useless but allowed, as embedded
		{devA, sub, "#", emqxauth.Deny},
		{devA, sub, "+/#", emqxauth.Deny},
		{devA, sub, "outpost/#", emqxauth.Deny},
		{devA, sub, "outpost/v1/#", emqxauth.Deny},
		{devA, sub, "outpost/v1/+/down/#", emqxauth.Deny}, // wildcard outside its namespace
		{devA, sub, other + "/down/#", emqxauth.Deny},
		{devA, sub, own + "x/#", emqxauth.Deny},
		{devA, sub, "$share/g/" + own + "/down/#", emqxauth.Deny},
		{devA, sub, "$SYS/#", emqxauth.Deny},
		{devA, "all", own + "/up/telemetry", emqxauth.Deny}, // unknown action
		{devA, "", own + "/up/telemetry", emqxauth.Deny},
		{"a/b", pub, "outpost/v1/a/b/up/telemetry", emqxauth.Deny},
		{"", sub, "outpost/v1//down/#", emqxauth.Deny},
		{platUser, sub, "$share/outpost/outpost/v1/+/up/#", emqxauth.Allow},
		{platUser, pub, other + "/down/rpc", emqxauth.Allow},
	}
	for _, c := range cases {
		t.Run(c.action+" "+c.topic, func(t *testing.T) {
			got := post(t, h, authzBody(c.user, c.action, c.topic))
			if got["result"] != c.want {
				t.Fatalf("%s %s %s: got %v, want %s", c.user, c.action, c.topic, got, c.want)
			}
			if ok := emqxauth.Allowed(c.user, c.action, c.topic); c.user != platUser && ok != (c.want == emqxauth.Allow) {
				t.Fatalf("Allowed disagrees with the endpoint")
			}
		})
	}
}

// qos and retain may come typed (a hand-written template) as well as
// rendered as strings.
func TestAuthorizeTypedFields(t *testing.T) {
	h := newHandler(t).Authorize()
	body := `{"username":"` + devA + `","clientid":"` + devA + `","topic":"outpost/v1/` + devA + `/up/telemetry","action":"publish","qos":1,"retain":false,"client_attrs":{"sn":"x"},"extra":null}`
	if got := post(t, h, body); got["result"] != emqxauth.Allow {
		t.Fatalf("got %v", got)
	}
}

// Malformed requests are answered 200 "deny", not 400: EMQX reads any
// status but 200/204 as "ignore", which with no_match = allow would let
// the client through.
func TestMalformed(t *testing.T) {
	h := newHandler(t)
	valid := authnBody(devA, secretA, devA)
	for name, body := range map[string]string{
		"not json":    "username=" + devA,
		"truncated":   valid[:len(valid)-5],
		"array":       "[" + valid + "]",
		"two values":  valid + valid,
		"null":        "null",
		"empty":       "",
		"string":      `"hello"`,
		"over 64 KiB": `{"username":"` + devA + `","password":"` + secretA + `","clientid":"` + devA + `","pad":"` + strings.Repeat("x", 70000) + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			if got := post(t, h.Authenticate(), body); got["result"] != emqxauth.Deny {
				t.Fatalf("authn: %v", got)
			}
			if got := post(t, h.Authorize(), body); got["result"] != emqxauth.Deny {
				t.Fatalf("authz: %v", got)
			}
		})
	}
	rec := httptest.NewRecorder()
	h.Authorize().ServeHTTP(rec, httptest.NewRequest(http.MethodDelete, "/emqx/authz", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("DELETE: status %d", rec.Code)
	}
}

// EMQX can also be configured with method = get (query string) or a form
// body.
func TestQueryAndForm(t *testing.T) {
	h := newHandler(t)
	q := url.Values{"username": {devA}, "password": {secretA}, "clientid": {devA}}
	if got := do(t, h.Authenticate(), httptest.NewRequest(http.MethodGet, "/emqx/authn?"+q.Encode(), nil)); got["result"] != emqxauth.Allow {
		t.Fatalf("GET authn: %v", got)
	}
	f := url.Values{"username": {devA}, "clientid": {devA}, "topic": {"outpost/v1/" + devB + "/up/telemetry"}, "action": {"publish"}}
	req := httptest.NewRequest(http.MethodPost, "/emqx/authz", strings.NewReader(f.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if got := do(t, h.Authorize(), req); got["result"] != emqxauth.Deny {
		t.Fatalf("form authz: %v", got)
	}
}

func TestSharedSecret(t *testing.T) {
	h := newHandler(t, func(c *emqxauth.Config) { c.Secret = shared })
	body := authnBody(devA, secretA, devA)
	if got := post(t, h.Authenticate(), body); got["result"] != emqxauth.Deny {
		t.Fatalf("without the secret: %v", got)
	}
	if got := post(t, h.Authenticate(), body, "Authorization", "Bearer wrong"); got["result"] != emqxauth.Deny {
		t.Fatalf("wrong secret: %v", got)
	}
	if got := post(t, h.Authenticate(), body, "Authorization", "Bearer "+shared); got["result"] != emqxauth.Allow {
		t.Fatalf("with the secret: %v", got)
	}
	az := authzBody(devA, "publish", "outpost/v1/"+devA+"/up/telemetry")
	if got := post(t, h.Authorize(), az); got["result"] != emqxauth.Deny {
		t.Fatalf("authz without the secret: %v", got)
	}
	if got := post(t, h.Authorize(), az, "Authorization", "Bearer "+shared); got["result"] != emqxauth.Allow {
		t.Fatalf("authz with the secret: %v", got)
	}
}

func TestRoutes(t *testing.T) {
	srv := httptest.NewServer(newHandler(t).Routes("/emqx"))
	defer srv.Close()
	for path, body := range map[string]string{
		"/emqx/authn": authnBody(devA, secretA, devA),
		"/emqx/authz": authzBody(devA, "subscribe", "outpost/v1/"+devA+"/down/#"),
	} {
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || out["result"] != emqxauth.Allow {
			t.Fatalf("%s: %d %v %v", path, resp.StatusCode, out, err)
		}
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := emqxauth.New(emqxauth.Config{}); err == nil {
		t.Error("no Devices accepted")
	}
	if _, err := emqxauth.New(emqxauth.Config{Devices: knownSecrets{}, PlatformUser: "p"}); err == nil {
		t.Error("platform user without password accepted")
	}
}
