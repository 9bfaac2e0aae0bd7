package device_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/device/outbox"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
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

// Item 9: the Handle… methods all return an error for what they refuse.
func TestHandleMethodsRefuseNil(t *testing.T) {
	c := newClient(t, "mqtt://d-1:secret@127.0.0.1:1", device.WithMemoryOutbox())
	if err := c.Handle("m", nil); err == nil {
		t.Error("Handle accepted a nil handler")
	}
	if err := c.HandleFeed("f", nil); err == nil {
		t.Error("HandleFeed accepted a nil handler")
	}
	if err := c.HandleParameters(nil); err == nil {
		t.Error("HandleParameters accepted a nil handler")
	}
	if err := c.HandleParameters(func(context.Context, device.ParametersUpdate) {}); err != nil {
		t.Errorf("HandleParameters: %v", err)
	}
}

// Item 9: one error type for "refused for good", whatever the message:
// here a device-model message over the platform's limit.
func TestRefusedModelMessageIsPublishError(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "greedy")
	c := newClient(t, d.URL, device.WithMemoryOutbox())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	feeds := make([]device.Feed, 1001) // the platform takes 1,000 per message
	for i := range feeds {
		feeds[i] = device.Feed{Ref: "f" + strconv.Itoa(i), Name: "F", Type: device.FeedIn, DataType: device.Number}
	}
	err := c.RegisterFeeds(ctx, feeds...)
	var pe *device.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("RegisterFeeds over the limit = %v, want a *PublishError", err)
	}
	if pe.Kind != protocol.KindFeeds || pe.ReasonCode < 0x80 {
		t.Fatalf("PublishError %+v", pe)
	}
}
