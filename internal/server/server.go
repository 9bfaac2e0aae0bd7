// Package server wires the platform together: store, embedded broker,
// ingestion, RPC relay, presence, live stream, metrics and the HTTP API.
//
// cmd/outpost and the end-to-end tests both start the platform through Open,
// so the tests exercise the real wiring.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/internal/artifact"
	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/internal/dynsec"
	"github.com/outpost-iot/outpost/internal/extbroker"
	"github.com/outpost-iot/outpost/internal/gateway"
	"github.com/outpost-iot/outpost/internal/health"
	"github.com/outpost-iot/outpost/internal/httpapi"
	"github.com/outpost-iot/outpost/internal/httplimit"
	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/loglimit"
	"github.com/outpost-iot/outpost/internal/memtrim"
	"github.com/outpost-iot/outpost/internal/model"
	"github.com/outpost-iot/outpost/internal/ota"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/presence"
	"github.com/outpost-iot/outpost/internal/queue"
	"github.com/outpost-iot/outpost/internal/registry"
	"github.com/outpost-iot/outpost/internal/reply"
	"github.com/outpost-iot/outpost/internal/retention"
	"github.com/outpost-iot/outpost/internal/router"
	"github.com/outpost-iot/outpost/internal/rpc"
	"github.com/outpost-iot/outpost/internal/sqlite"
	"github.com/outpost-iot/outpost/internal/stream"
	"github.com/outpost-iot/outpost/internal/telemetry"
	"github.com/outpost-iot/outpost/protocol"
)

