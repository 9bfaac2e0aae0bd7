package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/internal/extbroker"
	"github.com/outpost-iot/outpost/internal/server"
)

const serveAbout = `Start the platform: the embedded MQTT broker, the database (SQLite in
the data directory, or the one --db names: another SQLite file, or
PostgreSQL), the HTTP API. It prints its endpoints, one per line
(mqtt: tcp://HOST:PORT, http: http://HOST:PORT), and on the first start
the admin token (also saved in DATA/admin-token). While it runs, its
addresses are in DATA/running.json, where the CLI finds them.

It listens on 127.0.0.1 only unless given other addresses. When a default
port is taken (Mosquitto often holds 1883), it listens on the next free
port and says so; an address given with --mqtt or --http is used as is
(port 0 picks a free port).`

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sp := spec{name: "serve", about: serveAbout}
	fs := newFlags(sp)
	var cfg server.Config
	var logLevel string
	fs.StringVar(&cfg.DataDir, "data", "outpost-data", "data directory `DIR` (database, admin token)")
	fs.StringVar(&cfg.MQTTAddr, "mqtt", "", "MQTT listen address `ADDR` (default 127.0.0.1:1883, or the next free port when 1883 is taken; port 0 picks a free port)")
	fs.StringVar(&cfg.HTTPAddr, "http", "", "HTTP API listen address `ADDR` (default 127.0.0.1:8080, or the next free port when 8080 is taken; port 0 picks a free port)")
	fs.StringVar(&cfg.MQTTTLSAddr, "mqtts", "", "MQTT over TLS listen address `ADDR`, with --tls-cert (default 127.0.0.1:8883, or the next free port)")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "PEM certificate: enables MQTT over TLS and HTTPS")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&cfg.Sync, "sync", "normal", "SQLite durability: normal (survives a crash of the process) or full (also a power cut)")
	fs.StringVar(&cfg.Broker, "broker", "", "external MQTT broker `URL` mqtt://USER:PASSWORD@HOST:PORT or mqtts://…: the platform connects to it as a client and devices connect to it (docs/deploy.md); default: the embedded broker")
	fs.StringVar(&cfg.BrokerAdmin, "broker-admin", "", "with --broker: Mosquitto dynamic security admin `URL` mqtt://ADMIN:PASSWORD@HOST:PORT; the platform keeps every device's login and ACL there")
	fs.BoolVar(&cfg.EMQXAuth, "emqx-auth", false, "serve EMQX's HTTP authentication and authorization at /emqx/authn and /emqx/authz (docs/deploy.md)")
	fs.StringVar(&cfg.EMQXAuthSecret, "emqx-auth-secret", "", "with --emqx-auth: the `SECRET` EMQX sends as Authorization: Bearer SECRET (recommended)")
	fs.StringVar(&cfg.BrokerEvents, "broker-events", "", "with --broker: also take presence from the broker's own client events: emqx ($SYS/brokers/+/clients/+/connected, disconnected, subscribed; docs/deploy.md), or none")
	fs.StringVar(&cfg.Replica, "replica", "", "this platform's `NAME` among several sharing one PostgreSQL store (and external broker)")
	fs.StringVar(&cfg.DB, "db", "", "database: `URL` postgres://USER@HOST:PORT/DB (add ?search_path=SCHEMA for a schema of its own), or sqlite:PATH or a file path (default: the SQLite file in the data directory)")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&cfg.KeepAliveMin, "keepalive-min", 5*time.Second, "shortest MQTT keep-alive the platform grants a device")
	fs.DurationVar(&cfg.KeepAliveMax, "keepalive-max", 10*time.Minute, "longest MQTT keep-alive the platform grants a device")
	fs.IntVar(&cfg.DeviceRate, "device-rate", 0, "telemetry readings per second one device may send (0: no limit); a device over it is told to retry later (with --broker: stored and counted; the broker enforces)")
	fs.IntVar(&cfg.DeviceBurst, "device-burst", 0, "burst of readings allowed above --device-rate (default: one second's worth)")
	fs.DurationVar(&cfg.BatchRetention, "batch-retention", 30*24*time.Hour, "how long telemetry batch ids are kept to recognise redelivered batches (longer than any device outbox holds data)")
	fs.DurationVar(&cfg.ReadingRetention, "readings-retention", 0, "how long readings are kept, by their timestamp (0: for ever; PostgreSQL keeps up to a day more, as it drops a day at a time)")
	fs.DurationVar(&cfg.QueueRetention, "queue-retention", 7*24*time.Hour, "how long finished calls and delivered or expired queued messages stay readable")
	fs.DurationVar(&cfg.KeepAliveDefault, "keepalive", 60*time.Second, "keep-alive for devices that propose none; a device silent for two intervals is dropped")
	hardeningFlags(fs, &cfg)
	fs.IntVar(&cfg.MaxConnections, "max-connections", 0, "most MQTT connections open at once (0: the open-file limit minus 512; -1: no bound)")
	fs.IntVar(&cfg.MaxPendingConnections, "max-pending", broker.DefaultMaxPending, "most MQTT connections that have not logged in yet (-1: no bound)")
	fs.IntVar(&cfg.MaxPendingPerAddress, "max-pending-per-addr", broker.DefaultMaxPendingPerAddr, "most MQTT connections that have not logged in yet from one address (IPv6: one /64) (-1: no bound)")
	fs.DurationVar(&cfg.MQTTConnectTimeout, "mqtt-connect-timeout", broker.DefaultConnectTimeout, "how long a new MQTT connection has to send its CONNECT")
	fs.DurationVar(&cfg.MQTTWriteTimeout, "mqtt-write-timeout", broker.DefaultWriteTimeout, "how long a write to a device may make no progress before the device is disconnected")
	fs.IntVar(&cfg.MaxSubscriptions, "max-subscriptions", broker.DefaultMaxSubscriptions, "most subscriptions one device may hold (-1: no bound)")
	fs.StringVar(&cfg.SigningKeyFile, "signing-key", "", "Ed25519 private key `FILE` (PKCS #8 PEM) that signs artifacts (default: DIR/signing-key.pem, created on first start)")
	fs.StringVar(&cfg.PublicURL, "public-url", "", "base `URL` devices download files from (default: the HTTP listener's URL)")
	fs.Int64Var(&cfg.StreamRingBytes, "stream-ring-bytes", 64<<20, "memory for recent live-stream events kept so that a reconnecting client resumes without a gap")
	if _, err := parse(fs, sp, args, stdout); err != nil {
		return err
	}
	if cfg.Broker != "" {
		if _, err := extbroker.ParseURL(cfg.Broker); err != nil {
			return err
		}
	}
	var err error
	if cfg.BrokerEvents, err = extbroker.ParseEvents(cfg.BrokerEvents); err != nil {
		return err
	}
	if cfg.BrokerEvents != "" && cfg.Broker == "" {
		return fmt.Errorf("--broker-events is for an external broker: give --broker too")
	}
	if _, err := server.ParseDB(cfg.DB, cfg.DataDir); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	// Every MQTT connection is a file: take all the process may have.
	fileLimit, fileLimitErr := server.RaiseFileLimit()

	s, err := server.Open(ctx, cfg)
	if err != nil {
		return err
	}
	// Said once the platform runs, so that a failed start stays one line.
	if fileLimitErr != nil {
		cfg.Logger.Warn("could not raise the open-file limit", "limit", fileLimit, "error", fileLimitErr)
	} else if fileLimit > 0 {
		cfg.Logger.Info("open-file limit", "limit", fileLimit)
	}
	fmt.Fprintf(stdout, "mqtt: %s\n", s.MQTTURL())
	if u := s.MQTTSURL(); u != "" {
		fmt.Fprintf(stdout, "mqtts: %s\n", u)
	}
	fmt.Fprintf(stdout, "http: %s\n", s.HTTPURL())
	if cfg.Broker == "" {
		fmt.Fprintf(stdout, "devices: %s\n", capacity(s.MaxConnections(), cfg.MaxConnections, fileLimit))
	}
	fmt.Fprintf(stdout, "data: %s\n", s.DataDir())
	// The token is printed until a start has printed it: a first start
	// that failed (a port in use) did not.
	if !s.TokenShown() {
		fmt.Fprintf(stdout, "admin token: %s\n", s.AdminToken())
		if err := s.MarkTokenShown(); err != nil {
			cfg.Logger.Warn(err.Error())
		}
	} else if p := s.TokenPath(); p != "" {
		fmt.Fprintf(stdout, "admin token file: %s\n", p)
	}
	<-ctx.Done()
	cfg.Logger.Info("shutting down")
	return s.Close()
}

// capacity says how many devices can be connected at once, and what
// decides it: the open-file limit (every connection is a file) or
// --max-connections.
func capacity(bound, flagValue int, fileLimit uint64) string {
	switch {
	case bound == 0:
		return "no bound on connected devices (--max-connections -1, or no open-file limit)"
	case flagValue > 0:
		return fmt.Sprintf("up to %d connected at once (--max-connections)", bound)
	}
	return fmt.Sprintf("up to %d connected at once: the open-file limit is %d, %d files are kept for the database and the API (raise it with ulimit -n, or set --max-connections)",
		bound, fileLimit, int(fileLimit)-bound)
}
