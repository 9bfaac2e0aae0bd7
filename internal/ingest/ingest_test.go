package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/ingest"
	"github.com/outpost-iot/outpost/internal/outpost"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// gatedStore is an Appender that reports each call on entered and then
// waits for the test to answer it on gate: nil stores the batches, an error
// fails the whole call. With a nil gate it answers at once. A batch with ID
// "dup" is reported a duplicate, one for device "gone" an unknown device.
type gatedStore struct {
	entered chan []*outpost.Batch // buffered; nil: not reported
	gate    chan error

	mu    sync.Mutex
	calls [][]*outpost.Batch
}

func (s *gatedStore) AppendBatches(ctx context.Context, batches []*outpost.Batch) ([]outpost.AppendResult, error) {
	call := slices.Clone(batches)
	s.mu.Lock()
	s.calls = append(s.calls, call)
	s.mu.Unlock()
	if s.entered != nil {
		s.entered <- call
	}
	if s.gate != nil {
		if err := <-s.gate; err != nil {
			return nil, err
		}
	}
	res := make([]outpost.AppendResult, len(batches))
	for i, b := range batches {
		switch {
		case b.DeviceID == "gone":
			res[i] = outpost.AppendUnknownDevice
		case b.ID == "dup":
			res[i] = outpost.AppendDuplicate
		}
	}
	return res, nil
}

func (s *gatedStore) sizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, c := range s.calls {
		out = append(out, len(c))
	}
	return out
}

func newGatedStore() *gatedStore {
	return &gatedStore{entered: make(chan []*outpost.Batch, 1000), gate: make(chan error)}
}

// recordingObserver keeps what the writer reported as committed.
type recordingObserver struct {
	mu      sync.Mutex
	batches []*outpost.Batch
	results []outpost.AppendResult
}

func (o *recordingObserver) Committed(batches []*outpost.Batch, results []outpost.AppendResult, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.batches = append(o.batches, batches...)
	o.results = append(o.results, results...)
}

func (o *recordingObserver) seen() map[*outpost.Batch]outpost.AppendResult {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := map[*outpost.Batch]outpost.AppendResult{}
	for i, b := range o.batches {
		m[b] = o.results[i]
	}
	return m
}

// MustNewWriter starts a writer on store and closes it when the test ends.
func MustNewWriter(tb testing.TB, store ingest.Appender, o ingest.Options) *ingest.Writer {
	tb.Helper()
	w := ingest.NewWriter(store, o)
	tb.Cleanup(func() { w.Close() })
	return w
}

func batch(id string, readings int) *outpost.Batch {
	b := &outpost.Batch{DeviceID: "d-1", ID: id}
	for i := range readings {
		b.Readings = append(b.Readings, outpost.Reading{Feed: "f", TS: int64(i), Value: []byte("1")})
	}
	return b
}

type written struct {
	b   *outpost.Batch
	res outpost.AppendResult
	err error
}

// writeAsync writes b in a goroutine; its outcome arrives on out.
func writeAsync(ctx context.Context, w *ingest.Writer, b *outpost.Batch, out chan<- written) {
	go func() {
		res, err := w.Write(ctx, b)
		out <- written{b, res, err}
	}()
}

// mustFillQueue starts writes while the store is held until one of them
// cannot even be queued before its deadline: that proves the queue is full,
// so every write that did not fail is waiting in it. Each write's deadline
// starts just before it calls Write, so a slow scheduler cannot expire it
// early. mustFillQueue returns how many writes it started; each sends its
// outcome on out.
func mustFillQueue(t *testing.T, w *ingest.Writer, mk func(i int) *outpost.Batch, out chan written) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; ; n++ {
		b := mk(n)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			res, err := w.Write(ctx, b)
			out <- written{b, res, err}
		}()
		select {
		case r := <-out:
			// Nothing commits while the store is held, so an early outcome
			// is a write that found the queue full.
			if !errors.Is(r.err, context.DeadlineExceeded) {
				t.Fatalf("write while the store is held: %v, %v", r.res, r.err)
			}
			out <- r // let the caller count it
			return n + 1
		case <-time.After(2 * time.Millisecond): // paces the writes; not needed for correctness
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer's queue never filled up")
		}
	}
}

// serve answers every call of store with nil until stop is closed.
func serve(store *gatedStore, stop <-chan struct{}) {
	for {
		select {
		case store.gate <- nil:
		case <-stop:
			return
		}
	}
}

