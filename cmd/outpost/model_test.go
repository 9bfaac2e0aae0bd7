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
		{[]string{"events", d.ID, "--kind", "notification"}, `"title": "Hello"`},
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
