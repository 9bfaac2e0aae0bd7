package outbox_test

import (
	"encoding/json"
	"fmt"
	"log"
	"os"

	"github.com/outpost-iot/outpost/device/outbox"
	"github.com/outpost-iot/outpost/protocol"
)

// Readings go to disk before AddReadings returns, are sealed into telemetry
// messages, and leave the outbox once acknowledged. What is not acknowledged
// is still there after a restart, in the same messages.
func Example() {
	dir, err := os.MkdirTemp("", "outbox-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	ob, err := outbox.OpenDir(dir, outbox.WithMessageLimits(2, 0))
	if err != nil {
		log.Fatal(err)
	}
	r := func(feed string, v float64) protocol.Reading {
		b, _ := json.Marshal(v)
		return protocol.Reading{Feed: feed, Value: b, TS: 1700000000000}
	}
	_ = ob.AddReadings(r("temp", 21.5), r("temp", 21.7), r("hum", 40))
	_ = ob.AddSeparated(r("alarm", 1)) // travels alone
	_, _ = ob.AddMessage(protocol.KindRPC, []byte(`{"id":"c1","result":true}`))
	_ = ob.Seal()

	msgs, _ := ob.Next(0, 10)
	for _, m := range msgs {
		fmt.Println(m.Seq, m.Kind, m.Readings)
	}
	_ = ob.Ack(msgs[0].Seq) // the broker acknowledged the first message
	_ = ob.Close()

	// After a restart: the rest, unchanged.
	ob, err = outbox.OpenDir(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer ob.Close()
	msgs, _ = ob.Next(0, 10)
	s := ob.Stats()
	fmt.Println("pending:", len(msgs), "messages,", s.PendingReadings, "readings")
	// Output:
	// 1 telemetry 2
	// 2 telemetry 1
	// 3 rpc 0
	// 4 telemetry 1
	// pending: 3 messages, 2 readings
}