// Config is the platform configuration, filled from flags by cmd/outpost.
type Config struct {
	// DataDir holds the database (unless DB names another), the admin
	// token and, while the platform runs, its addresses (RunningFile)
	// (default "./outpost-data"). One platform at a time may use it.
	DataDir string
	// DB chooses the store (see ParseDB): empty for the SQLite database
	// DBFile in DataDir, sqlite:PATH or a file path for another SQLite
	// file, postgres://… for PostgreSQL. Sync and IntegrityCheck apply to
	// SQLite only.
	DB string
	// Replica names this platform in a PostgreSQL store that several
	// platforms share: the devices whose sessions it records online are
	// its own, and only those are marked offline when it starts. Empty
	// (the default) for the only platform on its store, which owns every
	// device; SQLite takes no name.
	Replica string
	// Broker, when set, is an external MQTT broker the platform connects
	// to as a privileged MQTT 5 client instead of running the embedded
	// one: mqtt://USER:PASSWORD@HOST:PORT, or mqtts://… for TLS. Devices
	// then connect to that broker, which authenticates them (docs/deploy.md);
	// the MQTT listen addresses are unused.
	Broker string
	// BrokerAdmin, with Broker, is the admin login of Mosquitto's dynamic
	// security plugin (mqtt://ADMIN:PASSWORD@HOST:PORT): the platform then
	// keeps every device's login and ACL at the broker (created, rotated,
	// deleted with the device) and the platform's own login (Broker's user
	// and password), created at start.
	BrokerAdmin string
	// EMQXAuth serves EMQX 5's HTTP authentication and authorization
	// endpoints on the HTTP listener (/emqx/authn, /emqx/authz), checking
	// devices against the platform's credentials; EMQXAuthSecret, when
	// set, must arrive as "Authorization: Bearer SECRET" (docs/deploy.md).
	EMQXAuth       bool
	EMQXAuthSecret string
	// BrokerEvents, with Broker, names the broker whose own client events
	// also give devices presence: "emqx" subscribes to EMQX's
	// $SYS/brokers/+/clients/+/connected, disconnected and subscribed, so
	// that devices that do not announce themselves (third-party, plain
	// MQTT) show online and get their queued messages (docs/deploy.md).
	// Empty: presence from the devices' announcements only.
	BrokerEvents string
	// BrokerReceiveMaximum, with Broker, bounds the messages the broker
	// may send the platform before it acknowledges them (default 1,024).
	// Every device's traffic shares it.
	BrokerReceiveMaximum uint16
	// MQTTAddr is the plain MQTT listen address. Empty means the default,
	// 127.0.0.1:1883, or the next free port above it when 1883 is taken
	// (Open logs a warning); a given address is used as is. Port 0 picks
	// a free port.
	MQTTAddr string
	// MQTTTLSAddr is the MQTT-over-TLS listen address, used when a
	// certificate is configured. Empty means 127.0.0.1:8883 or, if taken,
	// the next free port.
	MQTTTLSAddr string
	// HTTPAddr is the API listen address. Empty means 127.0.0.1:8080 or,
	// if taken, the next free port.
	//
	// The defaults listen on loopback only. An address that other machines
	// can reach makes Open log a warning when the traffic on it is not
	// encrypted: always for plain MQTT, for HTTP without TLSCertFile.
	HTTPAddr string
	// HTTPReadHeaderTimeout bounds reading a request's header (default
	// 10s), HTTPReadTimeout reading a whole request, body included
	// (default 15s), HTTPWriteTimeout writing a response (default 60s;
	// not the event stream, and a synchronous RPC gets its call's timeout
	// on top), HTTPIdleTimeout how long a keep-alive connection may wait
	// for its next request (default 60s). Negative: no bound.
	HTTPReadHeaderTimeout, HTTPReadTimeout, HTTPWriteTimeout, HTTPIdleTimeout time.Duration
	// HTTPMaxConns bounds the open HTTP connections (default 1024): at
	// the bound, the connection that has waited longest without a request
	// in progress is closed to make room; when all are busy, the new one
	// is closed.
	HTTPMaxConns int
	// MetricsAuth makes /metrics require the admin token (default: open;
	// it shows counts only, never device ids or secrets).
	MetricsAuth bool
	// IntegrityCheck bounds the quick integrity check of the database at
	// start (default 10s; negative: skip). A damaged database stops the
	// start.
	IntegrityCheck time.Duration
	// TLSCertFile and TLSKeyFile enable TLS on MQTTTLSAddr and on the
	// HTTP API.
	TLSCertFile, TLSKeyFile string
	// Sync is SQLite's synchronous setting: "normal" (default; survives a
	// process crash) or "full" (also survives power loss).
	Sync string
	// AdminToken overrides the token stored in the data directory.
	AdminToken string
	// KeepAliveMin, KeepAliveMax and KeepAliveDefault bound the MQTT
	// keep-alive the platform dictates to devices (defaults 5s, 10m,
	// 60s). A device silent for two intervals is disconnected.
	KeepAliveMin, KeepAliveMax, KeepAliveDefault time.Duration
	// QueueSweep is the interval of the down queue's expiry sweep
	// (default 1s).
	QueueSweep time.Duration
	// IngestQueue is how many telemetry batches may wait for the ingest
	// writer (default 4096). When it is full, MQTT 5 devices get PUBACK
	// 0x97 "quota exceeded" and retry later.
	IngestQueue int
	// Store and Ingest tune the SQLite store and the ingest writer (zero
	// values: their defaults); benchmarks compare designs with them. Sync
	// and IngestQueue take precedence; the writer's Observer and Logger
	// are the server's.
	Store  sqlite.Options
	Ingest ingest.Options
	// DeviceRate bounds the telemetry readings one device may send per
	// second (0: no limit), with bursts of up to DeviceBurst readings
	// (default one second's worth). A device over its rate gets MQTT 5
	// PUBACK 0x97 "quota exceeded" (MQTT 3.1.1: an "overloaded" error reply
	// and the connection closed) and resends later; nothing is dropped.
	// With an external broker, what is over the limit is stored and
	// counted (telemetry.Options.AdmitOverLimit): the broker enforces.
	DeviceRate, DeviceBurst int
	// RateExchangeInterval is how often replicas on an external broker
	// tell one another what they admitted under DeviceRate, so that a
	// device's limit holds across them (default 200ms; docs/deploy.md
	// gives the bound it leads to).
	RateExchangeInterval time.Duration
	// ReadingRetention is how long readings are kept, by their timestamp
	// (default 0: for ever). PostgreSQL drops them a day's partition at a
	// time, so it keeps up to a day more.
	ReadingRetention time.Duration
	// BatchRetention is how long the ids of committed telemetry batches are
	// kept to recognise redeliveries (default 30 days); QueueRetention how
	// long finished calls and delivered or expired queued messages stay
	// readable (default 7 days). RetentionInterval is how often both are
	// pruned (default 10 minutes).
	BatchRetention, QueueRetention, RetentionInterval time.Duration
	// MaxConnections bounds the open MQTT connections (0: the process's
	// file limit minus 512, kept for the API and the database; negative:
	// no bound). One more is closed at once.
	MaxConnections int
	// MaxPendingConnections and MaxPendingPerAddress bound the MQTT
	// connections that have not authenticated yet, in total and per source
	// address (defaults 10,000 and 2,000; negative: no bound).
	MaxPendingConnections, MaxPendingPerAddress int
	// MQTTConnectTimeout is how long a new MQTT connection has to send its
	// CONNECT (default 10s). MQTTWriteTimeout is how long a write to a
	// device may make no progress before the device is disconnected
	// (default 10s).
	MQTTConnectTimeout, MQTTWriteTimeout time.Duration
	// MaxSubscriptions bounds the subscriptions of one device (default
	// 32; negative: no bound).
	MaxSubscriptions int
	// NoMemoryTrim turns off returning memory to the operating system
	// after connect storms and when the process holds well above what it
	// uses (internal/memtrim; on by default with the embedded broker).
	NoMemoryTrim bool
	// AuthFailureDelay is how long a refused MQTT login waits for its
	// answer after the first recent failure of its device id or address;
	// it doubles with each further failure up to 50 times that (default
	// 100ms, so at most 5s).
	AuthFailureDelay time.Duration
	// LogRepeats bounds how often one kind of log line is written: at
	// most this many per device and message every 10 seconds, the rest
	// counted and reported (default 5; negative: no bound).
	LogRepeats int
	// SigningKeyFile is the operator's Ed25519 key (PKCS #8 PEM) for
	// signing artifacts; empty: the key in the data directory, created
	// on first start.
	SigningKeyFile string
	// PublicURL is the base URL devices download files from (default:
	// the HTTP listener's URL); DownloadTTL how long a download URL
	// stays valid (default 15 minutes).
	PublicURL   string
	DownloadTTL time.Duration
	// ChunkHook, for fault tests, may change a chunk's data after its
	// hash was computed (see ota.Options.ChunkHook).
	ChunkHook func(deviceID, transferID string, index int64, data []byte)
	// StreamRingBytes bounds the memory of the live stream's replay ring,
	// which lets a client that reconnects resume without a gap (default
	// 64 MiB; at most 10,000 events). While no client has been subscribed
	// for a minute, events are not encoded or kept at all.
	StreamRingBytes int64
	Logger          *slog.Logger
}

