package server_test

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/mosquittotest"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// TestExternalBrokerFloodingDeviceDoesNotStall: behind an external broker
// a message the rate limit refused would stay unacknowledged at the
// broker, and acknowledgements go in order: every later message of every
// device would wait behind it once the broker's window (here 32) is full.
// A device flooding far over its limit must not hold up everybody else:
// its messages are stored in debt and counted (the broker acknowledged
// them; nothing acknowledged is dropped), and another device's readings
// get through at once. Both devices are mosquitto_pub.
func TestExternalBrokerFloodingDeviceDoesNotStall(t *testing.T) {
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Skip("needs mosquitto_pub")
	}
	// Mosquitto's own in-flight bound left at its default, so that the
	// broker honours the window the platform announces.
	addr := mosquittotest.Start(t, mosquittotest.Plain(), mosquittotest.ConfigLines("max_queued_messages 0")).Addr
	p := outposttest.Start(t, func(c *server.Config) {
		c.Broker = "mqtt://outpost:secret@" + addr
		c.DeviceRate, c.DeviceBurst = 5, 5 // readings per second
		c.BrokerReceiveMaximum = 32        // a small window
	})
	host, port, _ := net.SplitHostPort(addr)
	publish := func(id string, n int) {
		t.Helper()
		var lines []string
		for i := range n {
			lines = append(lines, fmt.Sprintf(`{"id":"%s-%d","r":[{"f":"v","t":%d,"v":%d}]}`, id, i, 1_717_243_200_000+i, i))
		}
		cmd := exec.Command(pub, "-h", host, "-p", port, "-V", "mqttv311", "-q", "1", "-i", id+"-pub",
			"-t", "outpost/v1/"+id+"/up/telemetry", "-l")
		cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out)
		}
	}
	count := func(id string) int {
		var r readingsResp
		p.Do(t, "GET", "/api/v1/devices/"+id+"/telemetry?feed=v&limit=1000", nil, &r)
		return len(r.Readings)
	}
	flood, calm := p.CreateDevice(t, "flood"), p.CreateDevice(t, "calm")
	const floodN = 200 // 40 s of its limit
	publish(flood.ID, floodN)
	start := time.Now()
	publish(calm.ID, 5) // within its burst
	// Held back, the flood would take 40 s to drain before the calm
	// device's messages left the broker.
	outposttest.Eventually(t, 15*time.Second, "the calm device's readings stored", func() bool { return count(calm.ID) == 5 })
	t.Logf("calm device stored %v after the flood", time.Since(start))
	outposttest.Eventually(t, 15*time.Second, "every flooded reading stored", func() bool { return count(flood.ID) == floodN })
	if over := metric(t, p, "outpost_telemetry_rate_overrun_total"); over < floodN-10 {
		t.Errorf("%v messages counted over the limit, want nearly all %d of the flood", over, floodN)
	}
	if held := metric(t, p, "outpost_telemetry_rate_limited_total"); held != 0 {
		t.Errorf("%v messages held back behind the broker", held)
	}
}
