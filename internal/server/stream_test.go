package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

type sseEvent struct {
	id, kind string
	data     json.RawMessage
}

// openStream subscribes to the live stream and returns a channel of events.
func openStream(t *testing.T, p *outposttest.Platform, query string) <-chan sseEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", p.HTTPURL()+"/api/v1/stream"+query, nil)
	req.Header.Set("Authorization", "Bearer "+p.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan sseEvent, 100)
	go func() {
		defer resp.Body.Close()
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var e sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e.kind != "" {
					ch <- e
				}
				e = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				e.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				e.kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				e.data = json.RawMessage(line[6:])
			}
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("stream closed")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return sseEvent{}
}

func TestStreamPresenceAndTelemetry(t *testing.T) {
	p := outposttest.Start(t)
	a := p.CreateDevice(t, "a")
	b := p.CreateDevice(t, "b")
	onlyA := openStream(t, p, "?device="+a.ID)
	presenceOnly := openStream(t, p, "?kind=presence")

	ca := connect(t, a.URL)
	e := next(t, onlyA)
	var pres struct {
		DeviceID string `json:"device_id"`
		Online   bool   `json:"online"`
		Reason   string `json:"reason"`
	}
	json.Unmarshal(e.data, &pres)
	if e.kind != "presence" || pres.DeviceID != a.ID || !pres.Online {
		t.Fatalf("first event = %s %s, want presence online of %s", e.kind, e.data, a.ID)
	}

	cb := connect(t, b.URL)
	cb.Add("x", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cb.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	ca.Add("temperature", 20.5)
	if err := ca.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	// Device b's events are filtered out of onlyA: the next one is a's
	// telemetry.
	e = next(t, onlyA)
	var tel struct {
		DeviceID string `json:"device_id"`
		Readings []struct {
			Feed  string          `json:"feed"`
			Value json.RawMessage `json:"value"`
			TS    int64           `json:"ts"`
		} `json:"readings"`
	}
	json.Unmarshal(e.data, &tel)
	if e.kind != "telemetry" || tel.DeviceID != a.ID || len(tel.Readings) != 1 || tel.Readings[0].Feed != "temperature" || string(tel.Readings[0].Value) != "20.5" || tel.Readings[0].TS == 0 {
		t.Fatalf("event = %s %s, want a's temperature reading", e.kind, e.data)
	}

	// The presence-only stream saw both devices come online and nothing
	// else; a then goes offline.
	seen := map[string]bool{}
	for range 2 {
		e := next(t, presenceOnly)
		json.Unmarshal(e.data, &pres)
		if e.kind != "presence" || !pres.Online {
			t.Fatalf("presence stream got %s %s", e.kind, e.data)
		}
		seen[pres.DeviceID] = true
	}
	if !seen[a.ID] || !seen[b.ID] {
		t.Fatalf("online events for %v, want both devices", seen)
	}
	ca.Close()
	e = next(t, presenceOnly)
	json.Unmarshal(e.data, &pres)
	if pres.DeviceID != a.ID || pres.Online || pres.Reason == "" {
		t.Fatalf("after close: %s, want %s offline with a reason", e.data, a.ID)
	}
	var dev struct {
		Online   bool
		LastSeen time.Time `json:"last_seen"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+a.ID, nil, &dev)
	if dev.Online || time.Since(dev.LastSeen) > time.Minute {
		t.Fatalf("device after disconnect = %+v", dev)
	}
}

func TestStreamResumesWithLastEventID(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "resume")
	first := openStream(t, p, "?kind=telemetry")
	c := connect(t, d.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		c.Add("n", i)
		if err := c.Publish(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e1 := next(t, first)
	// A client that saw only the first event resumes from its id and gets
	// the other two, in order.
	resumed := openStream(t, p, "?kind=telemetry&last_event_id="+e1.id)
	for want := 1; want <= 2; want++ {
		e := next(t, resumed)
		if !strings.Contains(string(e.data), `"value":`+string(rune('0'+want))) {
			t.Fatalf("resumed event %d = %s", want, e.data)
		}
	}
}
