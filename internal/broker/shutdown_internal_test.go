package broker

import (
	"sync"
	"testing"
	"time"
)

// mochi v2.7.9 disconnects a listener's clients at Close through
// Clients.GetByListener, which takes the read lock of its client map
// twice, nested: a client ending in between (Clients.Delete waits for the
// write lock) blocks the second read lock, and shutdown hangs for ever
// (seen with 1,000 devices dropping while the platform closed). Here other
// goroutines keep taking the map's write lock, as ending clients do, while
// the broker closes.
func TestCloseUnderClientMapWriters(t *testing.T) {
	for range 20 {
		b, err := New(Config{Addr: "127.0.0.1:0"}, allow{}, nopHandler{})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					b.srv.Clients.Lock()
					b.srv.Clients.Unlock() // an empty critical section: a writer
				}
			})
		}
		done := make(chan struct{})
		go func() { b.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Broker.Close hung: mochi's nested read lock of its client map")
		}
		close(stop)
		wg.Wait()
	}
}
