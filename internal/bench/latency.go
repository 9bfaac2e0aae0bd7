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
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/outpost-iot/outpost/internal/mochi"

	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/sqlite"
	"github.com/outpost-iot/outpost/protocol"
)

// LatencyConfig sizes a latency run.
type LatencyConfig struct {
	// Devices publish the background load, each Batch readings per
	// message, with up to Window messages in flight each.
	Devices int
	Batch   int
	Window  int
	// Loads are the background loads to measure, in percent of
	// MaxReadingsPerS.
	Loads []int
	// MaxReadingsPerS is the 100 % load in readings/s; 0 measures it first
	// (the platform under unpaced load for Duration).
	MaxReadingsPerS float64
	// Warmup runs the load before each measurement; Duration is the
	// measured window.
	Warmup, Duration time.Duration
	// ProbeRate is the probe device's messages per second.
	ProbeRate float64
	Sync      string
	Design    Design
	// Raw also runs the raw broker and the raw store at each load.
	Raw     bool
	Timeout time.Duration
}

// Lat summarises one kind of latency over a measured window.
type Lat struct {
	N     int     `json:"n"`
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
}

func latOf(ds []time.Duration) *Lat {
	s := summarize(ds)
	return &Lat{N: len(ds), P50MS: ms(s.P50), P99MS: ms(s.P99), MaxMS: ms(s.Max)}
}

// LatencyRun holds the figures of one run (platform, raw broker or raw
// store) at one load, over the measured window.
type LatencyRun struct {
	Seconds float64 `json:"seconds"`
	// ReadingsPerS is what was acknowledged (platform, raw broker) or
	// committed (raw store) during the window.
	ReadingsPerS float64 `json:"readings_per_s"`
	// PubAck: probe publish → PUBACK (platform, raw broker).
	PubAck *Lat `json:"puback,omitempty"`
	// Stream: probe publish → its event on GET /api/v1/stream (platform),
	// → a plain subscriber (raw broker); every batch's submit → commit
	// callback (raw store).
	Stream *Lat `json:"stream,omitempty"`
	// WriterBusy is the fraction of the window the store held its write
	// lock (commits, background merges, finishing checkpoints); for a
	// store that does not report it, the time of the commits.
	WriterBusy float64 `json:"writer_busy"`
	Commits    int     `json:"commits,omitempty"`
	// ReadingsPerCommit is the mean group size.
	ReadingsPerCommit float64 `json:"readings_per_commit,omitempty"`
	// BytesWrittenPerReading is the process's wchar (bytes handed to
	// write(2)) less the bytes that crossed the benchmark's loopback
	// connections, i.e. what was written to files (WAL, database,
	// temporary files), per reading;
	// DiskBytesPerReading its write_bytes (bytes that reached the page
	// cache as new dirty pages), both from /proc/self/io.
	BytesWrittenPerReading float64 `json:"bytes_written_per_reading"`
	DiskBytesPerReading    float64 `json:"disk_bytes_per_reading"`
	// CPUMicrosPerReading is the whole process's CPU time (user+system,
	// load generator included) per reading.
	CPUMicrosPerReading float64 `json:"cpu_us_per_reading"`
	// Refused counts background messages refused with a reason code
	// (PUBACK 0x97 when the ingest queue is full) and sent again.
	Refused int64 `json:"refused"`
	// Late counts background messages that left later than their slot
	// because the publisher's window was full.
	Late int64 `json:"late"`
	// LoadAvg is the host's 1-minute load average when the run started.
	LoadAvg float64 `json:"loadavg_1m"`
}

// LatencyLevel is one background load.
type LatencyLevel struct {
	LoadPct            int         `json:"load_pct"`
	TargetReadingsPerS float64     `json:"target_readings_per_s"`
	Platform           LatencyRun  `json:"platform"`
	RawBroker          *LatencyRun `json:"raw_broker,omitempty"`
	RawStore           *LatencyRun `json:"raw_store,omitempty"`
}

