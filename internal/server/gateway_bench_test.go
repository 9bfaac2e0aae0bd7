package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// Gateway against direct device, each pair in the same run
// (go test -run XXX -bench Gateway ./internal/server/):
//
//   - readings/s of messages of 1,000 readings: from 1,000 children (one
//     reading each, every message mixing them all) through one gateway,
//     and from one device;
//   - RPC round trip to a child through its gateway (device.Gateway),
//     and to a device (device.Client).

func rawClient(b *testing.B, p *outposttest.Platform, d outposttest.Device) mqtt.Client {
	b.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + p.MQTTAddr()).SetProtocolVersion(4).
		SetClientID(d.ID).SetUsername(d.ID).SetPassword(d.Password).SetCleanSession(true).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		b.Fatalf("connect: %v", tok.Error())
	}
	b.Cleanup(func() { c.Disconnect(100) })
	return c
}

// publishAll publishes the payloads with QoS 1, up to window in flight.
func publishAll(b *testing.B, c mqtt.Client, topic string, payloads [][]byte, window int) {
	b.Helper()
	var toks []mqtt.Token
	for _, p := range payloads {
		toks = append(toks, c.Publish(topic, 1, false, p))
		if len(toks) == window {
			for _, t := range toks {
				if !t.WaitTimeout(waitFor) || t.Error() != nil {
					b.Fatalf("publish: %v", t.Error())
				}
			}
			toks = toks[:0]
		}
	}
	for _, t := range toks {
		if !t.WaitTimeout(waitFor) || t.Error() != nil {
			b.Fatalf("publish: %v", t.Error())
		}
	}
}

func BenchmarkGatewayIngest(b *testing.B) {
	const per = 1000
	for _, mode := range []string{"gateway-1000-children", "direct-device"} {
		b.Run(mode, func(b *testing.B) {
			p := outposttest.Start(b)
			d := p.CreateDevice(b, "src")
			topic := topicOf(d.ID, "up", "telemetry")
			mk := func(i int) []byte {
				rs := make([]map[string]any, per)
				for j := range rs {
					rs[j] = map[string]any{"f": "v", "v": j, "t": 1717243200000 + int64(i)}
				}
				return mustJSON(b, map[string]any{"id": fmt.Sprintf("b-%d", i), "r": rs})
			}
			if mode != "direct-device" {
				p.Do(b, "PUT", "/api/v1/gateways/"+d.ID, map[string]string{"policy": "auto"}, nil)
				topic = topicOf(d.ID, "up", "gw/telemetry")
				mk = func(i int) []byte {
					rs := make([]map[string]any, per)
					for j := range rs {
						rs[j] = map[string]any{"c": fmt.Sprintf("n%d", j), "f": "v", "v": j, "t": 1717243200000 + int64(i)}
					}
					return mustJSON(b, map[string]any{"id": fmt.Sprintf("b-%d", i), "r": rs})
				}
			}
			c := rawClient(b, p, d)
			publishAll(b, c, topic, [][]byte{mk(-1)}, 1) // registers the children
			payloads := make([][]byte, b.N)
			for i := range payloads {
				payloads[i] = mk(i)
			}
			b.ResetTimer()
			start := time.Now()
			publishAll(b, c, topic, payloads, 16)
			b.ReportMetric(float64(b.N*per)/time.Since(start).Seconds(), "readings/s")
		})
	}
}

func mustJSON(b *testing.B, v any) []byte {
	raw, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

func BenchmarkGatewayRPC(b *testing.B) {
	for _, mode := range []string{"child-via-gateway", "direct-device"} {
		b.Run(mode, func(b *testing.B) {
			p := outposttest.Start(b)
			d := p.CreateDevice(b, "dev")
			c, err := device.New(d.URL, device.WithMemoryOutbox())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			target := d.ID
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if mode == "direct-device" {
				c.Handle("ping", func(context.Context, json.RawMessage) (any, error) { return "pong", nil })
				if err := c.Connect(ctx); err != nil {
					b.Fatal(err)
				}
			} else {
				p.Do(b, "PUT", "/api/v1/gateways/"+d.ID, map[string]string{"policy": "auto"}, nil)
				g, _ := device.NewGateway(c)
				g.HandleChild("ping", func(context.Context, string, json.RawMessage) (any, error) { return "pong", nil })
				g.Join(ctx, map[string]string{"n1": ""})
				if err := c.Connect(ctx); err != nil {
					b.Fatal(err)
				}
				var out struct {
					Children []gwChild `json:"children"`
				}
				outposttest.Eventually(b, 10*time.Second, "child", func() bool {
					p.Do(b, "GET", "/api/v1/gateways/"+d.ID+"/children", nil, &out)
					return len(out.Children) == 1
				})
				target = out.Children[0].DeviceID
				outposttest.Eventually(b, 10*time.Second, "child online", func() bool {
					var dv apiDevice
					p.Do(b, "GET", "/api/v1/devices/"+target, nil, &dv)
					return dv.Online
				})
			}
			b.ResetTimer()
			for b.Loop() {
				if st := p.Do(b, "POST", "/api/v1/devices/"+target+"/rpc/ping", nil, nil); st != http.StatusOK {
					b.Fatalf("call: %d", st)
				}
			}
		})
	}
}
