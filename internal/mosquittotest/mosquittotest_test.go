package mosquittotest_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/goleak"

	"github.com/outpost-iot/outpost/internal/mosquittotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// connect opens an MQTT 5 session; persistent keeps it for an hour.
func connect(t *testing.T, addr, id, user, pass string, persistent bool, msgs chan *paho.Publish) (*paho.Client, *paho.Connack) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := paho.ClientConfig{Conn: conn, ClientID: id}
	if msgs != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			msgs <- pr.Packet
			return true, nil
		}}
	}
	c := paho.NewClient(cfg)
	cp := &paho.Connect{KeepAlive: 30, ClientID: id, CleanStart: !persistent}
	if persistent {
		exp := uint32(3600)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	if user != "" {
		cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = user, true, []byte(pass), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	return c, ca
}

func TestDynsecAdminLogsIn(t *testing.T) {
	b := mosquittotest.Start(t)
	if b.AdminUser == "" || b.AdminPassword == "" || b.DynsecPath == "" {
		t.Fatalf("no admin: %+v", b)
	}
	c, _ := connect(t, b.Addr, "admin-test", b.AdminUser, b.AdminPassword, false, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$CONTROL/dynamic-security/v1/response", QoS: 1}}})
	if err != nil || sa.Reasons[0] >= 0x80 {
		t.Fatalf("admin may not use the control topic: %v %v", sa, err)
	}
	_ = c.Disconnect(&paho.Disconnect{})
	<-c.Done()
	if !strings.Contains(b.Log(), "Loading plugin") {
		t.Errorf("plugin not loaded:\n%s", b.Log())
	}
}

// Anonymous clients are refused by the plugin's broker, and welcome on a
// plain one.
func TestPlainAndAnonymous(t *testing.T) {
	b := mosquittotest.Start(t)
	conn, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{KeepAlive: 30, ClientID: "anon", CleanStart: true}); err == nil {
		t.Fatal("anonymous client accepted with the plugin")
	}
	<-c.Done()

	p := mosquittotest.Start(t, mosquittotest.Plain())
	if p.AdminUser != "" {
		t.Fatalf("plain broker has an admin")
	}
	c2, _ := connect(t, p.Addr, "anon", "", "", false, nil)
	_ = c2.Disconnect(&paho.Disconnect{})
	<-c2.Done()
}

// With Persistence, a QoS 1 message queued for an offline persistent
// session survives a broker restart.
func TestPersistenceSurvivesRestart(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Plain(), mosquittotest.Persistence())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	msgs := make(chan *paho.Publish, 10)
	sub, _ := connect(t, b.Addr, "sub", "", "", true, msgs)
	if sa, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/#", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	_ = sub.Disconnect(&paho.Disconnect{})
	<-sub.Done()

	pub, _ := connect(t, b.Addr, "pub", "", "", false, nil)
	if _, err := pub.Publish(ctx, &paho.Publish{Topic: "t/1", QoS: 1, Payload: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	_ = pub.Disconnect(&paho.Disconnect{})
	<-pub.Done()

	b.Restart(t)
	if _, err := os.Stat(b.Dir + "/mosquitto.db"); err != nil {
		t.Fatalf("no persistence database: %v", err)
	}
	sub2, ca := connect(t, b.Addr, "sub", "", "", true, msgs)
	defer func() { _ = sub2.Disconnect(&paho.Disconnect{}); <-sub2.Done() }()
	if !ca.SessionPresent {
		t.Fatal("session lost across the restart")
	}
	select {
	case m := <-msgs:
		if string(m.Payload) != "kept" {
			t.Fatalf("got %q", m.Payload)
		}
	case <-ctx.Done():
		t.Fatal("queued message lost across the restart")
	}
}

func TestSkipsWhenMissing(t *testing.T) {
	var st *testing.T
	t.Run("binary", func(t *testing.T) {
		st = t
		t.Setenv("MOSQUITTO_BIN", "/nonexistent/mosquitto")
		mosquittotest.Start(t)
		t.Error("Start returned without the binary")
	})
	if !st.Skipped() {
		t.Error("not skipped without the binary")
	}
	t.Run("plugin", func(t *testing.T) {
		st = t
		t.Setenv("MOSQUITTO_DYNSEC_PLUGIN", "/nonexistent/plugin.so")
		mosquittotest.Start(t)
		t.Error("Start returned without the plugin")
	})
	if !st.Skipped() {
		t.Error("not skipped without the plugin")
	}
}
