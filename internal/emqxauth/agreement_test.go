package emqxauth_test

// One device ACL, three engines: the embedded broker's ACL hook
// (internal/broker, through a real platform), Mosquitto's dynamic security
// roles made by internal/dynsec, and emqxauth.Allowed (what EMQX asks).
// Each case is tried for real on the first two with an MQTT 5 client and
// must give the same decision as Allowed.

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/internal/dynsec"
	"github.com/outpost-iot/outpost/internal/emqxauth"
	"github.com/outpost-iot/outpost/internal/mosquittotest"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

func TestMain(m *testing.M) { outposttest.Main(m) }

type aclCase struct {
	action, topic string // {A}: the device's id; {B}: another device's
	// mosquittoAllows marks a publish Mosquitto lets through although
	// the embedded broker and EMQX refuse it: a malformed topic inside the
	// device's own up/ namespace (dynsec.DeviceACLs explains why).
	mosquittoAllows bool
}

var aclCases = []aclCase{
	{action: "publish", topic: "outpost/v1/{A}/up/telemetry"},
	{action: "publish", topic: "outpost/v1/{A}/up/raw/sensors/a"},
	{action: "publish", topic: "outpost/v1/{A}/up/files/status"},
	{action: "publish", topic: "outpost/v1/{A}/up/no-such-kind"},
	{action: "publish", topic: "outpost/v1/{A}/up"},
	{action: "publish", topic: "outpost/v1/{A}/up//x", mosquittoAllows: true},
	{action: "publish", topic: "outpost/v1/{A}/up/x/", mosquittoAllows: true},
	{action: "publish", topic: "outpost/v1/{A}/down/rpc"},
	{action: "publish", topic: "outpost/v1/{A}/sideways/x"},
	{action: "publish", topic: "outpost/v1/{A}"},
	{action: "publish", topic: "outpost/v1/{B}/up/telemetry"},
	{action: "publish", topic: "outpost/v1/{B}/down/rpc"},
	{action: "publish", topic: "outpost/v2/{A}/up/telemetry"},
	{action: "publish", topic: "elsewhere"},
	{action: "subscribe", topic: "outpost/v1/{A}/down/#"},
	{action: "subscribe", topic: "outpost/v1/{A}"},
	{action: "subscribe", topic: "outpost/v1/{A}/#"},
	{action: "subscribe", topic: "outpost/v1/{A}/+/rpc"},
	{action: "subscribe", topic: "outpost/v1/{A}/up/telemetry"},
	{action: "subscribe", topic: "#"},
	{action: "subscribe", topic: "+/#"},
	{action: "subscribe", topic: "outpost/#"},
	{action: "subscribe", topic: "outpost/v1/#"},
	{action: "subscribe", topic: "outpost/v1/+"},
	{action: "subscribe", topic: "outpost/v1/+/down/#"},
	{action: "subscribe", topic: "outpost/v1/+/up/#"},
	{action: "subscribe", topic: "outpost/+/{A}/#"},
	{action: "subscribe", topic: "outpost/v1/{B}"},
	{action: "subscribe", topic: "outpost/v1/{B}/down/#"},
	{action: "subscribe", topic: "outpost/v1/{A}x/#"},
	{action: "subscribe", topic: "$share/g/outpost/v1/{B}/down/#"},
	{action: "subscribe", topic: "$share/g/#"},
	{action: "subscribe", topic: "$SYS/#"},
}

func (c aclCase) render(a, b string) string {
	return strings.NewReplacer("{A}", a, "{B}", b).Replace(c.topic)
}

// engineClient is a device's MQTT 5 connection to one engine.
type engineClient struct{ *paho.Client }

func connectEngine(t *testing.T, addr, id, password string) engineClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: id})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{KeepAlive: 30, ClientID: id, CleanStart: true,
		Username: id, UsernameFlag: true, Password: []byte(password), PasswordFlag: true}); err != nil {
		t.Fatalf("connect %s to %s: %v", id, addr, err)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}); <-c.Done() })
	return engineClient{c}
}

// allowed tries the action and reports the broker's decision: a publish
// is refused by the ACL with PUBACK 0x87 (other codes, such as the
// embedded platform's 0x99 for a payload it cannot parse, come after the
// ACL let it through); a subscription by a SUBACK code of 0x80 or more.
func (e engineClient) allowed(t *testing.T, action, topic string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if action == emqxauth.ActionPublish {
		pr, err := e.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"readings":[]}`)})
		if pr == nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
		return pr.ReasonCode != 0x87
	}
	sa, err := e.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	if sa.Reasons[0] < 0x80 {
		// Leave room under the embedded broker's subscription limit.
		_, _ = e.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{topic}})
		return true
	}
	return false
}

func TestACLAgreesAcrossEngines(t *testing.T) {
	p := outposttest.Start(t)
	a := p.CreateDevice(t, "a")
	b := p.CreateDevice(t, "b")
	embedded := connectEngine(t, p.MQTTAddr(), a.ID, a.Password)

	var mosq engineClient
	m := mosquittotest.Start(t) // skips the whole test without Mosquitto
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ds, err := dynsec.Dial(ctx, m.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	for _, d := range []outposttest.Device{a, b} {
		if err := ds.CreateDevice(ctx, d.ID, d.Password); err != nil {
			t.Fatal(err)
		}
	}
	mosq = connectEngine(t, m.Addr, a.ID, a.Password)

	for _, c := range aclCases {
		topic := c.render(a.ID, b.ID)
		want := emqxauth.Allowed(a.ID, c.action, topic)
		if got := embedded.allowed(t, c.action, topic); got != want {
			t.Errorf("%s %s: embedded broker allows=%v, emqxauth.Allowed=%v", c.action, c.topic, got, want)
		}
		wantMosq := want || c.mosquittoAllows
		if got := mosq.allowed(t, c.action, topic); got != wantMosq {
			t.Errorf("%s %s: Mosquitto (dynsec) allows=%v, want %v", c.action, c.topic, got, wantMosq)
		}
	}
}
