package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/outpost-iot/outpost/internal/server"
)

// ConnectionsConfig sizes a connections run.
type ConnectionsConfig struct {
	// Devices is how many devices connect at once and then stay idle.
	Devices int
	// Raw adds the raw brokers: upstream mochi alone (allow-all
	// authentication, no other hook) with its default options ("mochi"),
	// the platform's broker core (internal/mochi, the fork) alone with the
	// options the platform gives it ("mochi-tuned"), and the floor of a
	// connection layer over mochi's codec ("floor", connfloor.go).
	Raw bool
	// Brokers, when set, lists exactly the brokers to measure, in order:
	// platform, mochi, mochi-tuned, floor, mosquitto. The platform always
	// runs first to register the devices.
	Brokers []string
	// Mosquitto is "auto" (measure a Mosquitto started by the benchmark
	// when `mosquitto` is on PATH), "off", or the path of the executable.
	Mosquitto string
	// Keepalive is the devices' MQTT keep-alive (PINGREQ interval).
	Keepalive time.Duration
	// Settle is how long the broker is left alone before its memory is
	// read, after the devices are created and after they connected.
	Settle time.Duration
	// Idle is the window over which idle CPU is measured (at least one
	// keep-alive interval, so that every device pings within it).
	Idle time.Duration
	// Restart measures the reconnection of every device after the broker
	// is restarted (SIGTERM, then started again on the same port).
	Restart bool
	// Sources is how many loopback source addresses the devices are
	// spread over (devices come from many addresses).
	Sources int
	// ConnectTimeout bounds the connect storm, and the reconnection after
	// the restart, of each broker.
	ConnectTimeout time.Duration
	Timeout        time.Duration
	// ProfileDir, if set, receives for each Go broker a heap and a
	// goroutine profile taken once the devices are connected and idle,
	// and a CPU profile of the idle window. With ProfileExact the heap
	// profile records every allocation (which slows the broker down).
	ProfileDir   string
	ProfileExact bool
}

// Bounds of a connections run.
const (
	maxConnDevices = 100_000
	// connFileReserve is what the load process keeps for itself: the
	// HTTP client, the child pipes, the Go runtime.
	connFileReserve = 100
)

// BrokerConnResult is what one broker did with the devices.
type BrokerConnResult struct {
	// Key is the broker's name in --brokers; Broker says what it is.
	Key    string `json:"key"`
	Broker string `json:"broker"`
	// RSSBaseMiB is the broker's resident memory before the first
	// connection (for the platform: its devices registered); RSSMiB with
	// every device connected and idle.
	RSSBaseMiB float64 `json:"rss_base_mib"`
	RSSMiB     float64 `json:"rss_mib"`
	// RSSPerDeviceKiB = (RSSMiB - RSSBaseMiB) / devices, read Settle
	// after the last device connected; RSSIdlePerDeviceKiB the same at the
	// end of the idle window (the runtime has had time to shrink stacks
	// and return memory).
	RSSPerDeviceKiB     float64 `json:"rss_per_device_kib"`
	RSSIdleMiB          float64 `json:"rss_idle_mib"`
	RSSIdlePerDeviceKiB float64 `json:"rss_idle_per_device_kib"`
	// Go brokers: heap in use, goroutine stacks and goroutines, with the
	// devices connected, after a collection.
	GoHeapMiB   float64 `json:"go_heap_mib,omitempty"`
	GoStackMiB  float64 `json:"go_stack_mib,omitempty"`
	Goroutines  int     `json:"goroutines,omitempty"`
	GoHeapBase  float64 `json:"go_heap_base_mib,omitempty"`
	GoStackBase float64 `json:"go_stack_base_mib,omitempty"`
	// GoMemory is the Go runtime's memory by class (runtime/metrics
	// /memory/classes/…, MiB) with the devices connected, before the
	// collection; GoMemoryIdle the same at the end of the idle window.
	GoMemory     map[string]float64 `json:"go_memory_mib,omitempty"`
	GoMemoryIdle map[string]float64 `json:"go_memory_idle_mib,omitempty"`
	// ConnectSeconds is from the moment every device starts connecting at
	// once until the last one is connected and subscribed.
	ConnectSeconds    float64 `json:"connect_seconds"`
	ConnectsPerSecond float64 `json:"connects_per_s"`
	// Attempts is every connection attempt of the storm; FailedAttempts
	// those that failed and were retried (Refused: with a CONNACK return
	// code).
	Attempts       int64 `json:"attempts"`
	FailedAttempts int64 `json:"failed_attempts"`
	Refused        int64 `json:"refused"`
	// LastError is why the last failed attempt failed, if any did.
	LastError string `json:"last_error,omitempty"`
	// IdleCPUPercent is the broker's CPU time over the idle window, in
	// percent of one core; IdleLoad the machine's load average then.
	IdleCPUPercent float64 `json:"idle_cpu_percent"`
	IdleSeconds    float64 `json:"idle_seconds"`
	IdleLoad       string  `json:"idle_load"`
	// ReconnectSeconds is from the restarted broker listening until every
	// device is connected and subscribed again; StopSeconds how long the
	// broker took to stop; ReconnectFailed the failed attempts meanwhile.
	ReconnectSeconds float64 `json:"reconnect_seconds,omitempty"`
	StopSeconds      float64 `json:"stop_seconds,omitempty"`
	ReconnectFailed  int64   `json:"reconnect_failed_attempts,omitempty"`
	// RSSRestartMiB is the restarted broker's resident memory once every
	// device is back.
	RSSRestartMiB float64 `json:"rss_after_restart_mib,omitempty"`
	Error         string  `json:"error,omitempty"`
}