// streamKeepIdle is how long after the last live-stream client left
// events are still encoded and kept for a client that reconnects.
const streamKeepIdle = time.Minute

// Server is a running platform.
type Server struct {
	cfg Config
	log *slog.Logger
	db  *openedStore

	broker    *broker.Broker  // the embedded broker, or nil
	link      *extbroker.Link // the external broker's link, or nil
	dynsec    *dynsec.Client  // Mosquitto's dynamic security, or nil
	writer    *ingest.Writer
	tel       *telemetry.Service
	pruner    *retention.Pruner
	trimmer   *memtrim.Trimmer
	queue     *queue.Queue
	presence  *presence.Tracker
	ota       *ota.Service     // nil: files and firmware are off
	gw        *gateway.Service // nil: gateways are off
	metrics   *metrics
	httpSrv   *http.Server
	httpLn    net.Listener
	httpTLS   bool
	httpDone  chan struct{}
	httpConns *httplimit.Conns
	httpErr   atomic.Pointer[error] // why the HTTP server stopped serving
	// cancelHTTP ends long-lived requests (event streams) at shutdown.
	cancelHTTP context.CancelFunc

	token        string
	newToken     bool
	unlock       func()
	wroteRunning bool

	closeOnce sync.Once
	closeErr  error
	logs      *loglimit.Handler
}

