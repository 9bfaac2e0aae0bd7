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
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/protocol"
)

// RPCConfig sizes an rpc run.
type RPCConfig struct {
	Devices int
	Callers []int
	Calls   int
	Timeout time.Duration
	// MemProfile, if set, receives a heap profile taken at the end of the
	// platform runs.
	MemProfile string
}

// callTimeout bounds one call, on the platform (?timeout=) and raw.
const callTimeout = 10 * time.Second

// echoArgs are the arguments of every call; the echo handler returns them.
var echoArgs = []byte(`{"n":12345}`)

// RPCStats are the figures of one series of calls.
type RPCStats struct {
	Calls     int     `json:"calls"`
	Errors    int     `json:"errors"`
	Seconds   float64 `json:"seconds"`
	CallsPerS float64 `json:"calls_per_s"`
	P50MS     float64 `json:"p50_ms"`
	P90MS     float64 `json:"p90_ms"`
	P99MS     float64 `json:"p99_ms"`
	MaxMS     float64 `json:"max_ms"`
	MeanMS    float64 `json:"mean_ms"`
	// FirstError is the first failure, if any.
	FirstError string `json:"first_error,omitempty"`
}

// RPCLevel is one caller count: the platform's figures, the raw baseline
// at the same concurrency, and how they compare.
type RPCLevel struct {
	Callers int `json:"callers"`
	RPCStats
	Baseline RPCStats `json:"baseline"`
	// Ratio = calls_per_s / baseline.calls_per_s.
	Ratio float64 `json:"ratio"`
	// P50OverheadMS = p50_ms - baseline.p50_ms.
	P50OverheadMS float64 `json:"p50_overhead_ms"`
}

// RPCResult holds every figure of an rpc run; it is the JSON line.
type RPCResult struct {
	Benchmark string     `json:"benchmark"`
	Machine   Machine    `json:"machine"`
	Devices   int        `json:"devices"`
	Calls     int        `json:"calls"`
	Callers   []int      `json:"callers"`
	Results   []RPCLevel `json:"results"`
	// HeapMiB is the Go heap in use after GC at the end of the platform
	// runs, platform still open and devices connected.
	HeapMiB      float64 `json:"platform_heap_mib"`
	MaxRSSMiB    float64 `json:"max_rss_mib"`
	TotalSeconds float64 `json:"total_seconds"`
}

func rpcMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rpc", stderr)
	cfg := RPCConfig{}
	callers := fs.String("callers", "1,100", "comma-separated caller counts (concurrent HTTP callers)")
	fs.IntVar(&cfg.Devices, "devices", 100, "connected SDK devices answering echo")
	fs.IntVar(&cfg.Calls, "calls", 2000, "calls per caller count")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "give up after this long")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (platform and raw runs) to this file")
	fs.StringVar(&cfg.MemProfile, "memprofile", "", "write a heap profile taken at the end of the platform run to this file")
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
	for _, f := range strings.Split(*callers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("bench rpc: --callers: %q is not a number", f)
		}
		cfg.Callers = append(cfg.Callers, n)
	}
	res, err := RunRPC(ctx, cfg, stderr)
	if res != nil {
		printRPC(stdout, res)
		if werr := writeJSONLine(stdout, res); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

func (c *RPCConfig) validate() error {
	switch {
	case c.Devices < 1 || c.Devices > maxDevices:
		return fmt.Errorf("bench rpc: --devices must be between 1 and %d", maxDevices)
	case c.Calls < 1 || c.Calls > maxCalls:
		return fmt.Errorf("bench rpc: --calls must be between 1 and %d", maxCalls)
	case len(c.Callers) == 0 || len(c.Callers) > 16:
		return errors.New("bench rpc: --callers needs 1 to 16 caller counts")
	}
	for _, n := range c.Callers {
		if n < 1 || n > maxCallers {
			return fmt.Errorf("bench rpc: caller counts must be between 1 and %d", maxCallers)
		}
	}
	return checkTimeout(c.Timeout)
}

// RunRPC runs the rpc benchmark: every caller count on the platform, then
// every caller count on the raw broker. It returns the result with an
// error when some calls failed.
func RunRPC(ctx context.Context, cfg RPCConfig, log io.Writer) (*RPCResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	began := time.Now()
	pr := progress{log}
	res := &RPCResult{Benchmark: "rpc", Machine: machine(), Devices: cfg.Devices, Calls: cfg.Calls, Callers: cfg.Callers}
	for _, c := range cfg.Callers {
		res.Results = append(res.Results, RPCLevel{Callers: c})
	}
	if err := rpcPlatform(ctx, cfg, res, pr); err != nil {
		return nil, timeoutHint(ctx, cfg.Timeout, err)
	}
	runtime.GC()
	if err := rpcRaw(ctx, cfg, res, pr); err != nil {
		return nil, timeoutHint(ctx, cfg.Timeout, err)
	}
	failed := 0
	for i := range res.Results {
		l := &res.Results[i]
		if l.Baseline.CallsPerS > 0 {
			l.Ratio = round(l.CallsPerS/l.Baseline.CallsPerS, 3)
		}
		l.P50OverheadMS = round(l.P50MS-l.Baseline.P50MS, 3)
		failed += l.Errors + l.Baseline.Errors
	}
	res.MaxRSSMiB = maxRSSMiB()
	res.TotalSeconds = round(time.Since(began).Seconds(), 1)
	if failed > 0 {
		return res, fmt.Errorf("bench rpc: %d calls failed (see first_error in the JSON)", failed)
	}
	return res, nil
}

// rpcPlatform connects the SDK devices and calls echo through the HTTP
// API at each caller count.
func rpcPlatform(ctx context.Context, cfg RPCConfig, res *RPCResult, pr progress) error {
	maxCallers := 0
	for _, c := range cfg.Callers {
		maxCallers = max(maxCallers, c)
	}
	pr.printf("starting the platform")
	p, err := startPlatform(ctx, "normal", maxCallers, Design{})
	if err != nil {
		return err
	}
	defer p.Close()
	pr.printf("creating %d devices through the API", cfg.Devices)
	devs, err := p.createDevices(ctx, "bench-rpc", cfg.Devices)
	if err != nil {
		return err
	}
	clients := make([]*device.Client, cfg.Devices)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	pr.printf("connecting %d SDK devices with an echo handler", cfg.Devices)
	err = forEach(ctx, cfg.Devices, 16, func(ctx context.Context, i int) error {
		c, err := device.New(devs[i].URL, device.WithMemoryOutbox())
		if err != nil {
			return err
		}
		if err := c.Handle("echo", func(_ context.Context, args json.RawMessage) (any, error) { return args, nil }); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := c.Connect(cctx); err != nil {
			return fmt.Errorf("bench rpc: connect device %d: %w", i, err)
		}
		clients[i] = c
		return nil
	})
	if err != nil {
		return err
	}

	call := func(ctx context.Context, i int) error {
		d := devs[i%len(devs)]
		var out struct {
			Result json.RawMessage `json:"result"`
		}
		path := "/api/v1/devices/" + d.ID + "/rpc/echo?timeout=" + callTimeout.String()
		if err := p.do(ctx, "POST", path, echoArgs, http.StatusOK, &out); err != nil {
			return err
		}
		if !bytes.Equal(out.Result, echoArgs) {
			return fmt.Errorf("echo returned %s, want %s", out.Result, echoArgs)
		}
		return nil
	}
	for i, c := range cfg.Callers {
		pr.printf("platform: %d calls with %d callers over %d devices", cfg.Calls, c, cfg.Devices)
		st, err := runCalls(ctx, c, cfg.Calls, call)
		if err != nil {
			return err
		}
		res.Results[i].RPCStats = st
	}
	if res.HeapMiB, err = heapMiB(cfg.MemProfile); err != nil {
		return err
	}
	return nil
}

// rpcRaw measures the same round trip over a plain mochi broker: a plain
// caller client publishes the request (QoS 1) on bench/{device}/req, a
// plain responder client per device answers on bench/{device}/resp (QoS 1,
// from its own goroutine, as the SDK does), and the caller matches the
// answer by the request id. No HTTP, no relay, no ACL, no JSON decoding.
func rpcRaw(ctx context.Context, cfg RPCConfig, res *RPCResult, pr progress) error {
	b, err := startRawBroker(nil)
	if err != nil {
		return err
	}
	defer b.Close()

	var rwg sync.WaitGroup
	defer rwg.Wait()
	responders := make([]*rawClient, cfg.Devices)
	defer func() { closeRaw(responders) }()
	pr.printf("raw: connecting %d responder clients", cfg.Devices)
	err = forEach(ctx, cfg.Devices, 16, func(ctx context.Context, i int) error {
		respTopic := fmt.Sprintf("bench/%d/resp", i)
		c, err := dialRaw(ctx, b.addr(), fmt.Sprintf("raw-responder-%d", i), func(p paho.PublishReceived) {
			payload := p.Packet.Payload
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				pctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				defer cancel()
				_, _ = p.Client.Publish(pctx, &paho.Publish{Topic: respTopic, QoS: 1, Payload: payload})
			}()
		})
		if err != nil {
			return err
		}
		responders[i] = c
		return c.subscribe(ctx, fmt.Sprintf("bench/%d/req", i))
	})
	if err != nil {
		return err
	}

	var pending sync.Map // request id → chan struct{}
	caller, err := dialRaw(ctx, b.addr(), "raw-caller", func(p paho.PublishReceived) {
		if id, ok := requestID(p.Packet.Payload); ok {
			if ch, ok := pending.Load(id); ok {
				select {
				case ch.(chan struct{}) <- struct{}{}:
				default:
				}
			}
		}
	})
	if err != nil {
		return err
	}
	defer caller.Close()
	if err := caller.subscribe(ctx, "bench/+/resp"); err != nil {
		return err
	}

	var seq atomic.Uint64
	call := func(ctx context.Context, i int) error {
		id := fmt.Sprintf("%024x", seq.Add(1))
		payload, _ := json.Marshal(protocol.RPCRequest{ID: id, Method: "echo", Args: echoArgs, Deadline: time.Now().Add(callTimeout).UnixMilli()})
		ch := make(chan struct{}, 1)
		pending.Store(id, ch)
		defer pending.Delete(id)
		if err := caller.publish(ctx, fmt.Sprintf("bench/%d/req", i%cfg.Devices), payload); err != nil {
			return err
		}
		t := time.NewTimer(callTimeout)
		defer t.Stop()
		select {
		case <-ch:
			return nil
		case <-t.C:
			return fmt.Errorf("raw call %s: no answer within %s", id, callTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for i, c := range cfg.Callers {
		pr.printf("raw: %d calls with %d callers over %d responders", cfg.Calls, c, cfg.Devices)
		st, err := runCalls(ctx, c, cfg.Calls, call)
		if err != nil {
			return err
		}
		res.Results[i].Baseline = st
	}
	if inflight, writes := b.dropped(); inflight != 0 || writes != 0 {
		return fmt.Errorf("bench rpc: raw broker dropped %d messages for in-flight quota and %d for write queue", inflight, writes)
	}
	return nil
}

// requestID reads the id of a raw request or echo, which starts with
// {"id":"<24 hex digits>".
func requestID(payload []byte) (string, bool) {
	const pre = `{"id":"`
	if len(payload) < len(pre)+24 || string(payload[:len(pre)]) != pre {
		return "", false
	}
	return string(payload[len(pre) : len(pre)+24]), true
}

// runCalls makes calls calls from callers goroutines, after one untimed
// warm-up call per caller (connections, caches). Call i goes to device
// i % devices. Failed calls are counted, not retried; only the run's
// context ending is an error.
func runCalls(ctx context.Context, callers, calls int, call func(ctx context.Context, i int) error) (RPCStats, error) {
	var st RPCStats
	var wg sync.WaitGroup
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = call(ctx, w)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return st, err
	}

	lat := make([]time.Duration, calls)
	ok := make([]bool, calls)
	var next atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	start := time.Now()
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= calls || ctx.Err() != nil {
					return
				}
				t := time.Now()
				err := call(ctx, i)
				lat[i] = time.Since(t)
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				ok[i] = true
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if err := ctx.Err(); err != nil {
		return st, err
	}
	good := make([]time.Duration, 0, calls)
	for i, d := range lat {
		if ok[i] {
			good = append(good, d)
		}
	}
	l := summarize(good)
	st = RPCStats{
		Calls: calls, Errors: calls - len(good), Seconds: round(took.Seconds(), 3),
		CallsPerS: round(rate(len(good), took), 1),
		P50MS:     ms(l.P50), P90MS: ms(l.P90), P99MS: ms(l.P99), MaxMS: ms(l.Max), MeanMS: ms(l.Mean),
	}
	if firstErr != nil {
		st.FirstError = firstErr.Error()
	}
	return st, nil
}

func printRPC(w io.Writer, r *RPCResult) {
	fmt.Fprintf(w, "Outpost RPC benchmark\n")
	fmt.Fprintf(w, "machine:  %s\n", r.Machine)
	fmt.Fprintf(w, "workload: %d SDK devices answering echo; %s calls per caller count via POST /api/v1/devices/{id}/rpc/echo;\n", r.Devices, group(r.Calls))
	fmt.Fprintf(w, "          raw = plain MQTT request/response (QoS 1) over a plain mochi broker, same concurrency\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "callers\t\tcalls/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\terrors\tplatform / raw\t\n")
	for _, l := range r.Results {
		fmt.Fprintf(tw, "%d\tplatform\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%.3f\t\n", l.Callers, groupf(l.CallsPerS), l.P50MS, l.P90MS, l.P99MS, l.MaxMS, l.Errors, l.Ratio)
		b := l.Baseline
		fmt.Fprintf(tw, "\traw\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t\t\n", groupf(b.CallsPerS), b.P50MS, b.P90MS, b.P99MS, b.MaxMS, b.Errors)
	}
	tw.Flush()
	for _, l := range r.Results {
		if l.FirstError != "" {
			fmt.Fprintf(w, "first platform error at %d callers: %s\n", l.Callers, l.FirstError)
		}
		if l.Baseline.FirstError != "" {
			fmt.Fprintf(w, "first raw error at %d callers: %s\n", l.Callers, l.Baseline.FirstError)
		}
	}
	fmt.Fprintf(w, "\nmemory: Go heap in use after the platform runs %.1f MiB (platform + %d SDK clients); peak RSS of the whole run %.0f MiB; total %.1fs\n", r.HeapMiB, r.Devices, r.MaxRSSMiB, r.TotalSeconds)
}