// ConnectionsResult holds every figure of a connections run; it is the
// JSON line.
type ConnectionsResult struct {
	Benchmark string  `json:"benchmark"`
	Machine   Machine `json:"machine"`
	Devices   int     `json:"devices"`
	// FileLimit is the per-process open-file limit (load and brokers each
	// have their own).
	FileLimit        uint64  `json:"file_limit"`
	KeepaliveSeconds float64 `json:"keepalive_seconds"`
	// CreateSeconds is the time the bulk creation of the devices took
	// through the API.
	CreateSeconds    float64             `json:"create_seconds"`
	CreatesPerSecond float64             `json:"creates_per_s"`
	Brokers          []*BrokerConnResult `json:"brokers"`
	TotalSeconds     float64             `json:"total_seconds"`
}

func connectionsMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("connections", stderr)
	cfg := ConnectionsConfig{}
	fs.IntVar(&cfg.Devices, "devices", 1000, "devices that connect at once and stay idle")
	fs.BoolVar(&cfg.Raw, "raw", false, "also measure the raw brokers: mochi alone (allow-all auth) with its default options and with the platform's, and a bare connection layer over mochi's codec")
	brokers := fs.String("brokers", "", "measure exactly these brokers, comma-separated: platform, mochi, mochi-tuned, floor, mosquitto (default: platform, the raw ones with --raw, mosquitto unless --mosquitto off)")
	fs.StringVar(&cfg.Mosquitto, "mosquitto", "auto", "measure a Mosquitto started by the benchmark: auto (when on PATH), off, or its `PATH`")
	fs.DurationVar(&cfg.Keepalive, "keepalive", 60*time.Second, "devices' MQTT keep-alive")
	fs.DurationVar(&cfg.Settle, "settle", 10*time.Second, "wait before reading a broker's memory")
	fs.DurationVar(&cfg.Idle, "idle", 60*time.Second, "window over which idle CPU is measured (at least the keep-alive)")
	fs.BoolVar(&cfg.Restart, "restart", true, "measure the reconnection of every device after a restart of the broker")
	fs.IntVar(&cfg.Sources, "sources", 64, "loopback source addresses the devices connect from")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 2*time.Minute, "bound on the connect storm and on the reconnection after a restart")
	fs.DurationVar(&cfg.Timeout, "timeout", 30*time.Minute, "give up after this long")
	fs.StringVar(&cfg.ProfileDir, "profile-dir", "", "write heap and goroutine profiles of each Go broker, devices connected, and a CPU profile of its idle window into `DIR`")
	fs.BoolVar(&cfg.ProfileExact, "profile-exact", false, "with --profile-dir: record every allocation in the heap profiles (slows the brokers down)")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *brokers != "" {
		cfg.Brokers = strings.Split(*brokers, ",")
	}
	res, err := RunConnections(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	printConnections(stdout, res)
	return writeJSONLine(stdout, res)
}

