package main

import (
	"flag"
	"time"

	"github.com/outpost-iot/outpost/internal/server"
)

// hardeningFlags adds the serve flags of the HTTP server's bounds, the
// /metrics access and the integrity check at start (docs/architecture.md,
// "Limits and defences").
func hardeningFlags(fs *flag.FlagSet, cfg *server.Config) {
	fs.DurationVar(&cfg.HTTPReadHeaderTimeout, "http-read-header-timeout", 10*time.Second, "longest time to read an HTTP request's header")
	fs.DurationVar(&cfg.HTTPReadTimeout, "http-read-timeout", 15*time.Second, "longest time to read a whole HTTP request, body included")
	fs.DurationVar(&cfg.HTTPWriteTimeout, "http-write-timeout", 60*time.Second, "longest time to write an HTTP response (not the event stream; a synchronous RPC gets its timeout on top)")
	fs.DurationVar(&cfg.HTTPIdleTimeout, "http-idle-timeout", 60*time.Second, "how long an idle keep-alive HTTP connection is kept")
	fs.IntVar(&cfg.HTTPMaxConns, "http-max-conns", 1024, "most open HTTP connections; at the bound the oldest idle one is closed to make room")
	fs.BoolVar(&cfg.MetricsAuth, "metrics-auth", false, "require the admin token on /metrics (default: open; it shows counts only)")
	fs.DurationVar(&cfg.IntegrityCheck, "integrity-check", 10*time.Second, "time bound of the database's quick integrity check at start (negative: skip it)")
}
