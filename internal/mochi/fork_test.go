package mqtt

import (
	"sync"
	"sync/atomic"
	"time"
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