func (c *ConnectionsConfig) validate() error {
	if c.Devices < 1 || c.Devices > maxConnDevices {
		return fmt.Errorf("--devices must be between 1 and %d", maxConnDevices)
	}
	if lim, err := server.RaiseFileLimit(); err == nil && lim > 0 && uint64(c.Devices)+connFileReserve > lim {
		return fmt.Errorf("--devices %d: the open-file limit of this process is %d, room for %d devices (raise it with ulimit -n)",
			c.Devices, lim, lim-connFileReserve)
	}
	if c.Keepalive < time.Second || c.Keepalive > 65535*time.Second {
		return errors.New("--keepalive must be between 1s and 65535s")
	}
	if c.Idle <= 0 || c.Settle < 0 || c.ConnectTimeout <= 0 {
		return errors.New("--idle and --connect-timeout must be positive, --settle not negative")
	}
	if c.Sources < 1 || c.Sources > 60_000 {
		return errors.New("--sources must be between 1 and 60000")
	}
	for _, b := range c.Brokers {
		if _, ok := brokerNames[b]; !ok {
			return fmt.Errorf("--brokers: unknown broker %q (want platform, mochi, mochi-tuned, floor or mosquitto)", b)
		}
	}
	return checkTimeout(c.Timeout)
}

// brokerNames are the brokers a connections run can measure, with the
// name their results carry.
var brokerNames = map[string]string{
	"platform":    "platform",
	"mochi":       "raw mochi, default options",
	"mochi-tuned": "broker core alone (fork), platform's options",
	"floor":       "floor: 1 goroutine/conn over mochi's codec",
	"mosquitto":   "mosquitto",
}

// brokers returns the brokers to measure, in order.
func (c *ConnectionsConfig) brokers() []string {
	if len(c.Brokers) > 0 {
		return c.Brokers
	}
	out := []string{"platform"}
	if c.Raw {
		out = append(out, "mochi", "mochi-tuned", "floor")
	}
	if c.Mosquitto != "off" {
		out = append(out, "mosquitto")
	}
	return out
}

// RunConnections creates the devices on the platform through the bulk
// API, then for the platform (and the raw brokers and Mosquitto) measures
// in turn: resident memory per idle connected device, the connect storm
// of every device at once, idle CPU, and reconnection after a restart.
// Each broker runs in a process of its own; the devices are held by this
// one.
func RunConnections(ctx context.Context, cfg ConnectionsConfig, log io.Writer) (*ConnectionsResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	start := time.Now()
	pr := progress{log}
	lim, _ := server.RaiseFileLimit()
	res := &ConnectionsResult{Benchmark: "connections", Machine: machine(), Devices: cfg.Devices, FileLimit: lim, KeepaliveSeconds: cfg.Keepalive.Seconds()}

	dir, err := os.MkdirTemp("", "outpost-bench-conns-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}

	// The platform first: it registers the devices the others use too.
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "platform")
	platformStart := func(ctx context.Context) (*child, error) {
		exe, args, err := childArgs("platform", "--data", data, "--mqtt", addr)
		if err != nil {
			return nil, err
		}
		return startChild(ctx, "platform", goChild(exe, args, dir, "platform", cfg), nil)
	}
	pc, err := platformStart(ctx)
	if err != nil {
		return nil, err
	}
	pr.printf("platform started (pid %d) on %s; creating %s devices through the bulk API", pc.pid(), addr, group(cfg.Devices))
	t0 := time.Now()
	devs, err := bulkCreate(ctx, pc.fields["http"], pc.fields["admin token"], cfg.Devices)
	if err != nil {
		pc.kill()
		return nil, err
	}
	res.CreateSeconds = round(time.Since(t0).Seconds(), 3)
	res.CreatesPerSecond = round(rate(cfg.Devices, time.Since(t0)), 0)
	pr.printf("created %s devices in %.2fs", group(cfg.Devices), res.CreateSeconds)
	if !slices.Contains(cfg.brokers(), "platform") {
		err := pc.stop(time.Minute)
		if pc = nil; err != nil {
			return nil, err
		}
	}

	for _, b := range cfg.brokers() {
		name := brokerNames[b]
		var launch func(context.Context) (*child, error)
		baddr := addr
		switch b {
		case "platform":
			launch = platformStart
		case "mochi", "mochi-tuned", "floor":
			if baddr, err = freePort(); err != nil {
				return nil, err
			}
			role, extra := "raw", []string{"--options", "default"}
			switch b {
			case "mochi-tuned":
				extra[1] = "platform"
			case "floor":
				role, extra = "floor", nil
			}
			launch = func(ctx context.Context) (*child, error) {
				exe, args, err := childArgs(role, append([]string{"--mqtt", baddr}, extra...)...)
				if err != nil {
					return nil, err
				}
				return startChild(ctx, name, goChild(exe, args, dir, b, cfg), nil)
			}
		case "mosquitto":
			mq := mosquittoPath(cfg.Mosquitto)
			if mq == "" {
				pr.printf("mosquitto not found on PATH: skipped")
				continue
			}
			if baddr, err = freePort(); err != nil {
				return nil, err
			}
			mdir := filepath.Join(dir, "mosquitto")
			if err := os.MkdirAll(mdir, 0o755); err != nil {
				return nil, err
			}
			conf, err := mosquittoFiles(ctx, mdir, baddr, devs)
			if err != nil {
				return nil, err
			}
			launch = func(ctx context.Context) (*child, error) {
				cmd := exec.Command(mq, "-c", conf)
				return startChild(ctx, "mosquitto", cmd, func(ctx context.Context) error { return waitListening(ctx, baddr) })
			}
		}
		c := pc
		if b != "platform" {
			if c, err = launch(ctx); err != nil {
				return nil, err
			}
		}
		r, err := measureBroker(ctx, cfg, pr, b, baddr, devs, c, launch)
		res.Brokers = append(res.Brokers, r)
		if err != nil {
			return nil, err
		}
		if b == "platform" {
			pc = nil
		}
	}
	res.TotalSeconds = round(time.Since(start).Seconds(), 1)
	return res, nil
}

