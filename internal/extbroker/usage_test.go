package extbroker_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/internal/extbroker"
	"github.com/outpost-iot/outpost/internal/mosquittotest"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/telemetry"
	"github.com/outpost-iot/outpost/protocol"
)

var _ telemetry.Exchange = (*extbroker.Link)(nil)

func TestUsageRoundTrip(t *testing.T) {
	big := map[string]int{}
	for i := range 2*extbroker.MaxUsageEntries + 7 {
		big[fmt.Sprint("dev-", i)] = i + 1
	}
	for _, tt := range []struct {
		name     string
		usage    map[string]int
		payloads int
	}{
		{"empty (a heartbeat)", map[string]int{}, 1},
		{"some devices", map[string]int{"a": 1, "b-2": 300, strings.Repeat("x", protocol.MaxDeviceIDLen): 1 << 30}, 1},
		{"split in payloads", big, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := extbroker.UsageReport{Group: "outpost", Origin: "outpost-r1", Usage: tt.usage}
			ps := extbroker.EncodeUsage(in)
			if len(ps) != tt.payloads {
				t.Fatalf("%d payloads, want %d", len(ps), tt.payloads)
			}
			got := map[string]int{}
			for _, p := range ps {
				r, err := extbroker.DecodeUsage(p)
				if err != nil {
					t.Fatal(err)
				}
				if r.Group != in.Group || r.Origin != in.Origin || len(r.Usage) > extbroker.MaxUsageEntries {
					t.Fatalf("decoded %s/%s with %d devices", r.Group, r.Origin, len(r.Usage))
				}
				maps.Copy(got, r.Usage)
			}
			if !maps.Equal(got, tt.usage) {
				t.Fatalf("round trip lost usage: %d devices of %d", len(got), len(tt.usage))
			}
		})
	}
	if ps := extbroker.EncodeUsage(extbroker.UsageReport{Group: "g", Origin: "o", Usage: map[string]int{"a": 0, "b": -3}}); len(ps) != 1 || len(ps[0]) != 6 {
		t.Fatalf("devices without readings encoded: %q", ps)
	}
}

func TestDecodeUsageMalformed(t *testing.T) {
	valid := extbroker.EncodeUsage(extbroker.UsageReport{Group: "g", Origin: "o", Usage: map[string]int{"a": 2}})[0]
	for name, b := range map[string][]byte{
		"empty":              {},
		"version 2":          append([]byte{2}, valid[1:]...),
		"truncated":          valid[:len(valid)-1],
		"trailing byte":      append(append([]byte{}, valid...), 0),
		"empty group":        {1, 0, 1, 'o', 0},
		"empty origin":       {1, 1, 'g', 0, 0},
		"zero readings":      {1, 1, 'g', 1, 'o', 1, 1, 'a', 0},
		"bad device id":      {1, 1, 'g', 1, 'o', 1, 1, '+', 1},
		"duplicate device":   {1, 1, 'g', 1, 'o', 2, 1, 'a', 1, 1, 'a', 1},
		"too many devices":   {1, 1, 'g', 1, 'o', 0x81, 0x08},
		"readings overflow":  {1, 1, 'g', 1, 'o', 1, 1, 'a', 0xff, 0xff, 0xff, 0xff, 0x0f},
		"string over length": {1, 0xff, 0xff, 0x03},
		"varint overflow":    {1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"json":               []byte(`{"origin":"o","usage":{"a":1}}`),
	} {
		if r, err := extbroker.DecodeUsage(b); err == nil {
			t.Errorf("%s: accepted %+v", name, r)
		}
	}
}

// FuzzDecodeUsage: a report from the broker never panics the decoder;
// what it accepts is within the bounds and encodes back to the same
// report.
func FuzzDecodeUsage(f *testing.F) {
	for _, r := range []extbroker.UsageReport{
		{Group: "outpost", Origin: "outpost-a", Usage: map[string]int{}},
		{Group: "outpost", Origin: "outpost-a", Usage: map[string]int{"dev-1": 12, "dev-2": 1}},
	} {
		f.Add(extbroker.EncodeUsage(r)[0])
	}
	f.Add([]byte{1, 1, 'g', 1, 'o', 2, 1, 'a', 1, 1, 'a', 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := extbroker.DecodeUsage(b)
		if err != nil {
			return
		}
		if r.Group == "" || r.Origin == "" || len(r.Group) > extbroker.MaxUsageName || len(r.Origin) > extbroker.MaxUsageName || len(r.Usage) > extbroker.MaxUsageEntries {
			t.Fatalf("accepted %q/%q with %d devices", r.Group, r.Origin, len(r.Usage))
		}
		for id, n := range r.Usage {
			if protocol.ValidID(id) != nil || n <= 0 {
				t.Fatalf("accepted %q: %d", id, n)
			}
		}
		ps := extbroker.EncodeUsage(r)
		if len(ps) != 1 {
			t.Fatalf("re-encoded in %d payloads", len(ps))
		}
		again, err := extbroker.DecodeUsage(ps[0])
		if err != nil || again.Group != r.Group || again.Origin != r.Origin || !maps.Equal(again.Usage, r.Usage) {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, r)
		}
	})
}