// Open starts the platform. Listeners are bound before it returns, so their
// addresses are final; a given address that is in use fails here with a
// message naming its flag. Once started, the platform's addresses are in
// RunningFile in the data directory until Close.
//
// Open only wires: it opens each part, connects the parts through the
// interfaces they declare, registers each message kind's home with the
// router, and starts the listeners (docs/architecture.md).
func Open(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg.DataDir == "" {
		cfg.DataDir = "outpost-data"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = defaultMaxConnections()
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&cfg.HTTPReadHeaderTimeout, defaultHTTPReadHeaderTimeout},
		{&cfg.HTTPReadTimeout, defaultHTTPReadTimeout},
		{&cfg.HTTPWriteTimeout, defaultHTTPWriteTimeout},
		{&cfg.HTTPIdleTimeout, defaultHTTPIdleTimeout},
	} {
		if *d.v == 0 {
			*d.v = d.def
		} else if *d.v < 0 {
			*d.v = 0 // net/http: none
		}
	}
	if cfg.HTTPMaxConns <= 0 {
		cfg.HTTPMaxConns = defaultHTTPMaxConns
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	s := &Server{cfg: cfg, httpDone: make(chan struct{})}
	s.logs = loglimit.New(cfg.Logger.Handler(), cfg.LogRepeats)
	s.log = slog.New(s.logs)
	log := s.log
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if s.unlock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if s.token, s.newToken, err = loadToken(cfg.DataDir, cfg.AdminToken); err != nil {
		return nil, err
	}

	// The store.
	if s.db, _, err = openStore(ctx, cfg, log); err != nil {
		return nil, err
	}
	db := s.db
	// No session of this platform survives its restart: the devices it
	// recorded online go offline. The store limits that to this replica's
	// devices (Config.Replica), so in a store several platforms share, one
	// platform's start leaves the others' devices as they are; alone on
	// its store, the platform owns every device, as in the embedded mode.
	// On a full disk this write fails: start anyway, read-only in effect
	// (the API reads, devices are not acknowledged until space returns),
	// and say so. The API shows a device offline until it connects,
	// whatever the stale row.
	if err := db.ResetPresence(ctx); err != nil {
		log.Error("storage is not writable: starting anyway; writes fail until it is (see /readyz)", "data", cfg.DataDir, "error", err)
	}
	// Replicas share the store: each login reads it, since another
	// replica may have changed the device.
	creds := &registry.Credentials{Shared: cfg.Replica != ""}
	if err := creds.Load(ctx, db); err != nil {
		return nil, err
	}

	// The parts every home uses: metrics, the live stream, presence.
	s.metrics = newMetrics()
	reg := s.metrics.reg
	// Event ids start at the start time in microseconds: they keep growing
	// across restarts (the replay ring does not survive one).
	hopt := stream.Options{RingBytes: cfg.StreamRingBytes, FirstID: uint64(time.Now().UnixMicro()), KeepIdle: streamKeepIdle}
	if cfg.Broker != "" && cfg.Replica != "" {
		// Replicas mirror their events to one another while another
		// replica has a listener, so every replica's stream shows the
		// whole fleet.
		hopt.Tap = func(kind, deviceID string, data json.RawMessage) {
			if l := s.link; l != nil {
				l.Mirror(kind, deviceID, data)
			}
		}
		hopt.TapWanted = func() bool { l := s.link; return l != nil && l.Wanted() }
		hopt.OnListen = func() {
			if l := s.link; l != nil {
				l.Listened()
			}
		}
	}
	hub := stream.New(hopt)
	s.presence = presence.NewTracker(db, func(c presence.Change) { hub.Publish(stream.KindPresence, c.DeviceID, c) }, log)

	// The broker, which hands every device message to the router: the
	// embedded one, or the link to an external one.
	rt := router.New(gatewayPresence{s.presence, s})
	var side mqttSide
	var tlsCfg *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load TLS certificate: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var movedMQTT, movedMQTTS bool
	var accounts registry.Accounts
	if cfg.BrokerAdmin != "" {
		if cfg.Broker == "" {
			return nil, errors.New("--broker-admin is for an external broker: give --broker too")
		}
		if s.dynsec, err = openDynsec(ctx, cfg, log); err != nil {
			return nil, err
		}
		accounts = dynsecAccounts{s.dynsec}
	}
	if cfg.BrokerEvents != "" && cfg.Broker == "" {
		return nil, errors.New("--broker-events is for an external broker: give --broker too")
	}
	if cfg.Broker != "" {
		clientID := "outpost"
		if cfg.Replica != "" {
			clientID += "-" + cfg.Replica
		}
		lcfg := extbroker.Config{URL: cfg.Broker, ClientID: clientID, Events: cfg.BrokerEvents, Known: creds.Known, ReceiveMaximum: cfg.BrokerReceiveMaximum,
			Logger: log.With("component", "broker-link")}
		if s.link, err = extbroker.New(lcfg, rt, gatewayPresence{s.presence, s}); err != nil {
			return nil, err
		}
		side = s.link
	} else {
		if s.broker, movedMQTT, movedMQTTS, err = openBroker(cfg, tlsCfg, log, creds, rt); err != nil {
			return nil, err
		}
		side = s.broker
		if !cfg.NoMemoryTrim {
			s.trimmer = memtrim.Start(memtrim.Options{Connects: s.broker.Stats().Sessions.Load, Logger: log.With("component", "memtrim")})
		}
	}
	replies := reply.New(side, reg, log)
	rt.SetRejecter(replies)

	// The homes of the device message kinds.
	var elsewhere func(string)
	if s.link != nil {
		elsewhere = s.link.Notifier(extbroker.NoticeQueued)
	}
	s.queue = queue.New(db, routedSide{side, s}, queue.Options{
		Elsewhere: elsewhere,
		Sweep:     cfg.QueueSweep,
		Logger:    log.With("component", "queue"),
		OnCall:    func(c *outpost.Call) { hub.Publish(stream.KindCall, c.DeviceID, c) },
		OnMessage: func(m *outpost.QueuedMessage) { hub.Publish(stream.KindQueue, m.DeviceID, m) },
		Replies:   replies,
		Devices:   db,
		Metrics:   reg,
	})
	if s.link != nil {
		// With several replicas a device's session may be another's: tell
		// them when something is queued, and listen to them.
		s.link.OnNotice(extbroker.NoticeQueued, s.queue.Notify)
		s.link.OnEvent(hub.Inject)
		if cfg.Replica != "" {
			s.link.WatchInterest(hub.Listening)
		}
	}
	if s.broker != nil {
		if err := s.broker.SetDeliveryHandler(s.queue); err != nil {
			return nil, err
		}
	} else {
		_ = s.link.SetDeliveryHandler(s.queue)
	}
	mopt := model.Options{Store: db, Down: s.queue, Publisher: side, Replies: replies, Stream: hub, Logger: log}
	if s.link != nil {
		// Replicas cache feed definitions: they tell one another of
		// changes, and re-read before rejecting by a cached one.
		mopt.Changed = s.link.Notifier(extbroker.NoticeFeeds)
	}
	mdl := model.New(mopt)
	if s.link != nil {
		s.link.OnNotice(extbroker.NoticeFeeds, mdl.Forget)
	}
	stats := telemetry.NewStats(hub, reg)
	io := cfg.Ingest
	io.QueueLen, io.Observer, io.Logger = cfg.IngestQueue, stats, log
	if io.Writers == 0 {
		io.Writers = db.writers
	}
	s.writer = ingest.NewWriter(db, io)
	topt := telemetry.Options{Writer: s.writer, Feeds: mdl, Replies: replies, Stats: stats, Store: db,
		Rate: cfg.DeviceRate, Burst: cfg.DeviceBurst}
	if s.link != nil {
		// The shared subscription spreads a device's messages over the
		// replicas: they share what they admit, so its limit holds
		// across them. The embedded broker's single node needs none.
		topt.Exchange, topt.ExchangeInterval = s.link, cfg.RateExchangeInterval
		topt.SharedModel = true
		// A refused message would stay unacknowledged at the broker and,
		// acknowledgements going in order, hold up every device.
		topt.AdmitOverLimit = true
	}
	tel := telemetry.New(topt)
	s.tel = tel
	relay := rpc.New(rpc.Options{Publisher: routedSide{side, s}, Presence: s.presence, Devices: db, Metrics: reg})
	var arts *artifact.Repository
	if arts, s.ota, err = s.openOTA(db.ota, side, hub); err != nil {
		// The rest of the platform is worth running (a full disk cannot
		// create the signing key); files and firmware stay off until a
		// restart that can open them.
		log.Error("files and firmware over the air are off", "error", err)
		arts, s.ota = nil, nil
	}

	rt.RouteAsync(protocol.KindTelemetry, tel)
	rt.Route(protocol.KindRPC, rpc.NewAnswers(relay, s.queue, replies))
	rt.Route(protocol.KindPull, s.queue)
	rt.Route(protocol.KindAck, s.queue)
	rt.RouteMatch(model.Handles, mdl)
	// The embedded broker sees the sessions itself; the external
	// broker's link takes the announcements before the router.
	rt.Route(protocol.KindPresence, router.HandlerFunc(func(context.Context, string, string, []byte) error { return nil }))
	if s.ota != nil {
		rt.RouteMatch(ota.Handles, s.ota)
	} else {
		rt.RouteMatch(ota.Handles, router.HandlerFunc(func(_ context.Context, deviceID, kind string, _ []byte) error {
			return replies.Reject(deviceID, kind, "", &protocol.Error{Code: protocol.CodeNotSupported, Message: "files and firmware are not available with this platform's database engine"})
		}))
	}
	s.openGateway(db.Store, side, rt, replies, tel, mdl, hub)
	s.routeGateways(rt, replies)

	devices := registry.New(registry.Options{Store: db, Credentials: creds, Sessions: side, Presence: s.presence,
		Decorate: s.decorateWithGateway(db.Store, mdl.Decorate), OnDelete: []func(string){mdl.Forget, replies.Forget, s.gatewayDeviceDeleted}, Metrics: reg,
		Accounts: accounts})
	s.pruner = retention.Start(db, retention.Options{Batches: cfg.BatchRetention, Queue: cfg.QueueRetention,
		Readings: cfg.ReadingRetention, Interval: cfg.RetentionInterval, Logger: log})
	s.metrics.register(s, db.metrics)

	// The HTTP API.
	var movedHTTP bool
	var ln net.Listener
	ln, movedHTTP, err = listen(cfg.HTTPAddr, defaultHTTPAddr)
	if err != nil {
		addr := cmp.Or(cfg.HTTPAddr, defaultHTTPAddr)
		return nil, listenError("--http", fmt.Errorf("http listener %s: %w", addr, err))
	}
	s.httpConns = httplimit.New(cfg.HTTPMaxConns)
	s.httpLn = s.httpConns.Listener(ln)
	s.metrics.registerHTTP(s.httpConns)
	checks := health.New(db, cfg.DataDir, log,
		func(context.Context) error { return side.Ready() },
		func(context.Context) error {
			if p := s.httpErr.Load(); p != nil {
				return fmt.Errorf("http listener stopped: %w", *p)
			}
			return nil
		})
	parts := httpapi.Parts{Devices: devices, RPC: relay, Readings: tel, Events: hub, Health: checks,
		Calls: s.queue, Model: mdl}
	if s.ota != nil {
		parts.Artifacts, parts.OTA = arts, s.ota
	}
	if s.gw != nil {
		parts.Gateways = s.gw
	}
	var api http.Handler = httpapi.New(parts, httpapi.Options{Token: s.token, Metrics: s.metrics.handler(), MetricsAuth: cfg.MetricsAuth,
		TLS: tlsCfg != nil, WriteTimeout: cfg.HTTPWriteTimeout, MQTTHostPort: s.MQTTAddr, Logger: log,
		// Replicas number the same stream events each on their own.
		StreamTag: cfg.Replica})
	if cfg.EMQXAuth {
		if api, err = withEMQXAuth(api, cfg, creds, log); err != nil {
			return nil, err
		}
	}
	baseCtx, cancelBase := context.WithCancel(context.Background())
	s.cancelHTTP = cancelBase
	s.httpSrv = &http.Server{
		Handler:           api,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ReadHeaderTimeout: cfg.HTTPReadHeaderTimeout,
		ReadTimeout:       cfg.HTTPReadTimeout,
		WriteTimeout:      cfg.HTTPWriteTimeout,
		IdleTimeout:       cfg.HTTPIdleTimeout,
		ConnState:         s.httpConns.ConnState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if tlsCfg != nil {
		s.httpTLS = true
		s.httpSrv.TLSConfig = tlsCfg.Clone()
	}

	if s.broker != nil {
		if err := s.broker.Start(); err != nil {
			return nil, fmt.Errorf("start mqtt broker: %w", err)
		}
	} else if err := s.link.Start(ctx); err != nil {
		return nil, err
	}
	go func() {
		defer close(s.httpDone)
		var err error
		if s.httpTLS {
			err = s.httpSrv.ServeTLS(s.httpLn, "", "")
		} else {
			err = s.httpSrv.Serve(s.httpLn)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.httpErr.Store(&err)
			log.Error("http server", "error", err)
		}
	}()
	if err := s.writeRunning(); err != nil {
		// The platform runs without it (a full disk must not stop a start);
		// only the CLI's discovery of this platform is lost.
		log.Warn("the CLI will not find this platform from its data directory; pass --server or set OUTPOST_SERVER", "error", err)
	}
	s.warnListeners(movedMQTT, movedMQTTS, movedHTTP)
	log.Info("outpost started", "mqtt", s.MQTTURL(), "http", s.HTTPURL(), "data", cfg.DataDir)
	return s, nil
}

// warnListeners logs the listeners that moved off a taken default port
// and those that other machines can reach without encryption.
func (s *Server) warnListeners(movedMQTT, movedMQTTS, movedHTTP bool) {
	moved := func(flag, def string, a net.Addr) {
		s.log.Warn(fmt.Sprintf("%s is taken (by another program); listening on %s instead. Pass %s ADDR to choose the address", def, hostPort(a), flag))
	}
	if movedMQTT {
		moved("--mqtt", defaultMQTTAddr, s.broker.Addr())
	}
	if movedMQTTS {
		moved("--mqtts", defaultMQTTTLSAddr, s.broker.TLSAddr())
	}
	if movedHTTP {
		moved("--http", defaultHTTPAddr, s.httpLn.Addr())
	}
	if s.broker == nil {
		// Devices connect to the external broker.
	} else if a := s.broker.Addr(); reachableFromOutside(a) {
		hint := "use --tls-cert and --tls-key, and --mqtt 127.0.0.1:1883 to keep plain MQTT local"
		if s.httpTLS {
			hint = "devices on the network should use MQTT over TLS (" + s.MQTTSURL() + "); pass --mqtt 127.0.0.1:1883 to keep plain MQTT local"
		}
		s.log.Warn(fmt.Sprintf("plain MQTT on %s is reachable from other machines without TLS: device passwords and data cross the network in clear text; %s", a, hint))
	}
	if a := s.httpLn.Addr(); reachableFromOutside(a) && !s.httpTLS {
		s.log.Warn(fmt.Sprintf("the HTTP API on %s is reachable from other machines without TLS: API tokens and data cross the network in clear text; use --tls-cert and --tls-key, or --http 127.0.0.1:8080", a))
	}
}

// MQTTURL returns the plain MQTT endpoint as tcp://HOST:PORT.
func (s *Server) MQTTURL() string {
	if s.link != nil {
		return s.link.URL()
	}
	return "tcp://" + hostPort(s.broker.Addr())
}

// MQTTAddr returns the plain MQTT listener's HOST:PORT.
func (s *Server) MQTTAddr() string {
	if s.link != nil {
		return s.link.Addr()
	}
	return hostPort(s.broker.Addr())
}

// MQTTSURL returns the TLS MQTT endpoint, or "" when TLS is off.
func (s *Server) MQTTSURL() string {
	if s.broker == nil {
		return ""
	}
	if a := s.broker.TLSAddr(); a != nil {
		return "ssl://" + hostPort(a)
	}
	return ""
}

// HTTPURL returns the API base URL.
func (s *Server) HTTPURL() string {
	scheme := "http"
	if s.httpTLS {
		scheme = "https"
	}
	return scheme + "://" + hostPort(s.httpLn.Addr())
}

// MaxConnections returns the bound on open MQTT connections, the number
// of devices that can be connected at once; 0 means no bound.
func (s *Server) MaxConnections() int { return max(s.cfg.MaxConnections, 0) }

// AdminToken returns the API token; TokenIsNew reports whether this start
// created it.
func (s *Server) AdminToken() string { return s.token }

// TokenIsNew reports whether Open generated the admin token.
func (s *Server) TokenIsNew() bool { return s.newToken }

// DataDir returns the data directory.
func (s *Server) DataDir() string { return s.cfg.DataDir }

// hostPort renders a listener address so a client can dial it: an
// unspecified host becomes 127.0.0.1.
func hostPort(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// openBroker creates the embedded broker on the configured listeners.
func openBroker(cfg Config, tlsCfg *tls.Config, log *slog.Logger, auth broker.Authenticator, h broker.AsyncHandler) (b *broker.Broker, movedMQTT, movedMQTTS bool, err error) {
	mqttAddr, movedMQTT, err := pickAddr(cfg.MQTTAddr, defaultMQTTAddr)
	if err != nil {
		return nil, false, false, listenError("--mqtt", err)
	}
	bcfg := broker.Config{Addr: mqttAddr, Logger: log.With("component", "mqtt"),
		KeepAlive: broker.KeepAlive{Min: cfg.KeepAliveMin, Max: cfg.KeepAliveMax, Default: cfg.KeepAliveDefault},
		Limits: broker.Limits{MaxConnections: cfg.MaxConnections, MaxPending: cfg.MaxPendingConnections, MaxPendingPerAddr: cfg.MaxPendingPerAddress,
			ConnectTimeout: cfg.MQTTConnectTimeout, WriteTimeout: cfg.MQTTWriteTimeout},
		MaxSubscriptions: cfg.MaxSubscriptions, AuthFailureDelay: cfg.AuthFailureDelay}
	if tlsCfg != nil {
		if bcfg.TLSAddr, movedMQTTS, err = pickAddr(cfg.MQTTTLSAddr, defaultMQTTTLSAddr); err != nil {
			return nil, false, false, listenError("--mqtts", err)
		}
		bcfg.TLS = tlsCfg
	}
	b, err = broker.New(bcfg, auth, h)
	if err != nil {
		flag := "--mqtt"
		if strings.Contains(err.Error(), "tls listener") {
			flag = "--mqtts"
		}
		return nil, false, false, listenError(flag, err)
	}
	return b, movedMQTT, movedMQTTS, nil
}

// mqttSide is what the parts publish through and ask about devices'
// connections: the embedded broker or the external broker's link.
type mqttSide interface {
	reply.Publisher
	rpc.Publisher
	queue.Sender
	registry.Sessions
	Ready() error
}

var (
	_ mqttSide = (*broker.Broker)(nil)
	_ mqttSide = (*extbroker.Link)(nil)
)

// Queue returns the down queue (for tests that read its counters).
func (s *Server) Queue() *queue.Queue { return s.queue }

// MaxBulkDevices bounds the devices one bulk creation registers.
const MaxBulkDevices = registry.MaxBulkDevices

// Close stops accepting API requests and device connections, commits
// everything already received, and closes the database.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.removeRunning()
		var errs []error
		if s.httpSrv != nil {
			s.cancelHTTP()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := s.httpSrv.Shutdown(ctx); err != nil {
				s.httpSrv.Close()
			}
			cancel()
			<-s.httpDone
		} else if s.httpLn != nil {
			s.httpLn.Close()
		}
		if s.pruner != nil {
			s.pruner.Close()
		}
		if s.trimmer != nil {
			s.trimmer.Close()
		}
		if s.broker != nil {
			errs = append(errs, s.broker.Close())
		}
		if s.tel != nil {
			// Its usage reports go out through the link.
			errs = append(errs, s.tel.Close())
		}
		if s.link != nil {
			errs = append(errs, s.link.Close())
		}
		if s.dynsec != nil {
			errs = append(errs, s.dynsec.Close())
		}
		if s.presence != nil {
			// After the broker: the last disconnects are written too. A
			// failure (a read-only store) only loses last-seen times, as
			// a failed presence write always did.
			if err := s.presence.Close(); err != nil {
				s.log.Warn("presence not stored at shutdown", "error", err)
			}
		}
		if s.ota != nil {
			errs = append(errs, s.ota.Close())
		}
		if s.queue != nil {
			errs = append(errs, s.queue.Close())
		}
		if s.writer != nil {
			errs = append(errs, s.writer.Close())
		}
		if s.db != nil {
			errs = append(errs, s.db.Close())
		}
		s.logs.Flush()
		if s.unlock != nil {
			s.unlock()
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// loadToken reads the admin token from the data directory, creating it on
// first start.
func loadToken(dir, override string) (token string, created bool, err error) {
	if override != "" {
		return override, false, nil
	}
	path := filepath.Join(dir, TokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, false, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("read admin token: %w", err)
	}
	token = outpost.NewToken()
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("save admin token: %w", err)
	}
	return token, true, nil
}