// goChild returns the command of a Go broker child: it answers SIGUSR1
// with its runtime figures in dir/NAME-stats.json (and profiles, see
// goStats), and SIGUSR2 by starting, then stopping, a CPU profile in
// dir/NAME-cpu.pprof. With cfg.ProfileDir set, dir is that directory.
func goChild(exe string, args []string, dir, name string, cfg ConnectionsConfig) *exec.Cmd {
	cmd := exec.Command(exe, args...)
	if cfg.ProfileDir != "" {
		dir = cfg.ProfileDir
	}
	cmd.Env = append(os.Environ(), "OUTPOST_BENCH_PROFILE="+filepath.Join(dir, name))
	if cfg.ProfileDir != "" && cfg.ProfileExact {
		cmd.Env = append(cmd.Env, "OUTPOST_BENCH_MEMPROFILERATE=1")
	}
	return cmd
}

func mosquittoPath(flagValue string) string {
	switch flagValue {
	case "off", "":
		return ""
	case "auto":
		p, err := exec.LookPath("mosquitto")
		if err != nil {
			return ""
		}
		return p
	}
	return flagValue
}

// measureBroker runs the devices against one broker: memory, connect
// storm, idle CPU and, with cfg.Restart, reconnection after a restart. It
// stops c (or its restarted successor) before it returns.
func measureBroker(ctx context.Context, cfg ConnectionsConfig, pr progress, key, addr string, devs []apiDevice,
	c *child, restart func(context.Context) (*child, error)) (res *BrokerConnResult, err error) {
	name := brokerNames[key]
	res = &BrokerConnResult{Broker: name, Key: key}
	f := newLoadFleet(addr, devs, loadOptions{keepalive: cfg.Keepalive, timeout: 10 * time.Second,
		minBack: 250 * time.Millisecond, maxBack: 30 * time.Second, sources: cfg.Sources})
	defer func() {
		// The broker goes first, with the devices still connected, as in
		// a restart.
		if c != nil {
			if serr := c.stop(time.Minute); err == nil && serr != nil {
				err = serr
			}
		}
		f.stop()
		if err != nil {
			res.Error = err.Error()
			err = fmt.Errorf("%s: %w", name, err)
		}
	}()
	if err := sleepCtx(ctx, min(cfg.Settle, 2*time.Second)); err != nil {
		return res, err
	}
	base, err := procRSS(c.pid())
	if err != nil {
		return res, err
	}
	res.RSSBaseMiB = mib(base)
	if st, err := c.goStats(ctx, ""); err == nil {
		res.GoHeapBase, res.GoStackBase = mib(st.HeapInuse), mib(st.StackInuse)
	}

	pr.printf("%s: %s devices connecting at once", name, group(len(devs)))
	t0 := time.Now()
	f.start()
	sctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	err = f.waitConnected(sctx, false)
	cancel()
	took := time.Since(t0)
	res.Attempts, res.FailedAttempts, res.Refused = f.attempts.Load(), f.failures.Load(), f.refused.Load()
	if err := f.err(); err != nil {
		res.LastError = err.Error()
	}
	if err != nil {
		return res, fmt.Errorf("connect storm: %w", err)
	}
	res.ConnectSeconds = round(took.Seconds(), 3)
	res.ConnectsPerSecond = round(rate(len(devs), took), 0)
	pr.printf("%s: all connected in %.2fs (%s/s; %d failed attempts retried)", name, res.ConnectSeconds, groupf(res.ConnectsPerSecond), res.FailedAttempts)

	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return res, err
	}
	rss, err := procRSS(c.pid())
	if err != nil {
		return res, err
	}
	res.RSSMiB = mib(rss)
	res.RSSPerDeviceKiB = round(float64(rss-base)/1024/float64(len(devs)), 2)
	prof := ""
	if cfg.ProfileDir != "" {
		prof = filepath.Join(cfg.ProfileDir, key)
	}
	if st, err := c.goStats(ctx, prof); err == nil {
		res.GoHeapMiB, res.GoStackMiB, res.Goroutines = mib(st.HeapInuse), mib(st.StackInuse), st.Goroutines
		res.GoMemory = map[string]float64{}
		for k, v := range st.Memory {
			res.GoMemory[k] = mib(v)
		}
	}
	pr.printf("%s: RSS %.1f MiB → %.1f MiB: %.2f KiB per device", name, res.RSSBaseMiB, res.RSSMiB, res.RSSPerDeviceKiB)

	profiling := prof != "" && c.cmd.Env != nil
	if profiling {
		_ = c.cmd.Process.Signal(syscall.SIGUSR2)
	}
	cpu0, err := procCPU(c.pid())
	if err != nil {
		return res, err
	}
	w0 := time.Now()
	if err := sleepCtx(ctx, cfg.Idle); err != nil {
		return res, err
	}
	cpu1, err := procCPU(c.pid())
	if err != nil {
		return res, err
	}
	if profiling {
		_ = c.cmd.Process.Signal(syscall.SIGUSR2) // the idle CPU profile: ProfileDir/KEY-cpu.pprof
	}
	wall := time.Since(w0)
	if rss, err := procRSS(c.pid()); err == nil {
		res.RSSIdleMiB = mib(rss)
		res.RSSIdlePerDeviceKiB = round(float64(rss-base)/1024/float64(len(devs)), 2)
	}
	if st, err := c.goStats(ctx, ""); err == nil {
		res.GoMemoryIdle = map[string]float64{}
		for k, v := range st.Memory {
			res.GoMemoryIdle[k] = mib(v)
		}
	}
	res.IdleSeconds = round(wall.Seconds(), 1)
	res.IdleCPUPercent = round(100*float64(cpu1-cpu0)/float64(wall), 3)
	res.IdleLoad = loadAvgs()
	if n := f.connected.Load(); n != int64(len(devs)) {
		return res, fmt.Errorf("%d of %d devices still connected after the idle window (last error: %v)", n, len(devs), f.err())
	}
	pr.printf("%s: idle CPU %.2f%% of one core over %.0fs (load average %s)", name, res.IdleCPUPercent, res.IdleSeconds, res.IdleLoad)

	if !cfg.Restart {
		return res, nil
	}
	t1 := time.Now()
	serr := c.stop(time.Minute)
	c = nil
	if serr != nil {
		return res, serr
	}
	res.StopSeconds = round(time.Since(t1).Seconds(), 3)
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = f.waitDisconnected(dctx)
	cancel()
	if err != nil {
		return res, err
	}
	f.markEpoch()
	failed0 := f.failures.Load()
	if c, err = restart(ctx); err != nil {
		return res, err
	}
	t2 := time.Now()
	sctx, cancel = context.WithTimeout(ctx, cfg.ConnectTimeout)
	err = f.waitConnected(sctx, true)
	cancel()
	if err != nil {
		return res, fmt.Errorf("reconnect after restart: %w", err)
	}
	res.ReconnectSeconds = round(time.Since(t2).Seconds(), 3)
	res.ReconnectFailed = f.failures.Load() - failed0
	if rss, err := procRSS(c.pid()); err == nil {
		res.RSSRestartMiB = mib(rss)
	}
	pr.printf("%s: stopped in %.2fs; every device back %.2fs after the restart (%d failed attempts retried)", name, res.StopSeconds, res.ReconnectSeconds, res.ReconnectFailed)
	return res, nil
}

