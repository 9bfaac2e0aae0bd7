package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/internal/mochi/packets"

	"github.com/outpost-iot/outpost/protocol"
)

// loadFleet holds many idle MQTT 3.1.1 device connections in this process,
// the way a fleet of devices does: each device connects (CONNECT with its
// id and password, clean session), subscribes to its down/ topics like
// the device SDK, then stays idle, sending a PINGREQ every keep-alive
// interval. A device whose connection drops reconnects with the device
// SDK's policy: the first attempt after a drop at a random moment within
// the minimum backoff, then exponential backoff with jitter.
//
// Packets are encoded and decoded with mochi's packets package: the load
// tool speaks MQTT through a maintained codec, like everything else.
//
// Each device is one goroutine blocked in a read, so the load process
// needs one file per device: it must run in its own process, apart from
// the broker it measures (the file limit is per process).
type loadFleet struct {
	addr      string
	devs      []loadDevice
	keepalive time.Duration
	timeout   time.Duration // connect attempt, CONNACK and SUBACK included
	minBack   time.Duration
	maxBack   time.Duration
	srcs      []*net.TCPAddr // local addresses the devices dial from

	connected atomic.Int64 // devices connected now
	attempts  atomic.Int64 // connection attempts
	failures  atomic.Int64 // failed attempts (retried)
	refused   atomic.Int64 // of those, refused with a CONNACK return code
	drops     atomic.Int64 // connections that ended after a successful connect
	epoch     atomic.Int64 // bumped by markEpoch
	inEpoch   atomic.Int64 // devices connected at least once since the last markEpoch

	mu      sync.Mutex
	lastErr error

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// loadDevice is one device of the fleet.
type loadDevice struct {
	id, password string
	epoch        atomic.Int64 // the fleet epoch of its last successful connect
}

// loadOptions configure a loadFleet.
type loadOptions struct {
	keepalive        time.Duration
	timeout          time.Duration
	minBack, maxBack time.Duration
	sources          int // loopback source addresses to spread devices over
}

func newLoadFleet(addr string, devs []apiDevice, o loadOptions) *loadFleet {
	f := &loadFleet{addr: addr, keepalive: o.keepalive, timeout: o.timeout, minBack: o.minBack, maxBack: o.maxBack}
	f.devs = make([]loadDevice, len(devs))
	for i, d := range devs {
		f.devs[i].id, f.devs[i].password = d.ID, d.Password
		f.devs[i].epoch.Store(-1)
	}
	// Devices come from many addresses; the whole of 127.0.0.0/8 is local.
	// Spreading them keeps clear of the per-address bounds of a broker and
	// of the ephemeral ports of one address.
	for i := range max(o.sources, 1) {
		f.srcs = append(f.srcs, &net.TCPAddr{IP: net.IPv4(127, 0, byte(1+i/250), byte(2+i%250))})
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// start makes every device connect at once.
func (f *loadFleet) start() {
	f.wg.Add(len(f.devs))
	for i := range f.devs {
		go f.run(i)
	}
}

// stop disconnects every device and waits for their goroutines.
func (f *loadFleet) stop() {
	f.cancel()
	f.wg.Wait()
}

// markEpoch starts counting devices connected anew (after a restart of the
// broker). Call it while no device is connected.
func (f *loadFleet) markEpoch() {
	f.inEpoch.Store(0)
	f.epoch.Add(1)
}

func (f *loadFleet) setErr(err error) {
	f.mu.Lock()
	f.lastErr = err
	f.mu.Unlock()
}

// err returns the error of the last failed attempt.
func (f *loadFleet) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastErr
}

// waitConnected waits until every device is connected and, with inEpoch,
// has connected since the last markEpoch. It polls: the bench is not a test
// and a 5 ms tick costs nothing next to what it measures.
func (f *loadFleet) waitConnected(ctx context.Context, inEpoch bool) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	n := int64(len(f.devs))
	for {
		if f.connected.Load() == n && (!inEpoch || f.inEpoch.Load() == n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d devices connected (%d failed attempts, last: %v): %w",
				f.connected.Load(), n, f.failures.Load(), f.err(), ctx.Err())
		case <-t.C:
		}
	}
}

// waitDisconnected waits until no device is connected.
func (f *loadFleet) waitDisconnected(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for f.connected.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d devices still connected: %w", f.connected.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// backoff is the device SDK's wait after the n-th failed attempt in a row:
// exponential from the minimum to the maximum, the upper half of it random.
func (f *loadFleet) backoff(n int) time.Duration {
	d := f.minBack
	for i := 1; i < n && d < f.maxBack; i++ {
		d *= 2
	}
	d = min(d, f.maxBack)
	return d/2 + rand.N(d/2+1)
}

func (f *loadFleet) run(i int) {
	defer f.wg.Done()
	d := &f.devs[i]
	src := f.srcs[i%len(f.srcs)]
	fails := 0
	var wait time.Duration // the first attempt goes at once: a storm
	for {
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-f.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if f.ctx.Err() != nil {
			return
		}
		f.attempts.Add(1)
		lc, err := f.connect(d, src)
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			f.failures.Add(1)
			f.setErr(err)
			fails++
			wait = f.backoff(fails)
			continue
		}
		fails = 0
		if ep := f.epoch.Load(); d.epoch.Swap(ep) != ep {
			f.inEpoch.Add(1)
		}
		f.connected.Add(1)
		lc.idle(f.ctx, f.keepalive)
		f.connected.Add(-1)
		lc.conn.Close()
		if f.ctx.Err() != nil {
			return
		}
		f.drops.Add(1)
		// Like the device SDK: the first attempt after a drop at a random
		// moment within the minimum backoff, so a fleet does not come back
		// in lock-step.
		wait = rand.N(f.minBack + 1)
	}
}

