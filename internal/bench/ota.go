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
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/server"
)

// OTAConfig sizes an ota run.
type OTAConfig struct {
	Devices int
	// Size is the file sent to every device; Chunk the MQTT chunk size of
	// the main runs and BigChunk that of the large-chunk run.
	Size            int64
	Chunk, BigChunk int
	// Window is the chunks a device keeps asked for (0: the SDK's
	// default); the raw baseline keeps as many in flight per subscriber.
	Window int
	// Platform is "process" (an `outpost serve` child process, whose RSS
	// is the platform's alone), "inproc" (the platform in this process:
	// RSS then includes the devices), or "auto" (process when this
	// program is the outpost binary).
	Platform string
	Timeout  time.Duration
}

// OTARun is one series of transfers (or the raw baseline).
type OTARun struct {
	Name      string  `json:"name"`
	Method    string  `json:"method"`
	Chunk     int     `json:"chunk_bytes,omitempty"`
	Devices   int     `json:"devices"`
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MBPerS    float64 `json:"mb_per_s"`
	Failed    int     `json:"failed"`
	Drops     int64   `json:"disconnects"`
	PeakRSS   float64 `json:"platform_peak_rss_mib,omitempty"`
	RSSGrowth float64 `json:"platform_rss_growth_mib,omitempty"`
	// Ratio is MBPerS over the raw baseline's.
	Ratio      float64 `json:"ratio_to_raw,omitempty"`
	FirstError string  `json:"first_error,omitempty"`
}

// OTAResult holds every figure of an ota run; it is the JSON line.
type OTAResult struct {
	Benchmark string  `json:"benchmark"`
	Machine   Machine `json:"machine"`
	Devices   int     `json:"devices"`
	FileBytes int64   `json:"file_bytes"`
	Platform  string  `json:"platform"`
	// Raw is the raw baseline: the mean of a run just before the
	// platform's main run and one just after it (RawRuns), which evens
	// out a machine whose load changes during the benchmark.
	Raw     OTARun   `json:"raw"`
	RawRuns []OTARun `json:"raw_runs"`
	Runs    []OTARun `json:"runs"`
	// BaseRSSMiB is the platform's RSS with every device connected,
	// before the transfers.
	BaseRSSMiB   float64 `json:"platform_base_rss_mib"`
	TotalSeconds float64 `json:"total_seconds"`
}

const otaUsage = `  ota      file transfers: one file (--size, 8 MiB) to --devices SDK devices
           (100) at once, over MQTT chunks of --chunk (64 KiB), by URL, and
           over chunks of --big-chunk (1 MiB); aggregate MB/s against a plain
           mochi broker moving the same bytes, in messages of the same
           size, to as many subscribers with QoS 1; platform RSS growth
           flags: --devices N (100) --size B (8388608) --chunk B (65536)
                  --big-chunk B (1048576) --window W (SDK default)
                  --platform auto|process|inproc (auto) --timeout D (10m)
`

func otaMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ota", stderr)
	cfg := OTAConfig{}
	fs.IntVar(&cfg.Devices, "devices", 100, "SDK devices receiving the file at once")
	fs.Int64Var(&cfg.Size, "size", 8<<20, "file size in bytes")
	fs.IntVar(&cfg.Chunk, "chunk", 64<<10, "MQTT chunk size of the main runs")
	fs.IntVar(&cfg.BigChunk, "big-chunk", 1<<20, "MQTT chunk size of the large-chunk run (0: skip it)")
	fs.IntVar(&cfg.Window, "window", 0, "chunks a device keeps asked for (0: the SDK's default)")
	fs.StringVar(&cfg.Platform, "platform", "auto", "auto, process (an outpost serve child process) or inproc")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "give up after this long")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	stop, err := startProfile(*cpuprofile)
	if err != nil {
		return err
	}
	defer stop()
	res, err := RunOTA(ctx, cfg, stderr)
	if res != nil {
		printOTA(stdout, res)
		if werr := writeJSONLine(stdout, res); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

func (c *OTAConfig) check() error {
	switch {
	case c.Devices < 1 || c.Devices > maxDevices:
		return fmt.Errorf("bench ota: --devices must be between 1 and %d", maxDevices)
	case c.Size < 1 || c.Size > 1<<30:
		return errors.New("bench ota: --size must be between 1 and 1 GiB")
	case c.Chunk < 256 || c.Chunk > 1<<20 || (c.BigChunk != 0 && (c.BigChunk < 256 || c.BigChunk > 1<<20)):
		return errors.New("bench ota: chunk sizes must be between 256 B and 1 MiB")
	case c.Size*int64(c.Devices) > 64<<30:
		return errors.New("bench ota: --size × --devices must stay under 64 GiB of disk")
	}
	if c.Platform == "" || c.Platform == "auto" {
		c.Platform = "inproc"
		if exe, err := os.Executable(); err == nil && strings.HasPrefix(filepath.Base(exe), "outpost") && !strings.HasSuffix(exe, ".test") {
			c.Platform = "process"
		}
	}
	if c.Platform != "process" && c.Platform != "inproc" {
		return errors.New("bench ota: --platform must be auto, process or inproc")
	}
	return checkTimeout(c.Timeout)
}

// otaPlatform is the platform under test: in this process or a child.
type otaPlatform struct {
	url, mqtt, token string
	pid              int
	srv              *server.Server
	cmd              *exec.Cmd
	dir              string
	hc               *http.Client
}

func startOTAPlatform(ctx context.Context, mode string) (*otaPlatform, error) {
	dir, err := os.MkdirTemp("", "outpost-bench-ota-*")
	if err != nil {
		return nil, err
	}
	p := &otaPlatform{dir: dir, hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	if mode == "inproc" {
		p.srv, err = server.Open(ctx, server.Config{DataDir: filepath.Join(dir, "data"), MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("bench: start platform: %w", err)
		}
		p.url, p.mqtt, p.token, p.pid = p.srv.HTTPURL(), p.srv.MQTTAddr(), p.srv.AdminToken(), os.Getpid()
		return p, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(exe, "serve", "--data", filepath.Join(dir, "data"), "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "error")
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: start %s serve: %w", exe, err)
	}
	p.pid = p.cmd.Process.Pid
	sc := bufio.NewScanner(out)
	deadline := time.AfterFunc(30*time.Second, func() { p.cmd.Process.Kill() })
	defer deadline.Stop()
	for (p.url == "" || p.mqtt == "" || p.token == "") && sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "mqtt: tcp://"):
			p.mqtt = strings.TrimPrefix(l, "mqtt: tcp://")
		case strings.HasPrefix(l, "http: "):
			p.url = strings.TrimPrefix(l, "http: ")
		case strings.HasPrefix(l, "admin token: "):
			p.token = strings.TrimPrefix(l, "admin token: ")
		}
	}
	go io.Copy(io.Discard, out)
	if p.url == "" || p.mqtt == "" || p.token == "" {
		p.Close()
		return nil, errors.New("bench: the platform process did not print its endpoints")
	}
	return p, nil
}

func (p *otaPlatform) Close() {
	p.hc.CloseIdleConnections()
	if p.srv != nil {
		closeWithin(30*time.Second, func() { p.srv.Close() })
	}
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(os.Interrupt)
		if !closeWithin(30*time.Second, func() { p.cmd.Wait() }) {
			p.cmd.Process.Kill()
		}
	}
	os.RemoveAll(p.dir)
}

// rssMiB returns the platform process's resident set size.
func (p *otaPlatform) rssMiB() float64 {
	kb, err := strconv.Atoi(strings.TrimSuffix(procField("/proc/"+strconv.Itoa(p.pid)+"/status", "VmRSS"), " kB"))
	if err != nil {
		return 0
	}
	return float64(kb) / 1024
}

func (p *otaPlatform) do(ctx context.Context, method, path string, body io.Reader, n int64, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, p.url+path, body)
	if err != nil {
		return err
	}
	if n >= 0 && body != nil {
		req.ContentLength = n
	}
	req.Header.Set("Authorization", "Bearer "+p.token)
	resp, err := p.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: status %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

