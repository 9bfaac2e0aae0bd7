package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
	"github.com/outpost-iot/outpost/internal/server"
)

// twoReplicas starts two replicas, "a" and "b", on one Mosquitto of the
// test's own and one PostgreSQL schema; it skips without them.
func twoReplicas(t *testing.T) (a, b *outposttest.Platform) {
	t.Helper()
	dbURL, _ := pgtest.MustSchema(t) // skips without OUTPOST_TEST_POSTGRES
	addr := startMosquitto(t)
	replica := func(name string) *outposttest.Platform {
		return outposttest.Start(t, func(c *server.Config) {
			c.DB, c.Broker, c.Replica = dbURL, "mqtt://outpost:secret@"+addr, name
		})
	}
	return replica("a"), replica("b")
}

// connectSDK connects device d with the device SDK; it is closed when
// the test ends.
func connectSDK(t *testing.T, ctx context.Context, d outposttest.Device) *device.Client {
	t.Helper()
	c, err := device.New(d.URL, device.WithLogger(outposttest.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitPeers waits until replica p mirrors its events to n other replicas
// (they told it they have live-stream listeners).
func waitPeers(t *testing.T, p *outposttest.Platform, n float64) {
	t.Helper()
	outposttest.Eventually(t, 10*time.Second, "replica sees the other's stream listener", func() bool {
		return metric(t, p, "outpost_replica_stream_peers") >= n
	})
}

// TestReplicasMirrorOnlyWhileListened: replicas send one another their
// live-stream events only while one of them has a listener. Without one,
// nothing is mirrored (before, every committed batch went through the
// broker once more to every replica); with one on replica b, b's stream
// shows what replica a committed, and a (which has no listener) gets
// nothing from b.
func TestReplicasMirrorOnlyWhileListened(t *testing.T) {
	a, b := twoReplicas(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d := a.CreateDevice(t, "m-1")
	c := connectSDK(t, ctx, d)
	stored := func() float64 {
		return metric(t, a, "outpost_batches_stored_total") + metric(t, b, "outpost_batches_stored_total")
	}
	send := func(from, n int) {
		t.Helper()
		for j := from; j < from+n; j++ {
			if err := c.AddAt("v", j, time.UnixMilli(int64(1_700_000_000_000+j))); err != nil {
				t.Fatal(err)
			}
			if err := c.Publish(ctx); err != nil { // one reading a message
				t.Fatal(err)
			}
		}
		outposttest.Eventually(t, 30*time.Second, "batches committed", func() bool { return stored() == float64(from+n) })
	}

	send(0, 40)
	ma, mb := metric(t, a, "outpost_replica_events_mirrored_total"), metric(t, b, "outpost_replica_events_mirrored_total")
	if ma != 0 || mb != 0 {
		t.Fatalf("events mirrored with no listener anywhere: a %v, b %v; want none", ma, mb)
	}

	streamB := openStream(t, b, "?kind=telemetry")
	waitPeers(t, a, 1)
	before := metric(t, a, "outpost_batches_stored_total")
	send(40, 40)
	byA := metric(t, a, "outpost_batches_stored_total") - before
	if byA == 0 || byA == 40 {
		t.Logf("replica a committed %v of 40 batches (the broker chose)", byA)
	}
	seen := 0
	var lastB string
	for seen < 40 {
		e := next(t, streamB)
		lastB = e.id
		var ev struct {
			Readings []json.RawMessage `json:"readings"`
		}
		if err := json.Unmarshal(e.data, &ev); err != nil {
			t.Fatal(err)
		}
		seen += len(ev.Readings)
	}
	if seen != 40 {
		t.Fatalf("replica b's stream showed %d readings, want 40", seen)
	}
	if ma := metric(t, a, "outpost_replica_events_mirrored_total"); ma < byA {
		t.Errorf("replica a mirrored %v events, want at least the %v batches it committed", ma, byA)
	}
	if mb := metric(t, b, "outpost_replica_events_mirrored_total"); mb != 0 {
		t.Errorf("replica b mirrored %v events to a, which has no listener", mb)
	}

	// Each replica numbers the events itself: b's ids carry its name, and
	// a client that resumes on a with one of them (a load balancer moved
	// it) is told it missed an unknown number of events.
	if !strings.HasPrefix(lastB, "b:") {
		t.Fatalf("replica b's event id %q does not name it", lastB)
	}
	if e := next(t, openStream(t, a, "?kind=telemetry&last_event_id="+lastB)); e.kind != "gap" || !strings.Contains(string(e.data), `"unknown":true`) {
		t.Fatalf("resume on a with b's id %s: first event %s %s, want a gap of unknown size", lastB, e.kind, e.data)
	}
}

// TestReplicasFeedCacheFollows: replicas cache a device's feed
// definitions. A feed the device registers through one replica must not
// be refused by the other's stale cache: every reading of the new feed is
// stored, whichever replica takes it, and none is rejected.
func TestReplicasFeedCacheFollows(t *testing.T) {
	a, b := twoReplicas(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	d := a.CreateDevice(t, "feeds")
	c := connectSDK(t, ctx, d)
	registered := func(ref string) {
		t.Helper()
		if err := c.RegisterFeeds(ctx, device.Feed{Ref: ref, Type: device.FeedIn, DataType: device.Number}); err != nil {
			t.Fatal(err)
		}
		outposttest.Eventually(t, 10*time.Second, "feed "+ref+" registered", func() bool {
			return a.Do(t, "GET", "/api/v1/devices/"+d.ID+"/feeds/"+ref, nil, nil) == 200
		})
	}
	i := 0
	send := func(feed string) {
		t.Helper()
		if err := c.AddAt(feed, i, time.UnixMilli(int64(1_700_000_000_000+i))); err != nil {
			t.Fatal(err)
		}
		i++
		if err := c.Publish(ctx); err != nil { // one reading a message
			t.Fatal(err)
		}
	}
	registered("x")
	// Both replicas cache the definitions ({x}) once each handled a
	// message of the device.
	outposttest.Eventually(t, 30*time.Second, "both replicas committed the device's batches", func() bool {
		send("x")
		return metric(t, a, "outpost_batches_stored_total") > 0 && metric(t, b, "outpost_batches_stored_total") > 0
	})
	registered("y") // through one of them
	const n = 20
	for range n {
		send("y")
	}
	outposttest.Eventually(t, 30*time.Second, "every reading of the new feed stored", func() bool {
		var r readingsResp
		b.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=y&limit=1000", nil, &r)
		return len(r.Readings) == n
	})
	if ra, rb := metric(t, a, "outpost_readings_rejected_total"), metric(t, b, "outpost_readings_rejected_total"); ra+rb != 0 {
		t.Fatalf("readings rejected: a %v, b %v; want none", ra, rb)
	}
}

// TestReplicasGatewayChildren: replicas each keep a copy of a gateway's
// children. A child added through the API of one replica must not be
// refused by the other's copy, and a child removed through one must not
// be stored for by the other: every reading the gateway sends for the
// new child is stored, none for the removed one. And the gateway's
// answers (a child's RPC result, a sink configuration's result) reach the
// replica whose caller waits. The gateway is a bare MQTT 3.1.1 client
// (paho.mqtt.golang) with policy provisioned.
func TestReplicasGatewayChildren(t *testing.T) {
	a, b := twoReplicas(t)
	gwd, gw := startGateway(t, a, "gw-replicas", "provisioned")
	addChild := func(address string) string {
		t.Helper()
		var c gwChild
		if st := a.Do(t, "PUT", "/api/v1/gateways/"+gwd.ID+"/children/"+address, nil, &c); st != 200 && st != 201 {
			t.Fatalf("add child %s: status %d", address, st)
		}
		return c.DeviceID
	}
	n := 0
	send := func(rs ...gwReading) {
		t.Helper()
		n++
		gw.publish(t, topicOf(gwd.ID, "up", "gw/telemetry"), gwBatch{ID: fmt.Sprint("g-", n), R: rs})
	}
	stored := func(p *outposttest.Platform) float64 { return metric(t, p, "outpost_batches_stored_total") }
	c1 := addChild("1001")
	// Both replicas load the gateway once each handled one of its
	// messages.
	outposttest.Eventually(t, 30*time.Second, "both replicas stored the gateway's batches", func() bool {
		send(gwReading{C: "1001", F: "v", V: n, T: int64(1_700_000_000_000 + n)})
		return stored(a) > 0 && stored(b) > 0
	})
	c2 := addChild("1002") // through replica a
	const m = 20
	for range m {
		send(gwReading{C: "1002", F: "v", V: n, T: int64(1_700_000_000_000 + n)})
	}
	outposttest.Eventually(t, 30*time.Second, "every reading of the added child stored", func() bool {
		return len(readingsOf(t, b, c2, "v")) == m
	})
	if st := a.Do(t, "DELETE", "/api/v1/gateways/"+gwd.ID+"/children/1001", nil, nil); st != 200 && st != 204 {
		t.Fatalf("remove child: status %d", st)
	}
	before := len(readingsOf(t, b, c1, "v"))
	for range m {
		send(gwReading{C: "1001", F: "v", V: n, T: int64(1_700_000_000_000 + n)}, gwReading{C: "1002", F: "v", V: n, T: int64(1_700_000_000_000 + n)})
	}
	outposttest.Eventually(t, 30*time.Second, "the added child's readings of the mixed batches stored", func() bool {
		return len(readingsOf(t, b, c2, "v")) == 2*m
	})
	if after := len(readingsOf(t, b, c1, "v")); after != before {
		t.Fatalf("the removed child got %d more readings through a stale copy", after-before)
	}

	// Answers that the gateway sends back (a child's RPC result, a sink
	// configuration result) reach the replica whose caller waits,
	// whichever replica the broker's shared subscription would give them.
	// Callers on both replicas, in an order that the broker's
	// round-robin of the answers cannot follow by chance.
	via := []int{0, 0, 1, 1, 0, 1, 1, 0}
	for i, r := range via {
		done := answer(t, gw, gwd.ID, "gw/rpc", func(q gwRequest) string {
			return fmt.Sprintf(`{"c":%q,"id":%q,"result":%s}`, q.C, q.ID, q.Args)
		})
		var res struct {
			Result json.RawMessage `json:"result"`
		}
		p := []*outposttest.Platform{a, b}[r]
		if st := p.Do(t, "POST", "/api/v1/devices/"+c2+"/rpc/echo?timeout=5s", fmt.Sprint(i), &res); st != 200 || string(res.Result) != fmt.Sprint(i) {
			t.Fatalf("rpc %d to the child through replica %d: status %d, result %s", i, r, st, res.Result)
		}
		<-done
	}
	// Behind Mosquitto the platform learns that the gateway is online
	// from its announcement (docs/protocol.md §2.9).
	gw.publish(t, topicOf(gwd.ID, "up", "presence"), `{"online":true,"session":"gw-1"}`)
	outposttest.Eventually(t, 10*time.Second, "the gateway online on both replicas", func() bool {
		return online(t, a, gwd.ID) && online(t, b, gwd.ID)
	})
	gw.publish(t, topicOf(gwd.ID, "up", "gw/sinks"), `{"sinks":[{"name":"sink1","config":{"channel":5}}]}`)
	outposttest.Eventually(t, 10*time.Second, "the sink known", func() bool {
		return a.Do(t, "GET", "/api/v1/gateways/"+gwd.ID+"/sinks/sink1", nil, nil) == 200
	})
	for i, r := range via {
		done := answer(t, gw, gwd.ID, "gw/config", func(q gwRequest) string {
			return fmt.Sprintf(`{"id":%q,"sink":%q,"res":"ok","config":%s}`, q.ID, q.Sink, q.Config)
		})
		var res struct {
			Result string `json:"result"`
		}
		p := []*outposttest.Platform{a, b}[r]
		if st := p.Do(t, "POST", "/api/v1/gateways/"+gwd.ID+"/sinks/sink1/config", fmt.Sprintf(`{"config":{"channel":%d},"timeout":"5s"}`, i), &res); st != 200 || res.Result != "ok" {
			t.Fatalf("sink configuration %d through replica %d: status %d, result %q", i, r, st, res.Result)
		}
		<-done
	}
}

// gwRequest is a request the platform sends a gateway on down/gw/….
type gwRequest struct {
	C      string          `json:"c"`
	ID     string          `json:"id"`
	Sink   string          `json:"sink"`
	Args   json.RawMessage `json:"args"`
	Config json.RawMessage `json:"config"`
}

// answer answers, in the background, the gateway's next request on
// down/{kind} with the up/{kind} message reply makes of it; the channel
// closes once the answer is published.
func answer(t *testing.T, gw *bareDevice, id, kind string, reply func(gwRequest) string) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var q gwRequest
		if err := json.Unmarshal(gw.next(t, topicOf(id, "down", kind)), &q); err != nil {
			t.Error(err)
			return
		}
		gw.publish(t, topicOf(id, "up", kind), reply(q))
	}()
	return done
}
