package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/mochi/packets"
	"github.com/outpost-iot/outpost/internal/outpost"

	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// anyPassword accepts every device.
type anyPassword struct{}

func (anyPassword) AuthenticateDevice(context.Context, string, string) error { return nil }

// heldHandler is an AsyncHandler that takes every telemetry message and
// finishes it only when the test says so; the messages it holds are in
// arrival order.
type heldHandler struct {
	mu      sync.Mutex
	held    []held
	started chan struct{} // a token per message taken
}

type held struct {
	batchID string
	done    func(error)
}

func newHeldHandler() *heldHandler { return &heldHandler{started: make(chan struct{}, 100_000)} }

func (h *heldHandler) DeviceConnected(string, outpost.SessionID)            {}
func (h *heldHandler) DeviceDisconnected(string, outpost.SessionID, string) {}
func (h *heldHandler) HandleMessage(context.Context, string, string, []byte) error {
	return nil
}

func (h *heldHandler) StartMessage(_ context.Context, _, kind string, payload []byte, done func(error)) (bool, error) {
	if kind != protocol.KindTelemetry {
		return false, nil
	}
	t, err := protocol.DecodeTelemetry(payload)
	if err != nil {
		return false, err
	}
	h.mu.Lock()
	h.held = append(h.held, held{t.ID, done})
	h.mu.Unlock()
	h.started <- struct{}{}
	return true, nil
}

// release finishes the oldest n held messages with err.
func (h *heldHandler) release(n int, err error) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ids []string
	for _, m := range h.held[:n] {
		m.done(err)
		ids = append(ids, m.batchID)
	}
	h.held = h.held[n:]
	return ids
}

// answersTime answers the time requests of devices, as the platform does
// on every connection: the device SDK checks it before it sends anything.
type answersTime struct {
	broker.AsyncHandler
	b *broker.Broker
}

func (h *answersTime) StartMessage(ctx context.Context, id, kind string, payload []byte, done func(error)) (bool, error) {
	if kind == protocol.KindTime {
		req, err := protocol.DecodeTimeRequest(payload)
		if err != nil {
			return false, err
		}
		reply, _ := json.Marshal(protocol.TimeReply{ID: req.ID, Sent: req.Sent, T: time.Now().UnixMilli()})
		return false, h.b.PublishToDevice(id, protocol.KindTime, reply)
	}
	return h.AsyncHandler.StartMessage(ctx, id, kind, payload, done)
}