func TestWriteResults(t *testing.T) {
	obs := &recordingObserver{}
	w := MustNewWriter(t, &gatedStore{}, ingest.Options{Observer: obs})
	tests := []struct {
		name string
		b    *outpost.Batch
		want outpost.AppendResult
	}{
		{"stored", batch("a", 2), outpost.AppendStored},
		{"duplicate", batch("dup", 2), outpost.AppendDuplicate},
		{"unknown device", &outpost.Batch{DeviceID: "gone"}, outpost.AppendUnknownDevice},
		{"stored after the others", batch("", 1), outpost.AppendStored},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := w.Write(context.Background(), tt.b)
			if err != nil || res != tt.want {
				t.Errorf("Write: %v, %v; want %v", res, err, tt.want)
			}
			if got, ok := obs.seen()[tt.b]; !ok || got != tt.want {
				t.Errorf("observer saw %v (reported %v), want %v", got, ok, tt.want)
			}
		})
	}
}

func TestGroupCommit(t *testing.T) {
	const queueLen = 16
	store := newGatedStore()
	w := MustNewWriter(t, store, ingest.Options{QueueLen: queueLen})
	out := make(chan written, 1000)

	// The first write holds the store; the others pile up behind it.
	writeAsync(context.Background(), w, batch("first", 1), out)
	<-store.entered
	n := 1 + mustFillQueue(t, w, func(i int) *outpost.Batch { return batch(fmt.Sprint(i), 1) }, out)

	stop := make(chan struct{})
	defer close(stop)
	store.gate <- nil
	go serve(store, stop)

	stored := 0
	for range n {
		r := <-out
		switch {
		case r.err == nil && r.res == outpost.AppendStored:
			stored++
		case errors.Is(r.err, context.DeadlineExceeded): // found the queue full
		default:
			t.Errorf("batch %s: %v, %v", r.b.ID, r.res, r.err)
		}
	}
	sizes := store.sizes()
	total := 0
	for _, s := range sizes {
		total += s
	}
	if total != stored {
		t.Errorf("the store received %d batches, %d writes were stored", total, stored)
	}
	// The whole queue went into the call after the first one.
	if len(sizes) < 2 || sizes[0] != 1 || sizes[1] < queueLen {
		t.Errorf("call sizes %v, want 1 then at least %d", sizes, queueLen)
	}
	t.Logf("%d writes in %d calls: %v", stored, len(sizes), sizes)
}

func TestMaxReadingsBoundsGroup(t *testing.T) {
	const queueLen = 16
	store := newGatedStore()
	// Batches of 3 readings with a bound of 10: a group takes batches until
	// it holds 10 or more, so 4 batches (12 readings).
	w := MustNewWriter(t, store, ingest.Options{QueueLen: queueLen, MaxReadings: 10})
	out := make(chan written, 1000)
	writeAsync(context.Background(), w, batch("first", 3), out)
	<-store.entered
	n := 1 + mustFillQueue(t, w, func(i int) *outpost.Batch { return batch(fmt.Sprint(i), 3) }, out)

	stop := make(chan struct{})
	defer close(stop)
	store.gate <- nil
	go serve(store, stop)
	for range n {
		<-out
	}
	sizes := store.sizes()
	if len(sizes) < 1+queueLen/4 {
		t.Fatalf("call sizes %v, want at least %d calls", sizes, 1+queueLen/4)
	}
	// The queue held at least 16 batches, so the next 4 calls were full.
	if want := []int{1, 4, 4, 4, 4}; !slices.Equal(sizes[:5], want) {
		t.Errorf("call sizes %v, want them to start with %v", sizes, want)
	}
	for _, s := range sizes {
		if s > 4 {
			t.Errorf("call sizes %v: a group exceeds the bound", sizes)
			break
		}
	}
}