// LatencyResult holds every figure of a latency run; it is the JSON line.
type LatencyResult struct {
	Benchmark string  `json:"benchmark"`
	Machine   Machine `json:"machine"`
	Devices   int     `json:"devices"`
	Batch     int     `json:"batch"`
	Window    int     `json:"window"`
	Sync      string  `json:"sync"`
	Design    Design  `json:"design"`
	ProbeRate float64 `json:"probe_rate"`
	WarmupS   float64 `json:"warmup_s"`
	DurationS float64 `json:"duration_s"`
	// MaxReadingsPerS is the 100 % load: measured (Calibration holds that
	// run) or given with --max.
	MaxReadingsPerS float64        `json:"max_readings_per_s"`
	Calibration     *LatencyRun    `json:"calibration,omitempty"`
	Levels          []LatencyLevel `json:"levels"`
	MaxRSSMiB       float64        `json:"max_rss_mib"`
	TotalSeconds    float64        `json:"total_seconds"`
}

func latencyMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("latency", stderr)
	cfg := LatencyConfig{}
	loads := fs.String("load", "10,25,50,100", "background loads in percent of --max, comma-separated")
	fs.IntVar(&cfg.Devices, "devices", 10, "background devices")
	fs.IntVar(&cfg.Batch, "batch", 50, "readings per background message")
	fs.IntVar(&cfg.Window, "window", 16, "messages in flight per background device")
	fs.Float64Var(&cfg.MaxReadingsPerS, "max", 0, "readings/s at 100% load; 0 measures it first (unpaced load)")
	fs.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "load before each measured window")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measured window per load")
	fs.Float64Var(&cfg.ProbeRate, "probe-rate", 20, "probe messages per second")
	fs.StringVar(&cfg.Sync, "sync", "normal", "SQLite synchronous mode: normal or full")
	fs.BoolVar(&cfg.Raw, "raw", true, "also run the raw broker and the raw store at each load")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "give up after this long")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	cfg.Design.flags(fs)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	for _, f := range strings.Split(*loads, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f), "%")))
		if err != nil {
			return fmt.Errorf("bench latency: --load: %q is not a number", f)
		}
		cfg.Loads = append(cfg.Loads, n)
	}
	stop, err := startProfile(*cpuprofile)
	if err != nil {
		return err
	}
	defer stop()
	res, err := RunLatency(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	printLatency(stdout, res)
	return writeJSONLine(stdout, res)
}

func (c *LatencyConfig) validate() error {
	c.Sync = strings.ToLower(c.Sync)
	switch {
	case c.Devices < 1 || c.Devices > maxDevices:
		return fmt.Errorf("bench latency: --devices must be between 1 and %d", maxDevices)
	case c.Batch < 1 || c.Batch > protocol.MaxReadingsPerMessage:
		return fmt.Errorf("bench latency: --batch must be between 1 and %d", protocol.MaxReadingsPerMessage)
	case c.Window < 1 || c.Window > 64:
		return errors.New("bench latency: --window must be between 1 and 64 (the platform's Receive Maximum)")
	case len(c.Loads) == 0 || len(c.Loads) > 16:
		return errors.New("bench latency: --load needs 1 to 16 loads")
	case c.MaxReadingsPerS < 0 || c.MaxReadingsPerS > 1e8:
		return errors.New("bench latency: --max must be between 0 and 100000000")
	case c.Warmup < 0 || c.Warmup > time.Hour:
		return errors.New("bench latency: --warmup must be between 0 and 1h")
	case c.Duration < 100*time.Millisecond || c.Duration > time.Hour:
		return errors.New("bench latency: --duration must be between 100ms and 1h")
	case c.ProbeRate <= 0 || c.ProbeRate > 1000:
		return errors.New("bench latency: --probe-rate must be above 0 and at most 1000")
	case c.Sync != "normal" && c.Sync != "full":
		return fmt.Errorf("bench latency: --sync must be normal or full, not %q", c.Sync)
	}
	for _, l := range c.Loads {
		if l < 0 || l > 200 {
			return errors.New("bench latency: loads must be between 0 and 200 percent")
		}
	}
	if err := c.Design.validate(); err != nil {
		return fmt.Errorf("bench latency: %w", err)
	}
	return checkTimeout(c.Timeout)
}

