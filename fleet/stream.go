package fleet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kinds of stream events. The platform may stream other kinds; Subscribe
// accepts any kind name in StreamFilter.Kinds and delivers any kind.
const (
	// KindTelemetry: readings a device sent, once stored (see
	// Event.Telemetry).
	KindTelemetry = "telemetry"
	// KindPresence: a device came online or went offline (see
	// Event.Presence).
	KindPresence = "presence"
	// KindEvent: an event a device reported (see Event.DeviceEvent).
	KindEvent = "event"
	// KindNotification: a notification a device sent to applications (see
	// Event.DeviceEvent).
	KindNotification = "notification"
	// KindGap: events were lost (see Event.Gap). Always delivered,
	// whatever the filter.
	KindGap = "gap"
)

// streamIdleTimeout is how long a stream may stay silent before it is
// considered dead and reconnected; the platform sends a keep-alive comment
// every 15 seconds.
const streamIdleTimeout = 45 * time.Second

// maxEventBytes bounds one line of the stream.
const maxEventBytes = 64 << 20

// StreamFilter selects the events of a subscription.
type StreamFilter struct {
	// DeviceIDs keeps only the events of these devices; empty means every
	// device.
	DeviceIDs []string
	// Kinds keeps only events of these kinds (KindTelemetry, KindPresence,
	// …); empty means every kind.
	Kinds []string
	// After resumes a stream after the event with this id (an Event.ID or
	// Subscription.LastID kept from earlier): the platform first replays
	// the newer events it still holds and reports older ones it no longer
	// has as a gap. Empty means: from now on.
	After string
}

// Event is one event of the platform's live stream.
type Event struct {
	// ID identifies the event for resuming (StreamFilter.After); empty for
	// gap events. Treat it as opaque.
	ID string
	// Kind is the event's kind, such as KindTelemetry.
	Kind string
	// DeviceID is the device the event is about, empty if none.
	DeviceID string
	// Data is the event's JSON payload.
	Data json.RawMessage
}

// Telemetry is the payload of a KindTelemetry event: one stored batch.
type Telemetry struct {
	DeviceID string `json:"device_id"`
	// BatchID is the id the device gave the batch, if any.
	BatchID  string    `json:"batch_id,omitempty"`
	Readings []Reading `json:"readings"`
}

// Presence is the payload of a KindPresence event.
type Presence struct {
	DeviceID string    `json:"device_id"`
	Online   bool      `json:"online"`
	At       time.Time `json:"at"`
	// Reason says why a device went offline ("disconnected", "keepalive
	// timeout", "taken over", …); empty when it came online.
	Reason string `json:"reason,omitempty"`
}

// Gap is the payload of a KindGap event: events the subscription will
// never see.
type Gap struct {
	// Missed is how many events were lost, as counted by the platform: ones
	// it no longer held when the subscription resumed, or ones it dropped
	// because the subscriber read too slowly.
	Missed uint64 `json:"missed"`
	// Unknown is set when events may have been lost but nobody counted
	// them: the platform restarted and its replay buffer went with it.
	// Missed is then 0.
	Unknown bool `json:"unknown,omitempty"`
}

// Telemetry decodes a KindTelemetry event.
func (e Event) Telemetry() (*Telemetry, error) {
	var t Telemetry
	return &t, e.decode(KindTelemetry, &t)
}

// Presence decodes a KindPresence event.
func (e Event) Presence() (*Presence, error) {
	var p Presence
	return &p, e.decode(KindPresence, &p)
}

// Gap decodes a KindGap event.
func (e Event) Gap() (*Gap, error) {
	var g Gap
	return &g, e.decode(KindGap, &g)
}

func (e Event) decode(kind string, v any) error {
	if e.Kind != kind {
		return fmt.Errorf("fleet: event %q is a %s event, not %s", e.ID, e.Kind, kind)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("fleet: decode %s event %q: %w", kind, e.ID, err)
	}
	return nil
}

// restartGap is the gap reported when the event ids start again from a
// smaller number: the platform restarted.
var restartGap = json.RawMessage(`{"missed":0,"unknown":true}`)

// Subscription is a live stream of events handed to a handler. It is safe
// for concurrent use.
type Subscription struct {
	c       *Client
	filter  StreamFilter
	handler func(Event)
	cancel  context.CancelCauseFunc
	done    chan struct{}
	err     error // why it ended; written before done is closed

	mu     sync.Mutex
	lastID string
	retry  time.Duration // asked for by the platform
}

