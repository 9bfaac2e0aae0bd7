package broker_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/memtrim"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

func stackInuse() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.StackInuse)
}

// Issue 16: an idle device's connection holds one goroutine whose stack,
// once trimmed, is 4 KiB, and a ping (all an idle device sends) does not
// grow it again. Before, each connection parked under large frames (its
// stack never went below 16 KiB) beside a writer goroutine of its own, and
// every PINGREQ went through the full packet path, which grew the stack
// back to 16 KiB until the next collections.
func TestIdleConnectionStacks(t *testing.T) {
	const n = 300
	b := startBroker(t, newHeldHandler())
	memtrim.Trim()
	base := stackInuse()
	var conns []*outposttest.Raw
	for i := range n {
		c := outposttest.DialRaw(t, b.Addr().String(), 4)
		id := fmt.Sprint("stk-", i)
		if err := c.Login(id, "secret"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Subscribe(1, "outpost/v1/"+id+"/down/#"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	memtrim.Trim()
	idle := stackInuse()
	for i, c := range conns {
		if !c.Ping(10 * time.Second) {
			t.Fatalf("device %d: no PINGRESP", i)
		}
	}
	pinged := stackInuse()
	perConn := float64(idle-base) / n
	growth := float64(pinged-idle) / n
	t.Logf("stack bytes per idle connection: %.0f after a trim, %.0f more after a ping each", perConn, growth)
	want := 4 << 10
	if raceEnabled {
		want = 8 << 10 // the race detector's frames are larger
	}
	if perConn > float64(want)+1<<10 {
		t.Errorf("an idle connection holds %.0f bytes of stack, want one %d-byte stack", perConn, want)
	}
	if growth > 1<<10 {
		t.Errorf("a ping grew each connection's stack by %.0f bytes, want no growth", growth)
	}
}
