package mosquittotest_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/internal/mosquittotest"
)

// TestSharedSubscriptionOfflineSession records what Mosquitto 2.0.11 does
// with a shared subscriber (a platform replica) that dies with QoS 1
// messages unacknowledged and a persistent session: nothing moves to the
// other members of the group. Its unacknowledged messages, and its share
// of the messages published while it is away, stay queued in its session
// and are resent when it returns with the same client identifier. A
// replica must therefore come back under the same client identifier (or
// its messages wait until the session expires, and are then lost);
// docs/deploy.md, "What each part guarantees".
func TestSharedSubscriptionOfflineSession(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Plain(), mosquittotest.Persistence())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	shared := func(id string, manual bool) (*paho.Client, chan *paho.Publish) {
		msgs := make(chan *paho.Publish, 100)
		conn, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: id, EnableManualAcknowledgment: manual,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				msgs <- pr.Packet
				return true, nil
			}}})
		exp := uint32(3600)
		ca, err := c.Connect(ctx, &paho.Connect{KeepAlive: 30, ClientID: id, CleanStart: false,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &exp}})
		if err != nil {
			t.Fatal(err)
		}
		if !ca.SessionPresent {
			if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/outpost/t/#", QoS: 1}}}); err != nil {
				t.Fatal(err)
			}
		}
		return c, msgs
	}
	r1, got1 := shared("replica-1", true)
	r2, got2 := shared("replica-2", false)
	defer func() { _ = r2.Disconnect(&paho.Disconnect{}); <-r2.Done() }()
	pub, _ := connect(t, b.Addr, "pub", "", "", false, nil)
	for i := range 10 {
		if _, err := pub.Publish(ctx, &paho.Publish{Topic: "t/x", QoS: 1, Payload: []byte{byte('0' + i)}}); err != nil {
			t.Fatal(err)
		}
	}
	var at1, at2 []string
	for len(at1)+len(at2) < 10 {
		select {
		case m := <-got1:
			at1 = append(at1, string(m.Payload))
		case m := <-got2:
			at2 = append(at2, string(m.Payload))
		case <-ctx.Done():
			t.Fatalf("only %v + %v", at1, at2)
		}
	}
	t.Logf("replica-1 (never acknowledges) got %v, replica-2 got %v", at1, at2)
	r1.TerminateConnectionForTest() // dies without acknowledging or DISCONNECT
	<-r1.Done()
	// A new message while replica-1 is away.
	if _, err := pub.Publish(ctx, &paho.Publish{Topic: "t/x", QoS: 1, Payload: []byte("marker")}); err != nil {
		t.Fatal(err)
	}
	// replica-1 returns with its session: it gets its unacknowledged
	// messages again, and the one published while it was away.
	_, got1b := shared("replica-1", false)
	want := map[string]bool{"marker": true}
	for _, m := range at1 {
		want[m] = true
	}
	for len(want) > 0 {
		select {
		case m := <-got1b:
			delete(want, string(m.Payload))
		case m := <-got2:
			t.Fatalf("replica-2 got %q: Mosquitto moved a message of the dead replica's session", m.Payload)
		case <-ctx.Done():
			t.Fatalf("not resent to replica-1 on its return: %v", want)
		}
	}
	select {
	case m := <-got2:
		t.Fatalf("replica-2 got %q", m.Payload)
	default:
	}
}
