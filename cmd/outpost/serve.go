package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/internal/server"
)

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg server.Config
	var brokerURL, dbURL, logLevel string
	fs.StringVar(&cfg.DataDir, "data", "outpost-data", "data directory (database, admin token)")
	fs.StringVar(&cfg.MQTTAddr, "mqtt", ":1883", "MQTT listen address (port 0 picks a free port)")
	fs.StringVar(&cfg.HTTPAddr, "http", ":8080", "HTTP API listen address (port 0 picks a free port)")
	fs.StringVar(&cfg.MQTTTLSAddr, "mqtts", ":8883", "MQTT over TLS listen address (with --tls-cert)")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "PEM certificate: enables MQTT over TLS and HTTPS")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&cfg.Sync, "sync", "normal", "SQLite durability: normal (survives a crash of the process) or full (also a power cut)")
	fs.StringVar(&brokerURL, "broker", "", "external MQTT broker URL (not available yet)")
	fs.StringVar(&dbURL, "db", "", "external database URL (not available yet)")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&cfg.KeepAliveMin, "keepalive-min", 5*time.Second, "shortest MQTT keep-alive the platform grants a device")
	fs.DurationVar(&cfg.KeepAliveMax, "keepalive-max", 10*time.Minute, "longest MQTT keep-alive the platform grants a device")
	fs.IntVar(&cfg.DeviceRate, "device-rate", 0, "telemetry readings per second one device may send (0: no limit); a device over it is told to retry later")
	fs.IntVar(&cfg.DeviceBurst, "device-burst", 0, "burst of readings allowed above --device-rate (default: one second's worth)")
	fs.DurationVar(&cfg.BatchRetention, "batch-retention", 30*24*time.Hour, "how long telemetry batch ids are kept to recognise redelivered batches (longer than any device outbox holds data)")
	fs.DurationVar(&cfg.QueueRetention, "queue-retention", 7*24*time.Hour, "how long finished calls and delivered or expired queued messages stay readable")
	fs.DurationVar(&cfg.KeepAliveDefault, "keepalive", 60*time.Second, "keep-alive for devices that propose none; a device silent for two intervals is dropped")
	fs.Int64Var(&cfg.StreamRingBytes, "stream-ring-bytes", 64<<20, "memory for recent live-stream events kept so that a reconnecting client resumes without a gap")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if brokerURL != "" {
		return errors.New("--broker: an external broker is not supported by this version yet; omit it to use the embedded broker")
	}
	if dbURL != "" && !strings.HasPrefix(dbURL, "sqlite:") {
		return errors.New("--db: only the embedded SQLite database is supported by this version; omit it")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	s, err := server.Open(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "mqtt: %s\n", s.MQTTURL())
	if u := s.MQTTSURL(); u != "" {
		fmt.Fprintf(stdout, "mqtts: %s\n", u)
	}
	fmt.Fprintf(stdout, "http: %s\n", s.HTTPURL())
	fmt.Fprintf(stdout, "data: %s\n", s.DataDir())
	if s.TokenIsNew() {
		fmt.Fprintf(stdout, "admin token: %s\n", s.AdminToken())
	}
	<-ctx.Done()
	cfg.Logger.Info("shutting down")
	return s.Close()
}