func mib(b int64) float64 { return round(float64(b)/(1<<20), 1) }

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// goStats asks a Go broker child for its runtime figures (and, with prof
// set, for heap and goroutine profiles at prof-heap.pprof and
// prof-goroutine.pprof): it sends SIGUSR1 and waits for the answer file.
func (c *child) goStats(ctx context.Context, prof string) (*childStats, error) {
	base := envValue(c.cmd.Env, "OUTPOST_BENCH_PROFILE")
	if base == "" {
		return nil, errors.New("not a Go broker")
	}
	out := base + "-stats.json"
	os.Remove(out)
	if prof != "" {
		if err := os.WriteFile(base+"-want-profile", []byte(prof), 0o644); err != nil {
			return nil, err
		}
	}
	if err := c.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if b, err := os.ReadFile(out); err == nil && len(b) > 0 && b[len(b)-1] == '\n' {
			var st childStats
			if err := json.Unmarshal(b, &st); err != nil {
				return nil, err
			}
			return &st, nil
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// bulkCreate registers n devices through POST /api/v1/devices/bulk.
func bulkCreate(ctx context.Context, base, token string, n int) ([]apiDevice, error) {
	if base == "" || token == "" {
		return nil, errors.New("platform did not print its http address and admin token")
	}
	if _, err := url.Parse(base); err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 5 * time.Minute}
	out := make([]apiDevice, 0, n)
	for from := 0; from < n; from += server.MaxBulkDevices {
		names := make([]string, 0, min(n-from, server.MaxBulkDevices))
		for i := from; i < n && len(names) < cap(names); i++ {
			names = append(names, fmt.Sprintf("conn-%d", i))
		}
		body, _ := json.Marshal(map[string]any{"names": names})
		req, err := http.NewRequestWithContext(ctx, "POST", base+"/api/v1/devices/bulk", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		hr, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("bench: bulk create: %w", err)
		}
		raw, err := io.ReadAll(io.LimitReader(hr.Body, 256<<20))
		hr.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("bench: bulk create: %w", err)
		}
		if hr.StatusCode != http.StatusCreated {
			return nil, fmt.Errorf("bench: bulk create: status %d: %s", hr.StatusCode, bytes.TrimSpace(raw))
		}
		var resp struct {
			Devices []apiDevice `json:"devices"`
		}
		if err := json.Unmarshal(raw, &resp); err != nil {
			return nil, fmt.Errorf("bench: bulk create: %w", err)
		}
		if len(resp.Devices) != len(names) {
			return nil, fmt.Errorf("bench: bulk create: asked for %d devices, got %d", len(names), len(resp.Devices))
		}
		out = append(out, resp.Devices...)
	}
	return out, nil
}

