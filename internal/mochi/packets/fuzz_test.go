package packets

import (
	"bytes"
	"testing"
)

// decodeInbound decodes b as the broker does a packet a device sent: the
// fixed header, the remaining length, then the body by type, for protocol
// version v.
func decodeInbound(b []byte, v byte) (Packet, error) {
	var pk Packet
	if len(b) == 0 {
		return pk, ErrMalformedPacket
	}
	if err := pk.FixedHeader.Decode(b[0]); err != nil {
		return pk, err
	}
	r := bytes.NewReader(b[1:])
	n, _, err := DecodeLength(r)
	if err != nil {
		return pk, err
	}
	body := b[len(b)-r.Len():]
	if n > len(body) {
		return pk, ErrMalformedPacket
	}
	body = body[:n]
	pk.FixedHeader.Remaining = n
	pk.ProtocolVersion = v
	switch pk.FixedHeader.Type {
	case Connect:
		err = pk.ConnectDecode(body)
	case Publish:
		err = pk.PublishDecode(body)
	case Puback:
		err = pk.PubackDecode(body)
	case Pubrec:
		err = pk.PubrecDecode(body)
	case Pubrel:
		err = pk.PubrelDecode(body)
	case Pubcomp:
		err = pk.PubcompDecode(body)
	case Subscribe:
		err = pk.SubscribeDecode(body)
	case Unsubscribe:
		err = pk.UnsubscribeDecode(body)
	case Pingreq:
		err = pk.PingreqDecode(body)
	case Disconnect:
		err = pk.DisconnectDecode(body)
	case Auth:
		err = pk.AuthDecode(body)
	default:
		err = ErrNoValidPacketAvailable
	}
	return pk, err
}

// FuzzDecodeInbound feeds the packet decoders what a device could send:
// whatever the bytes, decoding returns an error or a packet, never panics.
// The fork made the codec the platform's own outside-input decoder (issue
// 16); the seeds are mochi's packet test cases, in both protocol versions.
func FuzzDecodeInbound(f *testing.F) {
	for _, cases := range TPacketData {
		for _, c := range cases {
			if len(c.RawBytes) > 0 {
				f.Add(c.RawBytes, byte(4))
				f.Add(c.RawBytes, byte(5))
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, v byte) {
		if v != 3 && v != 4 && v != 5 {
			v = 4 + v%2
		}
		_, _ = decodeInbound(b, v)
	})
}