// nobody takes no device messages: the usage exchange needs none.
type nobody struct{}

func (nobody) StartMessage(context.Context, string, string, []byte, func(error)) (bool, error) {
	return false, nil
}
func (nobody) HandleMessage(context.Context, string, string, []byte) error { return nil }
func (nobody) Connected(string, outpost.SessionID)                         {}
func (nobody) Disconnected(string, outpost.SessionID, string) bool         { return true }
func (nobody) Online(string) bool                                          { return false }

// TestUsageOverMosquitto: two links on a real Mosquitto exchange usage
// reports; malformed ones, another group's and a replica's own are
// ignored.
func TestUsageOverMosquitto(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Plain())
	type got struct {
		origin string
		usage  map[string]int
	}
	open := func(id, group string) (*extbroker.Link, chan got) {
		l, err := extbroker.New(extbroker.Config{URL: "mqtt://" + b.Addr, ClientID: id, Group: group}, nobody{}, nobody{})
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan got, 100)
		l.OnUsage(func(origin string, usage map[string]int) { ch <- got{origin, usage} })
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l, ch
	}
	a, atA := open("outpost-a", "outpost")
	_, atB := open("outpost-b", "outpost")
	_, atOther := open("other-a", "other")

	// A plain client (another replica's voice, as Mosquitto carries it)
	// sends, in this order: garbage, another group's report, b's own
	// name, then a good report. Messages of one publisher arrive in order,
	// so once the good one is in, the others were dropped.
	conn, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "voice"})
	defer func() { _ = c.Disconnect(&paho.Disconnect{}); <-c.Done() }()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{KeepAlive: 30, ClientID: "voice", CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	send := func(p []byte) {
		if _, err := c.Publish(ctx, &paho.Publish{Topic: extbroker.InternalRoot + "/usage", QoS: 0, Payload: p}); err != nil {
			t.Fatal(err)
		}
	}
	send([]byte("not a report"))
	send(extbroker.EncodeUsage(extbroker.UsageReport{Group: "elsewhere", Origin: "x", Usage: map[string]int{"d": 5}})[0])
	send(extbroker.EncodeUsage(extbroker.UsageReport{Group: "outpost", Origin: "outpost-b", Usage: map[string]int{"d": 6}})[0])
	send(extbroker.EncodeUsage(extbroker.UsageReport{Group: "outpost", Origin: "outpost-c", Usage: map[string]int{"d": 7}})[0])
	wait := func(ch chan got, what string) got {
		t.Helper()
		select {
		case g := <-ch:
			return g
		case <-time.After(10 * time.Second):
			t.Fatalf("no report %s", what)
			return got{}
		}
	}
	if g := wait(atB, "from the voice at b"); g.origin != "outpost-c" || g.usage["d"] != 7 {
		t.Fatalf("b took %+v first, want outpost-c's report (the others dropped)", g)
	}
	if g := wait(atA, "from the voice at a"); g.origin != "outpost-b" || g.usage["d"] != 6 {
		t.Fatalf("a took %+v first, want the report in b's name", g)
	}
	if g := wait(atA, "from the voice at a"); g.origin != "outpost-c" {
		t.Fatalf("a took %+v, want outpost-c's report", g)
	}

	// a's own reports reach b, not a itself, and not the other group:
	// once they reached b, a marker from the voice is the first thing a
	// and the other group take.
	a.PublishUsage(map[string]int{"dev-1": 3})
	if g := wait(atB, "from a at b"); g.origin != "outpost-a" || !maps.Equal(g.usage, map[string]int{"dev-1": 3}) {
		t.Fatalf("b took %+v, want a's report", g)
	}
	send(extbroker.EncodeUsage(extbroker.UsageReport{Group: "outpost", Origin: "marker", Usage: map[string]int{}})[0])
	send(extbroker.EncodeUsage(extbroker.UsageReport{Group: "other", Origin: "marker", Usage: map[string]int{}})[0])
	if g := wait(atA, "marker at a"); g.origin != "marker" {
		t.Fatalf("a took %+v: its own report", g)
	}
	if g := wait(atOther, "marker at the other group"); g.origin != "marker" {
		t.Fatalf("the other group took %+v", g)
	}
}
