package httpapi

import (
	"context"
	"net/http"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// BulkCreator registers many devices in one request. The platform's
// Service implements it; the route exists only when it does.
type BulkCreator interface {
	// CreateDevices registers a device for each name, all or none, and
	// returns them with their secrets (secrets[i] is devices[i]'s).
	// EINVALID (no names, too many, a bad or repeated name), ECONFLICT (a
	// name is taken).
	CreateDevices(ctx context.Context, names []string) (devices []*outpost.Device, secrets []string, err error)
}

// routeBulk adds POST /api/v1/devices/bulk when the service has it.
func (a *api) routeBulk(mux *http.ServeMux) {
	bc, ok := a.svc.(BulkCreator)
	if !ok {
		return
	}
	mux.HandleFunc("POST /api/v1/devices/bulk", a.auth(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Names []string `json:"names"`
		}
		if err := decodeBody(w, r, &req); err != nil {
			writeError(w, err)
			return
		}
		ds, secrets, err := bc.CreateDevices(r.Context(), req.Names)
		if err != nil {
			writeError(w, err)
			return
		}
		out := make([]createdDevice, len(ds))
		for i, d := range ds {
			out[i] = a.withURL(d, secrets[i])
		}
		writeJSON(w, http.StatusCreated, map[string]any{"devices": out})
	}))
}