// RunLatency runs the latency benchmark: the 100 % load measured first
// unless given, then each load on the platform, the raw broker and the
// raw store, each on a fresh instance.
func RunLatency(ctx context.Context, cfg LatencyConfig, log io.Writer) (*LatencyResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	began := time.Now()
	pr := progress{log}
	res := &LatencyResult{Benchmark: "latency", Machine: machine(), Devices: cfg.Devices, Batch: cfg.Batch, Window: cfg.Window, Sync: cfg.Sync, Design: cfg.Design,
		ProbeRate: cfg.ProbeRate, WarmupS: cfg.Warmup.Seconds(), DurationS: cfg.Duration.Seconds(), MaxReadingsPerS: cfg.MaxReadingsPerS}
	run := 0
	if res.MaxReadingsPerS == 0 {
		pr.printf("platform: unpaced load from %d devices to find the 100%% load", cfg.Devices)
		run++
		r, err := phaseResult(ctx, "calibrate", func(ctx context.Context) (LatencyRun, error) {
			return latencyPlatform(ctx, cfg, 0, run)
		})
		if err != nil {
			return nil, timeoutHint(ctx, cfg.Timeout, err)
		}
		res.Calibration = &r
		res.MaxReadingsPerS = round(r.ReadingsPerS, 0)
		pr.printf("platform: max %s readings/s", groupf(r.ReadingsPerS))
	}
	for _, pct := range cfg.Loads {
		lv := LatencyLevel{LoadPct: pct, TargetReadingsPerS: round(res.MaxReadingsPerS*float64(pct)/100, 0)}
		rate := lv.TargetReadingsPerS
		if rate == 0 {
			rate = -1 // no background load
		}
		var err error
		pr.printf("platform at %d%%: %s readings/s", pct, groupf(lv.TargetReadingsPerS))
		run++
		lv.Platform, err = phaseResult(ctx, "platform", func(ctx context.Context) (LatencyRun, error) { return latencyPlatform(ctx, cfg, rate, run) })
		if err != nil {
			return nil, timeoutHint(ctx, cfg.Timeout, err)
		}
		if cfg.Raw {
			runtime.GC()
			pr.printf("raw broker at %d%%", pct)
			run++
			rb, err := phaseResult(ctx, "raw-broker", func(ctx context.Context) (LatencyRun, error) { return latencyRawBroker(ctx, cfg, rate, run) })
			if err != nil {
				return nil, timeoutHint(ctx, cfg.Timeout, err)
			}
			lv.RawBroker = &rb
			runtime.GC()
			pr.printf("raw store at %d%%", pct)
			run++
			rs, err := phaseResult(ctx, "raw-store", func(ctx context.Context) (LatencyRun, error) { return latencyRawStore(ctx, cfg, rate, run) })
			if err != nil {
				return nil, timeoutHint(ctx, cfg.Timeout, err)
			}
			lv.RawStore = &rs
		}
		res.Levels = append(res.Levels, lv)
		runtime.GC()
	}
	res.MaxRSSMiB = maxRSSMiB()
	res.TotalSeconds = round(time.Since(began).Seconds(), 1)
	return res, nil
}

// procUsage is a snapshot of the process's counters.
type procUsage struct {
	at           time.Time
	cpu          time.Duration
	wchar, wdisk int64
	net          int64 // loopbackBytes
}

func sample() procUsage {
	u := procUsage{at: time.Now(), net: loopbackBytes.Load()}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		u.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if f, err := os.Open("/proc/self/io"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ": ")
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "wchar":
				u.wchar = n
			case "write_bytes":
				u.wdisk = n
			}
		}
		f.Close()
	}
	return u
}

// fill sets the per-reading figures of r from two snapshots and the
// readings of the window.
func (r *LatencyRun) fill(a, b procUsage, readings int64) {
	secs := b.at.Sub(a.at).Seconds()
	r.Seconds = round(secs, 3)
	r.ReadingsPerS = round(float64(readings)/secs, 1)
	if readings > 0 {
		n := float64(readings)
		r.CPUMicrosPerReading = round(float64((b.cpu-a.cpu).Microseconds())/n, 2)
		r.BytesWrittenPerReading = round(float64((b.wchar-a.wchar)-(b.net-a.net))/n, 1)
		r.DiskBytesPerReading = round(float64(b.wdisk-a.wdisk)/n, 1)
	}
}

func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

// encodedValues holds the JSON of every distinct workload value.
var encodedValues = func() [][]byte {
	out := make([][]byte, 1000)
	for i := range out {
		out[i] = encodedValue(i)
	}
	return out
}()