func (p *otaPlatform) doJSON(ctx context.Context, method, path string, body any, want int, out any) error {
	b, _ := json.Marshal(body)
	return p.do(ctx, method, path, bytes.NewReader(b), int64(len(b)), want, out)
}

// RunOTA runs the ota benchmark.
func RunOTA(ctx context.Context, cfg OTAConfig, stderr io.Writer) (*OTAResult, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	prog := progress{stderr}
	start := time.Now()
	res := &OTAResult{Benchmark: "ota", Machine: machine(), Devices: cfg.Devices, FileBytes: cfg.Size, Platform: cfg.Platform}

	prog.printf("raw broker: %d subscribers, %s each in %s messages", cfg.Devices, humanMiB(cfg.Size), humanMiB(int64(cfg.Chunk)))
	window := cfg.Window
	if window == 0 {
		window = max(2, min(64, (128<<10)/cfg.Chunk))
	}
	raw, err := rawOTA(ctx, cfg.Devices, cfg.Size, cfg.Chunk, window)
	res.Raw = raw
	raw.Name = "raw 1"
	res.RawRuns = append(res.RawRuns, raw)
	if err != nil {
		return res, err
	}

	p, err := startOTAPlatform(ctx, cfg.Platform)
	if err != nil {
		return res, err
	}
	defer p.Close()
	var devs []apiDevice
	for i := range cfg.Devices {
		var d apiDevice
		if err := p.doJSON(ctx, "POST", "/api/v1/devices", map[string]string{"name": fmt.Sprintf("ota-%d", i)}, http.StatusCreated, &d); err != nil {
			return res, fmt.Errorf("bench: create device: %w", err)
		}
		devs = append(devs, d)
	}
	var art struct{ ID string }
	r := newPattern(cfg.Size)
	if err := p.do(ctx, "POST", "/api/v1/artifacts?name=bench.bin", r, cfg.Size, http.StatusCreated, &art); err != nil {
		return res, fmt.Errorf("bench: upload: %w", err)
	}

	runs := []struct {
		name, method string
		chunk        int
	}{
		{"mqtt", "mqtt", cfg.Chunk},
		{"url", "url", 0},
	}
	if cfg.BigChunk > 0 {
		runs = append(runs, struct {
			name, method string
			chunk        int
		}{"mqtt-big-chunks", "mqtt", cfg.BigChunk})
	}
	var raw2 OTARun
	for i, run := range runs {
		if i == 1 {
			// The second raw run right after the platform's main run.
			prog.printf("raw broker again")
			raw2, err = rawOTA(ctx, cfg.Devices, cfg.Size, cfg.Chunk, window)
			raw2.Name = "raw 2"
			res.RawRuns = append(res.RawRuns, raw2)
			if err != nil {
				return res, err
			}
		}
		prog.printf("platform %s: %d devices, %s each", run.name, cfg.Devices, humanMiB(cfg.Size))
		or, base, err := otaRun(ctx, p, devs, art.ID, cfg, run.method, run.chunk)
		if res.BaseRSSMiB == 0 {
			res.BaseRSSMiB = round(base, 1)
		}
		or.Name = run.name
		if res.Raw.MBPerS > 0 && run.method == "mqtt" && run.chunk == cfg.Chunk {
			or.Ratio = round(or.MBPerS/res.Raw.MBPerS, 2)
		}
		res.Runs = append(res.Runs, or)
		if err != nil {
			return res, err
		}
	}
	res.Raw.Seconds = round((raw.Seconds+raw2.Seconds)/2, 3)
	res.Raw.MBPerS = round(float64(res.Raw.Bytes)/res.Raw.Seconds/1e6, 1)
	for i := range res.Runs {
		if res.Runs[i].Ratio > 0 {
			res.Runs[i].Ratio = round(res.Runs[i].MBPerS/res.Raw.MBPerS, 2)
		}
	}
	res.TotalSeconds = round(time.Since(start).Seconds(), 1)
	return res, nil
}

