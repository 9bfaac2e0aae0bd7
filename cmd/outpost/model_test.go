package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

func TestModelCommands(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "cli-model")
	c, err := device.New(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan device.FeedCommand, 1)
	c.HandleFeed("mode", func(_ context.Context, cmd device.FeedCommand) error { got <- cmd; return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.RegisterFeeds(ctx, device.Feed{Ref: "mode", Type: device.FeedInOut, DataType: device.String}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAttribute(ctx, "model", device.String, "CLI-1"); err != nil {
		t.Fatal(err)
	}
	if err := c.SendNotification(ctx, "Hello", "from the device"); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx); err != nil { // the notification is queued: wait for its delivery
		t.Fatal(err)
	}

	out, _, err := runCLI(t, p, "feed", "set", "cli-model", "mode", "eco")
	if err != nil || !strings.Contains(out, `"feed": "mode"`) {
		t.Fatalf("feed set: %v\n%s", err, out)
	}
	select {
	case cmd := <-got:
		if string(cmd.Value) != `"eco"` {
			t.Fatalf("command %+v", cmd)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no command")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"feed", "list", d.ID}, "mode  mode  IN_OUT  string"},
		{[]string{"attributes", d.ID}, `model  string     "CLI-1"`},
		{[]string{"params", "set", d.ID, "rate=5", "name=x"}, `"rate": 5`},
		{[]string{"params", "unset", d.ID, "name"}, `"version": 2`},
		{[]string{"params", d.ID}, `"rate": 5`},
		{[]string{"events", d.ID, "--kind", "notification", "-o", "json"}, `"title": "Hello"`},
		{[]string{"model", d.ID}, `"data_type": "string"`},
	} {
		out, stderr, err := runCLI(t, p, tc.args...)
		if err != nil || !strings.Contains(out, tc.want) {
			t.Errorf("%v: %v %s\n%s", tc.args, err, stderr, out)
		}
	}
	if _, _, err := runCLI(t, p, "feed", "set", d.ID, "nope", "1"); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Errorf("unknown feed: %v", err)
	}
}

// outpost stream prints live events as JSON lines, filtered by device and
// kind, and -n stops it after that many.
func TestCLIStream(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "cli-stream")
	other := p.CreateDevice(t, "cli-stream-other")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	connect := func(url string) *device.Client {
		c, err := device.New(url, device.WithMemoryOutbox())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c, o := connect(d.URL), connect(other.URL)

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, _, err := runCLI(t, p, "stream", "--device", d.ID, "--kind", "event", "-n", "2")
		done <- result{out, err}
	}()
	// Events sent before the stream is subscribed are not replayed, so keep
	// sending (the other device's, and notifications, must be filtered out)
	// until the command has printed two and stopped.
	for i := 0; ; i++ {
		if err := o.SendEvent(ctx, "noise", i); err != nil {
			t.Fatal(err)
		}
		if err := c.SendNotification(ctx, "not an event", "filtered"); err != nil {
			t.Fatal(err)
		}
		if err := c.SendEvent(ctx, "door_open", i); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("stream: %v", r.err)
			}
			lines := strings.Split(strings.TrimSpace(r.out), "\n")
			if len(lines) != 2 {
				t.Fatalf("stream printed %d lines, want 2:\n%s", len(lines), r.out)
			}
			for _, l := range lines {
				if !strings.Contains(l, `"kind":"event"`) || !strings.Contains(l, `"device_id":"`+d.ID+`"`) || !strings.Contains(l, "door_open") {
					t.Fatalf("stream line %s: want only door_open events of %s", l, d.ID)
				}
			}
			return
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("stream did not print two events")
		}
	}
}