func printConnections(w io.Writer, r *ConnectionsResult) {
	fmt.Fprintf(w, "Outpost connections benchmark\n")
	fmt.Fprintf(w, "machine:  %s; open-file limit %d per process\n", r.Machine, r.FileLimit)
	fmt.Fprintf(w, "workload: %s idle MQTT 3.1.1 devices (clean session, keep-alive %.0fs, one subscription each), connecting at once from a separate process; created through the bulk API in %.2fs (%s/s)\n\n",
		group(r.Devices), r.KeepaliveSeconds, r.CreateSeconds, groupf(r.CreatesPerSecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tRSS/device KiB\tafter idle\tRSS MiB\tconnect s\tconnects/s\tfailed attempts\tidle CPU %%\treconnect s\tload avg\t\n")
	for _, b := range r.Brokers {
		rec := "-"
		if b.ReconnectSeconds > 0 {
			rec = fmt.Sprintf("%.2f", b.ReconnectSeconds)
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.1f\t%.2f\t%s\t%d\t%.2f\t%s\t%s\t\n", b.Broker, b.RSSPerDeviceKiB, b.RSSIdlePerDeviceKiB, b.RSSMiB, b.ConnectSeconds,
			groupf(b.ConnectsPerSecond), b.FailedAttempts, b.IdleCPUPercent, rec, b.IdleLoad)
	}
	tw.Flush()
	for _, b := range r.Brokers {
		if b.Goroutines > 0 {
			n := float64(r.Devices)
			fmt.Fprintf(w, "%s: after a collection, Go heap %.1f → %.1f MiB (%.1f KiB/device), stacks %.1f → %.1f MiB (%.1f KiB/device), %d goroutines\n",
				b.Broker, b.GoHeapBase, b.GoHeapMiB, (b.GoHeapMiB-b.GoHeapBase)*1024/n, b.GoStackBase, b.GoStackMiB, (b.GoStackMiB-b.GoStackBase)*1024/n, b.Goroutines)
		}
	}
	fmt.Fprintf(w, "total %.1fs\n", r.TotalSeconds)
}