// pattern is n pseudo-random bytes.
type patternReader struct {
	r    *rand.ChaCha8
	left int64
}

func newPattern(n int64) *patternReader {
	return &patternReader{r: rand.NewChaCha8([32]byte{1}), left: n}
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	p.r.Read(b)
	p.left -= int64(len(b))
	return len(b), nil
}

func humanMiB(n int64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%g MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%g KiB", float64(n)/(1<<10))
}

// otaRun connects fresh devices, sends the artifact to all of them at
// once and waits until every one has it. It samples the platform's RSS
// throughout; base is the RSS once the devices are connected.
func otaRun(ctx context.Context, p *otaPlatform, devs []apiDevice, artifact string, cfg OTAConfig, method string, chunk int) (OTARun, float64, error) {
	run := OTARun{Method: method, Chunk: chunk, Devices: len(devs), Bytes: cfg.Size * int64(len(devs))}
	root, err := os.MkdirTemp("", "outpost-bench-devices-*")
	if err != nil {
		return run, 0, err
	}
	defer os.RemoveAll(root)
	var drops atomic.Int64
	done := make(chan device.FileEvent, len(devs))
	var mu sync.Mutex
	var ready bool
	clients := make([]*device.Client, len(devs))
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	err = forEach(ctx, len(devs), 8, func(ctx context.Context, i int) error {
		fopts := []device.FileOption{device.FileMethods(method), device.FileHandler(func(_ context.Context, e device.FileEvent) { done <- e })}
		if chunk > 0 {
			fopts = append(fopts, device.FileChunkSize(chunk))
		}
		if cfg.Window > 0 {
			fopts = append(fopts, device.FileWindow(min(cfg.Window, (4<<20)/max(chunk, 1))))
		}
		c, err := device.New("mqtt://"+devs[i].ID+":"+devs[i].Password+"@"+p.mqtt, device.WithMemoryOutbox(),
			device.WithFiles(filepath.Join(root, strconv.Itoa(i)), fopts...),
			device.WithConnectionHandlers(nil, func() {
				mu.Lock()
				defer mu.Unlock()
				if ready {
					drops.Add(1)
				}
			}))
		if err != nil {
			return err
		}
		clients[i] = c
		return c.Connect(ctx)
	})
	if err != nil {
		return run, 0, fmt.Errorf("bench: connect devices: %w", err)
	}
	mu.Lock()
	ready = true
	mu.Unlock()
	base := p.rssMiB()
	peak := base
	stopSample := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopSample:
				return
			case <-t.C:
				peak = max(peak, p.rssMiB())
			}
		}
	}()
	start := time.Now()
	err = forEach(ctx, len(devs), 16, func(ctx context.Context, i int) error {
		return p.doJSON(ctx, "POST", "/api/v1/devices/"+devs[i].ID+"/files", map[string]any{"artifact": artifact, "methods": []string{method}}, http.StatusAccepted, nil)
	})
	for n := 0; err == nil && n < len(devs); n++ {
		select {
		case e := <-done:
			if e.State != "FILE_READY" {
				run.Failed++
				if run.FirstError == "" {
					run.FirstError = e.State + " " + e.Error + " " + e.Message
				}
			}
		case <-ctx.Done():
			err = fmt.Errorf("bench: %d of %d transfers done: %w", n, len(devs), ctx.Err())
		}
	}
	took := time.Since(start)
	close(stopSample)
	<-sampled
	run.Seconds = round(took.Seconds(), 3)
	run.MBPerS = round(float64(run.Bytes)/took.Seconds()/1e6, 1)
	run.Drops = drops.Load()
	run.PeakRSS = round(peak, 1)
	run.RSSGrowth = round(peak-base, 1)
	return run, base, err
}

