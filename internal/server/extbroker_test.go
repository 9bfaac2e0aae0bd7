package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/mosquittotest"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// startMosquitto starts a Mosquitto of its own on a free loopback port,
// anonymous (the broker's own device authentication is tested with its
// dynamic security plugin in TestExternalBrokerDynsec), with no bound on
// what it queues for an absent platform replica; it skips the test
// without the mosquitto binary.
func startMosquitto(t *testing.T) string {
	t.Helper()
	return mosquittotest.Start(t, mosquittotest.Plain(), mosquittotest.ConfigLines("max_queued_messages 0", "max_inflight_messages 0")).Addr
}

// TestExternalBrokerMosquitto runs the platform against a real Mosquitto
// (--broker): devices connect to Mosquitto, the platform is a client of
// it. Readings are stored exactly, an RPC reaches the device and comes
// back, a call queued while the device is away is delivered once when it
// comes back, presence follows the device's announcements, and a device
// that is only mosquitto_pub (a client we did not write) is heard too.
func TestExternalBrokerMosquitto(t *testing.T) {
	addr := startMosquitto(t)
	p := outposttest.Start(t, func(c *server.Config) {
		c.Broker = "mqtt://outpost:secret@" + addr
		c.QueueSweep = 20 * time.Millisecond
	})
	if got := p.MQTTAddr(); got != addr {
		t.Fatalf("MQTTAddr = %s, want the external broker's %s", got, addr)
	}
	d := p.CreateDevice(t, "ext-1")
	if !strings.HasSuffix(d.URL, "@"+addr) {
		t.Fatalf("device URL %s does not point at the external broker %s", d.URL, addr)
	}

	var calls atomic.Int64
	newClient := func() *device.Client {
		c, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		c.Handle("echo", func(ctx context.Context, args json.RawMessage) (any, error) {
			calls.Add(1)
			return json.RawMessage(args), nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := c.Connect(ctx); err != nil {
			t.Fatalf("connect through Mosquitto: %v", err)
		}
		return c
	}
	online := func(want bool) {
		t.Helper()
		outposttest.Eventually(t, 10*time.Second, fmt.Sprintf("device online=%v", want), func() bool {
			var dev struct {
				Online bool `json:"online"`
			}
			p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, &dev)
			return dev.Online == want
		})
	}

	c := newClient()
	online(true)

	// Telemetry: 1,000 readings, each stored once with its value.
	base := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	for i := range 1000 {
		if err := c.AddAt("t", float64(i), base.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Publish(ctx); err != nil {
		t.Fatalf("publish through Mosquitto: %v", err)
	}
	// With an external broker the device's PUBACK means the broker has
	// the readings; the platform commits them after.
	var got readingsResp
	outposttest.Eventually(t, 20*time.Second, "1,000 readings stored", func() bool {
		got = readingsResp{}
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=t&limit=2000", nil, &got)
		return len(got.Readings) >= 1000
	})
	if len(got.Readings) != 1000 {
		t.Fatalf("stored %d readings, want 1000", len(got.Readings))
	}
	for i, r := range got.Readings {
		if r.TS != base.Add(time.Duration(i)*time.Second).UnixMilli() || string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("reading %d = %+v %s", i, r, r.Value)
		}
	}

	// RPC through the external broker.
	var res struct {
		Result json.RawMessage `json:"result"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/echo", `{"n":7}`, &res); st != http.StatusOK || string(res.Result) != `{"n":7}` {
		t.Fatalf("rpc: status %d result %s", st, res.Result)
	}

	// Away: offline, and a queued call waits.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	online(false)
	before := calls.Load()
	q := queueCall(t, p, d.ID, "echo", `{"q":1}`, "ttl=1m")
	if q.State != "queued" {
		t.Fatalf("call to an offline device: state %s, want queued", q.State)
	}
	c = newClient()
	defer c.Close()
	online(true)
	waitState(t, p, q.ID, "succeeded")
	if n := calls.Load() - before; n != 1 {
		t.Fatalf("the queued call ran %d times, want once", n)
	}

	// A device that is only mosquitto_pub.
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Log("no mosquitto_pub: the third-party publisher is not tried")
		return
	}
	host, port, _ := net.SplitHostPort(addr)
	msg := `{"id":"shell-1","r":[{"f":"shell","t":1717243200000,"v":42}]}`
	out, err := exec.Command(pub, "-h", host, "-p", port, "-V", "mqttv311", "-q", "1", "-i", d.ID+"-sh",
		"-t", "outpost/v1/"+d.ID+"/up/telemetry", "-m", msg).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	outposttest.Eventually(t, 10*time.Second, "mosquitto_pub's reading stored", func() bool {
		var r readingsResp
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=shell", nil, &r)
		return len(r.Readings) == 1 && string(r.Readings[0].Value) == "42"
	})
}
