package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
	"github.com/outpost-iot/outpost/internal/server"
	"github.com/outpost-iot/outpost/internal/telemetry"
)

// TestReplicasMosquittoPostgres runs two platform replicas between one
// Mosquitto and one PostgreSQL (--broker, --db, --replica): the devices'
// traffic is spread over both, an RPC through either replica reaches any
// device, a call queued through one replica while its device is away is
// delivered once, by one replica, when it comes back, and the live stream
// of one replica shows the telemetry the other committed.
func TestReplicasMosquittoPostgres(t *testing.T) {
	dbURL, _ := pgtest.MustSchema(t) // skips without OUTPOST_TEST_POSTGRES
	addr := startMosquitto(t)
	replica := func(name string) *outposttest.Platform {
		return outposttest.Start(t, func(c *server.Config) {
			c.DB, c.Broker, c.Replica = dbURL, "mqtt://outpost:secret@"+addr, name
			c.QueueSweep = 20 * time.Millisecond
		})
	}
	a, b := replica("a"), replica("b")
	streamB := openStream(t, b, "?kind=telemetry")
	waitPeers(t, a, 1) // a mirrors its events to b from now on

	const n = 6
	type dev struct {
		d     outposttest.Device
		c     *device.Client
		calls map[string]int // request arguments seen by the handler
	}
	var mu sync.Mutex
	devs := make([]*dev, n)
	connectDev := func(x *dev) {
		c, err := device.New(x.d.URL, device.WithLogger(outposttest.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		c.Handle("echo", func(ctx context.Context, args json.RawMessage) (any, error) {
			mu.Lock()
			x.calls[string(args)]++
			mu.Unlock()
			return json.RawMessage(args), nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := c.Connect(ctx); err != nil {
			t.Fatalf("connect: %v", err)
		}
		x.c = c
	}
	for i := range devs {
		devs[i] = &dev{d: a.CreateDevice(t, fmt.Sprint("r-", i)), calls: map[string]int{}}
		connectDev(devs[i])
	}
	defer func() {
		for _, x := range devs {
			x.c.Close()
		}
	}()
	isOnline := func(p *outposttest.Platform, id string) bool {
		var d struct {
			Online bool `json:"online"`
		}
		p.Do(t, "GET", "/api/v1/devices/"+id, nil, &d)
		return d.Online
	}
	for _, x := range devs {
		outposttest.Eventually(t, 10*time.Second, "online on both replicas", func() bool { return isOnline(a, x.d.ID) && isOnline(b, x.d.ID) })
	}

	// Telemetry: 200 messages from every device, spread over both.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, x := range devs {
		for j := range 200 {
			if err := x.c.AddAt("v", j, time.UnixMilli(int64(1_700_000_000_000+j))); err != nil {
				t.Fatal(err)
			}
			if err := x.c.Publish(ctx); err != nil { // one reading a message
				t.Fatal(err)
			}
		}
	}
	for _, x := range devs {
		outposttest.Eventually(t, 30*time.Second, "200 readings of "+x.d.ID, func() bool {
			var r readingsResp
			b.Do(t, "GET", "/api/v1/devices/"+x.d.ID+"/telemetry?feed=v&limit=1000", nil, &r)
			return len(r.Readings) == 200
		})
	}
	ca, cb := metric(t, a, "outpost_batches_stored_total"), metric(t, b, "outpost_batches_stored_total")
	t.Logf("batches committed: replica a %v, replica b %v", ca, cb)
	if ca == 0 || cb == 0 || ca+cb != n*200 {
		t.Fatalf("batches committed: a %v + b %v, want both > 0 and %d in all", ca, cb, n*200)
	}
	// Replica b's stream shows every batch, whichever replica committed it.
	seen := 0
	for seen < n*200 {
		e := next(t, streamB)
		var ev struct {
			Readings []json.RawMessage `json:"readings"`
		}
		if err := json.Unmarshal(e.data, &ev); err != nil {
			t.Fatal(err)
		}
		seen += len(ev.Readings)
	}

	// RPC through either replica to every device.
	for _, x := range devs {
		for _, p := range []*outposttest.Platform{a, b} {
			var res struct {
				Result json.RawMessage `json:"result"`
			}
			if st := p.Do(t, "POST", "/api/v1/devices/"+x.d.ID+"/rpc/echo", `{"sync":1}`, &res); st != http.StatusOK {
				t.Fatalf("rpc to %s: status %d", x.d.ID, st)
			}
		}
	}

	// A call queued through replica a while the device is away is
	// delivered once when it comes back.
	x := devs[0]
	x.c.Close()
	outposttest.Eventually(t, 10*time.Second, "offline on both", func() bool { return !isOnline(a, x.d.ID) && !isOnline(b, x.d.ID) })
	sentBefore := metric(t, a, "outpost_queue_sent_total") + metric(t, b, "outpost_queue_sent_total")
	q := queueCall(t, a, x.d.ID, "echo", `{"queued":1}`, "ttl=1m")
	connectDev(x)
	waitState(t, b, q.ID, "succeeded")
	mu.Lock()
	runs := x.calls[`{"queued":1}`]
	mu.Unlock()
	sent := metric(t, a, "outpost_queue_sent_total") + metric(t, b, "outpost_queue_sent_total") - sentBefore
	if runs != 1 || sent != 1 {
		t.Fatalf("queued call: ran %d times, published %v times by the replicas; want once each", runs, sent)
	}

	// Scale down: replica a stops. It leaves the shared subscription first,
	// so the broker sends everything to b from then on; nothing waits in
	// a's session for a replica that does not come back.
	if err := a.Server.Close(); err != nil {
		t.Fatal(err)
	}
	y := devs[1]
	for j := range 100 {
		if err := y.c.AddAt("after", j, time.UnixMilli(int64(1_700_000_000_000+j))); err != nil {
			t.Fatal(err)
		}
		if err := y.c.Publish(ctx); err != nil {
			t.Fatal(err)
		}
	}
	outposttest.Eventually(t, 20*time.Second, "100 readings stored by replica b alone", func() bool {
		var r readingsResp
		b.Do(t, "GET", "/api/v1/devices/"+y.d.ID+"/telemetry?feed=after&limit=1000", nil, &r)
		return len(r.Readings) == 100
	})
}

// TestReplicasRateLimit: a device whose messages the shared subscription
// spreads over two replicas is measured against its rate limit
// (--device-rate) across both, within the bound of docs/deploy.md
// ("Limits across replicas"), not twice it: the replicas exchange what
// they admit. Behind an external broker the platform stores what is over
// the limit and counts it (outpost_telemetry_rate_overrun_total; holding
// a message back would hold up every device, acknowledgements being in
// order): the readings counted within the limit by both replicas
// together must stay within the bound while the device sends at twice
// its limit, and every reading is stored.
func TestReplicasRateLimit(t *testing.T) {
	dbURL, _ := pgtest.MustSchema(t) // skips without OUTPOST_TEST_POSTGRES
	addr := startMosquitto(t)
	const (
		rate, burst = 20, 5 // readings per second; one reading a message
		interval    = telemetry.DefaultExchangeInterval
		// transit bounds a report's way from one replica to the other,
		// generously: the machine may be busy.
		transit = time.Second
		sent    = 160
	)
	replica := func(name string) *outposttest.Platform {
		return outposttest.Start(t, func(c *server.Config) {
			c.DB, c.Broker, c.Replica = dbURL, "mqtt://outpost:secret@"+addr, name
			c.DeviceRate, c.DeviceBurst = rate, burst
		})
	}
	a, b := replica("a"), replica("b")
	d := a.CreateDevice(t, "limited")
	c, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stored := func() float64 {
		return metric(t, a, "outpost_readings_stored_total") + metric(t, b, "outpost_readings_stored_total")
	}
	// The documented bound for two replicas over a window of length el:
	// one burst and the rate (with ε), plus for the other replica one
	// burst, one interval and the transit's worth, twice the reporting
	// threshold, and each replica's last message in debt.
	const replicas, n = 2, 1
	eps := float64(replicas-1) / (20 * replicas)
	threshold := rate * interval.Seconds() / (4 * replicas)
	bound := func(el time.Duration) float64 {
		return burst + n + rate*el.Seconds()*(1+eps) + (replicas-1)*(burst+n+rate*(interval+transit).Seconds()+2*threshold)
	}

	// Twice the limit, paced: a load shape, not a synchronisation.
	pace := time.NewTicker(time.Second / (2 * rate))
	defer pace.Stop()
	start := time.Now()
	for j := range sent {
		if err := c.AddAt("v", j, time.UnixMilli(int64(1_700_000_000_000+j))); err != nil {
			t.Fatal(err)
		}
		if err := c.Publish(ctx); err != nil { // acknowledged by Mosquitto at once
			t.Fatal(err)
		}
		<-pace.C
	}
	sending := time.Since(start)
	outposttest.Eventually(t, 60*time.Second, fmt.Sprint("all ", sent, " readings stored"), func() bool { return stored() == sent })
	el := time.Since(start) // after the last reading was stored: the bound only widens
	over := metric(t, a, "outpost_telemetry_rate_overrun_total") + metric(t, b, "outpost_telemetry_rate_overrun_total")
	within := sent - over // one reading a message
	t.Logf("%d readings stored in %s, %v within the limit: bound %.1f, limit alone %.1f, without the exchange up to %.1f",
		sent, el.Round(time.Millisecond), within, bound(el), burst+rate*el.Seconds(), 2*(burst+rate*el.Seconds()))
	if within > bound(el) {
		t.Fatalf("%v readings counted within the limit in %s: over the bound %.1f (limit %d/s, burst %d, two replicas)", within, el.Round(time.Millisecond), bound(el), rate, burst)
	}
	// Nor is what is within the limit counted over it (loosely: the
	// device may have been slower than its pace).
	if floor := 0.8 * min(sent, burst+rate*sending.Seconds()); within < floor {
		t.Fatalf("only %v readings counted within the limit in %s; want at least %.1f", within, sending.Round(time.Millisecond), floor)
	}
	ba, bb := metric(t, a, "outpost_batches_stored_total"), metric(t, b, "outpost_batches_stored_total")
	if ba == 0 || bb == 0 {
		t.Fatalf("batches stored: replica a %v, replica b %v; want the device's messages spread over both", ba, bb)
	}
	if held := metric(t, a, "outpost_telemetry_rate_limited_total") + metric(t, b, "outpost_telemetry_rate_limited_total"); held != 0 {
		t.Fatalf("%v messages held back behind the broker", held)
	}
}