// rawOTA moves the same bytes through a plain mochi broker: per
// subscriber, size bytes in chunk-size QoS 1 messages, window of them in
// flight, from publishers over TCP (one per ten subscribers).
func rawOTA(ctx context.Context, subs int, size int64, chunk, window int) (OTARun, error) {
	run := OTARun{Name: "raw (mean)", Method: "raw mqtt", Chunk: chunk, Devices: subs, Bytes: size * int64(subs)}
	b, err := startRawBroker(nil)
	if err != nil {
		return run, err
	}
	defer b.Close()
	msgs := int((size + int64(chunk) - 1) / int64(chunk))
	credits := make([]chan struct{}, subs)
	got := make([]atomic.Int64, subs)
	finished := make(chan int, subs)
	var clients []*rawClient
	defer func() { closeRaw(clients) }()
	for i := range subs {
		credits[i] = make(chan struct{}, window)
		for range window {
			credits[i] <- struct{}{}
		}
		i := i
		c, err := dialRaw(ctx, b.addr(), fmt.Sprintf("sub-%d", i), func(pr paho.PublishReceived) {
			n := got[i].Add(int64(len(pr.Packet.Payload)))
			select {
			case credits[i] <- struct{}{}:
			default:
			}
			if n >= size {
				finished <- i
			}
		})
		if err != nil {
			return run, err
		}
		clients = append(clients, c)
		if err := c.subscribe(ctx, fmt.Sprintf("raw/%d", i)); err != nil {
			return run, err
		}
	}
	pubs := max(1, subs/10)
	var pubClients []*rawClient
	for j := range pubs {
		c, err := dialRaw(ctx, b.addr(), fmt.Sprintf("pub-%d", j), nil)
		if err != nil {
			return run, err
		}
		pubClients = append(pubClients, c)
		clients = append(clients, c)
	}
	payload := make([]byte, chunk)
	newPattern(int64(chunk)).Read(payload)
	last := payload[:size-int64(msgs-1)*int64(chunk)]
	start := time.Now()
	err = forEach(ctx, subs, subs, func(ctx context.Context, i int) error {
		c := pubClients[i%pubs]
		topic := fmt.Sprintf("raw/%d", i)
		for k := 0; k < msgs; k++ {
			select {
			case <-credits[i]:
			case <-ctx.Done():
				return ctx.Err()
			}
			p := payload
			if k == msgs-1 {
				p = last
			}
			if err := c.publish(ctx, topic, p); err != nil {
				return fmt.Errorf("bench: raw publish: %w", err)
			}
		}
		return nil
	})
	for n := 0; err == nil && n < subs; n++ {
		select {
		case <-finished:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	took := time.Since(start)
	run.Seconds = round(took.Seconds(), 3)
	run.MBPerS = round(float64(run.Bytes)/took.Seconds()/1e6, 1)
	if in, w := b.dropped(); in+w > 0 && err == nil {
		err = fmt.Errorf("bench: the raw broker dropped %d messages", in+w)
	}
	return run, err
}

func printOTA(w io.Writer, r *OTAResult) {
	fmt.Fprintf(w, "ota: %d devices, %s each, platform %s; %s\n\n", r.Devices, humanMiB(r.FileBytes), r.Platform, r.Machine)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tmethod\tchunk\tseconds\tMB/s\tvs raw\tfailed\tdisconnects\tpeak RSS MiB\tRSS growth MiB\t")
	row := func(x OTARun) {
		ratio := "-"
		if x.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", x.Ratio)
		}
		chunk := "-"
		if x.Chunk > 0 {
			chunk = humanMiB(int64(x.Chunk))
		}
		rss, growth := "-", "-"
		if x.PeakRSS > 0 {
			rss, growth = fmt.Sprintf("%.1f", x.PeakRSS), fmt.Sprintf("%.1f", x.RSSGrowth)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f\t%.1f\t%s\t%d\t%d\t%s\t%s\t\n", x.Name, x.Method, chunk, x.Seconds, x.MBPerS, ratio, x.Failed, x.Drops, rss, growth)
	}
	for _, x := range r.RawRuns {
		row(x)
	}
	if len(r.RawRuns) > 1 {
		row(r.Raw)
	}
	for _, x := range r.Runs {
		row(x)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nplatform RSS with every device connected, before the transfers: %.1f MiB; total %.1fs\n", r.BaseRSSMiB, r.TotalSeconds)
}
