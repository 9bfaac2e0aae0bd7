// Package emqxauth serves the HTTP authentication and authorization
// endpoints that EMQX 5 (and any broker with the same HTTP auth hooks)
// calls, so that devices of an external EMQX cluster log in with their
// Outpost credentials and are confined to their own topics exactly as on
// the embedded broker (docs/protocol.md §2.3, §3).
//
// Authentication (EMQX "password_based" authenticator, backend "http"):
// EMQX sends a request rendered from its body template, for example
//
//	{"username":"d-4gq2mbx7k3a9vq5e","password":"…","clientid":"d-4gq2mbx7k3a9vq5e","peerhost":"10.0.0.7"}
//
// and reads {"result":"allow"|"deny"|"ignore","is_superuser":bool}.
//
// Authorization (EMQX authorization source, type "http"): EMQX sends
//
//	{"username":"…","clientid":"…","topic":"outpost/v1/…","action":"publish"|"subscribe","qos":"1","retain":"false"}
//
// and reads {"result":"allow"|"deny"}.
//
// EMQX renders every placeholder as a string ("qos":"1"); numbers and
// booleans are accepted too, and fields this package does not use
// (peerhost, proto_name, mountpoint, cert_common_name, zone, …) are
// ignored. A query string (method = get) or a form body works as well.
//
// Every answer is HTTP 200 with a JSON result, including the answer to a
// malformed request, a missing shared secret or a failing store: those are
// "deny". EMQX treats any other status as "ignore" and moves on to the
// next authenticator or authorization source; with EMQX's default
// authorization no_match = allow, an "ignore" would let the client
// publish anywhere. Only a request with a method other than GET or POST
// gets an error status (405).
package emqxauth

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/protocol"
)

// Authenticator checks a device's credentials (the platform's device
// store; the same contract as internal/broker's).
type Authenticator interface {
	// AuthenticateDevice returns nil if secret is the device's secret, and
	// an error otherwise: unknown device, wrong secret, disabled device or
	// a failing store alike.
	AuthenticateDevice(ctx context.Context, deviceID, secret string) error
}

// Results of both endpoints.
const (
	Allow  = "allow"
	Deny   = "deny"
	Ignore = "ignore"
)

// Actions of an authorization request.
const (
	ActionPublish   = "publish"
	ActionSubscribe = "subscribe"
)

// MaxPasswordLen bounds a password, as the embedded broker does.
const MaxPasswordLen = 256

// maxBody bounds a request body; EMQX's are a few hundred bytes.
const maxBody = 64 << 10

// Config configures the handlers.
type Config struct {
	// Devices checks device credentials. Required.
	Devices Authenticator
	// PlatformUser and PlatformPassword, when both are set, are the
	// platform's own broker login: it is allowed as superuser (EMQX then
	// skips authorization for it) and allowed any topic by Authorize.
	// Choose a name no device has (device ids start with "d-").
	PlatformUser, PlatformPassword string
	// Secret, when set, must arrive as "Authorization: Bearer SECRET"
	// (configure it in EMQX's headers). A request without it is denied.
	// The authentication endpoint checks passwords: without a secret
	// anyone who reaches it can use it to guess them.
	Secret string
	// AnyClientID lets a device connect with a client identifier other
	// than its id. EMQX keys sessions by client identifier, so this lets
	// one device take over another's session; leave it false, or set
	// mqtt.use_username_as_clientid = true in EMQX, which makes the two
	// equal for every device.
	AnyClientID bool
	// Timeout bounds one credential check (default 5 s).
	Timeout time.Duration
	// Logger logs refusals (default: discard).
	Logger *slog.Logger
}

// Handler serves both endpoints.
type Handler struct {
	cfg Config
	log *slog.Logger
}

// New returns the handlers for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Devices == nil {
		return nil, errors.New("emqxauth: no Devices authenticator")
	}
	if (cfg.PlatformUser == "") != (cfg.PlatformPassword == "") {
		return nil, errors.New("emqxauth: platform user and password go together")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Handler{cfg: cfg, log: log}, nil
}

// Routes returns a mux serving Authenticate at prefix+"/authn" and
// Authorize at prefix+"/authz" (prefix such as "/emqx").
func (h *Handler) Routes(prefix string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle(prefix+"/authn", h.Authenticate())
	mux.Handle(prefix+"/authz", h.Authorize())
	return mux
}

// AuthnResult is the authentication endpoint's answer.
type AuthnResult struct {
	Result      string `json:"result"`
	IsSuperuser bool   `json:"is_superuser"`
}

// AuthzResult is the authorization endpoint's answer.
type AuthzResult struct {
	Result string `json:"result"`
}

