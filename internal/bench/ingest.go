package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/outpost-iot/outpost/internal/mochi"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// IngestConfig sizes an ingest run.
type IngestConfig struct {
	Devices  int
	Readings int
	Batch    int
	Sync     string // "normal" or "full"
	// RawWindow is how many QoS 1 messages each raw publisher keeps in
	// flight in the raw broker run.
	RawWindow int
	Timeout   time.Duration
	// MemProfile, if set, receives a heap profile taken at the end of the
	// platform run.
	MemProfile string
	// Design is the write path's design.
	Design Design
	// DeviceOutbox is where the SDK devices keep readings until the
	// platform acknowledges them: "memory" (default; the figure measures
	// the platform) or "disk" (each device's durable outbox in a temporary
	// directory, as deployed devices use it).
	DeviceOutbox string
}

// observedGroupCap bounds the readings replayed in the raw-store run that
// uses the platform's observed group size (small groups are slow; the rate
// is what matters).
const observedGroupCap = 50_000

// IngestResult holds every figure of an ingest run; it is the JSON line.
type IngestResult struct {
	Benchmark string  `json:"benchmark"`
	Machine   Machine `json:"machine"`
	Devices   int     `json:"devices"`
	Readings  int     `json:"readings"`
	Batch     int     `json:"batch"`
	Sync      string  `json:"sync"`
	Design    Design  `json:"design"`
	// DeviceOutbox is where the SDK devices kept unacknowledged readings.
	DeviceOutbox string `json:"device_outbox"`
	Messages     int    `json:"messages"`
	// PayloadBytesAvg is the mean size of one telemetry message.
	PayloadBytesAvg float64 `json:"payload_bytes_avg"`

	// Platform: from the first Publish to the last acknowledgement; the
	// platform acknowledges a message only after it is committed.
	Seconds      float64 `json:"seconds"`
	ReadingsPerS float64 `json:"readings_per_s"`
	MessagesPerS float64 `json:"messages_per_s"`
	// AddSeconds is the time the SDK took to queue the readings (Add)
	// before the clock started.
	AddSeconds float64 `json:"add_seconds"`
	// Stored is the number of readings found through the API afterwards
	// (every timestamp and value checked).
	Stored            int     `json:"stored"`
	Commits           int     `json:"commits"`
	BatchesPerCommit  float64 `json:"batches_per_commit"`
	ReadingsPerCommit float64 `json:"readings_per_commit"`
	// WriterBusy is the fraction of the run the ingest writer spent inside
	// AppendBatches (sum of outpost_ingest_commit_seconds / seconds).
	WriterBusy float64 `json:"writer_busy"`
	// Unacknowledged counts messages the platform refused transiently.
	Unacknowledged int `json:"unacknowledged"`
	// HeapMiB is the Go heap in use after GC at the end of the platform
	// run, platform still open and devices connected (platform and SDK
	// clients share the process).
	HeapMiB float64 `json:"platform_heap_mib"`

	RawBrokerReadingsPerS float64 `json:"raw_broker_readings_per_s"`
	RawBrokerMessagesPerS float64 `json:"raw_broker_messages_per_s"`
	RawBrokerSeconds      float64 `json:"raw_broker_seconds"`
	RawBrokerWindow       int     `json:"raw_broker_window"`
	// The same with one message in flight per publisher, as the device SDK
	// publishes.
	RawBroker1ReadingsPerS float64 `json:"raw_broker_1inflight_readings_per_s"`
	RawBroker1MessagesPerS float64 `json:"raw_broker_1inflight_messages_per_s"`
	// The same publishers (window in flight each) with no subscriber: a
	// counting OnPublish hook receives every message before its PUBACK.
	RawBrokerHookReadingsPerS float64 `json:"raw_broker_hook_readings_per_s"`
	RawBrokerHookMessagesPerS float64 `json:"raw_broker_hook_messages_per_s"`

	RawStoreReadingsPerS      float64 `json:"raw_store_readings_per_s"`
	RawStoreSeconds           float64 `json:"raw_store_seconds"`
	RawStoreCommits           int     `json:"raw_store_commits"`
	RawStoreReadingsPerCommit float64 `json:"raw_store_readings_per_commit"`
	// The store replaying the platform's observed group size
	// (batches_per_commit), on at most observedGroupCap readings.
	RawStoreObservedReadingsPerS float64 `json:"raw_store_observed_group_readings_per_s"`
	RawStoreObservedBatches      int     `json:"raw_store_observed_group_batches"`
	RawStoreObservedReadings     int     `json:"raw_store_observed_group_readings"`

	// RawBrokerBestReadingsPerS is the faster of the raw broker runs (to a
	// subscriber, or to a hook that only counts): the broker's limit used
	// in Ratio.
	RawBrokerBestReadingsPerS float64 `json:"raw_broker_best_readings_per_s"`
	// RawStoreBestReadingsPerS is the faster of the two raw store runs:
	// the store's limit used in Ratio.
	RawStoreBestReadingsPerS float64 `json:"raw_store_best_readings_per_s"`
	// Ratio = readings_per_s / min(raw_broker_best_readings_per_s,
	// raw_store_best_readings_per_s).
	Ratio        float64 `json:"ratio"`
	MaxRSSMiB    float64 `json:"max_rss_mib"`
	TotalSeconds float64 `json:"total_seconds"`
}

func ingestMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ingest", stderr)
	cfg := IngestConfig{}
	fs.IntVar(&cfg.Devices, "devices", 10, "devices publishing at once")
	fs.IntVar(&cfg.Readings, "readings", 200_000, "readings in total, spread over the devices")
	fs.IntVar(&cfg.Batch, "batch", 50, "readings per message (device.WithMaxBatch)")
	fs.StringVar(&cfg.Sync, "sync", "normal", "SQLite synchronous mode: normal or full")
	fs.StringVar(&cfg.DeviceOutbox, "device-outbox", "memory", "where SDK devices keep unacknowledged readings: memory or disk")
	fs.IntVar(&cfg.RawWindow, "raw-window", 16, "QoS 1 messages in flight per publisher in the raw broker run")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "give up after this long")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (platform and raw runs) to this file")
	fs.StringVar(&cfg.MemProfile, "memprofile", "", "write a heap profile taken at the end of the platform run to this file")
	cfg.Design.flags(fs)
	broker := fs.String("broker", "", "run the platform on this external MQTT broker `URL` (mqtt://USER:PASSWORD@HOST:PORT), with --db, against the broker and PostgreSQL alone")
	db := fs.String("db", "", "PostgreSQL `URL` for --broker (the run works in a schema of its own)")
	replicas := fs.Int("replicas", 1, "platform replicas sharing the broker and the database (--broker only)")
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
	if *broker != "" || *db != "" {
		if *broker == "" || *db == "" {
			return errors.New("bench ingest: --broker and --db go together")
		}
		res, err := RunIngestExternal(ctx, cfg, *broker, *db, *replicas, stderr)
		if err != nil {
			return err
		}
		printExternal(stdout, res)
		return writeJSONLine(stdout, res)
	}
	res, err := RunIngest(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	printIngest(stdout, res)
	return writeJSONLine(stdout, res)
}

func (c *IngestConfig) validate() error {
	c.Sync = strings.ToLower(c.Sync)
	if c.DeviceOutbox == "" {
		c.DeviceOutbox = "memory"
	}
	switch {
	case c.DeviceOutbox != "memory" && c.DeviceOutbox != "disk":
		return fmt.Errorf("bench ingest: --device-outbox must be memory or disk, not %q", c.DeviceOutbox)
	case c.Devices < 1 || c.Devices > maxDevices:
		return fmt.Errorf("bench ingest: --devices must be between 1 and %d", maxDevices)
	case c.Readings < c.Devices || c.Readings > maxReadings:
		return fmt.Errorf("bench ingest: --readings must be between --devices (%d) and %d", c.Devices, maxReadings)
	case c.Batch < 1 || c.Batch > protocol.MaxReadingsPerMessage:
		return fmt.Errorf("bench ingest: --batch must be between 1 and %d", protocol.MaxReadingsPerMessage)
	case c.Sync != "normal" && c.Sync != "full":
		return fmt.Errorf("bench ingest: --sync must be normal or full, not %q", c.Sync)
	case c.RawWindow < 1 || c.RawWindow > 1024:
		return fmt.Errorf("bench ingest: --raw-window must be between 1 and 1024")
	}
	if err := c.Design.validate(); err != nil {
		return fmt.Errorf("bench ingest: %w", err)
	}
	return checkTimeout(c.Timeout)
}

