package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// CallService is what the API needs for queued calls (Parts.Calls); the
// routes exist only when it is set.
type CallService interface {
	// EnqueueCall queues a call (EINVALID, ENOTFOUND, ECONFLICT when the
	// device has too many messages waiting).
	EnqueueCall(ctx context.Context, id, method string, args json.RawMessage, ttl, timeout time.Duration) (*outpost.Call, error)
	// Call returns a call. ENOTFOUND.
	Call(ctx context.Context, id string) (*outpost.Call, error)
	// Calls lists a device's calls, newest first. ENOTFOUND for an
	// unknown device.
	Calls(ctx context.Context, f outpost.CallFilter) ([]*outpost.Call, error)
	// CancelCall cancels a queued call. ENOTFOUND, ECONFLICT.
	CancelCall(ctx context.Context, id string) (*outpost.Call, error)
}

// routeCalls adds the queued-call endpoints when the service has them.
func (a *api) routeCalls(mux *http.ServeMux) {
	if a.p.Calls == nil {
		return
	}
	mux.HandleFunc("GET /api/v1/calls/{id}", a.auth(a.getCall))
	mux.HandleFunc("DELETE /api/v1/calls/{id}", a.auth(a.cancelCall))
	mux.HandleFunc("GET /api/v1/devices/{id}/calls", a.auth(a.deviceCalls))
}

// queueRPC serves POST /api/v1/devices/{id}/rpc/{method}?queue=true: the
// call is stored and the answer is 202 with the call, whatever the device's
// state; a connected device gets it at once (state sent).
func (a *api) queueRPC(w http.ResponseWriter, r *http.Request, args json.RawMessage) {
	if a.p.Calls == nil {
		writeError(w, outpost.Errorf(outpost.ENOTSUPPORTED, "queued calls are not available"))
		return
	}
	q := r.URL.Query()
	ttl, err := parseDuration("ttl", q.Get("ttl"))
	if err != nil {
		writeError(w, err)
		return
	}
	timeout, err := parseDuration("timeout", q.Get("timeout"))
	if err != nil {
		writeError(w, err)
		return
	}
	c, err := a.p.Calls.EnqueueCall(r.Context(), r.PathValue("id"), r.PathValue("method"), args, ttl, timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/calls/"+c.ID)
	writeJSON(w, http.StatusAccepted, c)
}

// parseDuration is parseTimeout with the parameter's name in the error.
func parseDuration(name, s string) (time.Duration, error) {
	d, err := parseTimeout(s)
	if err != nil {
		return 0, outpost.Errorf(outpost.EINVALID, "%s must be a positive duration such as 30s or 1h", name)
	}
	return d, nil
}

func (a *api) getCall(w http.ResponseWriter, r *http.Request) {
	c, err := a.p.Calls.Call(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (a *api) cancelCall(w http.ResponseWriter, r *http.Request) {
	c, err := a.p.Calls.CancelCall(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (a *api) deviceCalls(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := outpost.CallFilter{DeviceID: r.PathValue("id"), State: outpost.State(q.Get("state"))}
	if f.State != "" && !f.State.Valid() {
		writeError(w, outpost.Errorf(outpost.EINVALID, "unknown state %q", f.State))
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, outpost.Errorf(outpost.EINVALID, "limit must be between 1 and 1000"))
			return
		}
		f.Limit = n
	}
	cs, err := a.p.Calls.Calls(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"calls": cs})
}

func parseQueue(s string) (bool, error) {
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, outpost.Errorf(outpost.EINVALID, "queue must be true or false")
	}
	return b, nil
}