func TestCloseCommitsQueued(t *testing.T) {
	store := newGatedStore()
	obs := &recordingObserver{}
	w := ingest.NewWriter(store, ingest.Options{QueueLen: 8, Observer: obs})
	out := make(chan written, 1000)
	writeAsync(context.Background(), w, batch("first", 1), out)
	<-store.entered
	n := 1 + mustFillQueue(t, w, func(i int) *outpost.Batch { return batch(fmt.Sprint(i), 1) }, out)

	// A write that cannot be queued gives up with its context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := w.Write(ctx, batch("late", 1)); !errors.Is(err, context.Canceled) {
		t.Errorf("write with a canceled context on a full queue: %v", err)
	}

	closed := make(chan error)
	go func() { closed <- w.Close() }()
	// Once Close has begun, writes are refused at once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err := w.Write(ctx, batch("probe", 1))
		cancel()
		if errors.Is(err, ingest.ErrClosed) {
			break
		} else if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("write while closing: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("writes still accepted after Close")
		}
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the queued batches were committed", err)
	default:
	}

	stop := make(chan struct{})
	defer close(stop)
	go serve(store, stop)
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	stored := map[*outpost.Batch]bool{}
	for range n {
		// A write still on its way when Close began is refused; one that
		// found the queue full gave up. Neither was accepted.
		if r := <-out; r.err == nil {
			stored[r.b] = true
		} else if !errors.Is(r.err, context.DeadlineExceeded) && !errors.Is(r.err, ingest.ErrClosed) {
			t.Errorf("batch %s: %v", r.b.ID, r.err)
		}
	}
	committed := obs.seen()
	if len(committed) != len(stored) {
		t.Errorf("%d writes succeeded, %d batches committed", len(stored), len(committed))
	}
	for b := range stored {
		if _, ok := committed[b]; !ok {
			t.Errorf("batch %s succeeded but was not committed before Close returned", b.ID)
		}
	}

	if _, err := w.Write(context.Background(), batch("after", 1)); !errors.Is(err, ingest.ErrClosed) {
		t.Errorf("Write after Close: %v, want ErrClosed", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestWriteAfterClose(t *testing.T) {
	store := &gatedStore{}
	w := ingest.NewWriter(store, ingest.Options{})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := w.Write(context.Background(), batch("a", 1))
	if !errors.Is(err, ingest.ErrClosed) {
		t.Errorf("Write after Close: %v, %v; want ErrClosed", res, err)
	}
	if sizes := store.sizes(); len(sizes) != 0 {
		t.Errorf("store called %v after Close", sizes)
	}
}

func TestCommitErrorReachesGroup(t *testing.T) {
	store := newGatedStore()
	obs := &recordingObserver{}
	w := MustNewWriter(t, store, ingest.Options{QueueLen: 8, Observer: obs})
	out := make(chan written, 1000)
	first := batch("first", 1)
	writeAsync(context.Background(), w, first, out)
	<-store.entered
	n := 1 + mustFillQueue(t, w, func(i int) *outpost.Batch { return batch(fmt.Sprint(i), 1) }, out)

	// The first call succeeds, the second (the queued group) fails, any
	// later one succeeds.
	boom := errors.New("disk full")
	store.gate <- nil
	failed := <-store.entered
	store.gate <- boom
	stop := make(chan struct{})
	defer close(stop)
	go serve(store, stop)

	inFailed := map[*outpost.Batch]bool{}
	for _, b := range failed {
		inFailed[b] = true
	}
	if len(failed) < 8 {
		t.Errorf("failed call held %d batches, want the 8 queued", len(failed))
	}
	for range n {
		r := <-out
		switch {
		case errors.Is(r.err, context.DeadlineExceeded): // found the queue full
		case inFailed[r.b]:
			if !errors.Is(r.err, boom) {
				t.Errorf("batch %s of the failed call: %v, %v; want %v", r.b.ID, r.res, r.err, boom)
			}
		case r.err != nil:
			t.Errorf("batch %s of a successful call: %v", r.b.ID, r.err)
		}
	}
	committed := obs.seen()
	if _, ok := committed[first]; !ok {
		t.Error("the first call's batch was not reported to the observer")
	}
	for b := range inFailed {
		if _, ok := committed[b]; ok {
			t.Errorf("batch %s of the failed call was reported to the observer", b.ID)
		}
	}
}

func TestConcurrentWriters(t *testing.T) {
	store := &gatedStore{}
	obs := &recordingObserver{}
	w := MustNewWriter(t, store, ingest.Options{Observer: obs})
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				if res, err := w.Write(context.Background(), batch(fmt.Sprint(g, "-", i), 2)); err != nil || res != outpost.AppendStored {
					t.Errorf("write: %v, %v", res, err)
				}
			}
		})
	}
	wg.Wait()
	if got := len(obs.seen()); got != writers*each {
		t.Errorf("observer saw %d batches, want %d", got, writers*each)
	}
}

// Submit does not wait: with the writer busy and the queue full it fails
// at once with ErrQueueFull when its context is done, and the batches it
// did queue are answered in queue order.
func TestSubmitQueueFullAndOrder(t *testing.T) {
	s := newGatedStore()
	w := ingest.NewWriter(s, ingest.Options{QueueLen: 2})
	defer w.Close()
	var mu sync.Mutex
	var order []string
	done := func(id string) ingest.Done {
		return func(_ outpost.AppendResult, err error) {
			if err != nil {
				t.Errorf("batch %s: %v", id, err)
			}
			mu.Lock()
			order = append(order, id)
			mu.Unlock()
		}
	}
	noWait, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Submit(noWait, &outpost.Batch{DeviceID: "d", ID: "a", Readings: reading()}, done("a")); err != nil {
		t.Fatal(err)
	}
	<-s.entered // the writer is committing "a"
	for _, id := range []string{"b", "c"} {
		if err := w.Submit(noWait, &outpost.Batch{DeviceID: "d", ID: id, Readings: reading()}, done(id)); err != nil {
			t.Fatalf("submit %s: %v", id, err)
		}
	}
	if err := w.Submit(noWait, &outpost.Batch{DeviceID: "d", ID: "d", Readings: reading()}, done("d")); !errors.Is(err, ingest.ErrQueueFull) {
		t.Fatalf("submit to a full queue: %v, want ErrQueueFull", err)
	}
	s.gate <- nil // commit "a"
	<-s.entered   // "b" and "c" in one group
	s.gate <- nil
	w.Close()
	if want := []string{"a", "b", "c"}; !slices.Equal(order, want) {
		t.Errorf("done order %v, want %v", order, want)
	}
}