// appendTelemetry appends a telemetry message of readings [from, from+n)
// of the workload, timestamps from base, to buf.
func appendTelemetry(buf []byte, id string, base int64, from, n int) []byte {
	buf = append(buf, `{"id":"`...)
	buf = append(buf, id...)
	buf = append(buf, `","r":[`...)
	for i := from; i < from+n; i++ {
		if i > from {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"f":"`...)
		buf = append(buf, readingFeed(i)...)
		buf = append(buf, `","v":`...)
		buf = append(buf, encodedValues[i%1000]...)
		buf = append(buf, `,"t":`...)
		buf = strconv.AppendInt(buf, base+int64(i), 10)
		buf = append(buf, '}')
	}
	return append(buf, "]}"...)
}

// load paces background messages: each device sends one message of batch
// readings every interval (rate readings/s over all devices), from a window
// of workers; rate 0 sends as fast as the windows allow, rate < 0 nothing.
type load struct {
	devices, batch, window int
	rate                   float64
	// send delivers message k of device d; it returns the readings that
	// were acknowledged, or an error that ends the run.
	send func(ctx context.Context, d, k int) (int, error)

	readings atomic.Int64 // acknowledged
	messages atomic.Int64
	late     atomic.Int64
}

// run sends until ctx is done, then waits for the messages in flight.
func (l *load) run(ctx context.Context) error {
	if l.rate < 0 {
		<-ctx.Done()
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for d := 0; d < l.devices; d++ {
		slots := make(chan int, l.window)
		wg.Add(1)
		go func() { // pacer
			defer wg.Done()
			defer close(slots)
			var interval time.Duration
			if l.rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(l.batch*l.devices) / l.rate)
			}
			// Devices start spread over one interval.
			start := time.Now().Add(interval * time.Duration(d) / time.Duration(l.devices))
			t := time.NewTimer(0)
			defer t.Stop()
			for k := 0; ; k++ {
				if interval > 0 {
					t.Reset(time.Until(start.Add(interval * time.Duration(k))))
					select {
					case <-t.C:
					case <-ctx.Done():
						return
					}
				}
				select {
				case slots <- k:
					continue
				default:
				}
				if interval > 0 {
					l.late.Add(1)
				}
				select {
				case slots <- k:
				case <-ctx.Done():
					return
				}
			}
		}()
		for w := 0; w < l.window; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range slots {
					n, err := l.send(context.WithoutCancel(ctx), d, k)
					if err != nil {
						cancel(err)
						return
					}
					l.readings.Add(int64(n))
					l.messages.Add(1)
				}
			}()
		}
	}
	<-ctx.Done()
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// probe publishes one small telemetry message every 1/rate s and records
// publish → PUBACK and publish → arrival at the stream.
type probe struct {
	rate      float64
	tag       string
	publish   func(ctx context.Context, payload []byte) error
	measuring atomic.Bool
	acked     atomic.Int64 // probes acknowledged, counted or not

	mu      sync.Mutex
	sent    map[string]probeSent
	pubacks []time.Duration
	streams []time.Duration
	lost    int
}

type probeSent struct {
	at      time.Time
	counted bool
}

func newProbe(rate float64, tag string, publish func(ctx context.Context, payload []byte) error) *probe {
	return &probe{rate: rate, tag: tag, publish: publish, sent: map[string]probeSent{}}
}

// run publishes until ctx is done and waits for the publishes in flight.
func (p *probe) run(ctx context.Context) error {
	interval := time.Duration(float64(time.Second) / p.rate)
	tk := time.NewTicker(interval)
	defer tk.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 1)
	sem := make(chan struct{}, 64)
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-tk.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // 64 probes in flight: skip this one
		}
		id := p.tag + "-" + strconv.Itoa(k)
		payload := []byte(`{"id":"` + id + `","r":[{"f":"probe","v":` + strconv.Itoa(k) + `}]}`)
		counted := p.measuring.Load()
		t0 := time.Now()
		p.mu.Lock()
		p.sent[id] = probeSent{at: t0, counted: counted}
		p.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := p.publish(context.WithoutCancel(ctx), payload)
			d := time.Since(t0)
			if err != nil {
				select {
				case errc <- fmt.Errorf("bench latency: probe: %w", err):
				default:
				}
				return
			}
			p.acked.Add(1)
			if counted {
				p.mu.Lock()
				p.pubacks = append(p.pubacks, d)
				p.mu.Unlock()
			}
		}()
	}
}

// arrived records that the probe message id reached the stream at t.
func (p *probe) arrived(id string, t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.sent[id]
	if !ok {
		return
	}
	delete(p.sent, id)
	if s.counted {
		p.streams = append(p.streams, t.Sub(s.at))
	}
}