// RunIngest runs the ingest benchmark: the platform, then the raw broker,
// then the raw store. Progress goes to log.
func RunIngest(ctx context.Context, cfg IngestConfig, log io.Writer) (*IngestResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	began := time.Now()
	pr := progress{log}
	res := &IngestResult{Benchmark: "ingest", Machine: machine(), Devices: cfg.Devices, Readings: cfg.Readings, Batch: cfg.Batch, Sync: cfg.Sync, Design: cfg.Design, DeviceOutbox: cfg.DeviceOutbox}

	if err := phase(ctx, "platform", func(ctx context.Context) error { return ingestPlatform(ctx, cfg, res, pr) }); err != nil {
		return nil, timeoutHint(ctx, cfg.Timeout, err)
	}
	runtime.GC()

	// The raw runs use the same messages (same sizes, same batch ids
	// shape) on device ids of the same shape.
	ids := make([]string, cfg.Devices)
	for i := range ids {
		ids[i] = outpost.NewDeviceID()
	}
	msgs, total := buildMessages(ids, cfg.Readings, cfg.Batch)
	if total != res.Messages {
		return nil, fmt.Errorf("bench ingest: raw workload has %d messages, the platform run sent %d", total, res.Messages)
	}
	pr.printf("raw broker: %d messages to a subscriber, %d in flight per publisher", total, cfg.RawWindow)
	rb, err := phaseResult(ctx, "raw-broker", func(ctx context.Context) (time.Duration, error) {
		return runRawBrokerIngest(ctx, msgs, total, cfg.RawWindow, true)
	})
	if err != nil {
		return nil, timeoutHint(ctx, cfg.Timeout, err)
	}
	res.RawBrokerSeconds = round(rb.Seconds(), 3)
	res.RawBrokerReadingsPerS = round(rate(cfg.Readings, rb), 1)
	res.RawBrokerMessagesPerS = round(rate(total, rb), 1)
	res.RawBrokerWindow = cfg.RawWindow
	if cfg.RawWindow > 1 {
		pr.printf("raw broker: %d messages to a subscriber, 1 in flight per publisher", total)
		rb1, err := phaseResult(ctx, "raw-broker-1", func(ctx context.Context) (time.Duration, error) {
			return runRawBrokerIngest(ctx, msgs, total, 1, true)
		})
		if err != nil {
			return nil, timeoutHint(ctx, cfg.Timeout, err)
		}
		res.RawBroker1ReadingsPerS = round(rate(cfg.Readings, rb1), 1)
		res.RawBroker1MessagesPerS = round(rate(total, rb1), 1)
	} else {
		res.RawBroker1ReadingsPerS, res.RawBroker1MessagesPerS = res.RawBrokerReadingsPerS, res.RawBrokerMessagesPerS
	}
	pr.printf("raw broker: %d messages to a counting OnPublish hook, %d in flight per publisher", total, cfg.RawWindow)
	rh, err := phaseResult(ctx, "raw-broker-hook", func(ctx context.Context) (time.Duration, error) {
		return runRawBrokerIngest(ctx, msgs, total, cfg.RawWindow, false)
	})
	if err != nil {
		return nil, timeoutHint(ctx, cfg.Timeout, err)
	}
	res.RawBrokerHookReadingsPerS = round(rate(cfg.Readings, rh), 1)
	res.RawBrokerHookMessagesPerS = round(rate(total, rh), 1)
	runtime.GC()

	batches := storeBatches(msgs, ids)
	msgs = nil
	pr.printf("raw store: %d batches, up to %d readings per transaction", len(batches), writerMaxReadings)
	rs, err := phaseResult(ctx, "raw-store", func(ctx context.Context) (rawStoreResult, error) {
		return runRawStore(ctx, cfg.Design.store(cfg.Sync), ids, batches, 0)
	})
	if err != nil {
		return nil, timeoutHint(ctx, cfg.Timeout, err)
	}
	res.RawStoreSeconds = round(rs.took.Seconds(), 3)
	res.RawStoreReadingsPerS = round(rate(rs.readings, rs.took), 1)
	res.RawStoreCommits = rs.commits
	res.RawStoreReadingsPerCommit = round(float64(rs.readings)/float64(rs.commits), 1)

	per := max(1, int(res.BatchesPerCommit+0.5))
	sub := batches
	for n, i := 0, 0; i < len(batches); i++ {
		n += len(batches[i].Readings)
		if n > observedGroupCap && i >= per {
			sub = batches[:i]
			break
		}
	}
	pr.printf("raw store: %d batches, %d batches per transaction as observed on the platform", len(sub), per)
	ro, err := runRawStore(ctx, cfg.Design.store(cfg.Sync), ids, sub, per)
	if err != nil {
		return nil, timeoutHint(ctx, cfg.Timeout, err)
	}
	res.RawStoreObservedReadingsPerS = round(rate(ro.readings, ro.took), 1)
	res.RawStoreObservedBatches = per
	res.RawStoreObservedReadings = ro.readings

	// The raw store limit is the faster of the two ways of inserting, so
	// the ratio never flatters the platform.
	res.RawStoreBestReadingsPerS = max(res.RawStoreReadingsPerS, res.RawStoreObservedReadingsPerS)
	res.RawBrokerBestReadingsPerS = max(res.RawBrokerReadingsPerS, res.RawBrokerHookReadingsPerS)
	if lim := min(res.RawBrokerBestReadingsPerS, res.RawStoreBestReadingsPerS); lim > 0 {
		res.Ratio = round(res.ReadingsPerS/lim, 3)
	}
	res.MaxRSSMiB = maxRSSMiB()
	res.TotalSeconds = round(time.Since(began).Seconds(), 1)
	return res, nil
}

