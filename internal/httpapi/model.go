package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// ModelService is what the device-model endpoints need (Parts.Model);
// the routes exist only when it is set.
type ModelService interface {
	// FeedDefs returns a device's registered feeds (ENOTFOUND).
	FeedDefs(ctx context.Context, id string) ([]outpost.Feed, error)
	// SetFeedValue sends a value to an IN_OUT feed: ENOTFOUND for an
	// unknown device or feed, EINVALID for a feed that is not IN_OUT or a
	// value of the wrong type, EOFFLINE when it cannot be delivered.
	SetFeedValue(ctx context.Context, id, ref string, value json.RawMessage, ttl time.Duration) (*outpost.FeedCommand, error)
	// Attributes returns a device's attributes (ENOTFOUND).
	Attributes(ctx context.Context, id string) ([]outpost.Attribute, error)
	// Parameters returns a device's parameters (ENOTFOUND).
	Parameters(ctx context.Context, id string) (*outpost.Parameters, error)
	// UpdateParameters applies changes (null removes a key) and sends them
	// to the device (ENOTFOUND, EINVALID).
	UpdateParameters(ctx context.Context, id string, changes map[string]json.RawMessage) (*outpost.Parameters, error)
	// Events returns stored events and notifications (ENOTFOUND).
	Events(ctx context.Context, f outpost.EventFilter) ([]outpost.DeviceEvent, error)
}

// maxEventsLimit bounds one events query.
const maxEventsLimit = 10_000

func (a *api) registerModel(mux *http.ServeMux) {
	if a.p.Model == nil {
		return
	}
	m := &modelAPI{svc: a.p.Model}
	mux.HandleFunc("GET /api/v1/devices/{id}/model", a.auth(m.model))
	mux.HandleFunc("GET /api/v1/devices/{id}/feeds/{ref}", a.auth(m.feed))
	mux.HandleFunc("POST /api/v1/devices/{id}/feeds/{ref}/value", a.auth(m.setFeedValue))
	mux.HandleFunc("GET /api/v1/devices/{id}/attributes", a.auth(m.attributes))
	mux.HandleFunc("GET /api/v1/devices/{id}/parameters", a.auth(m.parameters))
	mux.HandleFunc("PATCH /api/v1/devices/{id}/parameters", a.auth(m.updateParameters))
	mux.HandleFunc("GET /api/v1/devices/{id}/events", a.auth(m.events))
}

type modelAPI struct{ svc ModelService }

func (m *modelAPI) model(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	feeds, err := m.svc.FeedDefs(r.Context(), id)
	if err != nil {
		writeError(w, err)
		return
	}
	attrs, err := m.svc.Attributes(r.Context(), id)
	if err != nil {
		writeError(w, err)
		return
	}
	params, err := m.svc.Parameters(r.Context(), id)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_id": id, "feeds": feeds, "attributes": attrs, "parameters": params})
}

func (m *modelAPI) feed(w http.ResponseWriter, r *http.Request) {
	id, ref := r.PathValue("id"), r.PathValue("ref")
	feeds, err := m.svc.FeedDefs(r.Context(), id)
	if err != nil {
		writeError(w, err)
		return
	}
	for _, f := range feeds {
		if f.Ref == ref {
			writeJSON(w, http.StatusOK, f)
			return
		}
	}
	writeError(w, outpost.Errorf(outpost.ENOTFOUND, "device %s has not registered feed %q", id, ref))
}

func (m *modelAPI) setFeedValue(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Value json.RawMessage `json:"value"`
		// TTL is how long the command may wait for the device ("10m");
		// default one hour.
		TTL string `json:"ttl"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Value) == 0 {
		writeError(w, outpost.Errorf(outpost.EINVALID, `request body needs a "value"`))
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		var err error
		if ttl, err = parseTimeout(req.TTL); err != nil {
			writeError(w, outpost.Errorf(outpost.EINVALID, "ttl must be a positive duration such as 10m"))
			return
		}
	}
	res, err := m.svc.SetFeedValue(r.Context(), r.PathValue("id"), r.PathValue("ref"), req.Value, ttl)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, res)
}

func (m *modelAPI) attributes(w http.ResponseWriter, r *http.Request) {
	as, err := m.svc.Attributes(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"attributes": as})
}

func (m *modelAPI) parameters(w http.ResponseWriter, r *http.Request) {
	p, err := m.svc.Parameters(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (m *modelAPI) updateParameters(w http.ResponseWriter, r *http.Request) {
	var changes map[string]json.RawMessage
	if err := decodeBody(w, r, &changes); err != nil {
		writeError(w, err)
		return
	}
	p, err := m.svc.UpdateParameters(r.Context(), r.PathValue("id"), changes)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (m *modelAPI) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := outpost.EventFilter{DeviceID: r.PathValue("id"), Kind: q.Get("kind"), Limit: 100}
	switch f.Kind {
	case "", outpost.EventKindEvent, outpost.EventKindNotification:
	default:
		writeError(w, outpost.Errorf(outpost.EINVALID, "kind must be event or notification"))
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxEventsLimit {
			writeError(w, outpost.Errorf(outpost.EINVALID, "limit must be between 1 and %d", maxEventsLimit))
			return
		}
		f.Limit = n
	}
	var err error
	if f.Since, err = parseTime(q.Get("since")); err != nil {
		writeError(w, err)
		return
	}
	es, err := m.svc.Events(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_id": f.DeviceID, "events": es})
}