// waitStreamed waits until every counted probe has reached the stream, or
// d has passed; the rest count as lost.
func (p *probe) waitStreamed(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		p.mu.Lock()
		n := 0
		for _, s := range p.sent {
			if s.counted {
				n++
			}
		}
		p.lost = n
		p.mu.Unlock()
		if n == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// window runs the load and the probe: warmup, then the measured window
// between the two snapshots it returns.
func window(ctx context.Context, cfg LatencyConfig, l *load, p *probe, atStart, atEnd func()) (a, b procUsage, readings int64, err error) {
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	var loadErr, probeErr error
	wg.Add(2)
	go func() { defer wg.Done(); loadErr = l.run(lctx) }()
	go func() {
		defer wg.Done()
		if p != nil {
			probeErr = p.run(lctx)
		}
	}()
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-lctx.Done():
			return false
		}
	}
	ok := sleep(cfg.Warmup)
	if ok {
		if atStart != nil {
			atStart()
		}
		if p != nil {
			p.measuring.Store(true)
		}
		r0 := l.readings.Load()
		a = sample()
		ok = sleep(cfg.Duration)
		b = sample()
		readings = l.readings.Load() - r0
		if p != nil {
			p.measuring.Store(false)
		}
		if atEnd != nil {
			atEnd()
		}
	}
	stopLoad()
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return a, b, 0, err
	}
	if loadErr != nil {
		return a, b, 0, loadErr
	}
	if probeErr != nil {
		return a, b, 0, probeErr
	}
	if !ok {
		return a, b, 0, errors.New("bench latency: run ended early")
	}
	return a, b, readings, nil
}

// dialDevice connects a plain MQTT 5 client with a device's credentials.
func dialDevice(ctx context.Context, addr string, d apiDevice, clientID string, onMsg func(paho.PublishReceived)) (*rawClient, error) {
	return dialRawAuth(ctx, addr, clientID, d.ID, d.Password, onMsg)
}

// latencyPlatform runs one load on a fresh platform: background devices,
// the probe device, and a stream client following the probe.
func latencyPlatform(ctx context.Context, cfg LatencyConfig, rate float64, run int) (LatencyRun, error) {
	var r LatencyRun
	r.LoadAvg = loadAvg()
	p, err := startPlatform(ctx, cfg.Sync, 8, cfg.Design)
	if err != nil {
		return r, err
	}
	defer p.Close()
	devs, err := p.createDevices(ctx, "bench-latency", cfg.Devices+1)
	if err != nil {
		return r, err
	}
	pubs := make([]*rawClient, cfg.Devices+1)
	defer func() { closeRaw(pubs) }()
	for i := range pubs {
		if pubs[i], err = dialDevice(ctx, p.srv.MQTTAddr(), devs[i], fmt.Sprintf("bench-%d", i), nil); err != nil {
			return r, err
		}
	}
	probeDev := devs[cfg.Devices]
	probeTopic := protocol.UpTopic(probeDev.ID, protocol.KindTelemetry)
	pb := newProbe(cfg.ProbeRate, fmt.Sprintf("p%d", run), func(ctx context.Context, payload []byte) error {
		return pubs[cfg.Devices].publish(ctx, probeTopic, payload)
	})

	// The stream client: GET /api/v1/stream for the probe device.
	sctx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	streamReady := make(chan error, 1)
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		streamReady <- followStream(sctx, p, probeDev.ID, pb.arrived)
	}()
	if err := <-streamReady; err != nil {
		return r, err
	}

	topics := make([]string, cfg.Devices)
	for d := range topics {
		topics[d] = protocol.UpTopic(devs[d].ID, protocol.KindTelemetry)
	}
	var refused atomic.Int64
	base := time.Now().Add(-24 * time.Hour).UnixMilli()
	l := &load{devices: cfg.Devices, batch: cfg.Batch, window: cfg.Window, rate: rate}
	l.send = func(ctx context.Context, d, k int) (int, error) {
		payload := appendTelemetry(make([]byte, 0, 48*cfg.Batch+64), fmt.Sprintf("r%d-%d-%d", run, d, k), base, k*cfg.Batch, cfg.Batch)
		for {
			resp, err := pubs[d].c.Publish(ctx, &paho.Publish{Topic: topics[d], QoS: 1, Payload: payload})
			if err != nil {
				return 0, fmt.Errorf("bench latency: publish: %w", err)
			}
			if resp == nil || resp.ReasonCode < 0x80 {
				return cfg.Batch, nil
			}
			if resp.ReasonCode != 0x97 {
				return 0, fmt.Errorf("bench latency: publish refused with reason code 0x%02x", resp.ReasonCode)
			}
			refused.Add(1)
			time.Sleep(50 * time.Millisecond) // like the SDK, back off and resend
		}
	}
	var m0, m1 map[string]float64
	a, b, readings, err := window(ctx, cfg, l, pb,
		func() { m0, _ = p.metrics(ctx) },
		func() { m1, _ = p.metrics(ctx) })
	if err != nil {
		return r, err
	}
	pb.waitStreamed(5 * time.Second)
	stopStream()
	<-streamDone
	r.fill(a, b, readings)
	r.PubAck, r.Stream = latOf(pb.pubacks), latOf(pb.streams)
	if pb.lost > 0 {
		return r, fmt.Errorf("bench latency: %d probe messages acknowledged but never seen on the stream", pb.lost)
	}
	if m0 != nil && m1 != nil {
		delta := func(name string) float64 { return m1[name] - m0[name] }
		// The store's time under its write lock; a store without that
		// metric: the commits' time.
		busy := delta("outpost_store_write_seconds_total")
		if _, ok := m1["outpost_store_write_seconds_total"]; !ok {
			busy = delta("outpost_ingest_commit_seconds_sum")
		}
		r.WriterBusy = round(busy/(b.at.Sub(a.at).Seconds()), 3)
		r.Commits = int(delta("outpost_ingest_commit_seconds_count"))
		if r.Commits > 0 {
			r.ReadingsPerCommit = round(delta("outpost_readings_stored_total")/float64(r.Commits), 1)
		}
	}
	r.Refused, r.Late = refused.Load(), l.late.Load()

	// Everything acknowledged must be stored: background plus probes.
	m2, err := p.metrics(ctx)
	if err != nil {
		return r, err
	}
	want := float64(l.readings.Load() + pb.acked.Load())
	if got := m2["outpost_readings_stored_total"]; got != want {
		return r, fmt.Errorf("bench latency: %v readings acknowledged, %v stored", want, got)
	}
	return r, nil
}

