// Package telemetry is the home of the devices' readings: it decodes and
// validates every telemetry message (the protocol's rules, the device's
// feed definitions, its rate), hands the batch to the ingest writer's
// group commit, counts and streams what was committed, and answers the
// API's queries for readings.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Writer is the ingest writer (internal/ingest): group commit of batches.
type Writer interface {
	// Submit queues b and calls done after its commit; ingest.ErrQueueFull
	// when there is no room before ctx is done.
	Submit(ctx context.Context, b *outpost.Batch, done ingest.Done) error
	// Write queues b and waits for its commit.
	Write(ctx context.Context, b *outpost.Batch) (outpost.AppendResult, error)
}

// Feeds gives a device's feed definitions by reference (internal/model
// keeps them); an empty map means the device registered none.
type Feeds interface {
	FeedsOf(ctx context.Context, deviceID string) (map[string]outpost.Feed, error)
	// RefreshFeeds reads them again from the store (used with
	// Options.SharedModel before rejecting a reading).
	RefreshFeeds(ctx context.Context, deviceID string) (map[string]outpost.Feed, error)
}

// Replier sends error replies (internal/reply implements it).
type Replier interface {
	Reject(deviceID, kind, id string, err error) error
	Partial(deviceID, kind, id string, bad, good int, first *protocol.Error) error
}

// Stream publishes live events (internal/stream implements it).
type Stream interface {
	Publish(kind, deviceID string, data any)
}

// Store is what the API's reading queries need.
type Store interface {
	Device(ctx context.Context, id string) (*outpost.Device, error)
	Readings(ctx context.Context, f outpost.ReadingFilter) ([]outpost.Reading, error)
	EachReading(ctx context.Context, f outpost.ReadingFilter, fn func(outpost.Reading) error) error
	Feeds(ctx context.Context, deviceID string) ([]string, error)
}

// Stats counts what the ingest writer commits and streams it to live
// subscribers; it is the writer's ingest.Observer. Create it before the
// writer and hand the same Stats to New.
type Stats struct {
	stream Stream

	readingsStored   prometheus.Counter
	readingsRejected prometheus.Counter
	batchesStored    prometheus.Counter
	batchesDuplicate prometheus.Counter
	ingestOverloaded prometheus.Counter
	rateLimited      prometheus.Counter
	rateOverrun      prometheus.Counter
	commitSeconds    prometheus.Histogram
}

var _ ingest.Observer = (*Stats)(nil)

// NewStats returns the telemetry counters, registered on reg (nil: none),
// streaming committed batches to stream.
func NewStats(stream Stream, reg prometheus.Registerer) *Stats {
	m := &Stats{stream: stream}
	m.readingsStored = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_readings_stored_total", Help: "Readings committed to the store."})
	m.readingsRejected = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_readings_rejected_total", Help: "Readings rejected as invalid (the device got an error reply)."})
	m.batchesStored = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_batches_stored_total", Help: "Telemetry batches committed."})
	m.batchesDuplicate = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_batches_duplicate_total", Help: "Redelivered telemetry batches recognised by id and not stored again."})
	m.rateLimited = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_telemetry_rate_limited_total", Help: "Telemetry messages refused because their device exceeded its rate limit (the device retries)."})
	m.rateOverrun = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_telemetry_rate_overrun_total", Help: "Telemetry messages stored over their device's rate limit (external broker: the broker acknowledged them, and holding one back would hold up every device)."})
	m.ingestOverloaded = prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_ingest_overloaded_total", Help: "Telemetry messages refused because the ingest queue was full (the device retries)."})
	m.commitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "outpost_ingest_commit_seconds", Help: "Duration of one group commit.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)})
	if reg != nil {
		reg.MustRegister(m.readingsStored, m.readingsRejected, m.batchesStored, m.batchesDuplicate, m.ingestOverloaded, m.rateLimited, m.rateOverrun, m.commitSeconds)
	}
	return m
}

// Committed implements ingest.Observer: it counts what was stored and
// streams it to live subscribers.
func (m *Stats) Committed(batches []*outpost.Batch, results []outpost.AppendResult, took time.Duration) {
	m.commitSeconds.Observe(took.Seconds())
	for i, b := range batches {
		switch results[i] {
		case outpost.AppendStored:
			m.readingsStored.Add(float64(len(b.Readings)))
			m.batchesStored.Inc()
			m.stream.Publish(StreamKind, b.DeviceID, Event{DeviceID: b.DeviceID, BatchID: b.ID, Readings: b.Readings})
		case outpost.AppendDuplicate:
			m.batchesDuplicate.Inc()
		case outpost.AppendUnknownDevice:
			m.readingsRejected.Add(float64(len(b.Readings)))
		}
	}
}

// StreamKind is the live-stream event kind of committed readings.
const StreamKind = "telemetry"

// Event is the live-stream payload of a committed batch.
type Event struct {
	DeviceID string            `json:"device_id"`
	BatchID  string            `json:"batch_id,omitempty"`
	Readings []outpost.Reading `json:"readings"`
}