// loadConn is one connected device.
type loadConn struct {
	conn net.Conn
	r    *bufio.Reader
}

// errRefused is a CONNACK with a failure return code.
type errRefused byte

func (e errRefused) Error() string {
	return fmt.Sprintf("connection refused: CONNACK return code 0x%02x", byte(e))
}

// connect opens a connection, logs in and subscribes.
func (f *loadFleet) connect(d *loadDevice, src *net.TCPAddr) (*loadConn, error) {
	ctx, cancel := context.WithTimeout(f.ctx, f.timeout)
	defer cancel()
	dl := net.Dialer{LocalAddr: src}
	conn, err := dl.DialContext(ctx, "tcp", f.addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	lc := &loadConn{conn: conn, r: bufio.NewReaderSize(conn, 128)}
	fail := func(err error) (*loadConn, error) {
		conn.Close()
		return nil, err
	}
	var buf bytes.Buffer
	connect := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        uint16(f.keepalive / time.Second),
			ClientIdentifier: d.id,
			UsernameFlag:     true,
			Username:         []byte(d.id),
			PasswordFlag:     true,
			Password:         []byte(d.password),
		},
	}
	if err := connect.ConnectEncode(&buf); err != nil {
		return fail(err)
	}
	sub := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 4,
		PacketID:        1,
		Filters:         packets.Subscriptions{{Filter: protocol.DeviceFilter(d.id), Qos: 1}},
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		return fail(err)
	}
	pk, err := lc.read()
	if err != nil {
		return fail(fmt.Errorf("read CONNACK: %w", err))
	}
	if pk.FixedHeader.Type != packets.Connack {
		return fail(fmt.Errorf("got packet type %d instead of CONNACK", pk.FixedHeader.Type))
	}
	if pk.ReasonCode != 0 {
		f.refused.Add(1)
		return fail(errRefused(pk.ReasonCode))
	}
	buf.Reset()
	if err := sub.SubscribeEncode(&buf); err != nil {
		return fail(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		return fail(err)
	}
	for {
		pk, err := lc.read()
		if err != nil {
			return fail(fmt.Errorf("read SUBACK: %w", err))
		}
		if pk.FixedHeader.Type == packets.Suback {
			if len(pk.ReasonCodes) != 1 || pk.ReasonCodes[0] >= 0x80 {
				return fail(fmt.Errorf("subscription refused: %v", pk.ReasonCodes))
			}
			break
		}
		if err := lc.answer(pk); err != nil {
			return fail(err)
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return lc, nil
}

// read reads one packet.
func (lc *loadConn) read() (packets.Packet, error) {
	var pk packets.Packet
	b, err := lc.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(lc.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	pk.ProtocolVersion = 4
	body := make([]byte, n)
	if _, err := io.ReadFull(lc.r, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Pingresp, packets.Puback, packets.Disconnect:
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// answer acknowledges a QoS 1 PUBLISH; other packets need no answer.
func (lc *loadConn) answer(pk packets.Packet) error {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 {
		return nil
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ProtocolVersion: 4}
	var buf bytes.Buffer
	if err := ack.PubackEncode(&buf); err != nil {
		return err
	}
	_, err := lc.conn.Write(buf.Bytes())
	return err
}

var pingreq = []byte{packets.Pingreq << 4, 0}

// idle keeps the connection alive until it fails or ctx ends: a PINGREQ
// every keep-alive interval, and the connection is given up when a
// PINGRESP does not come within another interval.
func (lc *loadConn) idle(ctx context.Context, keepalive time.Duration) {
	stop := context.AfterFunc(ctx, func() { lc.conn.Close() })
	defer stop()
	nextPing := time.Now().Add(keepalive)
	var waiting time.Time // when the unanswered PINGREQ went out
	for {
		_ = lc.conn.SetReadDeadline(nextPing)
		pk, err := lc.read()
		var ne net.Error
		switch {
		case err == nil:
			if pk.FixedHeader.Type == packets.Pingresp {
				waiting = time.Time{}
			}
			if lc.answer(pk) != nil {
				return
			}
		case errors.As(err, &ne) && ne.Timeout():
			if !waiting.IsZero() {
				return // no PINGRESP for a whole interval
			}
			if _, err := lc.conn.Write(pingreq); err != nil {
				return
			}
			waiting = time.Now()
			nextPing = waiting.Add(keepalive)
		default:
			return
		}
	}
}
