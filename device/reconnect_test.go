package device_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// Issue 16: after losing a working connection every client reconnected at
// once, so a fleet that lost the platform together (a restart, a network
// cut) came back in lock-step, all at the same instant. Now the first
// attempt after a drop waits a random moment within the minimum backoff.
func TestReconnectAfterDropIsSpread(t *testing.T) {
	const n = 20
	const minBackoff = 2 * time.Second
	p := outposttest.Start(t)
	px := startProxy(t, p.MQTTAddr())
	clients := make([]*device.Client, n)
	for i := range clients {
		d := p.CreateDevice(t, fmt.Sprint("fleet-", i))
		clients[i] = newClient(t, via(p, d, px.addr), device.WithMemoryOutbox(), device.WithConnectTimeout(5*time.Second),
			device.WithReconnectBackoff(minBackoff, 2*minBackoff))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := clients[i].Connect(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Every connection drops at once; the platform stays reachable.
	dropped := time.Now()
	px.dropAll()
	outposttest.Eventually(t, 30*time.Second, "every client reconnected", func() bool {
		if len(px.acceptedSince(dropped)) < n {
			return false
		}
		for _, c := range clients {
			if !c.Connected() {
				return false
			}
		}
		return true
	})
	accepted := px.acceptedSince(dropped)
	delays := make([]time.Duration, n)
	for i, a := range accepted[:n] {
		delays[i] = a.Sub(dropped)
	}
	slices.Sort(delays)
	t.Logf("first reconnections after the drop: %v … %v", delays[0], delays[n-1])
	// Uniform over [0, 2s], 20 clients: all within the first half second,
	// or all within 250ms of each other, has a chance below 1e-12.
	if delays[n-1] < minBackoff/4 {
		t.Errorf("every client reconnected within %v of the drop: no jitter (want spread over the minimum backoff, %v)", delays[n-1], minBackoff)
	}
	if spread := delays[n-1] - delays[0]; spread < minBackoff/8 {
		t.Errorf("reconnections spread over %v only: lock-step", spread)
	}
}
