package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/fleet"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// events subscribes with f and returns the channel the handler feeds.
func events(t *testing.T, c *fleet.Client, f fleet.StreamFilter) (*fleet.Subscription, <-chan fleet.Event) {
	t.Helper()
	ch := make(chan fleet.Event, 1000)
	sub, err := c.Subscribe(testCtx(t), f, func(e fleet.Event) { ch <- e })
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(func() { sub.Close() })
	return sub, ch
}

func nextEvent(t *testing.T, ch <-chan fleet.Event) fleet.Event {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return fleet.Event{}
}

func noEvent(t *testing.T, ch <-chan fleet.Event, d time.Duration) {
	t.Helper()
	select {
	case e := <-ch:
		t.Fatalf("unexpected event %s %s", e.Kind, e.Data)
	case <-time.After(d):
	}
}

func TestSubscribeFilters(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p)
	ctx := testCtx(t)
	a := p.CreateDevice(t, "a")
	b := p.CreateDevice(t, "b")
	_, onlyA := events(t, f, fleet.StreamFilter{DeviceIDs: []string{a.ID}})
	_, presence := events(t, f, fleet.StreamFilter{Kinds: []string{fleet.KindPresence}})
	_, telemetry := events(t, f, fleet.StreamFilter{Kinds: []string{fleet.KindTelemetry}, DeviceIDs: []string{a.ID, b.ID}})

	da := connect(t, a.URL, nil)
	e := nextEvent(t, onlyA)
	pr, err := e.Presence()
	if err != nil || e.ID == "" || e.DeviceID != a.ID || pr.DeviceID != a.ID || !pr.Online || pr.At.IsZero() {
		t.Fatalf("first event of a = %+v (%+v, %v), want a online", e, pr, err)
	}
	if _, err := e.Telemetry(); err == nil {
		t.Fatal("a presence event decoded as telemetry")
	}
	db := connect(t, b.URL, nil)
	db.Add("x", 1)
	if err := db.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	da.AddAt("temperature", 20.5, time.UnixMilli(1_700_000_000_000))
	if err := da.Publish(ctx); err != nil {
		t.Fatal(err)
	}

	e = nextEvent(t, onlyA)
	tel, err := e.Telemetry()
	if err != nil || e.DeviceID != a.ID || len(tel.Readings) != 1 || tel.Readings[0].Feed != "temperature" ||
		string(tel.Readings[0].Value) != "20.5" || tel.Readings[0].TS != 1_700_000_000_000 || tel.BatchID == "" {
		t.Fatalf("second event of a = %s %s (%+v, %v), want its temperature", e.Kind, e.Data, tel, err)
	}
	for _, want := range []string{b.ID, a.ID} {
		e := nextEvent(t, telemetry)
		if e.Kind != fleet.KindTelemetry || e.DeviceID != want {
			t.Fatalf("telemetry stream got %s of %s, want telemetry of %s", e.Kind, e.DeviceID, want)
		}
	}
	seen := map[string]bool{}
	for range 2 {
		e := nextEvent(t, presence)
		pr, err := e.Presence()
		if err != nil || !pr.Online {
			t.Fatalf("presence stream got %s %s", e.Kind, e.Data)
		}
		seen[e.DeviceID] = true
	}
	if !seen[a.ID] || !seen[b.ID] {
		t.Fatalf("presence stream saw %v, want both devices online", seen)
	}
	da.Close()
	e = nextEvent(t, presence)
	if pr, err := e.Presence(); err != nil || pr.DeviceID != a.ID || pr.Online || pr.Reason == "" {
		t.Fatalf("after a disconnects: %s, want a offline with a reason", e.Data)
	}
	noEvent(t, presence, 100*time.Millisecond)
}

// proxy forwards TCP connections to target until cut, and refuses them
// while paused: a network failure between the client and the platform.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	paused bool
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.pause()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.paused {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		p.wg.Go(func() { pipe(c, up) })
		p.wg.Go(func() { pipe(up, c) })
	}
}

// pause cuts every connection and refuses new ones until resume.
func (p *proxy) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *proxy) resume() {
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
}