// followStream reads GET /api/v1/stream?device=ID&kind=telemetry until ctx
// ends, calling arrived with each telemetry event's batch id. It reports
// on ready (nil once the stream is open).
func followStream(ctx context.Context, p *platform, deviceID string, arrived func(id string, t time.Time)) error {
	req, err := http.NewRequestWithContext(ctx, "GET", p.srv.HTTPURL()+"/api/v1/stream?kind=telemetry&device="+deviceID, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+p.srv.AdminToken())
	resp, err := p.http.Do(req)
	if err != nil {
		return fmt.Errorf("bench latency: stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fmt.Errorf("bench latency: stream: status %d", resp.StatusCode)
	}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Bytes()
			data, ok := bytes.CutPrefix(line, []byte("data: "))
			if !ok {
				continue
			}
			t := time.Now()
			var ev struct {
				BatchID string `json:"batch_id"`
			}
			if json.Unmarshal(data, &ev) == nil && ev.BatchID != "" {
				arrived(ev.BatchID, t)
			}
		}
	}()
	return nil
}

// latencyRawBroker runs the same load through a plain mochi broker whose
// OnPublish hook only counts; the probe's messages also go to a plain
// subscriber (the raw counterpart of the stream).
func latencyRawBroker(ctx context.Context, cfg LatencyConfig, rate float64, run int) (LatencyRun, error) {
	var r LatencyRun
	r.LoadAvg = loadAvg()
	var hook mqtt.Hook = &countHook{onMsg: func([]byte) {}}
	b, err := startRawBroker(hook)
	if err != nil {
		return r, err
	}
	defer b.Close()
	pubs := make([]*rawClient, cfg.Devices+1)
	defer func() { closeRaw(pubs) }()
	for i := range pubs {
		if pubs[i], err = dialRaw(ctx, b.addr(), fmt.Sprintf("raw-%d", i), nil); err != nil {
			return r, err
		}
	}
	ids := make([]string, cfg.Devices+1)
	for i := range ids {
		ids[i] = outpost.NewDeviceID()
	}
	probeTopic := protocol.UpTopic(ids[cfg.Devices], protocol.KindTelemetry)
	pb := newProbe(cfg.ProbeRate, fmt.Sprintf("p%d", run), func(ctx context.Context, payload []byte) error {
		return pubs[cfg.Devices].publish(ctx, probeTopic, payload)
	})
	sub, err := dialRaw(ctx, b.addr(), "raw-subscriber", func(m paho.PublishReceived) {
		t := time.Now()
		var ev struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(m.Packet.Payload, &ev) == nil {
			pb.arrived(ev.ID, t)
		}
	})
	if err != nil {
		return r, err
	}
	defer sub.Close()
	if err := sub.subscribe(ctx, probeTopic); err != nil {
		return r, err
	}
	base := time.Now().Add(-24 * time.Hour).UnixMilli()
	l := &load{devices: cfg.Devices, batch: cfg.Batch, window: cfg.Window, rate: rate}
	l.send = func(ctx context.Context, d, k int) (int, error) {
		payload := appendTelemetry(make([]byte, 0, 48*cfg.Batch+64), fmt.Sprintf("r%d-%d-%d", run, d, k), base, k*cfg.Batch, cfg.Batch)
		if err := pubs[d].publish(ctx, protocol.UpTopic(ids[d], protocol.KindTelemetry), payload); err != nil {
			return 0, fmt.Errorf("bench latency: raw publish: %w", err)
		}
		return cfg.Batch, nil
	}
	a, bb, readings, err := window(ctx, cfg, l, pb, nil, nil)
	if err != nil {
		return r, err
	}
	pb.waitStreamed(5 * time.Second)
	r.fill(a, bb, readings)
	r.PubAck, r.Stream = latOf(pb.pubacks), latOf(pb.streams)
	r.Late = l.late.Load()
	if pb.lost > 0 {
		return r, fmt.Errorf("bench latency: raw broker: %d probe messages never reached the subscriber", pb.lost)
	}
	return r, nil
}

