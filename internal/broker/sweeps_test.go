package broker_test

import (
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"

	"github.com/outpost-iot/outpost/internal/broker"
)

// Issue 16: mochi looked for expired sessions and in-flight messages every
// second, copying its whole client map each time: idle CPU grew with the
// number of devices. The platform slows both sweeps down. The test watches
// mochi expire a session on fake time: with the slowed sweep it happens at
// the next sweep, not within a second.
func TestSlowSweeps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := mqtt.New(broker.MochiOptions(broker.Config{Logger: slog.New(slog.DiscardHandler)}))
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		// A device that left with a session of one second.
		cl := srv.NewClient(nil, "t", "dev", false)
		cl.Properties.ProtocolVersion = 5
		cl.Properties.Props.SessionExpiryInterval = 1
		cl.Properties.Props.SessionExpiryIntervalFlag = true
		cl.Stop(nil)
		srv.Clients.Add(cl)

		time.Sleep(5 * time.Second)
		synctest.Wait()
		if _, ok := srv.Clients.Get("dev"); !ok {
			t.Fatal("session expired within 5s: mochi still sweeps every second")
		}
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if _, ok := srv.Clients.Get("dev"); ok {
			t.Fatal("session not expired after the next sweep")
		}
	})
}
