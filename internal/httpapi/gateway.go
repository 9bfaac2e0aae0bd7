package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/outpost-iot/outpost/internal/gateway"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// GatewayService is what the gateway endpoints need (internal/gateway).
type GatewayService interface {
	// SetGateway makes a device a gateway or changes its policy.
	// ENOTFOUND, EINVALID, ECONFLICT.
	SetGateway(ctx context.Context, id, policy string) (*outpost.Gateway, error)
	// Gateway returns a gateway. ENOTFOUND.
	Gateway(ctx context.Context, id string) (*outpost.Gateway, error)
	// Gateways lists the gateways.
	Gateways(ctx context.Context) ([]*outpost.Gateway, error)
	// Children lists a gateway's children. ENOTFOUND.
	Children(ctx context.Context, gatewayID string) ([]*outpost.Child, error)
	// AddChild registers a child: an existing device, or a new one when
	// deviceID is empty. ENOTFOUND, EINVALID, ECONFLICT.
	AddChild(ctx context.Context, gatewayID, address, deviceID string) (*outpost.Child, error)
	// RemoveChild removes a child's binding. ENOTFOUND.
	RemoveChild(ctx context.Context, gatewayID, address string) error
	// Sinks lists a gateway's sinks. ENOTFOUND.
	Sinks(ctx context.Context, gatewayID string) ([]*outpost.Sink, error)
	// SetSinkConfig asks the gateway to change a sink's configuration.
	// ENOTFOUND, EINVALID, EOFFLINE, ETIMEOUT, EUNAVAILABLE.
	SetSinkConfig(ctx context.Context, gatewayID, sink string, config json.RawMessage, timeout time.Duration) (*gateway.SinkConfigResult, error)
	// SendMessage asks the gateway to send data to a node. Errors as
	// SetSinkConfig.
	SendMessage(ctx context.Context, gatewayID, sink string, m gateway.Message, timeout time.Duration) (*gateway.SendResult, error)
}

type gatewayAPI struct {
	a   *api
	svc GatewayService
}

// routeGateways adds the gateway endpoints (docs/protocol.md §26.9).
func (a *api) routeGateways(mux *http.ServeMux, svc GatewayService) {
	if svc == nil {
		return
	}
	g := &gatewayAPI{a: a, svc: svc}
	mux.HandleFunc("GET /api/v1/gateways", a.auth(g.list))
	mux.HandleFunc("GET /api/v1/gateways/{id}", a.auth(g.get))
	mux.HandleFunc("PUT /api/v1/gateways/{id}", a.auth(g.put))
	mux.HandleFunc("GET /api/v1/gateways/{id}/children", a.auth(g.children))
	mux.HandleFunc("PUT /api/v1/gateways/{id}/children/{address}", a.auth(g.addChild))
	mux.HandleFunc("DELETE /api/v1/gateways/{id}/children/{address}", a.auth(g.removeChild))
	mux.HandleFunc("GET /api/v1/gateways/{id}/sinks", a.auth(g.sinks))
	mux.HandleFunc("GET /api/v1/gateways/{id}/sinks/{sink}", a.auth(g.sink))
	mux.HandleFunc("POST /api/v1/gateways/{id}/sinks/{sink}/config", a.auth(g.setConfig))
	mux.HandleFunc("POST /api/v1/gateways/{id}/sinks/{sink}/send", a.auth(g.send))
}

func (g *gatewayAPI) list(w http.ResponseWriter, r *http.Request) {
	gs, err := g.svc.Gateways(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"gateways": gs})
}

func (g *gatewayAPI) get(w http.ResponseWriter, r *http.Request) {
	gw, err := g.svc.Gateway(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, gw)
}

func (g *gatewayAPI) put(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Policy string `json:"policy"`
	}
	if err := decodeBody(w, r, &body); err != nil {
		writeError(w, err)
		return
	}
	gw, err := g.svc.SetGateway(r.Context(), r.PathValue("id"), body.Policy)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, gw)
}

func (g *gatewayAPI) children(w http.ResponseWriter, r *http.Request) {
	cs, err := g.svc.Children(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"gateway_id": r.PathValue("id"), "children": cs})
}

func (g *gatewayAPI) addChild(w http.ResponseWriter, r *http.Request) {
	var body struct {
		DeviceID string `json:"device_id"`
	}
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &body); err != nil {
			writeError(w, err)
			return
		}
	}
	c, err := g.svc.AddChild(r.Context(), r.PathValue("id"), r.PathValue("address"), body.DeviceID)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, c)
}

func (g *gatewayAPI) removeChild(w http.ResponseWriter, r *http.Request) {
	if err := g.svc.RemoveChild(r.Context(), r.PathValue("id"), r.PathValue("address")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (g *gatewayAPI) sinks(w http.ResponseWriter, r *http.Request) {
	ss, err := g.svc.Sinks(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"gateway_id": r.PathValue("id"), "sinks": ss})
}

func (g *gatewayAPI) sink(w http.ResponseWriter, r *http.Request) {
	ss, err := g.svc.Sinks(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	for _, s := range ss {
		if s.Name == r.PathValue("sink") {
			writeJSON(w, http.StatusOK, s)
			return
		}
	}
	writeError(w, outpost.Errorf(outpost.ENOTFOUND, "gateway %s has no sink %.64q", r.PathValue("id"), r.PathValue("sink")))
}

// waitTimeout reads a request's timeout and extends the response's write
// deadline by it.
func (g *gatewayAPI) waitTimeout(w http.ResponseWriter, s string) (time.Duration, error) {
	d, err := parseTimeout(s)
	if err != nil {
		return 0, err
	}
	if d > gateway.MaxTimeout {
		return 0, outpost.Errorf(outpost.EINVALID, "timeout %s exceeds the maximum of %s", d, gateway.MaxTimeout)
	}
	wait := d
	if wait <= 0 {
		wait = gateway.DefaultTimeout
	}
	if g.a.opt.WriteTimeout > 0 {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(g.a.opt.WriteTimeout + wait))
	}
	return d, nil
}

func (g *gatewayAPI) setConfig(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Config  json.RawMessage `json:"config"`
		Timeout string          `json:"timeout"`
	}
	if err := decodeBody(w, r, &body); err != nil {
		writeError(w, err)
		return
	}
	timeout, err := g.waitTimeout(w, body.Timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := g.svc.SetSinkConfig(r.Context(), r.PathValue("id"), r.PathValue("sink"), body.Config, timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (g *gatewayAPI) send(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Dest    string `json:"dst"`
		SrcEP   int    `json:"src_ep"`
		DstEP   int    `json:"dst_ep"`
		QoS     int    `json:"qos"`
		Payload []byte `json:"payload"`
		Timeout string `json:"timeout"`
	}
	if err := decodeBody(w, r, &body); err != nil {
		writeError(w, err)
		return
	}
	if body.Dest == "" {
		body.Dest = protocol.BroadcastAddress
	}
	timeout, err := g.waitTimeout(w, body.Timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := g.svc.SendMessage(r.Context(), r.PathValue("id"), r.PathValue("sink"),
		gateway.Message{Dest: body.Dest, SrcEP: body.SrcEP, DstEP: body.DstEP, QoS: body.QoS, Payload: body.Payload}, timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