// storeObserver sums the commits of the raw store's writer.
type storeObserver struct {
	mu       sync.Mutex
	commits  int
	readings int
	busy     time.Duration
}

func (o *storeObserver) Committed(batches []*outpost.Batch, _ []outpost.AppendResult, took time.Duration) {
	n := 0
	for _, b := range batches {
		n += len(b.Readings)
	}
	o.mu.Lock()
	o.commits++
	o.readings += n
	o.busy += took
	o.mu.Unlock()
}

func (o *storeObserver) snapshot() (int, int, time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.commits, o.readings, o.busy
}

// latencyRawStore submits the same batches at the same pace straight to
// an ingest writer over a fresh SQLite store: no broker, no decoding. The
// latency is every batch's submit → commit callback.
func latencyRawStore(ctx context.Context, cfg LatencyConfig, rate float64, run int) (LatencyRun, error) {
	var r LatencyRun
	r.LoadAvg = loadAvg()
	dir, err := os.MkdirTemp("", "outpost-bench-store-*")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	db, err := sqlite.Open(ctx, filepath.Join(dir, "raw.db"), cfg.Design.store(cfg.Sync))
	if err != nil {
		return r, fmt.Errorf("bench: raw store: %w", err)
	}
	defer db.Close()
	ids := make([]string, cfg.Devices)
	now := time.Now().UTC().Truncate(time.Millisecond)
	for i := range ids {
		ids[i] = outpost.NewDeviceID()
		if err := db.CreateDevice(ctx, &outpost.Device{ID: ids[i], Name: fmt.Sprintf("raw-%d", i), CreatedAt: now}, outpost.HashSecret(outpost.NewSecret())); err != nil {
			return r, fmt.Errorf("bench: raw store: %w", err)
		}
	}
	obs := &storeObserver{}
	io := cfg.Design.ingest()
	io.Observer = obs
	w := ingest.NewWriter(db, io)
	defer w.Close()
	var (
		mu       sync.Mutex
		lats     []time.Duration
		counting atomic.Bool
	)
	base := time.Now().Add(-24 * time.Hour).UnixMilli()
	l := &load{devices: cfg.Devices, batch: cfg.Batch, window: cfg.Window, rate: rate}
	l.send = func(ctx context.Context, d, k int) (int, error) {
		b := &outpost.Batch{DeviceID: ids[d], ID: fmt.Sprintf("r%d-%d-%d", run, d, k), Readings: make([]outpost.Reading, cfg.Batch)}
		for j := range b.Readings {
			i := k*cfg.Batch + j
			b.Readings[j] = outpost.Reading{Feed: readingFeed(i), TS: base + int64(i), Value: encodedValues[i%1000]}
		}
		counted := counting.Load()
		done := make(chan error, 1)
		t0 := time.Now()
		if err := w.Submit(ctx, b, func(_ outpost.AppendResult, err error) {
			if counted {
				d := time.Since(t0)
				mu.Lock()
				lats = append(lats, d)
				mu.Unlock()
			}
			done <- err
		}); err != nil {
			return 0, fmt.Errorf("bench latency: raw store: %w", err)
		}
		if err := <-done; err != nil {
			return 0, fmt.Errorf("bench latency: raw store: %w", err)
		}
		return cfg.Batch, nil
	}
	var c0, c1, n0, n1 int
	var m0, m1 time.Duration
	a, b, readings, err := window(ctx, cfg, l, nil,
		func() { c0, n0, _ = obs.snapshot(); m0 = db.WriteTime(); counting.Store(true) },
		func() { counting.Store(false); c1, n1, _ = obs.snapshot(); m1 = db.WriteTime() })
	if err != nil {
		return r, err
	}
	r.fill(a, b, readings)
	mu.Lock()
	r.Stream = latOf(lats)
	mu.Unlock()
	r.Commits = c1 - c0
	if r.Commits > 0 {
		r.ReadingsPerCommit = round(float64(n1-n0)/float64(r.Commits), 1)
	}
	r.WriterBusy = round((m1-m0).Seconds()/b.at.Sub(a.at).Seconds(), 3)
	r.Late = l.late.Load()
	return r, nil
}