// phase runs fn with the pprof label phase=name, which every goroutine
// started inside inherits, so `go tool pprof -tagfocus phase=platform`
// shows one part of a --cpuprofile alone.
func phase(ctx context.Context, name string, fn func(context.Context) error) (err error) {
	pprof.Do(ctx, pprof.Labels("phase", name), func(ctx context.Context) { err = fn(ctx) })
	return err
}

func phaseResult[T any](ctx context.Context, name string, fn func(context.Context) (T, error)) (res T, err error) {
	err = phase(ctx, name, func(ctx context.Context) error {
		res, err = fn(ctx)
		return err
	})
	return res, err
}

// ingestPlatform runs the SDK devices against the platform and verifies
// what was stored.
func ingestPlatform(ctx context.Context, cfg IngestConfig, res *IngestResult, pr progress) error {
	pr.printf("starting the platform (sync %s)", cfg.Sync)
	p, err := startPlatform(ctx, cfg.Sync, 8, cfg.Design)
	if err != nil {
		return err
	}
	defer p.Close()
	pr.printf("creating %d devices through the API", cfg.Devices)
	devs, err := p.createDevices(ctx, "bench-ingest", cfg.Devices)
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
	outboxDir, err := os.MkdirTemp("", "outpost-bench-outbox-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(outboxDir)
	pr.printf("connecting %d SDK devices (outbox: %s)", cfg.Devices, cfg.DeviceOutbox)
	err = forEach(ctx, cfg.Devices, 16, func(ctx context.Context, i int) error {
		ob := device.WithMemoryOutbox()
		if cfg.DeviceOutbox == "disk" {
			ob = device.WithOutbox(filepath.Join(outboxDir, strconv.Itoa(i)))
		}
		c, err := device.New(devs[i].URL, device.WithMaxBatch(cfg.Batch), ob)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := c.Connect(cctx); err != nil {
			return fmt.Errorf("bench ingest: connect device %d: %w", i, err)
		}
		clients[i] = c
		return nil
	})
	if err != nil {
		return err
	}

	addStart := time.Now()
	err = forEach(ctx, cfg.Devices, runtime.NumCPU(), func(ctx context.Context, d int) error {
		for i, n := 0, share(cfg.Readings, cfg.Devices, d); i < n; i++ {
			if err := clients[d].AddAt(readingFeed(i), readingValue(i), time.UnixMilli(readingTS(i))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	res.AddSeconds = round(time.Since(addStart).Seconds(), 3)

	before, err := p.metrics(ctx)
	if err != nil {
		return err
	}
	pr.printf("platform: %d devices publish %d readings in messages of up to %d", cfg.Devices, cfg.Readings, cfg.Batch)
	runtime.GC()
	start := time.Now()
	err = forEach(ctx, cfg.Devices, cfg.Devices, func(ctx context.Context, d int) error {
		if err := clients[d].Publish(ctx); err != nil {
			return fmt.Errorf("bench ingest: device %d: publish: %w", d, err)
		}
		return nil
	})
	took := time.Since(start)
	if err != nil {
		return err
	}
	for d, c := range clients {
		if n := c.Pending(); n != 0 {
			return fmt.Errorf("bench ingest: device %d still holds %d unacknowledged readings after Publish", d, n)
		}
	}
	after, err := p.metrics(ctx)
	if err != nil {
		return err
	}
	delta := func(name string) float64 { return after[name] - before[name] }

	res.Seconds = round(took.Seconds(), 3)
	res.ReadingsPerS = round(rate(cfg.Readings, took), 1)
	batches := int(delta("outpost_batches_stored_total"))
	commits := int(delta("outpost_ingest_commit_seconds_count"))
	stored := int(delta("outpost_readings_stored_total"))
	res.Messages = batches
	res.MessagesPerS = round(rate(batches, took), 1)
	res.Commits = commits
	if commits > 0 {
		res.BatchesPerCommit = round(float64(batches)/float64(commits), 2)
		res.ReadingsPerCommit = round(float64(stored)/float64(commits), 1)
	}
	res.WriterBusy = round(delta("outpost_ingest_commit_seconds_sum")/took.Seconds(), 3)
	res.Unacknowledged = int(delta("outpost_mqtt_messages_unacknowledged_total"))
	if stored != cfg.Readings {
		return fmt.Errorf("bench ingest: the platform counted %d readings stored, want exactly %d", stored, cfg.Readings)
	}
	if dup := delta("outpost_batches_duplicate_total"); dup != 0 {
		return fmt.Errorf("bench ingest: %v batches were redelivered during the run", dup)
	}

	if res.HeapMiB, err = heapMiB(cfg.MemProfile); err != nil {
		return err
	}
	pr.printf("verifying every stored reading through the API")
	var bytes int
	for d := range devs {
		n, err := verifyStored(ctx, p, devs[d].ID, share(cfg.Readings, cfg.Devices, d))
		if err != nil {
			return err
		}
		res.Stored += n
	}
	if res.Stored != cfg.Readings {
		return fmt.Errorf("bench ingest: %d readings stored, want exactly %d", res.Stored, cfg.Readings)
	}
	// Message sizes are those of the raw workload, which seals like the SDK.
	msgs, total := buildMessages(deviceIDsOf(devs), cfg.Readings, cfg.Batch)
	if total != batches {
		return fmt.Errorf("bench ingest: the platform stored %d messages, the SDK's sealing predicts %d", batches, total)
	}
	for _, dm := range msgs {
		for _, m := range dm {
			bytes += len(m.payload)
		}
	}
	res.PayloadBytesAvg = round(float64(bytes)/float64(total), 1)
	return nil
}

func deviceIDsOf(devs []apiDevice) []string {
	ids := make([]string, len(devs))
	for i, d := range devs {
		ids[i] = d.ID
	}
	return ids
}

// verifyStored pages through a device's readings with the telemetry API
// (oldest first) and checks that they are exactly readings 0..n-1 of the
// workload: every timestamp once, with its feed and value.
func verifyStored(ctx context.Context, p *platform, id string, n int) (int, error) {
	const page = 100_000
	got := 0
	since := readingTS(0)
	for {
		var resp struct {
			Readings []outpost.Reading `json:"readings"`
		}
		path := fmt.Sprintf("/api/v1/devices/%s/telemetry?since=%d&limit=%d", id, since, page)
		if err := p.do(ctx, "GET", path, nil, http.StatusOK, &resp); err != nil {
			return got, fmt.Errorf("bench ingest: verify: %w", err)
		}
		for _, r := range resp.Readings {
			i := int(r.TS - readingTS(0))
			if i != got {
				return got, fmt.Errorf("bench ingest: verify device %s: reading %d has timestamp of reading %d (missing or duplicated readings)", id, got, i)
			}
			if i >= n {
				return got, fmt.Errorf("bench ingest: verify device %s: %d readings stored or more, want %d", id, i+1, n)
			}
			if r.Feed != readingFeed(i) || string(r.Value) != string(encodedValue(i)) {
				return got, fmt.Errorf("bench ingest: verify device %s: reading %d is %s=%s, want %s=%s", id, i, r.Feed, r.Value, readingFeed(i), encodedValue(i))
			}
			got++
		}
		if len(resp.Readings) < page {
			break
		}
		since = resp.Readings[len(resp.Readings)-1].TS + 1
	}
	if got != n {
		return got, fmt.Errorf("bench ingest: verify device %s: %d readings stored, want %d", id, got, n)
	}
	return got, nil
}

// runRawBrokerIngest publishes the messages with QoS 1 through a plain
// mochi broker (one paho publisher per device, window messages in flight
// each) and returns the time until every message has been received once.
// With viaSubscriber the receiver is one plain paho client subscribed to
// outpost/v1/+/up/telemetry (the broker routes and delivers every message
// again); without, it is a counting OnPublish hook that runs before the
// PUBACK, the place where the platform does its work.
func runRawBrokerIngest(ctx context.Context, msgs [][]rawMsg, total, window int, viaSubscriber bool) (time.Duration, error) {
	credits := make(chan struct{}, min(len(msgs)*window, 60_000))
	var (
		mu       sync.Mutex
		seen     = make([]bool, total)
		received int
		dups     int
		bad      int
		all      = make(chan struct{})
		count    atomic.Int64
	)
	onMsg := func(payload []byte) {
		i, ok := messageIndex(payload)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case !ok || i >= total:
			bad++
			return
		case seen[i]:
			dups++
			return
		}
		seen[i] = true
		received++
		count.Store(int64(received))
		<-credits
		if received == total {
			close(all)
		}
	}
	var hook mqtt.Hook
	if !viaSubscriber {
		hook = &countHook{onMsg: onMsg}
	}
	b, err := startRawBroker(hook)
	if err != nil {
		return 0, err
	}
	defer b.Close()
	if viaSubscriber {
		sub, err := dialRaw(ctx, b.addr(), "raw-subscriber", func(p paho.PublishReceived) { onMsg(p.Packet.Payload) })
		if err != nil {
			return 0, err
		}
		defer sub.Close()
		if err := sub.subscribe(ctx, protocol.Root+"/+/"+protocol.Up+"/"+protocol.KindTelemetry); err != nil {
			return 0, err
		}
	}
	pubs := make([]*rawClient, len(msgs))
	defer func() { closeRaw(pubs) }()
	for d := range msgs {
		if pubs[d], err = dialRaw(ctx, b.addr(), fmt.Sprintf("raw-publisher-%d", d), nil); err != nil {
			return 0, err
		}
	}

	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	start := time.Now()
	for d := range msgs {
		var next atomic.Int64
		for w := 0; w < window; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					j := int(next.Add(1) - 1)
					if j >= len(msgs[d]) {
						return
					}
					select {
					case credits <- struct{}{}:
					case <-pctx.Done():
						return
					}
					m := msgs[d][j]
					if err := pubs[d].publish(pctx, m.topic, m.payload); err != nil {
						cancel(fmt.Errorf("bench ingest: raw publish: %w", err))
						return
					}
				}
			}()
		}
	}
	err = waitAll(pctx, all, &count, 15*time.Second)
	took := time.Since(start)
	cancel(nil)
	wg.Wait()

	inflight, writes := b.dropped()
	mu.Lock()
	defer mu.Unlock()
	if err != nil || received != total || dups != 0 || bad != 0 || inflight != 0 || writes != 0 {
		return 0, fmt.Errorf("bench ingest: raw broker: received %d of %d messages (%d duplicates, %d unexpected); mochi dropped %d for in-flight quota and %d for write queue: %v",
			received, total, dups, bad, inflight, writes, err)
	}
	return took, nil
}

// waitAll waits until done is closed, failing on ctx (with its cause) or
// when count has not moved for stall.
func waitAll(ctx context.Context, done <-chan struct{}, count *atomic.Int64, stall time.Duration) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	last, lastMove := count.Load(), time.Now()
	for {
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
			if c := count.Load(); c != last {
				last, lastMove = c, time.Now()
			} else if time.Since(lastMove) > stall {
				return fmt.Errorf("%w for %s at %d messages", errStalled, stall, c)
			}
		}
	}
}

