package outposttest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/mochi/packets"
)

// Raw is a bare MQTT 3.1.1 or 5 connection for tests that must control
// every packet and see the exact order of what arrives on the wire: it
// writes and reads packets with the broker library's own codec and does
// nothing by itself (no keep-alive, no acknowledgements, no retries).
// Reads and writes may run on different goroutines; Read is not safe for
// concurrent use with itself, nor Send with itself.
type Raw struct {
	Conn    net.Conn
	Version byte // 4 (MQTT 3.1.1) or 5

	r    *bufio.Reader
	wmu  sync.Mutex
	wbuf bytes.Buffer
}

// DialRaw opens a TCP connection to addr (HOST:PORT) for an MQTT client of
// the given protocol version (4 or 5). It is closed when the test ends.
func DialRaw(tb testing.TB, addr string, version byte) *Raw {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { c.Close() })
	return NewRaw(c, version)
}

// NewRaw wraps an open connection.
func NewRaw(c net.Conn, version byte) *Raw {
	return &Raw{Conn: c, Version: version, r: bufio.NewReaderSize(c, 64<<10)}
}

// Close closes the connection.
func (c *Raw) Close() error { return c.Conn.Close() }

// Send encodes pk for the connection's protocol version and writes it.
func (c *Raw) Send(pk packets.Packet) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf.Reset()
	if err := Encode(&c.wbuf, c.Version, pk); err != nil {
		return err
	}
	_, err := c.Conn.Write(c.wbuf.Bytes())
	return err
}

// Encode appends the encoding of pk for protocol version v to buf.
func Encode(buf *bytes.Buffer, v byte, pk packets.Packet) error {
	pk.ProtocolVersion = v
	switch pk.FixedHeader.Type {
	case packets.Connect:
		if pk.Connect.ProtocolName == nil {
			pk.Connect.ProtocolName = []byte("MQTT")
		}
		return pk.ConnectEncode(buf)
	case packets.Publish:
		return pk.PublishEncode(buf)
	case packets.Puback:
		return pk.PubackEncode(buf)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1
		return pk.SubscribeEncode(buf)
	case packets.Unsubscribe:
		pk.FixedHeader.Qos = 1
		return pk.UnsubscribeEncode(buf)
	case packets.Pingreq:
		return pk.PingreqEncode(buf)
	case packets.Disconnect:
		return pk.DisconnectEncode(buf)
	}
	return fmt.Errorf("raw mqtt: cannot encode packet type %d", pk.FixedHeader.Type)
}

// Read reads the next packet.
func (c *Raw) Read() (packets.Packet, error) {
	var pk packets.Packet
	b, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.Version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("raw mqtt: unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// ReadTimeout reads the next packet, giving up after d.
func (c *Raw) ReadTimeout(d time.Duration) (packets.Packet, error) {
	c.Conn.SetReadDeadline(time.Now().Add(d))
	defer c.Conn.SetReadDeadline(time.Time{})
	return c.Read()
}

// ConnectPacket returns a CONNECT with clean session/start, keep-alive 60 s
// and the given credentials (client identifier = username).
func ConnectPacket(user, password string) packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        60,
			ClientIdentifier: user,
			Username:         []byte(user), UsernameFlag: true,
			Password: []byte(password), PasswordFlag: true,
		},
	}
}

// Connect sends pk (a CONNECT) and returns the CONNACK. An error means no
// CONNACK arrived.
func (c *Raw) Connect(pk packets.Packet) (packets.Packet, error) {
	if err := c.Send(pk); err != nil {
		return packets.Packet{}, err
	}
	ack, err := c.ReadTimeout(10 * time.Second)
	if err != nil {
		return ack, err
	}
	if ack.FixedHeader.Type != packets.Connack {
		return ack, fmt.Errorf("raw mqtt: got packet type %d, want CONNACK", ack.FixedHeader.Type)
	}
	return ack, nil
}

// ErrRefused is returned by Login when the CONNACK refuses the connection.
var ErrRefused = errors.New("connection refused")

// Login connects with user and password and fails unless the CONNACK
// accepts.
func (c *Raw) Login(user, password string) error {
	ack, err := c.Connect(ConnectPacket(user, password))
	if err != nil {
		return err
	}
	if ack.ReasonCode != 0 {
		return fmt.Errorf("%w: CONNACK 0x%02x", ErrRefused, ack.ReasonCode)
	}
	return nil
}

// Subscribe sends a SUBSCRIBE for filters at QoS 1 with packet id id and
// returns the SUBACK's reason codes. Packets arriving before the SUBACK
// are dropped.
func (c *Raw) Subscribe(id uint16, filters ...string) ([]byte, error) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	if err := c.Send(pk); err != nil {
		return nil, err
	}
	for {
		ack, err := c.ReadTimeout(10 * time.Second)
		if err != nil {
			return nil, err
		}
		if ack.FixedHeader.Type == packets.Suback && ack.PacketID == id {
			return ack.ReasonCodes, nil
		}
	}
}

// Publish sends a PUBLISH.
func (c *Raw) Publish(topic string, qos byte, id uint16, payload []byte) error {
	return c.Send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic, PacketID: id, Payload: payload,
	})
}

// Ping sends a PINGREQ and waits at most d for the PINGRESP, dropping
// other packets. It reports whether the connection answered.
func (c *Raw) Ping(d time.Duration) bool {
	if err := c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}); err != nil {
		return false
	}
	deadline := time.Now().Add(d)
	for {
		pk, err := c.ReadTimeout(time.Until(deadline))
		if err != nil {
			return false
		}
		if pk.FixedHeader.Type == packets.Pingresp {
			return true
		}
	}
}
