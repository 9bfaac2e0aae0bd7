package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// fileReserve is how many files MaxConnections leaves by default for
// everything but MQTT connections: the database, the HTTP API, logs.
const fileReserve = 512

// defaultMaxConnections bounds MQTT connections so that they cannot take
// the files the database and the API need: the file limit minus
// fileReserve, or no bound when the limit is unknown or huge.
func defaultMaxConnections() int {
	n := fileLimit()
	if n == 0 || n > 1<<30 {
		return -1
	}
	if n <= 2*fileReserve {
		return int(n / 2)
	}
	return int(n - fileReserve)
}

// registerBrokerLimits adds the metrics of the broker's bounds and
// defences.
func (m *metrics) registerBrokerLimits(s *Server) {
	st := s.broker.Stats()
	counter := func(name, help string, v func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v()) })
	}
	refused := prometheus.NewDesc("outpost_mqtt_connections_refused_total",
		"MQTT connections closed at once because a bound was reached, by bound.", []string{"bound"}, nil)
	m.reg.MustRegister(
		counter("outpost_mqtt_accept_errors_total", "Failed accepts on the MQTT listeners (such as EMFILE); the listener backs off and goes on.", st.AcceptErrors.Load),
		counter("outpost_mqtt_connect_timeouts_total", "MQTT connections closed for not sending CONNECT in time.", st.ConnectTimeouts.Load),
		counter("outpost_mqtt_write_stalls_total", "Devices disconnected because a write to them made no progress for the write timeout.", st.WriteStalls.Load),
		counter("outpost_mqtt_subscriptions_refused_total", "Subscriptions refused because the device held the maximum already.", st.SubscriptionsRefused.Load),
		counter("outpost_mqtt_messages_dropped_total", "Messages to devices the broker dropped because the device's write queue or in-flight window was full.", s.broker.Dropped),
		collectorFunc{descs: []*prometheus.Desc{refused}, collect: func(ch chan<- prometheus.Metric) {
			ch <- prometheus.MustNewConstMetric(refused, prometheus.CounterValue, float64(st.RefusedMaxConnections.Load()), "max_connections")
			ch <- prometheus.MustNewConstMetric(refused, prometheus.CounterValue, float64(st.RefusedPending.Load()), "max_pending")
			ch <- prometheus.MustNewConstMetric(refused, prometheus.CounterValue, float64(st.RefusedPendingPerAddr.Load()), "max_pending_per_address")
		}},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_mqtt_connections", Help: "Open MQTT connections, authenticated or not."},
			func() float64 { open, _ := s.broker.Connections(); return float64(open) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_mqtt_connections_pending", Help: "Open MQTT connections that have not authenticated yet."},
			func() float64 { _, p := s.broker.Connections(); return float64(p) }),
	)
}

// collectorFunc is a prometheus.Collector made of two functions.
type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