func timeoutHint(ctx context.Context, timeout time.Duration, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (the run exceeded --timeout %s)", err, timeout)
	}
	return err
}

func printIngest(w io.Writer, r *IngestResult) {
	fmt.Fprintf(w, "Outpost ingest benchmark\n")
	fmt.Fprintf(w, "machine:  %s\n", r.Machine)
	fmt.Fprintf(w, "workload: %d devices, %s readings (%s each), up to %d readings per message: %s messages of %.0f bytes on average; SQLite synchronous=%s; %s; device outbox in %s\n\n",
		r.Devices, group(r.Readings), group(share(r.Readings, r.Devices, 0)), r.Batch, group(r.Messages), r.PayloadBytesAvg, strings.ToUpper(r.Sync), r.Design, r.DeviceOutbox)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\treadings/s\tmessages/s\tseconds\tplatform / this\t\n")
	row := func(name string, rps, mps, secs float64) {
		ratio := "-"
		if rps > 0 && name != "platform" {
			ratio = fmt.Sprintf("%.2f", r.ReadingsPerS/rps)
		}
		s := "-"
		if secs > 0 {
			s = fmt.Sprintf("%.2f", secs)
		}
		m := "-"
		if mps > 0 {
			m = groupf(mps)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", name, groupf(rps), m, s, ratio)
	}
	row("platform", r.ReadingsPerS, r.MessagesPerS, r.Seconds)
	row(fmt.Sprintf("raw broker → subscriber, %d in flight/publisher", r.RawBrokerWindow), r.RawBrokerReadingsPerS, r.RawBrokerMessagesPerS, r.RawBrokerSeconds)
	if r.RawBrokerWindow > 1 {
		row("raw broker → subscriber, 1 in flight/publisher", r.RawBroker1ReadingsPerS, r.RawBroker1MessagesPerS, 0)
	}
	row(fmt.Sprintf("raw broker → OnPublish hook, %d in flight/publisher", r.RawBrokerWindow), r.RawBrokerHookReadingsPerS, r.RawBrokerHookMessagesPerS, 0)
	row(fmt.Sprintf("raw store, %.0f readings/tx", r.RawStoreReadingsPerCommit), r.RawStoreReadingsPerS, 0, r.RawStoreSeconds)
	row(fmt.Sprintf("raw store, %d batches/tx (as platform)", r.RawStoreObservedBatches), r.RawStoreObservedReadingsPerS, 0, 0)
	tw.Flush()
	fmt.Fprintf(w, "\nratio = platform / min(fastest raw broker, fastest raw store) = %.3f\n", r.Ratio)
	fmt.Fprintf(w, "platform commits: %s (%.2f batches, %.1f readings each); ingest writer busy %.0f%% of the run\n",
		group(r.Commits), r.BatchesPerCommit, r.ReadingsPerCommit, 100*r.WriterBusy)
	fmt.Fprintf(w, "verified: %s readings stored, every timestamp and value checked through the API\n", group(r.Stored))
	fmt.Fprintf(w, "memory: Go heap in use after the platform run %.1f MiB (platform + SDK clients); peak RSS of the whole run %.0f MiB\n", r.HeapMiB, r.MaxRSSMiB)
	fmt.Fprintf(w, "SDK Add of all readings before the clock: %.2fs; total %.1fs\n", r.AddSeconds, r.TotalSeconds)
}
