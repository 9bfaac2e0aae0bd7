package httpapi

import (
	"net/http"
)

// routeBulk adds POST /api/v1/devices/bulk.
func (a *api) routeBulk(mux *http.ServeMux) {
	bc := a.p.Devices
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