// Subscribe streams the platform's events that pass f to handler, until
// ctx ends, the subscription is closed, or the client is closed. It
// returns once the stream is open, so every event from then on reaches
// the handler; it returns an error if the stream cannot be opened
// (ErrUnauthorized, ErrClosed, a network error, …).
//
// The handler runs on the subscription's own goroutine, one event at a
// time, in the order of the stream (the worker pool of CallAsync is not
// used: it would reorder events). A slow handler delays only its own
// subscription; one so slow that the platform's buffer overflows loses
// events, and is told so by a KindGap event.
//
// When the connection breaks, the subscription reconnects with backoff
// (WithReconnectBackoff) and asks the platform to resume after the last
// event it delivered; the platform replays what it still holds and sends
// a KindGap event for the rest. A restarted platform cannot replay: the
// subscription reports a KindGap event with Unknown set as soon as it
// notices the restart, which is when the first event after it arrives. The
// platform refusing the subscription for good (a 4xx status such as
// ErrUnauthorized) ends it; see Err.
//
// To end a subscription from inside its handler, cancel ctx: Close waits
// for the handler to return and so must not be called from it.
func (c *Client) Subscribe(ctx context.Context, f StreamFilter, handler func(Event)) (*Subscription, error) {
	if handler == nil {
		return nil, errors.New("fleet: Subscribe needs a handler")
	}
	if c.lifetime.Err() != nil {
		return nil, ErrClosed
	}
	f.DeviceIDs = append([]string(nil), f.DeviceIDs...)
	f.Kinds = append([]string(nil), f.Kinds...)
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(c.lifetime, func() { cancel(ErrClosed) })
	s := &Subscription{c: c, filter: f, handler: handler, cancel: cancel, done: make(chan struct{}), lastID: f.After}
	conn, err := s.connect(ctx)
	if err == nil {
		c.mu.RLock()
		if c.closed {
			err = ErrClosed
			conn.close()
		} else {
			c.subsWG.Add(1)
		}
		c.mu.RUnlock()
	}
	if err != nil {
		stop()
		cancel(err)
		if cause := context.Cause(ctx); cause == ErrClosed {
			err = ErrClosed
		}
		return nil, err
	}
	go func() {
		defer c.subsWG.Done()
		defer stop()
		s.run(ctx, conn)
	}()
	return s, nil
}

// Close ends the subscription and waits until its handler has returned
// for the last time. Err then reports ErrClosed. It must not be called from
// the handler.
func (s *Subscription) Close() error {
	s.cancel(ErrClosed)
	<-s.done
	return nil
}

// Done is closed when the subscription has ended and its handler will not
// run again.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns nil while the subscription runs, and then why it ended:
// ErrClosed (Close of the subscription or the client), the context's
// error, or the platform's refusal (an *APIError, e.g. ErrUnauthorized).
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// LastID returns the id of the last event delivered with an id, or
// StreamFilter.After before that. A later Subscribe with After set to it
// resumes where this one stopped.
func (s *Subscription) LastID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastID
}

func (s *Subscription) run(ctx context.Context, conn *sseConn) {
	defer close(s.done)
	log := s.c.log.With("filter_devices", len(s.filter.DeviceIDs), "filter_kinds", s.filter.Kinds)
	backoff := s.c.minBackoff
	for {
		err := s.read(ctx, conn)
		if ctx.Err() != nil {
			s.err = context.Cause(ctx)
			return
		}
		log.Warn("fleet: event stream lost, reconnecting", "error", err, "last_event_id", s.LastID())
		for {
			s.mu.Lock()
			wait := max(backoff, s.retry)
			s.mu.Unlock()
			wait = wait*4/5 + rand.N(wait*2/5+1) // ±20% so a fleet of clients spreads out
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				s.err = context.Cause(ctx)
				return
			case <-t.C:
			}
			backoff = min(backoff*2, s.c.maxBackoff)
			conn, err = s.connect(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				s.err = context.Cause(ctx)
				return
			}
			if permanent(err) {
				log.Error("fleet: event stream refused, giving up", "error", err)
				s.err = err
				return
			}
			log.Warn("fleet: event stream reconnect failed", "error", err, "retry_in", backoff)
		}
		log.Info("fleet: event stream reconnected", "last_event_id", s.LastID())
		backoff = s.c.minBackoff
	}
}

