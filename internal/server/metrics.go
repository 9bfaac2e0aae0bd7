package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/rpc"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

// metrics holds every Prometheus metric of the platform, registered in one
// place on a registry of our own (no global state).
type metrics struct {
	reg *prometheus.Registry

	readingsStored   prometheus.Counter
	readingsRejected prometheus.Counter
	batchesStored    prometheus.Counter
	batchesDuplicate prometheus.Counter
	ingestOverloaded prometheus.Counter
	rateLimited      prometheus.Counter
	commitSeconds    prometheus.Histogram
	deviceErrors     *prometheus.CounterVec
	devicesCreated   prometheus.Counter
	rpcCalls         *prometheus.CounterVec
	rpcSeconds       prometheus.Histogram
	rpcLate          prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.readingsStored = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_readings_stored_total", Help: "Readings committed to the store."})
	m.readingsRejected = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_readings_rejected_total", Help: "Readings rejected as invalid (the device got an error reply)."})
	m.batchesStored = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_batches_stored_total", Help: "Telemetry batches committed."})
	m.batchesDuplicate = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_batches_duplicate_total", Help: "Redelivered telemetry batches recognised by id and not stored again."})
	m.rateLimited = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_telemetry_rate_limited_total", Help: "Telemetry messages refused because their device exceeded its rate limit (the device retries)."})
	m.ingestOverloaded = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_ingest_overloaded_total", Help: "Telemetry messages refused because the ingest queue was full (the device retries)."})
	m.commitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "outpost_ingest_commit_seconds", Help: "Duration of one group commit.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)})
	m.deviceErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "outpost_device_error_replies_total", Help: "Error replies sent to devices, by code."}, []string{"code"})
	m.devicesCreated = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_devices_created_total", Help: "Devices created."})
	m.rpcCalls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "outpost_rpc_calls_total", Help: "RPC calls by outcome."}, []string{"outcome"})
	m.rpcSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "outpost_rpc_duration_seconds", Help: "Round trip of successful RPC calls.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
	m.rpcLate = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_rpc_late_responses_total", Help: "RPC responses that arrived after their caller gave up."})
	m.reg.MustRegister(m.readingsStored, m.readingsRejected, m.batchesStored, m.batchesDuplicate, m.ingestOverloaded, m.rateLimited, m.commitSeconds,
		m.deviceErrors, m.devicesCreated, m.rpcCalls, m.rpcSeconds, m.rpcLate,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// register adds the metrics that read live state from the server.
func (m *metrics) register(s *Server) {
	st := s.broker.Stats()
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_devices_online", Help: "Devices holding a live session."},
			func() float64 { return float64(s.presence.Count()) }),
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
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_rpc_pending", Help: "RPC calls waiting for an answer."},
			func() float64 { return float64(s.relay.Pending()) }),
	)
	if _, _, ok := diskSpace(s.cfg.DataDir); ok {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_data_dir_free_bytes",
				Help: "Free space of the file system holding the data directory, in bytes available to the platform."},
				func() float64 { f, _, _ := diskSpace(s.cfg.DataDir); return float64(f) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_data_dir_size_bytes",
				Help: "Size of the file system holding the data directory, in bytes."},
				func() float64 { _, t, _ := diskSpace(s.cfg.DataDir); return float64(t) }),
		)
	}
	if sdb, ok := s.db.(*sqlite.DB); ok {
		m.reg.MustRegister(storeCollector{sdb}) // SQLite's background work
	}
	m.registerBrokerLimits(s)
}

// registerHTTP adds the metrics of the HTTP connection bound.
func (m *metrics) registerHTTP(h *httpConns) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_http_connections", Help: "Open HTTP connections."},
			func() float64 { return float64(h.open()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_http_connections_evicted_total",
			Help: "Idle HTTP connections closed to make room for new ones at --http-max-conns."},
			func() float64 { return float64(h.evicted.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outpost_http_connections_refused_total",
			Help: "HTTP connections closed at once because --http-max-conns connections were all busy."},
			func() float64 { return float64(h.refused.Load()) }),
	)
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *metrics) observeRPC(err error, res *rpc.Result) {
	if err != nil {
		m.rpcCalls.WithLabelValues(outpost.ErrorCode(err)).Inc()
		return
	}
	m.rpcCalls.WithLabelValues("ok").Inc()
	m.rpcSeconds.Observe(res.Duration.Seconds())
}
