package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/extbroker"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/server"
)

// ExternalResult is the outcome of `outpost bench ingest --broker … --db …`:
// the platform on an external MQTT broker and PostgreSQL, with one or
// more replicas, against the raw parts measured in the same run: the
// broker moving the same messages from the same publishers to as many
// shared subscribers as there are replicas, and PostgreSQL taking the
// same rows with COPY into a plain indexed table.
type ExternalResult struct {
	Benchmark string  `json:"benchmark"`
	Machine   Machine `json:"machine"`
	Broker    string  `json:"broker"`
	Design    Design  `json:"design"`
	Replicas  int     `json:"replicas"`
	Devices   int     `json:"devices"`
	Readings  int     `json:"readings"`
	Batch     int     `json:"batch"`
	Messages  int     `json:"messages"`

	Seconds      float64 `json:"seconds"`
	ReadingsPerS float64 `json:"readings_per_s"`
	MessagesPerS float64 `json:"messages_per_s"`
	// PerReplica is the share of the batches each replica committed.
	PerReplica []int `json:"batches_per_replica"`

	RawBrokerReadingsPerS float64 `json:"raw_broker_readings_per_s"`
	RawBrokerMessagesPerS float64 `json:"raw_broker_messages_per_s"`
	RawCopyReadingsPerS   float64 `json:"raw_copy_readings_per_s"`
	// Ratio = readings_per_s / min(raw broker, raw COPY).
	Ratio        float64 `json:"ratio"`
	TotalSeconds float64 `json:"total_seconds"`
}

// externalStall is how long the external benchmark waits for the next
// committed reading before it concludes the broker dropped messages.
const externalStall = 15 * time.Second

