package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/mosquittotest"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
)

// TestExternalBrokerDynsec: with --broker-admin the platform keeps the
// devices' logins in Mosquitto's dynamic security. The platform creates
// its own login at start; a device created through the API connects to
// Mosquitto with its secret and its readings are stored; after a secret
// rotation the old secret is refused by Mosquitto and the new one works;
// a deleted device can no longer log in.
func TestExternalBrokerDynsec(t *testing.T) {
	b := mosquittotest.Start(t) // dynamic security, an admin login
	p := outposttest.Start(t, func(c *server.Config) {
		c.Broker = b.URL("outpost-platform", "platform-secret-1")
		c.BrokerAdmin = b.AdminURL()
	})
	d := p.CreateDevice(t, "dyn-1")
	tryConnect := func(url string) error {
		c, err := device.New(url, device.WithLogger(outposttest.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = c.Connect(ctx)
		if err == nil {
			if err := c.Add("t", 1.5); err != nil {
				t.Fatal(err)
			}
			if err := c.Publish(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return err
	}
	if err := tryConnect(d.URL); err != nil {
		t.Fatalf("a device the platform created cannot log in to Mosquitto: %v", err)
	}
	outposttest.Eventually(t, 10*time.Second, "the reading stored", func() bool {
		var r readingsResp
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/telemetry?feed=t", nil, &r)
		return len(r.Readings) == 1
	})

	var rot struct {
		Password string `json:"password"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/secret", nil, &rot); st != http.StatusOK || rot.Password == "" {
		t.Fatalf("rotate: %d %+v", st, rot)
	}
	if err := tryConnect(d.URL); err == nil {
		t.Fatal("Mosquitto still takes the old secret after a rotation")
	}
	newURL := strings.Replace(d.URL, ":"+d.Password+"@", ":"+rot.Password+"@", 1)
	if err := tryConnect(newURL); err != nil {
		t.Fatalf("the new secret does not work at Mosquitto: %v", err)
	}

	if st := p.Do(t, "DELETE", "/api/v1/devices/"+d.ID, nil, nil); st != http.StatusNoContent {
		t.Fatalf("delete: %d", st)
	}
	if err := tryConnect(newURL); err == nil {
		t.Fatal("a deleted device still logs in to Mosquitto")
	}
}

// TestEMQXAuthEndpoints: --emqx-auth serves EMQX's HTTP authentication and
// authorization beside the API, called here as EMQX calls them, with the
// shared secret.
func TestEMQXAuthEndpoints(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.EMQXAuth, c.EMQXAuthSecret = true, "emqx-hook-secret" })
	d := p.CreateDevice(t, "emqx-1")
	call := func(path, secret string, body map[string]string) string {
		t.Helper()
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest("POST", p.HTTPURL()+path, strings.NewReader(string(raw)))
		req.Header.Set("Content-Type", "application/json")
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Result string `json:"result"`
		}
		json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		return out.Result
	}
	const sec = "emqx-hook-secret"
	for _, tt := range []struct {
		path, secret string
		body         map[string]string
		want         string
	}{
		{"/emqx/authn", sec, map[string]string{"username": d.ID, "password": d.Password, "clientid": d.ID}, "allow"},
		{"/emqx/authn", sec, map[string]string{"username": d.ID, "password": "wrong", "clientid": d.ID}, "deny"},
		{"/emqx/authn", "", map[string]string{"username": d.ID, "password": d.Password, "clientid": d.ID}, "deny"},
		{"/emqx/authz", sec, map[string]string{"username": d.ID, "clientid": d.ID, "action": "publish", "topic": "outpost/v1/" + d.ID + "/up/telemetry"}, "allow"},
		{"/emqx/authz", sec, map[string]string{"username": d.ID, "clientid": d.ID, "action": "publish", "topic": "outpost/v1/d-other/up/telemetry"}, "deny"},
		{"/emqx/authz", sec, map[string]string{"username": d.ID, "clientid": d.ID, "action": "subscribe", "topic": "outpost/v1/+/down/#"}, "deny"},
	} {
		if got := call(tt.path, tt.secret, tt.body); got != tt.want {
			t.Errorf("%s %v (secret %q): %s, want %s", tt.path, tt.body, tt.secret, got, tt.want)
		}
	}
}
