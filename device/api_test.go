package device_test

import (
	"errors"
	"testing"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/device/outbox"
)

// closeFails is an outbox whose Close fails, as a disk that went away
// would make it.
type closeFails struct {
	outbox.Queue
	err error
}

func (q closeFails) Close() error {
	q.Queue.Close()
	return q.err
}

// Item 9: Close reports what went wrong while closing (here: the outbox
// could not be closed, so readings may not be on disk), once.
func TestCloseReportsErrors(t *testing.T) {
	ob, err := outbox.Open(outbox.NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	broken := errors.New("disk gone")
	c, err := device.New("mqtt://d-1:secret@127.0.0.1:1", device.WithOutboxQueue(closeFails{ob, broken}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); !errors.Is(err, broken) {
		t.Fatalf("Close = %v, want the outbox's error", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
}
