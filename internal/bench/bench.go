// Package bench measures the platform against the raw parts it is built
// on, in the same run and on the same machine: `outpost bench ingest` and
// `outpost bench rpc`.
//
// Every benchmark starts the platform in-process with its embedded defaults
// (mochi broker, SQLite in a temporary directory, HTTP API, all on
// 127.0.0.1 with ephemeral ports), creates its devices through the HTTP API,
// drives load only over loopback, and then repeats the same work on the raw
// part alone (a plain mochi broker with plain MQTT clients, or the SQLite
// store without a broker) so that the platform's figure can be read as a
// ratio of what the parts can do. Runs are bounded in size and in time
// (--timeout) and stop by themselves.
//
// Output is a readable table followed, as the very last line, by one JSON
// object holding every figure.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/internal/server"
)

const usage = `usage: outpost bench BENCHMARK [flags]

Benchmarks (each starts the platform on 127.0.0.1, creates its devices
through the HTTP API, measures, compares with the raw parts in the same
run, prints a table and, as the last line, one JSON object):

  ingest   durable telemetry ingestion: SDK devices publish readings until
           every one is committed; compared with a plain mochi broker moving
           the same messages to a plain subscriber and with the SQLite store
           taking the same batches without a broker
           flags: --devices N (10) --readings M (200000) --batch K (50)
                  --sync normal|full (normal) --raw-window W (16)
                  --timeout D (5m); the write path's design:
                  --landing auto|always|off --max-delay D --merge-chunk N

  latency  publish → PUBACK and publish → live-stream latency of a probe
           device beside paced background load, at several loads (percent
           of the maximum, measured first unless --max is given), with the
           writer's busy ratio, bytes written and CPU per reading; each load
           also on a plain mochi broker and on the store alone
           flags: --load LIST (10,25,50,100) --max R (0: measure)
                  --devices N (10) --batch K (50) --window W (16)
                  --duration D (10s) --warmup D (2s) --probe-rate R (20)
                  --sync normal|full --raw=false --timeout D (10m)
                  and the design flags of ingest

  rpc      RPC round trips through POST /api/v1/devices/{id}/rpc/echo at
           several caller counts; compared with a plain MQTT request/response
           round trip over a plain mochi broker at the same concurrency
           flags: --devices D (100) --callers LIST (1,100) --calls C (2000)
                  --timeout D (5m)

` + otaUsage + `
  connections
           idle devices held from this process, the platform in a process of
           its own: resident memory per connected device, the connect storm
           of every device at once, idle CPU, reconnection after a restart;
           with --raw also mochi alone (its defaults and the platform's
           options) and a bare connection layer over mochi's codec, and a
           Mosquitto started by the benchmark when it is on PATH
           flags: --devices N (1000) --raw --mosquitto auto|off|PATH
                  --idle D (60s) --settle D (10s) --restart (true)
                  --brokers LIST --profile-dir DIR --timeout D (30m)

Run 'outpost bench BENCHMARK --help' for the flags of one benchmark.
`

// Limits that keep a run bounded whatever the flags say.
const (
	maxDevices  = 10_000
	maxReadings = 20_000_000
	maxCalls    = 10_000_000
	maxCallers  = 10_000
	maxTimeout  = 24 * time.Hour
)

// Main runs `outpost bench ARGS...`. args are the words after "bench". The
// table and the final JSON line go to stdout, progress to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("bench: no benchmark given (want ingest, rpc, ota, latency or connections)")
	}
	switch args[0] {
	case "ingest":
		return ingestMain(ctx, args[1:], stdout, stderr)
	case "rpc":
		return rpcMain(ctx, args[1:], stdout, stderr)
	case "ota":
		return otaMain(ctx, args[1:], stdout, stderr)
	case "latency":
		return latencyMain(ctx, args[1:], stdout, stderr)
	case "connections":
		return connectionsMain(ctx, args[1:], stdout, stderr)
	case childCommand:
		return childMain(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("bench: unknown benchmark %q (want ingest, rpc, ota, latency or connections)", args[0])
}

// parseFlags parses fs and refuses positional arguments. It returns
// errHelp (nil to the caller) when help was asked for.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench %s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("bench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// startProfile starts a CPU profile of the whole run into path, if set, and
// returns the function that stops it.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("bench: --cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("bench: --cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func checkTimeout(d time.Duration) error {
	if d <= 0 || d > maxTimeout {
		return fmt.Errorf("--timeout must be between 1ns and %s", maxTimeout)
	}
	return nil
}

// Machine describes where a benchmark ran.
type Machine struct {
	CPUs        int    `json:"cpus"`
	OS          string `json:"os"`
	Arch        string `json:"arch"`
	CPUModel    string `json:"cpu_model,omitempty"`
	MemTotalMiB int    `json:"mem_total_mib,omitempty"`
	GoVersion   string `json:"go_version"`
	GOMAXPROCS  int    `json:"gomaxprocs"`
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH, GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.Atoi(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB")); err == nil {
		m.MemTotalMiB = kb / 1024
	}
	return m
}

// String renders the machine in one line for the report.
func (m Machine) String() string {
	s := fmt.Sprintf("%d CPUs (GOMAXPROCS %d), %s/%s", m.CPUs, m.GOMAXPROCS, m.OS, m.Arch)
	if m.CPUModel != "" {
		s += ", " + m.CPUModel
	}
	if m.MemTotalMiB > 0 {
		s += fmt.Sprintf(", %d MiB RAM", m.MemTotalMiB)
	}
	return s + ", " + m.GoVersion
}

// procField returns the value of the first "key: value" line of a /proc
// file, or "" when it cannot be read.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// maxRSSMiB returns the process's peak resident set size, 0 if unknown.
func maxRSSMiB() float64 {
	kb, err := strconv.Atoi(strings.TrimSuffix(procField("/proc/self/status", "VmHWM"), " kB"))
	if err != nil {
		return 0
	}
	return round(float64(kb)/1024, 1)
}