// Options configure the telemetry service.
type Options struct {
	Writer  Writer
	Feeds   Feeds
	Replies Replier
	Stats   *Stats
	Store   Store
	// Rate bounds the readings one device may send per second (0: no
	// limit), with bursts of up to Burst readings (default one second's
	// worth).
	Rate, Burst int
	// Exchange, when set with Rate, shares the rate limit's usage with
	// the other replicas that take the same devices' traffic, every
	// ExchangeInterval (default DefaultExchangeInterval), so a device is
	// measured against its limit across them (docs/deploy.md gives the
	// bound). Close stops the reports.
	Exchange         Exchange
	ExchangeInterval time.Duration
	// SharedModel says other processes (replicas) change feed
	// definitions too: before rejecting a reading by the cached
	// definitions, the service reads them again (Feeds.RefreshFeeds).
	SharedModel bool
	// AdmitOverLimit stores a device's messages over its rate limit
	// instead of refusing them, and counts them in
	// outpost_telemetry_rate_overrun_total. Behind an external broker a
	// refused message would stay unacknowledged at the broker, and MQTT
	// acknowledgements go in the order messages arrived: one held
	// message holds up every later message of every device once the
	// broker's window is full. The broker has already acknowledged the
	// message to the device, so it is not dropped either. There, the
	// broker enforces per-device limits (docs/deploy.md); the platform
	// counts. Off: a message over the limit is refused (the embedded
	// broker answers 0x97 and the device keeps it).
	AdmitOverLimit bool
}