// RunIngestExternal runs the ingest benchmark on an external broker and
// PostgreSQL (db: a postgres:// URL; the run works in a schema of its
// own, dropped at the end).
func RunIngestExternal(ctx context.Context, cfg IngestConfig, broker, db string, replicas int, log io.Writer) (*ExternalResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if replicas < 1 || replicas > 8 {
		return nil, fmt.Errorf("bench ingest: --replicas must be between 1 and 8")
	}
	bu, err := extbroker.ParseURL(broker)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(db, "postgres://") && !strings.HasPrefix(db, "postgresql://") {
		return nil, fmt.Errorf("bench ingest: --db with --broker must be a postgres:// URL")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	began := time.Now()
	pr := progress{log}
	res := &ExternalResult{Benchmark: "ingest-external", Machine: machine(), Broker: bu.Host, Design: cfg.Design, Replicas: replicas,
		Devices: cfg.Devices, Readings: cfg.Readings, Batch: cfg.Batch}

	schema := fmt.Sprintf("outpost_bench_%d", time.Now().UnixNano())
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("bench ingest: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return nil, fmt.Errorf("bench ingest: create schema: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+schema+" CASCADE")
	u, err := url.Parse(db)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	schemaURL := u.String()

	// The platform.
	pr.printf("starting %d replica(s) on %s and PostgreSQL", replicas, bu.Host)
	var ps []*platform
	defer func() {
		for _, p := range ps {
			p.Close()
		}
	}()
	for i := range replicas {
		dir, err := os.MkdirTemp("", "outpost-bench-*")
		if err != nil {
			return nil, err
		}
		srv, err := server.Open(ctx, server.Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", Broker: broker, DB: schemaURL, Replica: fmt.Sprint("bench", i+1), Ingest: cfg.Design.ingest()})
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("bench: start replica %d: %w", i+1, err)
		}
		ps = append(ps, newPlatform(srv, dir, 8))
	}
	devs, err := ps[0].createDevices(ctx, "bench-ext", cfg.Devices)
	if err != nil {
		return nil, err
	}
	clients := make([]*device.Client, cfg.Devices)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	err = forEach(ctx, cfg.Devices, 16, func(ctx context.Context, i int) error {
		c, err := device.New(devs[i].URL, device.WithMaxBatch(cfg.Batch), device.WithMemoryOutbox())
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
		return nil, err
	}
	err = forEach(ctx, cfg.Devices, runtime.NumCPU(), func(ctx context.Context, d int) error {
		for i, n := 0, share(cfg.Readings, cfg.Devices, d); i < n; i++ {
			if err := clients[d].AddAt(readingFeed(i), readingValue(i), time.UnixMilli(readingTS(i))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	stored := func() (float64, []int, error) {
		var sum float64
		var per []int
		for _, p := range ps {
			m, err := p.metrics(ctx)
			if err != nil {
				return 0, nil, err
			}
			sum += m["outpost_readings_stored_total"]
			per = append(per, int(m["outpost_batches_stored_total"]))
		}
		return sum, per, nil
	}
	pr.printf("platform: %d devices publish %d readings in messages of up to %d through %s", cfg.Devices, cfg.Readings, cfg.Batch, bu.Host)
	start := time.Now()
	err = forEach(ctx, cfg.Devices, cfg.Devices, func(ctx context.Context, d int) error {
		return clients[d].Publish(ctx)
	})
	if err != nil {
		return nil, err
	}
	// The broker acknowledged the devices; the platform commits after.
	// A broker that drops what it acknowledged (its queue for the
	// platform's session full) shows as a stall: nothing more arrives.
	var last float64
	lastAt := time.Now()
	for {
		n, per, err := stored()
		if err != nil {
			return nil, err
		}
		if int(n) >= cfg.Readings {
			res.PerReplica = per
			break
		}
		if n != last {
			last, lastAt = n, time.Now()
		} else if time.Since(lastAt) > externalStall {
			return nil, fmt.Errorf("bench ingest: %v of %d readings committed and none for %s: the broker acknowledged the devices' messages but did not deliver the rest; a broker that caps the messages it queues for a session drops them (Mosquitto logs \"Outgoing messages are being dropped\": set max_queued_messages 0, docs/deploy.md)", n, cfg.Readings, externalStall)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bench ingest: %v of %d readings committed: %w", n, cfg.Readings, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	took := time.Since(start)
	for _, b := range res.PerReplica {
		res.Messages += b
	}
	res.Seconds = round(took.Seconds(), 3)
	res.ReadingsPerS = round(rate(cfg.Readings, took), 1)
	res.MessagesPerS = round(rate(res.Messages, took), 1)
	var verified int
	for d := range devs {
		n, err := verifyStored(ctx, ps[0], devs[d].ID, share(cfg.Readings, cfg.Devices, d))
		if err != nil {
			return nil, err
		}
		verified += n
	}
	if verified != cfg.Readings {
		return nil, fmt.Errorf("bench ingest: %d readings stored, want exactly %d", verified, cfg.Readings)
	}
	for _, c := range clients {
		c.Close()
	}
	for _, p := range ps {
		p.Close()
	}
	ps = nil

	// The raw broker: the same messages, publishers to shared subscribers.
	ids := make([]string, cfg.Devices)
	for i := range ids {
		ids[i] = outpost.NewDeviceID()
	}
	msgs, total := buildMessages(ids, cfg.Readings, cfg.Batch)
	pr.printf("raw broker: %d messages through %s to %d shared subscriber(s), %d in flight per publisher", total, bu.Host, replicas, cfg.RawWindow)
	rb, err := rawExternalBroker(ctx, bu, msgs, total, cfg.RawWindow, replicas)
	if err != nil {
		return nil, err
	}
	res.RawBrokerReadingsPerS = round(rate(cfg.Readings, rb), 1)
	res.RawBrokerMessagesPerS = round(rate(total, rb), 1)

	// Raw PostgreSQL: COPY of the same rows, 20,000 a transaction.
	pr.printf("raw PostgreSQL: COPY of %d rows, %d a transaction", cfg.Readings, writerMaxReadings)
	rc, err := rawCopy(ctx, conn, schema, storeBatches(msgs, ids))
	if err != nil {
		return nil, err
	}
	res.RawCopyReadingsPerS = round(rate(cfg.Readings, rc), 1)
	if lim := min(res.RawBrokerReadingsPerS, res.RawCopyReadingsPerS); lim > 0 {
		res.Ratio = round(res.ReadingsPerS/lim, 3)
	}
	res.TotalSeconds = round(time.Since(began).Seconds(), 1)
	return res, nil
}

// rawExternalBroker moves msgs through the broker: one MQTT 5 client per
// device publishes its messages, window in flight, and subs clients share
// a subscription and count them. It returns the time until the last
// message arrived.
func rawExternalBroker(ctx context.Context, u *url.URL, msgs [][]rawMsg, total, window, subs int) (time.Duration, error) {
	dial := func(id string, onMsg func()) (*paho.Client, error) {
		c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
		if err != nil {
			return nil, err
		}
		cfg := paho.ClientConfig{Conn: c, ClientID: id}
		if onMsg != nil {
			cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(paho.PublishReceived) (bool, error) { onMsg(); return true, nil }}
		}
		cl := paho.NewClient(cfg)
		rm := uint16(1024)
		cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30, Properties: &paho.ConnectProperties{ReceiveMaximum: &rm}}
		if u.User != nil {
			cp.Username, cp.UsernameFlag = u.User.Username(), true
			if p, ok := u.User.Password(); ok {
				cp.Password, cp.PasswordFlag = []byte(p), true
			}
		}
		if _, err := cl.Connect(ctx, cp); err != nil {
			c.Close()
			return nil, err
		}
		return cl, nil
	}
	var got atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	group := fmt.Sprintf("raw%d", time.Now().UnixNano())
	var clients []*paho.Client
	defer func() {
		for _, c := range clients {
			c.Disconnect(&paho.Disconnect{})
		}
	}()
	for i := range subs {
		c, err := dial(fmt.Sprintf("%s-sub-%d", group, i), func() {
			if got.Add(1) == int64(total) {
				once.Do(func() { close(done) })
			}
		})
		if err != nil {
			return 0, fmt.Errorf("raw broker: subscriber: %w", err)
		}
		clients = append(clients, c)
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/" + group + "/outpost/v1/+/up/#", QoS: 1}}}); err != nil {
			return 0, fmt.Errorf("raw broker: subscribe: %w", err)
		}
	}
	pubs := make([]*paho.Client, len(msgs))
	for d := range msgs {
		c, err := dial(fmt.Sprintf("%s-pub-%d", group, d), nil)
		if err != nil {
			return 0, fmt.Errorf("raw broker: publisher: %w", err)
		}
		pubs[d] = c
		clients = append(clients, c)
	}
	start := time.Now()
	err := forEach(ctx, len(msgs), len(msgs), func(ctx context.Context, d int) error {
		sem := make(chan struct{}, window)
		errc := make(chan error, 1)
		var wg sync.WaitGroup
		for _, m := range msgs[d] {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if _, err := pubs[d].Publish(ctx, &paho.Publish{Topic: m.topic, QoS: 1, Payload: m.payload}); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}()
		}
		wg.Wait()
		select {
		case err := <-errc:
			return err
		default:
			return nil
		}
	})
	if err != nil {
		return 0, fmt.Errorf("raw broker: publish: %w", err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		return 0, fmt.Errorf("raw broker: %d of %d messages arrived: %w", got.Load(), total, ctx.Err())
	}
	return time.Since(start), nil
}

// rawCopy copies the readings of batches into a plain table with the
// index the platform's readings have, writerMaxReadings rows per
// transaction: PostgreSQL's limit for these rows, with no platform logic
// (no dedup, no device or feed lookup, no partition routing).
func rawCopy(ctx context.Context, conn *pgx.Conn, schema string, batches []*outpost.Batch) (time.Duration, error) {
	table := pgx.Identifier{schema, "raw_readings"}
	if _, err := conn.Exec(ctx, "CREATE TABLE "+table.Sanitize()+" (series bigint NOT NULL, ts bigint NOT NULL, seq bigint NOT NULL, value text NOT NULL); CREATE INDEX ON "+table.Sanitize()+" (series, ts, seq)"); err != nil {
		return 0, err
	}
	series := map[string]int64{}
	var rows [][]any
	for _, b := range batches {
		for _, r := range b.Readings {
			k := b.DeviceID + "/" + r.Feed
			s, ok := series[k]
			if !ok {
				s = int64(len(series) + 1)
				series[k] = s
			}
			rows = append(rows, []any{s, r.TS, int64(len(rows)), string(r.Value)})
		}
	}
	start := time.Now()
	for i := 0; i < len(rows); i += writerMaxReadings {
		chunk := rows[i:min(i+writerMaxReadings, len(rows))]
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			_, err := tx.CopyFrom(ctx, table, []string{"series", "ts", "seq", "value"}, pgx.CopyFromRows(chunk))
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("raw COPY: %w", err)
		}
	}
	return time.Since(start), nil
}

func printExternal(w io.Writer, r *ExternalResult) {
	fmt.Fprintf(w, "\n%-52s %12s %12s %10s\n", "", "readings/s", "messages/s", "platform / this")
	fmt.Fprintf(w, "%-52s %12.0f %12.0f %10s\n", fmt.Sprintf("platform, %d replica(s), %s + PostgreSQL", r.Replicas, r.Broker), r.ReadingsPerS, r.MessagesPerS, "-")
	fmt.Fprintf(w, "%-52s %12.0f %12.0f %10.2f\n", "raw broker → shared subscribers", r.RawBrokerReadingsPerS, r.RawBrokerMessagesPerS, r.ReadingsPerS/max(r.RawBrokerReadingsPerS, 1))
	fmt.Fprintf(w, "%-52s %12.0f %12s %10.2f\n", "raw PostgreSQL COPY, 20000 rows/tx", r.RawCopyReadingsPerS, "-", r.ReadingsPerS/max(r.RawCopyReadingsPerS, 1))
	fmt.Fprintf(w, "\nratio = platform / min(raw broker, raw COPY) = %.3f (target at batch 50: 0.7)\nbatches committed per replica: %v\n", r.Ratio, r.PerReplica)
}