// permanent reports whether the platform refused the stream in a way that
// retrying cannot fix.
func permanent(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status >= 400 && ae.Status < 500 && ae.Status != http.StatusRequestTimeout && ae.Status != http.StatusTooManyRequests
	}
	return errors.Is(err, errNotEventStream)
}

var errNotEventStream = errors.New("fleet: stream: the server did not answer with an event stream")

type sseConn struct {
	body   io.ReadCloser
	cancel context.CancelFunc
}

func (c *sseConn) close() {
	c.cancel()
	c.body.Close()
}

func (s *Subscription) connect(ctx context.Context) (*sseConn, error) {
	u := *s.c.base
	u.Path += "/api/v1/stream"
	q := url.Values{}
	if len(s.filter.DeviceIDs) > 0 {
		q.Set("device", strings.Join(s.filter.DeviceIDs, ","))
	}
	if len(s.filter.Kinds) > 0 {
		q.Set("kind", strings.Join(s.filter.Kinds, ","))
	}
	u.RawQuery = q.Encode()
	cctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(cctx, "GET", u.String(), nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("fleet: stream: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+s.c.token)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if id := s.LastID(); id != "" {
		req.Header.Set("Last-Event-ID", id)
	}
	resp, err := s.c.hc.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("fleet: stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("fleet: stream: %w", apiError(resp.StatusCode, raw))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("%w (content type %q)", errNotEventStream, ct)
	}
	return &sseConn{body: resp.Body, cancel: cancel}, nil
}

// read parses the server-sent events of one connection and hands them to
// the handler, until the connection ends.
func (s *Subscription) read(ctx context.Context, conn *sseConn) error {
	defer conn.close()
	idle := time.AfterFunc(streamIdleTimeout, conn.cancel)
	defer idle.Stop()

	// Ids restarting from a smaller number on a resumed stream mean the
	// platform restarted; only the first id of a connection can tell.
	resumedFrom, resumed := parseID(s.LastID())
	var (
		kind      string
		data      []byte
		hasData   bool
		id        string
		hasID     bool
		firstSeen bool
	)
	sc := bufio.NewScanner(conn.body)
	sc.Buffer(make([]byte, 0, 16<<10), maxEventBytes)
	for sc.Scan() {
		idle.Reset(streamIdleTimeout)
		line := sc.Bytes()
		if len(line) > 0 {
			name, value := line, []byte(nil)
			if i := bytes.IndexByte(line, ':'); i >= 0 {
				name, value = line[:i], line[i+1:]
				value = bytes.TrimPrefix(value, []byte(" "))
			}
			switch string(name) {
			case "": // a comment, such as the keep-alive ": ping"
			case "event":
				kind = string(value)
			case "data":
				data = append(data, value...)
				data = append(data, '\n')
				hasData = true
			case "id":
				if bytes.IndexByte(value, 0) < 0 {
					id, hasID = string(value), true
				}
			case "retry":
				if ms, err := strconv.ParseUint(string(value), 10, 32); err == nil {
					s.mu.Lock()
					s.retry = time.Duration(ms) * time.Millisecond
					s.mu.Unlock()
				}
			}
			continue
		}
		// A blank line dispatches the event.
		if !hasData {
			kind, hasID = "", false
			continue
		}
		e := Event{Kind: kind, Data: json.RawMessage(data[:len(data)-1])}
		if e.Kind == "" {
			e.Kind = "message"
		}
		if hasID {
			e.ID = id
		}
		var head struct {
			DeviceID string `json:"device_id"`
		}
		if json.Unmarshal(e.Data, &head) == nil {
			e.DeviceID = head.DeviceID
		}
		kind, data, hasData, hasID = "", nil, false, false
		if ctx.Err() != nil {
			return ctx.Err()
		}
		idle.Stop() // the handler's time is not the stream's silence
		if e.ID != "" && !firstSeen {
			firstSeen = true
			if n, ok := parseID(e.ID); ok && resumed && n <= resumedFrom {
				s.handler(Event{Kind: KindGap, Data: restartGap})
			}
		}
		if e.ID != "" {
			s.mu.Lock()
			s.lastID = e.ID
			s.mu.Unlock()
		}
		s.handler(e)
		idle.Reset(streamIdleTimeout)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

func parseID(id string) (uint64, bool) {
	n, err := strconv.ParseUint(id, 10, 64)
	return n, err == nil
}
