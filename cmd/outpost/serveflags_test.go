package main

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/internal/emqxtest"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// TestServeHardeningFlags: the flags reach the server. /metrics is open by
// default and needs the token with --metrics-auth (issue 12, item 15).
func TestServeHardeningFlags(t *testing.T) {
	for _, tt := range []struct {
		args      []string
		anonymous int
	}{
		{nil, http.StatusOK},
		{[]string{"--metrics-auth", "--http-read-timeout", "5s", "--http-write-timeout", "30s", "--http-idle-timeout", "30s",
			"--http-read-header-timeout", "5s", "--http-max-conns", "64", "--integrity-check", "-1s"}, http.StatusUnauthorized},
	} {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		var out, errb syncBuf
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, append([]string{"serve", "--data", dir, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warn"}, tt.args...), &out, &errb)
		}()
		re := regexp.MustCompile(`(?m)^http: (http://\S+)$`)
		outposttest.Eventually(t, 10*time.Second, "serve output", func() bool { return re.MatchString(out.String()) })
		url := re.FindStringSubmatch(out.String())[1]
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.anonymous {
			t.Errorf("%v: /metrics without a token: %d, want %d", tt.args, resp.StatusCode, tt.anonymous)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("serve %v: %v (%s)", tt.args, err, errb.String())
		}
	}
}

// TestServeBrokerEventsFlag: --broker-events is checked, needs --broker,
// and reaches the link: with emqx, a plain MQTT client of a registered
// device shows online from the broker's events alone.
func TestServeBrokerEventsFlag(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--broker-events", "emqx"}, "give --broker too"},
		{[]string{"--broker", "mqtt://a:b@127.0.0.1:1", "--broker-events", "vernemq"}, `want emqx or none`},
	} {
		var out, errb syncBuf
		err := run(context.Background(), append([]string{"serve", "--data", t.TempDir()}, tt.args...), &out, &errb)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want an error about %q", tt.args, err, tt.want)
		}
	}

	br := emqxtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncBuf
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--data", t.TempDir(), "--http", "127.0.0.1:0", "--log-level", "warn",
			"--broker", "mqtt://outpost:x@" + br.Addr, "--broker-events", "emqx"}, &out, &errb)
	}()
	re := regexp.MustCompile(`(?m)^http: (http://\S+)$\n(?s:.*)^admin token: (\S+)$`)
	outposttest.Eventually(t, 15*time.Second, "serve output", func() bool { return re.MatchString(out.String()) })
	m := re.FindStringSubmatch(out.String())
	api := func(method, path string, body string, v any) {
		t.Helper()
		req, _ := http.NewRequest(method, m[1]+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+m[2])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	var d struct {
		ID       string `json:"id"`
		Password string `json:"password"`
		Online   bool   `json:"online"`
	}
	api("POST", "/api/v1/devices", `{"name":"plain"}`, &d)
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + br.Addr).SetClientID(d.ID).SetUsername(d.ID).SetPassword(d.Password).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer c.Disconnect(50)
	outposttest.Eventually(t, 10*time.Second, "the plain device online", func() bool {
		api("GET", "/api/v1/devices/"+d.ID, "", &d)
		return d.Online
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v (%s)", err, errb.String())
	}
}
