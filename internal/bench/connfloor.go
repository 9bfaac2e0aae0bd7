package bench

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/internal/mochi/packets"
)

// floorBroker answers what an idle device does, and nothing more: CONNECT
// (any credentials), SUBSCRIBE, PINGREQ and DISCONNECT, with mochi's packet
// codec and one goroutine per connection whose idle frames are small. It
// is not a broker: no sessions, no routing, no QoS flows. The connections
// benchmark measures it next to mochi to show, with figures, the memory
// per device that a thin connection layer of our own around mochi's codec
// could get down to (issue 16): mochi itself keeps two goroutines per
// client, one of them parked for life under mochi's large frames.
type floorBroker struct {
	ln   net.Listener
	log  *slog.Logger
	mu   sync.Mutex
	conn map[net.Conn]struct{}
	wg   sync.WaitGroup
}

func startFloorBroker(addr string, log *slog.Logger) (*floorBroker, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	f := &floorBroker{ln: l, log: log, conn: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f, nil
}

func (f *floorBroker) addr() string { return f.ln.Addr().String() }

func (f *floorBroker) accept() {
	defer f.wg.Done()
	var delay time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		f.mu.Lock()
		f.conn[c] = struct{}{}
		f.mu.Unlock()
		f.wg.Add(1)
		go f.serve(c)
	}
}

func (f *floorBroker) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conn {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// floorConn is what the floor keeps per connection.
type floorConn struct {
	c         net.Conn
	r         *bufio.Reader
	version   byte
	keepalive time.Duration
}

func (f *floorBroker) serve(c net.Conn) {
	defer f.wg.Done()
	defer func() {
		c.Close()
		f.mu.Lock()
		delete(f.conn, c)
		f.mu.Unlock()
	}()
	fc := &floorConn{c: c, r: bufio.NewReaderSize(c, 512), keepalive: 10 * time.Second}
	for {
		_ = c.SetReadDeadline(time.Now().Add(fc.keepalive * 3 / 2))
		if err := fc.next(); err != nil {
			return
		}
	}
}

// next reads one packet and answers it. Its frame and its callees' are
// off the stack again while the connection waits for the next packet.
func (fc *floorConn) next() error {
	b, err := fc.r.ReadByte()
	if err != nil {
		return err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(b); err != nil {
		return err
	}
	n, _, err := packets.DecodeLength(fc.r)
	if err != nil {
		return err
	}
	if n > 64<<10 {
		return packets.ErrPacketTooLarge
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(fc.r, body); err != nil {
		return err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: fc.version}
	var out bytes.Buffer
	switch fh.Type {
	case packets.Connect:
		if err := pk.ConnectDecode(body); err != nil {
			return err
		}
		fc.version = pk.ProtocolVersion
		if pk.Connect.Keepalive > 0 {
			fc.keepalive = time.Duration(pk.Connect.Keepalive) * time.Second
		}
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: fc.version}
		err = ack.ConnackEncode(&out)
	case packets.Subscribe:
		if err := pk.SubscribeDecode(body); err != nil {
			return err
		}
		codes := make([]byte, len(pk.Filters))
		for i, s := range pk.Filters {
			codes[i] = s.Qos
		}
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: pk.PacketID, ReasonCodes: codes, ProtocolVersion: fc.version}
		err = ack.SubackEncode(&out)
	case packets.Pingreq:
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}
		err = ack.PingrespEncode(&out)
	case packets.Disconnect:
		return io.EOF
	}
	if err != nil || out.Len() == 0 {
		return err
	}
	_, err = fc.c.Write(out.Bytes())
	return err
}