// A subscription cut off from the platform reconnects and resumes after the
// last event it delivered: nothing lost, nothing twice.
func TestSubscribeResumesAfterDisconnect(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	px := startProxy(t, strings.TrimPrefix(p.HTTPURL(), "http://"))
	ctx := testCtx(t)
	f, err := fleet.Dial(ctx, px.URL(), p.AdminToken(), fleet.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	d := p.CreateDevice(t, "d")
	dev := connect(t, d.URL, nil)
	sub, ch := events(t, f, fleet.StreamFilter{Kinds: []string{fleet.KindTelemetry}})

	publish := func(n int) {
		t.Helper()
		dev.Add("n", n)
		if err := dev.Publish(ctx); err != nil {
			t.Fatal(err)
		}
	}
	value := func(e fleet.Event) string {
		t.Helper()
		tel, err := e.Telemetry()
		if err != nil || len(tel.Readings) != 1 {
			t.Fatalf("event %s %s is not one reading", e.Kind, e.Data)
		}
		return string(tel.Readings[0].Value)
	}
	publish(0)
	first := nextEvent(t, ch)
	if value(first) != "0" || sub.LastID() != first.ID {
		t.Fatalf("first event %s, LastID %q", first.Data, sub.LastID())
	}

	px.pause()
	for i := 1; i <= 5; i++ {
		publish(i)
	}
	noEvent(t, ch, 300*time.Millisecond)
	px.resume()
	for want := 1; want <= 5; want++ {
		e := nextEvent(t, ch)
		if e.Kind == fleet.KindGap {
			t.Fatalf("gap %s: the platform still held the missed events", e.Data)
		}
		if got := value(e); got != fmt.Sprint(want) {
			t.Fatalf("after reconnecting got reading %s, want %d", got, want)
		}
	}
	publish(6)
	if got := value(nextEvent(t, ch)); got != "6" {
		t.Fatalf("live after resuming: %s, want 6", got)
	}
	noEvent(t, ch, 100*time.Millisecond)
	if sub.Err() != nil {
		t.Fatalf("subscription ended: %v", sub.Err())
	}

	// A new subscription can resume from a saved id too.
	_, again := events(t, f, fleet.StreamFilter{Kinds: []string{fleet.KindTelemetry}, After: first.ID})
	for want := 1; want <= 6; want++ {
		if got := value(nextEvent(t, again)); got != fmt.Sprint(want) {
			t.Fatalf("resumed from %s: got %s, want %d", first.ID, got, want)
		}
	}
}

// A subscription survives a restart of the platform. The restarted
// platform has lost the events it held, so the subscription reports a gap
// of unknown size before the first new event.
func TestSubscribeReconnectsAfterRestart(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p, fleet.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
	ctx := testCtx(t)
	d := p.CreateDevice(t, "d")
	dev := connect(t, d.URL, nil)
	sub, ch := events(t, f, fleet.StreamFilter{Kinds: []string{fleet.KindTelemetry}})

	// Enough events that the restarted platform's ids stay below the last
	// one seen for the whole test.
	for i := range 30 {
		dev.Add("n", i)
		if err := dev.Publish(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for range 30 {
		nextEvent(t, ch)
	}
	before := sub.LastID()

	p.Restart(t)

	// Events published before the subscription is back are lost, so keep
	// publishing until one arrives.
	var got []fleet.Event
	deadline := time.After(10 * time.Second)
	for i := 100; len(got) == 0 || got[len(got)-1].Kind == fleet.KindGap; i++ {
		dev.Add("n", i)
		if err := dev.Publish(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-ch:
			got = append(got, e)
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no telemetry within 10s of the restart (got %v)", got)
		}
	}
	for len(ch) > 0 {
		got = append(got, <-ch)
	}
	if len(got) < 2 || got[0].Kind != fleet.KindGap {
		t.Fatalf("after the restart got %v, want a gap first", got)
	}
	if g, err := got[0].Gap(); err != nil || !g.Unknown {
		t.Fatalf("gap %s (%v), want one of unknown size", got[0].Data, err)
	}
	for _, e := range got[1:] {
		if e.Kind != fleet.KindTelemetry || e.DeviceID != d.ID {
			t.Fatalf("after the gap got %s %s, want telemetry of %s", e.Kind, e.Data, d.ID)
		}
	}
	if sub.LastID() == before || sub.Err() != nil {
		t.Fatalf("LastID %q (was %q), Err %v", sub.LastID(), before, sub.Err())
	}
}

func TestSubscribeEnds(t *testing.T) {
	t.Parallel()
	p := outposttest.Start(t)
	f := dial(t, p)
	d := p.CreateDevice(t, "d")
	dev := connect(t, d.URL, nil)
	ctx := testCtx(t)

	// Close waits for a running handler and stops further calls.
	inHandler, release := make(chan struct{}), make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before Close, which waits for the handler
	var mu sync.Mutex
	calls := 0
	sub, err := f.Subscribe(ctx, fleet.StreamFilter{Kinds: []string{fleet.KindTelemetry}}, func(fleet.Event) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 1 {
			close(inHandler)
			<-release
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		dev.Add("n", i)
		if err := dev.Publish(ctx); err != nil {
			t.Fatal(err)
		}
	}
	<-inHandler
	closed := make(chan struct{})
	go func() { sub.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while the handler was running")
	case <-time.After(100 * time.Millisecond):
	}
	unblock()
	<-closed
	<-sub.Done()
	mu.Lock()
	if calls != 1 {
		t.Errorf("handler ran %d times, want once: Close stops delivery", calls)
	}
	mu.Unlock()
	if !errors.Is(sub.Err(), fleet.ErrClosed) {
		t.Fatalf("Err after Close = %v, want ErrClosed", sub.Err())
	}

	// Cancelling the context ends it, even from inside the handler.
	cctx, cancel := context.WithCancel(ctx)
	sub, err = f.Subscribe(cctx, fleet.StreamFilter{}, func(fleet.Event) { cancel() })
	if err != nil {
		t.Fatal(err)
	}
	dev.Add("n", 1)
	if err := dev.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("subscription still running after its context was cancelled")
	}
	if !errors.Is(sub.Err(), context.Canceled) {
		t.Fatalf("Err after cancel = %v, want context.Canceled", sub.Err())
	}

	// Closing the client ends its subscriptions.
	f2, err := fleet.Dial(ctx, p.HTTPURL(), p.AdminToken())
	if err != nil {
		t.Fatal(err)
	}
	sub, err = f2.Subscribe(ctx, fleet.StreamFilter{}, func(fleet.Event) {})
	if err != nil {
		t.Fatal(err)
	}
	if sub.Err() != nil {
		t.Fatalf("Err of a running subscription = %v", sub.Err())
	}
	f2.Close()
	select {
	case <-sub.Done():
	default:
		t.Fatal("subscription still running after Client.Close returned")
	}
	if !errors.Is(sub.Err(), fleet.ErrClosed) {
		t.Fatalf("Err after Client.Close = %v, want ErrClosed", sub.Err())
	}
	if _, err := f.Subscribe(ctx, fleet.StreamFilter{}, nil); err == nil {
		t.Fatal("Subscribe without a handler succeeded")
	}
}

// The server-sent-events details the platform does not exercise today
// (multi-line data, comments, gaps, restarts, refusal) against a scripted
// stream server.
func TestSubscribeWireFormat(t *testing.T) {
	t.Parallel()
	script := []struct {
		wantLastID string
		body       string
		status     int
	}{
		{"", "retry: 10\n\n: ping\n\nid: 7\nevent: telemetry\ndata: {\"device_id\":\"d-1\",\ndata: \"readings\":[]}\n\n" +
			"data: no event name\n\nevent: presence\n\n", 200},
		{"7", "event: gap\ndata: {\"missed\":3}\n\nid: 11\nevent: presence\ndata:{\"device_id\":\"d-2\",\"online\":true}\r\n\r\n", 200},
		{"11", "", http.StatusServiceUnavailable},
		{"11", "id: 2\nevent: presence\ndata: {\"device_id\":\"d-3\"}\n\n", 200},
		{"2", `{"error":{"code":"unauthorized","message":"token revoked"}}`, http.StatusUnauthorized},
	}
	var mu sync.Mutex
	step := 0
	var stepErrs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/devices" {
			w.Write([]byte(`{"devices":[]}`))
			return
		}
		mu.Lock()
		i := step
		step++
		mu.Unlock()
		if i >= len(script) {
			w.WriteHeader(http.StatusGone)
			return
		}
		s := script[i]
		if got := r.Header.Get("Last-Event-ID"); got != s.wantLastID {
			mu.Lock()
			stepErrs = append(stepErrs, fmt.Sprintf("connection %d: Last-Event-ID %q, want %q", i, got, s.wantLastID))
			mu.Unlock()
		}
		if q := r.URL.Query(); q.Get("device") != "d-1,d-2,d-3" || q.Get("kind") != "telemetry,presence" {
			mu.Lock()
			stepErrs = append(stepErrs, "query "+r.URL.RawQuery)
			mu.Unlock()
		}
		if s.status == 200 {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		w.WriteHeader(s.status)
		io.WriteString(w, s.body)
	}))
	defer srv.Close()

	ctx := testCtx(t)
	f, err := fleet.Dial(ctx, srv.URL, "t", fleet.WithReconnectBackoff(5*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ch := make(chan fleet.Event, 10)
	sub, err := f.Subscribe(ctx, fleet.StreamFilter{DeviceIDs: []string{"d-1", "d-2", "d-3"}, Kinds: []string{"telemetry", "presence"}},
		func(e fleet.Event) { ch <- e })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription did not end after the server refused it")
	}
	if !errors.Is(sub.Err(), fleet.ErrUnauthorized) {
		t.Fatalf("Err = %v, want ErrUnauthorized", sub.Err())
	}
	close(ch)
	var got []string
	for e := range ch {
		got = append(got, fmt.Sprintf("%s|%s|%s|%s", e.ID, e.Kind, e.DeviceID, e.Data))
	}
	want := []string{
		"7|telemetry|d-1|{\"device_id\":\"d-1\",\n\"readings\":[]}",
		"|message||no event name",
		"|gap||{\"missed\":3}",
		"11|presence|d-2|{\"device_id\":\"d-2\",\"online\":true}",
		"|gap||{\"missed\":0,\"unknown\":true}",
		"2|presence|d-3|{\"device_id\":\"d-3\"}",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if sub.LastID() != "2" {
		t.Fatalf("LastID = %q, want 2", sub.LastID())
	}
	mu.Lock()
	for _, e := range stepErrs {
		t.Error(e)
	}
	mu.Unlock()
	gap := fleet.Event{Kind: fleet.KindGap, Data: []byte(`{"missed":3}`)}
	if g, err := gap.Gap(); err != nil || g.Missed != 3 || g.Unknown {
		t.Fatalf("Gap() = %+v, %v", g, err)
	}

	// A refused first connection is Subscribe's error.
	if _, err := f.Subscribe(ctx, fleet.StreamFilter{}, func(fleet.Event) {}); err == nil {
		t.Fatal("Subscribe to a refusing server succeeded")
	}
}