func startBroker(t *testing.T, h broker.AsyncHandler) *broker.Broker {
	t.Helper()
	at := &answersTime{AsyncHandler: h}
	b, err := broker.New(broker.Config{Addr: "127.0.0.1:0", Logger: outposttest.Logger(t)}, anyPassword{}, at)
	if err != nil {
		t.Fatal(err)
	}
	at.b = b
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func connect(t *testing.T, b *broker.Broker, id string, opts ...device.Option) *device.Client {
	t.Helper()
	c, err := device.New("mqtt://"+id+":secret@"+b.Addr().String(), append([]device.Option{device.WithMemoryOutbox()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func waitTokens(t *testing.T, ch <-chan struct{}, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for i := 0; i < n; i++ {
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%d of %d messages reached the handler", i, n)
		}
	}
}

// The broker keeps reading a connection while its messages wait for their
// commit, and acknowledges each only when the handler is done: Publish
// does not return before, and the device holds the readings until then.
func TestAcknowledgedOnlyWhenDone(t *testing.T) {
	h := newHeldHandler()
	b := startBroker(t, h)
	c := connect(t, b, "dev-held", device.WithMaxBatch(1), device.WithMaxInFlight(8))
	for i := range 20 {
		if err := c.Add("n", i); err != nil {
			t.Fatal(err)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Publish(context.Background()) }()

	// Eight messages reach the handler though none is acknowledged yet.
	waitTokens(t, h.started, 8)
	select {
	case err := <-errc:
		t.Fatalf("Publish returned (%v) before any message was committed", err)
	default:
	}
	if n := c.Pending(); n != 20 {
		t.Errorf("Pending = %d while nothing is acknowledged, want 20", n)
	}
	var order []string
	for released := 0; released < 20; {
		order = append(order, h.release(1, nil)...)
		released++
		if released <= 20-8 {
			waitTokens(t, h.started, 1) // the window moves on by one
		}
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Publish did not return after every message was done")
	}
	if n := c.Pending(); n != 0 {
		t.Errorf("Pending = %d after Publish, want 0", n)
	}
	checkSequence(t, order, 20)
}

// checkSequence checks that n batch ids PREFIX-SEQ arrived once each with
// increasing sequence numbers (the SDK's outbox numbers every record, so
// the numbers of consecutive batches need not be consecutive).
func checkSequence(t *testing.T, ids []string, n int) {
	t.Helper()
	if len(ids) != n {
		t.Fatalf("%d batches, want %d", len(ids), n)
	}
	prev := 0
	for i, id := range ids {
		k := strings.LastIndexByte(id, '-')
		seq, err := strconv.Atoi(id[k+1:])
		if err != nil || seq <= prev {
			t.Fatalf("batch %d is %q after sequence number %d (order lost)", i, id, prev)
		}
		prev = seq
	}
}

// finishingHandler finishes messages in arrival order from its own
// goroutine, like the ingest writer; every overloadEvery-th message (when
// set) is refused with ErrOverloaded instead of taken.
type finishingHandler struct {
	heldHandler
	overloadEvery int
	n             int
	mu2           sync.Mutex
	taken         map[string]int
	order         []string
	refused       int
}

func (h *finishingHandler) StartMessage(ctx context.Context, id, kind string, payload []byte, done func(error)) (bool, error) {
	h.mu2.Lock()
	h.n++
	if h.overloadEvery > 0 && h.n%h.overloadEvery == 0 {
		h.refused++
		h.mu2.Unlock()
		return false, fmt.Errorf("queue: %w", broker.ErrOverloaded)
	}
	h.mu2.Unlock()
	t, err := protocol.DecodeTelemetry(payload)
	if err != nil {
		return false, err
	}
	h.mu2.Lock()
	h.taken[t.ID]++
	h.order = append(h.order, t.ID)
	h.mu2.Unlock()
	return h.heldHandler.StartMessage(ctx, id, kind, payload, done)
}

// Many messages in flight on one connection, finished asynchronously:
// they reach the handler in the device's order and none is lost; with
// some refused as overloaded (0x97) the device backs off and resends them,
// and each batch is taken exactly once.
func TestWindowOrderAndBackPressure(t *testing.T) {
	for _, every := range []int{0, 7} {
		t.Run(fmt.Sprintf("overload-every-%d", every), func(t *testing.T) {
			h := &finishingHandler{heldHandler: *newHeldHandler(), overloadEvery: every, taken: map[string]int{}}
			b := startBroker(t, h)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // the "writer": finishes what is held, in order
				defer wg.Done()
				for {
					select {
					case <-h.started:
						h.release(1, nil)
					case <-stop:
						return
					}
				}
			}()
			defer func() { close(stop); wg.Wait() }()

			n := 600
			if every > 0 {
				n = 200 // each refusal costs the device a pause
			}
			c := connect(t, b, "dev-window", device.WithMaxBatch(1), device.WithMaxInFlight(32))
			for i := range n {
				if err := c.Add("n", i); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := c.Publish(ctx); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			h.mu2.Lock()
			defer h.mu2.Unlock()
			if every > 0 && h.refused == 0 {
				t.Fatal("no message was refused as overloaded")
			}
			if len(h.taken) != n {
				t.Fatalf("%d distinct batches taken, want %d", len(h.taken), n)
			}
			for id, k := range h.taken {
				if k != 1 {
					t.Errorf("batch %s taken %d times", id, k)
				}
			}
			if every == 0 {
				checkSequence(t, h.order, n)
			}
			if st := b.Stats(); every > 0 && st.Overloaded.Load() != int64(h.refused) {
				t.Errorf("broker counted %d overloaded, handler refused %d", st.Overloaded.Load(), h.refused)
			}
		})
	}
}

// syncSeenHandler is a heldHandler that also reports each message it
// handles at once (kinds other than telemetry).
type syncSeenHandler struct {
	*heldHandler
	seen chan string
}

func (h syncSeenHandler) StartMessage(ctx context.Context, id, kind string, payload []byte, done func(error)) (bool, error) {
	if kind != protocol.KindTelemetry {
		h.seen <- kind
		return false, nil
	}
	return h.heldHandler.StartMessage(ctx, id, kind, payload, done)
}

// PUBACKs follow the order the messages arrived (MQTT 5 §4.6), also when a
// message handled at once follows one still waiting for its commit: the
// later PUBACK waits for the earlier, and once the commit is done both
// reach the wire in arrival order.
func TestAcknowledgementsInArrivalOrder(t *testing.T) {
	h := syncSeenHandler{newHeldHandler(), make(chan string, 10)}
	b := startBroker(t, h)
	c := outposttest.DialRaw(t, b.Addr().String(), 5)
	if err := c.Login("dev-order", "x-password"); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(protocol.UpTopic("dev-order", protocol.KindTelemetry), 1, 1, []byte(`{"id":"b1","r":[{"f":"n","v":1}]}`)); err != nil {
		t.Fatal(err)
	}
	waitTokens(t, h.started, 1) // held: waiting for its "commit"
	if err := c.Publish(protocol.UpTopic("dev-order", protocol.KindEvent), 1, 2, []byte(`{"name":"door"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.seen: // handled at once by the platform
	case <-time.After(10 * time.Second):
		t.Fatal("event never reached the handler")
	}
	// No PUBACK may come while the telemetry waits for its commit.
	if pk, err := c.ReadTimeout(300 * time.Millisecond); err == nil {
		t.Fatalf("packet type %d (id %d) while the earlier telemetry waits for its commit", pk.FixedHeader.Type, pk.PacketID)
	}
	h.release(1, nil)
	for want := uint16(1); want <= 2; want++ {
		pk, err := c.ReadTimeout(10 * time.Second)
		if err != nil {
			t.Fatalf("PUBACK %d never came: %v", want, err)
		}
		if pk.FixedHeader.Type != packets.Puback || pk.PacketID != want {
			t.Fatalf("packet type %d id %d on the wire, want PUBACK %d", pk.FixedHeader.Type, pk.PacketID, want)
		}
	}
}

// orderedHandler finishes telemetry asynchronously, in arrival order, from
// its own goroutine (like the ingest writer), and every other kind at once.
type orderedHandler struct {
	heldHandler
	q chan func(error)
}

func (h *orderedHandler) StartMessage(_ context.Context, _, kind string, _ []byte, done func(error)) (bool, error) {
	if kind != protocol.KindTelemetry {
		return false, nil
	}
	h.q <- done
	return true, nil
}

// PUBACKs reach the wire in the order the messages arrived (MQTT 5 §4.6),
// also while the broker is busy writing down messages to the same device,
// when PUBACKs written by the broker itself (messages finished at once) and
// PUBACKs written after a commit (telemetry) interleave. The test reads the
// raw byte stream, so it sees the order on the wire, not just which
// acknowledgement is held back.
func TestAcknowledgementsInWireOrderUnderDownTraffic(t *testing.T) {
	h := &orderedHandler{q: make(chan func(error), 1024)}
	b := startBroker(t, h)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	wg.Add(1)
	go func() { // the "writer": finishes telemetry in order
		defer wg.Done()
		for {
			select {
			case done := <-h.q:
				done(nil)
			case <-stop:
				return
			}
		}
	}()

	const id = "dev-wire"
	c := outposttest.DialRaw(t, b.Addr().String(), 5)
	if err := c.Login(id, "secret"); err != nil {
		t.Fatal(err)
	}
	// QoS 0 subscription: the down traffic needs no acknowledgements.
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: protocol.DeviceFilter(id), Qos: 0}}}
	if err := c.Send(pk); err != nil {
		t.Fatal(err)
	}

	const n = 4000
	const window = 32
	slots := make(chan struct{}, window)
	acks := make(chan uint16, n)
	readErr := make(chan error, 1)
	go func() {
		for {
			pk, err := c.Read()
			if err != nil {
				readErr <- err
				return
			}
			if pk.FixedHeader.Type == packets.Puback {
				acks <- pk.PacketID
				<-slots
			}
		}
	}()
	wg.Add(1)
	go func() { // down traffic: keeps the broker's write queue for the device busy
		defer wg.Done()
		payload := []byte(strings.Repeat("d", 300))
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = b.PublishToDevice(id, "noise", payload)
		}
	}()

	telemetry := []byte(`{"id":"b","r":[{"f":"n","v":1}]}`)
	event := []byte(`{"name":"e"}`)
	for i := 1; i <= n; i++ {
		select {
		case slots <- struct{}{}:
		case err := <-readErr:
			t.Fatalf("connection lost after %d messages: %v", i-1, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("no acknowledgement for 10s after %d messages", i-1)
		}
		kind, payload := protocol.KindTelemetry, telemetry
		if i%3 != 0 {
			kind, payload = protocol.KindEvent, event
		}
		if err := c.Publish(protocol.UpTopic(id, kind), 1, uint16(i), payload); err != nil {
			t.Fatal(err)
		}
	}
	for want := 1; want <= n; want++ {
		select {
		case got := <-acks:
			if int(got) != want {
				t.Fatalf("PUBACK %d on the wire where %d was due: acknowledgements overtook each other", got, want)
			}
		case err := <-readErr:
			t.Fatalf("connection lost waiting for PUBACK %d: %v", want, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("PUBACK %d never came", want)
		}
	}
}
