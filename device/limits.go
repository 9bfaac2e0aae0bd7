package device

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/eclipse/paho.golang/paho"

	"github.com/outpost-iot/outpost/protocol"
)

// limits keeps what the platform announced in its last CONNACK.
type limits struct {
	// maxPacket is the MQTT 5 Maximum Packet Size, 0 when none was
	// announced (then only the protocol's own limits apply).
	maxPacket atomic.Uint32
}

// connected records the CONNACK's limits and lowers the size of
// telemetry messages sealed from now on to fit them.
func (l *limits) connected(c *Client, ca *paho.Connack) {
	var mps uint32
	if ca != nil && ca.Properties != nil && ca.Properties.MaximumPacketSize != nil {
		mps = *ca.Properties.MaximumPacketSize
	}
	l.maxPacket.Store(mps)
	if mps == 0 {
		return
	}
	if s, ok := c.tele.ob.(interface{ SetMessageBytes(int) }); ok {
		s.SetMessageBytes(min(protocol.MaxMessageBytes, c.maxPayload(protocol.KindTelemetry)))
	}
}

// maxPayload returns the largest payload that fits in the announced
// Maximum Packet Size on the device's up/{kind} topic (a large number when
// none was announced).
func (c *Client) maxPayload(kind string) int {
	mps := int(c.limits.maxPacket.Load())
	if mps == 0 {
		return 1 << 30
	}
	// A QoS 1 PUBLISH: fixed header (1 byte + up to 4 length bytes), topic
	// (2 + its length), packet id (2), properties length (1, none sent).
	return mps - (5 + 2 + len(protocol.UpTopic(c.id, kind)) + 2 + 1)
}

// errTooLarge: a message does not fit in the platform's Maximum Packet
// Size. Sending it would end the connection (DISCONNECT 0x95) and resending
// it would never succeed, so it is not sent.
var errTooLarge = errors.New("device: message larger than the platform's maximum packet size")

// checkSize fails with errTooLarge for a payload that would make a packet
// over the announced Maximum Packet Size.
func (c *Client) checkSize(kind string, payload []byte) error {
	if max := c.maxPayload(kind); len(payload) > max {
		return fmt.Errorf("%w: %s message of %d bytes, at most %d fit", errTooLarge, kind, len(payload), max)
	}
	return nil
}

// resealOversize splits the sealed telemetry messages of msgs that do not
// fit the announced Maximum Packet Size (sealed before the platform
// announced a smaller one): their readings go back into the outbox, which
// seals them into smaller messages with new batch ids, and the oversized
// message is dropped. It reports whether it changed anything (the caller
// then reads the outbox again). A message of another kind that does not
// fit cannot be split; it is dropped and returned as a *PublishError with
// reason code 0x95 (packet too large).
func (c *Client) resealOversize(msgs []sealedMsg) (changed bool, err error) {
	if c.limits.maxPacket.Load() == 0 {
		return false, nil
	}
	t := &c.tele
	// Only an outbox that seals to the new limit can split; with another
	// queue the readings would come back in messages as large.
	_, canSplit := t.ob.(interface{ SetMessageBytes(int) })
	for _, m := range msgs {
		if c.checkSize(m.kind, m.payload) == nil {
			continue
		}
		if m.kind != protocol.KindTelemetry || !canSplit {
			_ = t.ob.Drop(m.seq)
			return true, &PublishError{Kind: m.kind, BatchID: m.id, Readings: m.readings, ReasonCode: 0x95}
		}
		tm, derr := protocol.DecodeTelemetry(m.payload)
		if derr != nil || len(tm.Readings) < 2 {
			// One reading that does not fit on its own cannot be split.
			_ = t.ob.Drop(m.seq)
			return true, &PublishError{Kind: m.kind, BatchID: m.id, Readings: m.readings, ReasonCode: 0x95}
		}
		// Readings first, then the drop: a crash in between sends them
		// twice (under new batch ids) rather than never.
		if err := t.ob.AddReadings(tm.Readings...); err != nil {
			return changed, fmt.Errorf("device: reseal message: %w", err)
		}
		if err := t.ob.Drop(m.seq); err != nil {
			return changed, fmt.Errorf("device: reseal message: %w", err)
		}
		changed = true
	}
	if changed {
		if err := t.ob.Seal(); err != nil {
			return changed, fmt.Errorf("device: reseal message: %w", err)
		}
	}
	return changed, nil
}