func reading() []outpost.Reading {
	return []outpost.Reading{{Feed: "f", TS: 1, Value: []byte("1")}}
}

// A small group waits for more batches when batches have been arriving
// faster than MaxDelay: every commit costs at least a page written, so
// two batches in one commit cost half as much per reading.
func TestSmallGroupWaitsForMore(t *testing.T) {
	store := newGatedStore()
	w := MustNewWriter(t, store, ingest.Options{MaxDelay: time.Hour, MinReadings: 2})
	out := make(chan written, 10)
	// p holds the store while x, of another device, arrives right after it.
	p, x, y := batch("p", 1), batch("x", 1), batch("y", 1)
	x.DeviceID = "d-2"
	writeAsync(context.Background(), w, p, out)
	if got := <-store.entered; len(got) != 1 || got[0] != p {
		t.Fatalf("first call %v", got)
	}
	writeAsync(context.Background(), w, x, out)
	for w.Queued() != 1 {
		runtime.Gosched()
	}
	store.gate <- nil
	// The writer takes x and, batches having come fast, waits for y.
	for w.Queued() != 0 {
		runtime.Gosched()
	}
	writeAsync(context.Background(), w, y, out)
	got := <-store.entered
	stop := make(chan struct{})
	defer close(stop)
	go serve(store, stop)
	if len(got) != 2 || got[0] != x || got[1] != y {
		t.Errorf("second call %v, want x and y together", ids(got))
	}
	for range 3 {
		if r := <-out; r.err != nil || r.res != outpost.AppendStored {
			t.Errorf("%s: %v, %v", r.b.ID, r.res, r.err)
		}
	}
}

// A device alone, writing one batch after the other, is never held up
// waiting for batches that cannot come.
func TestLoneBatchDoesNotWait(t *testing.T) {
	w := MustNewWriter(t, &gatedStore{}, ingest.Options{MaxDelay: time.Hour, MinReadings: 1000})
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := w.Write(ctx, batch(fmt.Sprint(i), 1))
		cancel()
		if err != nil || res != outpost.AppendStored {
			t.Fatalf("write %d: %v, %v", i, res, err)
		}
	}
}

func ids(bs []*outpost.Batch) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.ID)
	}
	return out
}

// TestWritersCommitInParallelPerDeviceOrder: with several Writers, groups
// of different devices commit at the same time (a store like PostgreSQL
// overlaps them), and each device's batches still commit, and are
// answered, in the order they were submitted.
func TestWritersCommitInParallelPerDeviceOrder(t *testing.T) {
	store := newGatedStore()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // after the writer's Close
	w := MustNewWriter(t, store, ingest.Options{Writers: 4, MaxDelay: -1})
	const devices, each = 16, 20
	var mu sync.Mutex
	got := map[string][]string{}
	var wg sync.WaitGroup
	submit := func(d, i int) {
		b := batch(fmt.Sprintf("b-%d-%d", d, i), 1)
		b.DeviceID = fmt.Sprintf("d-%d", d)
		wg.Add(1)
		err := w.Submit(context.Background(), b, func(_ outpost.AppendResult, err error) {
			defer wg.Done()
			if err != nil {
				t.Errorf("%s: %v", b.ID, err)
			}
			mu.Lock()
			got[b.DeviceID] = append(got[b.DeviceID], b.ID)
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// One batch of every device while the store holds every commit: two
	// commits must be in the store at once.
	for d := range devices {
		submit(d, 0)
	}
	for n := range 2 {
		select {
		case <-store.entered:
		case <-time.After(10 * time.Second):
			go serve(store, stop)
			t.Fatalf("%d commit(s) entered the store; want 2 at once with 4 writers", n)
		}
	}
	go serve(store, stop)
	for i := 1; i < each; i++ {
		for d := range devices {
			submit(d, i)
		}
	}
	wg.Wait()
	for d := range devices {
		id := fmt.Sprintf("d-%d", d)
		var want []string
		for i := range each {
			want = append(want, fmt.Sprintf("b-%d-%d", d, i))
		}
		if !slices.Equal(got[id], want) {
			t.Errorf("device %s committed in the order %v, want %v", id, got[id], want)
		}
	}
}