// heapMiB returns the Go heap in use after a full collection: with the
// platform still open this is what the platform (and the in-process SDK
// clients) keep alive.
// If profile is set, a heap profile is written there too.
func heapMiB(profile string) (float64, error) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return 0, fmt.Errorf("bench: --memprofile: %w", err)
		}
		err = pprof.Lookup("heap").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, fmt.Errorf("bench: --memprofile: %w", err)
		}
	}
	return round(float64(ms.HeapInuse)/(1<<20), 1), nil
}

// platform is the Outpost platform running in-process for one benchmark.
type platform struct {
	srv  *server.Server
	dir  string
	http *http.Client
}

// startPlatform opens the platform with embedded defaults in a temporary
// data directory, listening on 127.0.0.1 ephemeral ports.
func startPlatform(ctx context.Context, syncMode string, httpConns int, d Design) (*platform, error) {
	dir, err := os.MkdirTemp("", "outpost-bench-*")
	if err != nil {
		return nil, fmt.Errorf("bench: temporary directory: %w", err)
	}
	srv, err := server.Open(ctx, server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Sync: syncMode,
		Store: d.store(syncMode), Ingest: d.ingest()})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: start platform: %w", err)
	}
	return newPlatform(srv, dir, httpConns), nil
}

// newPlatform wraps a started platform and its data directory, with an
// HTTP client for httpConns concurrent requests.
func newPlatform(srv *server.Server, dir string, httpConns int) *platform {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = httpConns + 16
	tr.MaxIdleConnsPerHost = httpConns + 16 // reuse connections instead of churning ports
	tr.DisableCompression = true
	var dialer net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countConn{c}, nil
	}
	return &platform{srv: srv, dir: dir, http: &http.Client{Transport: tr}}
}

func (p *platform) Close() error {
	p.http.CloseIdleConnections()
	var err error
	if !closeWithin(30*time.Second, func() { err = p.srv.Close() }) {
		return errors.New("bench: the platform did not close within 30s")
	}
	os.RemoveAll(p.dir)
	return err
}

// do sends an authenticated API request with an optional JSON body and
// decodes a JSON answer into out. A status other than want is an error
// carrying the response body.
func (p *platform) do(ctx context.Context, method, path string, body []byte, want int, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.srv.HTTPURL()+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+p.srv.AdminToken())
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: status %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode response: %w", method, path, err)
		}
	}
	return nil
}

// apiDevice is a device as POST /api/v1/devices returns it.
type apiDevice struct {
	ID       string `json:"id"`
	Password string `json:"password"`
	URL      string `json:"url"`
}

// createDevices registers n devices through the HTTP API, a few at a time.
func (p *platform) createDevices(ctx context.Context, prefix string, n int) ([]apiDevice, error) {
	out := make([]apiDevice, n)
	err := forEach(ctx, n, 4, func(ctx context.Context, i int) error {
		body, _ := json.Marshal(map[string]string{"name": fmt.Sprintf("%s-%d", prefix, i)})
		var d apiDevice
		if err := p.do(ctx, "POST", "/api/v1/devices", body, http.StatusCreated, &d); err != nil {
			return fmt.Errorf("bench: create device: %w", err)
		}
		if d.ID == "" || d.Password == "" {
			return fmt.Errorf("bench: create device: response without id or password")
		}
		if d.URL == "" {
			d.URL = "mqtt://" + d.ID + ":" + d.Password + "@" + p.srv.MQTTAddr()
		}
		out[i] = d
		return nil
	})
	return out, err
}

// metrics reads the platform's Prometheus counters (unlabelled samples
// only) from /metrics.
func (p *platform) metrics(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", p.srv.HTTPURL()+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+p.srv.AdminToken())
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: read /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: read /metrics: status %d", resp.StatusCode)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.Fields(val)[0], 64); err == nil {
			m[name] = f
		}
	}
	return m, sc.Err()
}

// forEach runs fn(i) for i in [0,n) on at most par goroutines and returns
// the first error (which cancels the others' context).
func forEach(ctx context.Context, n, par int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idx := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(par, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := 0; i < n; i++ {
		select {
		case idx <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(idx)
	wg.Wait()
	if err := context.Cause(ctx); err != nil && ctx.Err() != nil {
		return err
	}
	return nil
}

// progress writes one progress line to stderr.
type progress struct{ w io.Writer }

func (p progress) printf(format string, args ...any) {
	fmt.Fprintf(p.w, "bench: "+format+"\n", args...)
}

// writeJSONLine writes v as one line of JSON: the last line of every
// benchmark's output.
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func round(x float64, digits int) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	p := math.Pow10(digits)
	return math.Round(x*p) / p
}

// rate returns n per second over d.
func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// ms converts a duration to milliseconds with microsecond precision.
func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

// latencies summarises a set of round-trip times.
type latencies struct {
	P50, P90, P99, Max, Mean time.Duration
}

// summarize sorts ds in place and returns nearest-rank percentiles.
func summarize(ds []time.Duration) latencies {
	if len(ds) == 0 {
		return latencies{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	pick := func(p float64) time.Duration {
		k := int(math.Ceil(p*float64(len(ds)))) - 1
		return ds[max(0, min(k, len(ds)-1))]
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return latencies{P50: pick(0.50), P90: pick(0.90), P99: pick(0.99), Max: ds[len(ds)-1], Mean: sum / time.Duration(len(ds))}
}

// group formats an integer with thousands separators.
func group(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// groupf formats a rate with thousands separators and no decimals.
func groupf(f float64) string { return group(int(math.Round(f))) }