// Service is the telemetry home. It is safe for concurrent use.
type Service struct {
	shared  bool // Options.SharedModel
	w       Writer
	feeds   Feeds
	reply   Replier
	stats   *Stats
	db      Store
	limiter *rateLimiter // nil: no limit
	admit   bool         // Options.AdmitOverLimit

	stop      chan struct{} // closed by Close
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New returns the telemetry service. With Options.Exchange and a rate
// limit it starts reporting usage to the other replicas; Close stops it.
func New(o Options) *Service {
	s := &Service{w: o.Writer, feeds: o.Feeds, reply: o.Replies, stats: o.Stats, db: o.Store, limiter: newRateLimiter(o.Rate, o.Burst),
		shared: o.SharedModel, stop: make(chan struct{})}
	s.admit = o.AdmitOverLimit
	if s.limiter != nil && o.Exchange != nil {
		every := o.ExchangeInterval
		if every <= 0 {
			every = DefaultExchangeInterval
		}
		s.limiter.withExchange(every)
		l := s.limiter
		o.Exchange.OnUsage(func(origin string, used map[string]int) { l.receive(origin, used, time.Now()) })
		s.wg.Add(1)
		go s.exchange(o.Exchange, every)
	}
	return s
}

// exchange reports this replica's usage every interval until Close.
func (s *Service) exchange(ex Exchange, every time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if used, send := s.limiter.report(time.Now()); send {
			ex.PublishUsage(used)
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// Close stops the usage reports to other replicas (if any). The service
// still handles messages afterwards, limited by this replica's own
// accounting.
func (s *Service) Close() error {
	s.closeOnce.Do(func() { close(s.stop) })
	s.wg.Wait()
	return nil
}

// Start begins handling a telemetry message: the batch goes to the ingest
// writer and done is called after its group commit, so the broker's read
// loop goes on reading the device's next messages, which join the same
// group. It reports false when it finished the message at once (err is
// then its outcome: nil, a *protocol.Error, or a transient error). ctx
// bounds the wait for room in the writer's queue; store work gets
// storeCtx.
func (s *Service) Start(ctx, storeCtx context.Context, deviceID string, payload []byte, done func(error)) (bool, error) {
	b, err := s.batch(storeCtx, deviceID, payload)
	if err != nil || b == nil {
		return false, err
	}
	err = s.w.Submit(ctx, b, func(_ outpost.AppendResult, err error) { done(err) })
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ingest.ErrQueueFull):
		s.stats.ingestOverloaded.Inc()
		return false, fmt.Errorf("telemetry: %w: %w", outpost.ErrOverloaded, err)
	default:
		return false, err // transient: not acknowledged, the device resends
	}
}

// Handle handles a telemetry message synchronously: it returns after the
// commit.
func (s *Service) Handle(ctx context.Context, deviceID, _ string, payload []byte) error {
	b, err := s.batch(ctx, deviceID, payload)
	if err != nil || b == nil {
		return err
	}
	if _, err := s.w.Write(ctx, b); err != nil {
		return err // transient: not acknowledged, the device resends
	}
	return nil
}

// batch decodes and validates a telemetry message. Invalid readings are
// dropped and reported to the device in an error reply; if none is left
// it returns a nil batch, with the *protocol.Error that rejects the
// message for good if there was any reading at all.
func (s *Service) batch(ctx context.Context, deviceID string, payload []byte) (*outpost.Batch, error) {
	t, err := protocol.DecodeTelemetry(payload)
	if err != nil {
		s.stats.readingsRejected.Inc()
		return nil, s.reply.Reject(deviceID, protocol.KindTelemetry, "", err)
	}
	if now := time.Now(); !s.limiter.allow(deviceID, len(t.Readings), now) {
		if !s.admit {
			s.stats.rateLimited.Inc()
			return nil, fmt.Errorf("telemetry: device %s over its rate limit: %w", deviceID, outpost.ErrOverloaded)
		}
		// Stored, not taken from the bucket: what is over the limit
		// is counted, the limit itself goes on measuring the device.
		s.stats.rateOverrun.Inc()
	}
	rule, err := s.ReadingRule(ctx, deviceID)
	if err != nil {
		return nil, err // transient: the device resends
	}
	now := time.Now().UnixMilli()
	b := &outpost.Batch{DeviceID: deviceID, ID: t.ID, Readings: make([]outpost.Reading, 0, len(t.Readings))}
	var bad int
	var firstErr *protocol.Error
	for _, r := range t.Readings {
		err := protocol.ValidateReading(r)
		if err == nil {
			err = rule(r)
		}
		if err != nil {
			bad++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		ts := r.TS
		if ts == 0 {
			ts = now
		}
		b.Readings = append(b.Readings, outpost.Reading{Feed: r.Feed, TS: ts, Value: r.Value})
	}
	if bad > 0 {
		s.stats.readingsRejected.Add(float64(bad))
		if err := s.reply.Partial(deviceID, protocol.KindTelemetry, t.ID, bad, len(b.Readings), firstErr); err != nil {
			return nil, err
		}
	}
	if len(b.Readings) == 0 {
		return nil, nil
	}
	return b, nil
}

// ReadingRule returns the feed rules of a device's readings (CheckReading
// over its definitions), for readings that passed
// protocol.ValidateReading; an error is transient. With
// Options.SharedModel, the first reading the cached definitions would
// reject makes the rule read them again (another replica may have changed
// them) before it decides; if the store cannot be read then, the cached
// definitions decide (and the next such reading tries again). The gateway
// home checks its children's readings with it too.
func (s *Service) ReadingRule(ctx context.Context, deviceID string) (func(protocol.Reading) *protocol.Error, error) {
	feeds, err := s.feeds.FeedsOf(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	refreshed := !s.shared
	return func(r protocol.Reading) *protocol.Error {
		e := CheckReading(feeds, r)
		if e != nil && !refreshed {
			if f, err := s.feeds.RefreshFeeds(ctx, deviceID); err == nil {
				refreshed = true
				feeds, e = f, CheckReading(f, r)
			}
		}
		return e
	}, nil
}

// CheckReading applies the feed rules to a reading that passed
// protocol.ValidateReading:
//   - a reading for a removed feed is rejected;
//   - once a device registered any feed, a reading for a feed it did not
//     register is rejected;
//   - a reading for a registered feed must match its data type.
//
// A device that never registered a feed keeps feeds auto-created from its
// telemetry.
func CheckReading(feeds map[string]outpost.Feed, r protocol.Reading) *protocol.Error {
	if len(feeds) == 0 {
		return nil
	}
	f, ok := feeds[r.Feed]
	if ok && f.Removed {
		return &protocol.Error{Code: protocol.CodeUnknownFeed, Message: "feed " + r.Feed + " was removed"}
	}
	if !ok {
		if !hasActive(feeds) {
			return nil // every registered feed was removed: back to auto-creation
		}
		return &protocol.Error{Code: protocol.CodeUnknownFeed, Message: "feed " + r.Feed + " is not registered"}
	}
	if err := protocol.ValidateTyped(f.DataType, r.Value); err != nil {
		return &protocol.Error{Code: err.Code, Message: "feed " + r.Feed + ": " + err.Message}
	}
	return nil
}

func hasActive(feeds map[string]outpost.Feed) bool {
	for _, f := range feeds {
		if !f.Removed {
			return true
		}
	}
	return false
}

// Readings returns stored readings (ENOTFOUND for an unknown device).
func (s *Service) Readings(ctx context.Context, f outpost.ReadingFilter) ([]outpost.Reading, error) {
	return s.db.Readings(ctx, f)
}

// EachReading calls fn for each reading Readings would return, in order,
// as the store reads them.
func (s *Service) EachReading(ctx context.Context, f outpost.ReadingFilter, fn func(outpost.Reading) error) error {
	return s.db.EachReading(ctx, f, fn)
}

// Feeds returns the feeds a device has readings or definitions for
// (ENOTFOUND for an unknown device).
func (s *Service) Feeds(ctx context.Context, id string) ([]string, error) {
	if _, err := s.db.Device(ctx, id); err != nil {
		return nil, err
	}
	return s.db.Feeds(ctx, id)
}

// Allow reports whether a device may send n more readings now, and takes
// them: the per-device rate limit, for another home of readings (a
// gateway's, which counts its children's readings against the gateway).
// A refusal is counted like the service's own.
func (s *Service) Allow(deviceID string, n int) bool {
	if s.limiter.allow(deviceID, n, time.Now()) {
		return true
	}
	if s.admit {
		if s.stats != nil {
			s.stats.rateOverrun.Inc()
		}
		return true // Options.AdmitOverLimit
	}
	if s.stats != nil {
		s.stats.rateLimited.Inc()
	}
	return false
}
