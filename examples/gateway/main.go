// Command gateway is an Outpost gateway with a simulated radio mesh: 200
// nodes behind 2 sinks, in the manner of a Wirepas gateway. Every node is
// a child device of its own on the platform, with its readings, presence
// and RPCs, all carried by the gateway's one MQTT connection.
//
// Declare the device a gateway (policy auto: the nodes it announces are
// registered), then run the example:
//
//	curl -X PUT -H "Authorization: Bearer $OUTPOST_TOKEN" \
//	  $OUTPOST_SERVER/api/v1/gateways/ID -d '{"policy":"auto"}'
//	OUTPOST_DEVICE_URL=mqtt://ID:PASSWORD@127.0.0.1:1883 go run ./examples/gateway
//
// Each node measures a temperature and a battery level every -interval;
// the gateway sends the whole mesh's readings in a few messages that mix
// nodes. A node answers the RPC "blink" (through the gateway), each sink
// takes configuration changes of its channel (0–15; others are refused),
// and data sent to a node's endpoint 1 is echoed back on the sink's data
// as a node message. -cycles ends the run after that many rounds.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/protocol"
)

type config struct {
	URL      string
	Outbox   string
	Nodes    int
	Interval time.Duration
	Cycles   int
}

func main() {
	cfg := config{URL: os.Getenv("OUTPOST_DEVICE_URL")}
	flag.IntVar(&cfg.Nodes, "nodes", 200, "nodes in the mesh")
	flag.DurationVar(&cfg.Interval, "interval", 10*time.Second, "time between two rounds of readings")
	flag.IntVar(&cfg.Cycles, "cycles", 0, "rounds before exiting (0: until interrupted)")
	flag.StringVar(&cfg.Outbox, "outbox", "", "outbox directory (default: the device SDK's)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, log); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

// mesh is the simulated network: nodes, each reached through one sink.
type mesh struct {
	mu    sync.Mutex
	sinks map[string]map[string]any // sink → configuration
	temp  map[string]float64        // node → temperature
	batt  map[string]float64        // node → battery %
}

func nodeAddr(i int) string { return strconv.Itoa(1000 + i) }

func sinkOf(i int) string { return "sink" + strconv.Itoa(1+i%2) }

func run(ctx context.Context, cfg config, out io.Writer, log *slog.Logger) error {
	if cfg.URL == "" {
		return errors.New("set OUTPOST_DEVICE_URL to mqtt://ID:PASSWORD@HOST:PORT")
	}
	if cfg.Nodes <= 0 {
		cfg.Nodes = 200
	}
	opts := []device.Option{device.WithLogger(log)}
	if cfg.Outbox != "" {
		opts = append(opts, device.WithOutbox(cfg.Outbox))
	}
	c, err := device.New(cfg.URL, opts...)
	if err != nil {
		return err
	}
	defer c.Close()
	g, err := device.NewGateway(c)
	if err != nil {
		return err
	}
	m := &mesh{sinks: map[string]map[string]any{
		"sink1": {"network_address": 1234, "channel": 5, "role": "sink"},
		"sink2": {"network_address": 1234, "channel": 7, "role": "sink"},
	}, temp: map[string]float64{}, batt: map[string]float64{}}
	children := map[string]string{}
	for i := range cfg.Nodes {
		children[nodeAddr(i)] = sinkOf(i)
		m.temp[nodeAddr(i)] = 18 + rand.Float64()*6
		m.batt[nodeAddr(i)] = 100
	}

	g.HandleChild("blink", func(_ context.Context, addr string, args json.RawMessage) (any, error) {
		fmt.Fprintf(out, "node %s blinks %s\n", addr, args)
		return map[string]any{"node": addr, "blinked": json.RawMessage(orNull(args))}, nil
	})
	g.HandleSinkConfig(func(_ context.Context, sink string, change json.RawMessage) (json.RawMessage, string, error) {
		var ch map[string]any
		if err := json.Unmarshal(change, &ch); err != nil {
			return nil, protocol.ResultInvalidConfig, err
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		cur, ok := m.sinks[sink]
		if !ok {
			return nil, protocol.ResultInvalidSink, fmt.Errorf("no sink %s", sink)
		}
		if v, ok := ch["channel"]; ok {
			if f, ok := v.(float64); !ok || f < 0 || f > 15 || f != float64(int(f)) {
				return nil, protocol.ResultInvalidConfig, fmt.Errorf("channel %v is out of range 0-15", v)
			}
		}
		for k, v := range ch {
			cur[k] = v
		}
		raw, _ := json.Marshal(cur)
		fmt.Fprintf(out, "%s configured: %s\n", sink, raw)
		return raw, protocol.ResultOK, nil
	})
	g.HandleSend(func(ctx context.Context, req protocol.SendRequest) (string, error) {
		if req.Dest != protocol.BroadcastAddress {
			if _, ok := children[req.Dest]; !ok {
				return protocol.ResultInvalidDest, fmt.Errorf("no node %s", req.Dest)
			}
		}
		fmt.Fprintf(out, "%s → %s ep %d→%d: %q\n", req.Sink, req.Dest, req.SrcEP, req.DstEP, req.Payload)
		if req.DstEP == 1 && req.Dest != protocol.BroadcastAddress {
			// The node echoes: its answer comes up as node data.
			go g.SendNodeData(context.WithoutCancel(ctx), protocol.NodeMessage{Sink: req.Sink, Source: req.Dest, SrcEP: 1, DstEP: req.SrcEP, Payload: req.Payload})
		}
		return protocol.ResultOK, nil
	})

	sinks := map[string]json.RawMessage{}
	for name, cfg := range m.sinks {
		sinks[name], _ = json.Marshal(cfg)
	}
	if err := g.SetSinks(ctx, sinks); err != nil {
		return err
	}
	if err := g.Join(ctx, children); err != nil {
		return err
	}
	if err := c.Connect(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "gateway %s: %d nodes behind 2 sinks\n", c.ID(), cfg.Nodes)

	ticker := time.NewTicker(cfg.Interval)
	defer ticker.Stop()
	for cycle := 1; ; cycle++ {
		now := time.Now()
		var rs []device.ChildReading
		for i := range cfg.Nodes {
			a := nodeAddr(i)
			m.temp[a] += rand.NormFloat64() * 0.1
			m.batt[a] = max(0, m.batt[a]-rand.Float64()*0.01)
			rs = append(rs,
				device.ChildReading{Child: a, Reading: device.Reading{Feed: "temperature", Value: round(m.temp[a]), Time: now}},
				device.ChildReading{Child: a, Reading: device.Reading{Feed: "battery", Value: round(m.batt[a]), Time: now}})
		}
		if err := g.AddReadings(rs...); err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.Publish(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Warn("readings wait in the outbox", "error", err)
		}
		fmt.Fprintf(out, "round %d: %d readings of %d nodes\n", cycle, len(rs), cfg.Nodes)
		if cfg.Cycles > 0 && cycle >= cfg.Cycles {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

func round(f float64) float64 { return float64(int(f*100)) / 100 }

func orNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}
