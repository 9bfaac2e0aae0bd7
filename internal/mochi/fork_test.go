package mqtt

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/mochi/packets"
)

// testClients are the clients made by newTestClient, so that a test can
// wait for what was queued to them to be written (waitWritten). mochi's
// tests slept for a while and then closed the pipe the writes went to;
// the writer is now a goroutine started on demand (Client.enqueue), and a
// sleep alone is no bound on when it runs.
var testClients clientList

type clientList struct {
	mu  sync.Mutex
	all []*Client
}

func (l *clientList) add(cl *Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, cl)
}

// waitWritten waits until no test client has a packet waiting to be
// written or being written, or 10 seconds have passed.
func waitWritten() {
	testClients.mu.Lock()
	all := append([]*Client(nil), testClients.all...)
	testClients.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for _, cl := range all {
		for atomic.LoadInt32(&cl.State.outboundQty) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
	}
}

// The expiry sweeps look only at the clients they may act on (those with
// messages in flight, those disconnected) instead of copying the whole
// client map twice per sweep: with 1,000 connected idle clients a sweep
// allocates nothing (issue 16: at 19,000 devices the copies were a tenth
// of the platform's idle CPU).
func TestExpirySweepsDoNotCopyTheClients(t *testing.T) {
	s := newServer()
	defer s.Close()
	for i := range 1000 {
		cl, _, _ := newTestClient()
		cl.ID = "idle-" + strconv.Itoa(i)
		s.Clients.Add(cl)
	}
	now := time.Now().Unix()
	if n := testing.AllocsPerRun(10, func() {
		s.clearExpiredInflights(now)
		s.clearExpiredClients(now)
	}); n != 0 {
		t.Fatalf("a sweep over 1,000 idle clients made %.0f allocations, want 0", n)
	}
}

// panicHook panics on every packet a client sends after its CONNECT.
type panicHook struct{ HookBase }

func (h *panicHook) ID() string           { return "panic" }
func (h *panicHook) Provides(b byte) bool { return b == OnPacketRead }
func (h *panicHook) OnPacketRead(cl *Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Connect {
		panic("hook bug")
	}
	return pk, nil
}

// A panic while handling a client's packet (a decoder's or a hook's) ends
// that client's connection with ErrClientPanicked, not the process: with
// mochi it ended every connection at once. The server then serves the
// next client and closes cleanly.
func TestPanicEndsOnlyItsConnection(t *testing.T) {
	s := newServer()
	if err := s.AddHook(new(panicHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 2 {
		r, w := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- s.EstablishConnection("tcp", r) }()
		go func() { _, _ = io.Copy(io.Discard, w) }() // CONNACK
		if _, err := w.Write(packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt311).RawBytes); err != nil {
			t.Fatalf("client %d: CONNECT: %v", i, err)
		}
		if _, err := w.Write(packets.TPacketData[packets.Pingreq].Get(packets.TPingreq).RawBytes); err != nil {
			t.Fatalf("client %d: PINGREQ: %v", i, err)
		}
		select {
		case err := <-done:
			if !errors.Is(err, ErrClientPanicked) {
				t.Fatalf("client %d: connection ended with %v, want ErrClientPanicked", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("client %d: connection did not end", i)
		}
		w.Close()
	}
	if n := atomic.LoadInt64(&s.Info.ClientsConnected); n != 0 {
		t.Errorf("%d clients still counted as connected", n)
	}
}