// Authenticate returns the authentication endpoint.
func (h *Handler) Authenticate() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := h.request(w, r)
		if !ok {
			if f != nil {
				reply(w, AuthnResult{Result: Deny})
			}
			return
		}
		user, pass, cid := f["username"], f["password"], f["clientid"]
		res := h.authenticate(r.Context(), user, pass, cid)
		if res.Result != Allow {
			h.log.Info("emqx authentication denied", "device_id", truncate(user), "client_id", truncate(cid), "peerhost", truncate(f["peerhost"]))
		}
		reply(w, res)
	})
}

func (h *Handler) authenticate(ctx context.Context, user, pass, cid string) AuthnResult {
	deny := AuthnResult{Result: Deny}
	if h.cfg.PlatformUser != "" && user == h.cfg.PlatformUser {
		if subtle.ConstantTimeCompare([]byte(pass), []byte(h.cfg.PlatformPassword)) == 1 {
			return AuthnResult{Result: Allow, IsSuperuser: true}
		}
		return deny
	}
	if protocol.ValidID(user) != nil || pass == "" || len(pass) > MaxPasswordLen {
		return deny
	}
	if !h.cfg.AnyClientID && cid != user {
		return deny
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	if err := h.cfg.Devices.AuthenticateDevice(ctx, user, pass); err != nil {
		h.log.Debug("emqx authentication: device refused", "device_id", user, "err", err)
		return deny
	}
	return AuthnResult{Result: Allow}
}

// Authorize returns the authorization endpoint.
func (h *Handler) Authorize() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := h.request(w, r)
		if !ok {
			if f != nil {
				reply(w, AuthzResult{Result: Deny})
			}
			return
		}
		user, topic, action := f["username"], f["topic"], f["action"]
		res := Deny
		if h.cfg.PlatformUser != "" && user == h.cfg.PlatformUser {
			res = Allow
		} else if Allowed(user, action, topic) {
			res = Allow
		}
		if res != Allow {
			h.log.Debug("emqx authorization denied", "device_id", truncate(user), "action", truncate(action), "topic", truncate(topic))
		}
		reply(w, AuthzResult{Result: res})
	})
}

// Allowed is the Outpost device ACL (docs/protocol.md §3), the rule the
// embedded broker's ACL hook applies: a device may publish only to a
// well-formed topic under its own outpost/v1/{id}/up/, and subscribe only
// to filters within its own outpost/v1/{id}. Any other action is refused.
func Allowed(deviceID, action, topic string) bool {
	if protocol.ValidID(deviceID) != nil {
		return false
	}
	switch action {
	case ActionPublish:
		t, err := protocol.ParseTopic(topic)
		return err == nil && t.DeviceID == deviceID && t.Dir == protocol.Up
	case ActionSubscribe:
		return protocol.FilterAllowed(deviceID, topic)
	}
	return false
}

// request reads a request's fields. It answers 405 itself (and returns
// nil, false); for a malformed request or a missing secret it returns a
// non-nil map and false, to be answered "deny".
func (h *Handler) request(w http.ResponseWriter, r *http.Request) (map[string]string, bool) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return nil, false
	}
	if h.cfg.Secret != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.cfg.Secret)) != 1 {
			h.log.Warn("emqx auth request without the shared secret", "remote", r.RemoteAddr)
			return map[string]string{}, false
		}
	}
	f, err := fields(r)
	if err != nil {
		h.log.Warn("emqx auth request malformed", "remote", r.RemoteAddr, "err", err)
		return map[string]string{}, false
	}
	return f, true
}

// fields returns the request's fields as strings, from a JSON or form body
// or the query string.
func fields(r *http.Request) (map[string]string, error) {
	out := map[string]string{}
	if r.Method == http.MethodGet {
		for k, v := range r.URL.Query() {
			out[k] = v[0]
		}
		return out, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxBody {
		return nil, errors.New("body over 64 KiB")
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/x-www-form-urlencoded" {
		q, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, err
		}
		for k, v := range q {
			out[k] = v[0]
		}
		return out, nil
	}
	var m map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value")
	}
	if m == nil {
		return nil, errors.New("not a JSON object")
	}
	for k, raw := range m {
		var v any
		d := json.NewDecoder(strings.NewReader(string(raw)))
		d.UseNumber()
		if err := d.Decode(&v); err != nil {
			return nil, err
		}
		switch v := v.(type) {
		case string:
			out[k] = v
		case json.Number:
			out[k] = v.String()
		case bool:
			out[k] = strconv.FormatBool(v)
		case nil:
			// null: absent
		default:
			// objects (client_attrs) and arrays: not used
		}
	}
	return out, nil
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

func truncate(s string) string {
	if len(s) <= 128 {
		return s
	}
	return s[:128] + "…"
}
