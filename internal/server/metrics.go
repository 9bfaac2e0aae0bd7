package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/outpost-iot/outpost/internal/health"
	"github.com/outpost-iot/outpost/internal/httplimit"
)

// metrics is the platform's Prometheus registry (no global state): each
// part registers its own metrics on it when it opens; here are the Go
// runtime's and the process's, and those read from the broker, presence,
// the data directory and the store engine.
type metrics struct {
	reg *prometheus.Registry
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// register adds the metrics that read live state from the parts.
func (m *metrics) register(s *Server, store []prometheus.Collector) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_devices_online", Help: "Devices holding a live session."},
		func() float64 { return float64(s.presence.Count()) }))
	if s.link != nil && s.cfg.Replica != "" {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_replica_stream_peers",
			Help: "Other replicas with live-stream listeners, to which this replica mirrors its events."},
			func() float64 { return float64(s.link.PeersListening()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_replica_events_mirrored_total",
				Help: "Live-stream events sent to other replicas (only while one has a listener)."},
				func() float64 { return float64(s.link.Mirrored()) }))
	}
	if _, _, ok := health.DiskSpace(s.cfg.DataDir); ok {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_data_dir_free_bytes",
				Help: "Free space of the file system holding the data directory, in bytes available to the platform."},
				func() float64 { f, _, _ := health.DiskSpace(s.cfg.DataDir); return float64(f) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_data_dir_size_bytes",
				Help: "Size of the file system holding the data directory, in bytes."},
				func() float64 { _, t, _ := health.DiskSpace(s.cfg.DataDir); return float64(t) }),
		)
	}
	m.reg.MustRegister(store...)
	if s.link != nil {
		l := s.link
		m.reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_broker_link_messages_total", Help: "Device messages received from the external broker."},
				func() float64 { return float64(l.Received()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_broker_link_retries_total", Help: "Device messages from the external broker handled again after a transient failure (acknowledged only once handled)."},
				func() float64 { return float64(l.Retried()) }),
		)
	}
	if s.broker != nil {
		m.registerBroker(s)
	}
}

// registerBroker adds the metrics of the embedded broker.
func (m *metrics) registerBroker(s *Server) {
	st := s.broker.Stats()
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_mqtt_clients", Help: "Connected MQTT clients."},
			func() float64 { return float64(s.broker.Clients()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_mqtt_auth_failures_total", Help: "Refused MQTT logins."},
			func() float64 { return float64(st.AuthFailures.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_mqtt_acl_denied_total", Help: "Publishes and subscriptions refused by the per-device ACL."},
			func() float64 { return float64(st.ACLDenied.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_mqtt_messages_rejected_total", Help: "Device messages rejected for good."},
			func() float64 { return float64(st.Rejected.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_mqtt_messages_unacknowledged_total", Help: "Device messages left unacknowledged after a transient failure (the device resends)."},
			func() float64 { return float64(st.Retried.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_mqtt_oversize_disconnects_total", Help: "MQTT 5 connections ended with DISCONNECT 0x95 for a packet over the Maximum Packet Size."},
			func() float64 { return float64(st.Oversize.Load()) }),
	)
	m.registerBrokerLimits(s)
}

// registerHTTP adds the metrics of the HTTP connection bound.
func (m *metrics) registerHTTP(h *httplimit.Conns) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_http_connections", Help: "Open HTTP connections."},
			func() float64 { return float64(h.Open()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_http_connections_evicted_total",
			Help: "Idle HTTP connections closed to make room for new ones at --http-max-conns."},
			func() float64 { return float64(h.Evicted.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_http_connections_refused_total",
			Help: "HTTP connections closed at once because --http-max-conns connections were all busy."},
			func() float64 { return float64(h.Refused.Load()) }),
	)
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