func printLatency(w io.Writer, r *LatencyResult) {
	fmt.Fprintf(w, "Outpost latency benchmark\n")
	fmt.Fprintf(w, "machine:  %s\n", r.Machine)
	fmt.Fprintf(w, "workload: %d background devices, %d readings per message, %d in flight each; probe %.0f messages/s; warm-up %.0fs, measured %.0fs per load; SQLite synchronous=%s; %s\n",
		r.Devices, r.Batch, r.Window, r.ProbeRate, r.WarmupS, r.DurationS, strings.ToUpper(r.Sync), r.Design)
	if r.Calibration != nil {
		fmt.Fprintf(w, "100%% load = %s readings/s, measured under unpaced load (probe PUBACK p99 %.1f ms, stream p99 %.1f ms)\n\n",
			groupf(r.MaxReadingsPerS), r.Calibration.PubAck.P99MS, r.Calibration.Stream.P99MS)
	} else {
		fmt.Fprintf(w, "100%% load = %s readings/s (given)\n\n", groupf(r.MaxReadingsPerS))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "load\trun\treadings/s\tPUBACK p50/p99/max ms\tstream p50/p99/max ms\twriter busy\treadings/commit\tbytes written/reading\tdisk bytes/reading\tCPU µs/reading\tloadavg\t\n")
	lat := func(l *Lat) string {
		if l == nil || l.N == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f / %.1f / %.1f", l.P50MS, l.P99MS, l.MaxMS)
	}
	row := func(load, name string, x *LatencyRun) {
		busy, rpc := "-", "-"
		if x.Commits > 0 {
			busy, rpc = fmt.Sprintf("%.2f", x.WriterBusy), fmt.Sprintf("%.0f", x.ReadingsPerCommit)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.2f\t%.1f\t\n", load, name, groupf(x.ReadingsPerS), lat(x.PubAck), lat(x.Stream), busy, rpc,
			x.BytesWrittenPerReading, x.DiskBytesPerReading, x.CPUMicrosPerReading, x.LoadAvg)
	}
	if r.Calibration != nil {
		row("max", "platform", r.Calibration)
	}
	for _, lv := range r.Levels {
		row(fmt.Sprintf("%d%%", lv.LoadPct), "platform", &lv.Platform)
		if lv.RawBroker != nil {
			row("", "raw broker", lv.RawBroker)
		}
		if lv.RawStore != nil {
			row("", "raw store", lv.RawStore)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\nstream: platform = probe publish → its event on GET /api/v1/stream; raw broker = → a plain subscriber; raw store = every batch's submit → commit\n")
	fmt.Fprintf(w, "bytes written = wchar less loopback traffic (what went to files), disk bytes = write_bytes of /proc/self/io; CPU = the whole process (load generator included)\n")
	fmt.Fprintf(w, "total %.1fs\n", r.TotalSeconds)
}
