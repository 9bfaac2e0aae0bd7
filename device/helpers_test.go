package device_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/hooks/auth"

	"github.com/outpost-iot/outpost/internal/broker"
)

// upPublish is one PUBLISH a device wrote towards the platform, as a
// proxy in between saw it.
type upPublish struct {
	topic   string
	payload []byte
	dup     bool
}

// mqttProxy sits between devices and a platform on 127.0.0.1. It forwards
// bytes both ways unchanged and records, in arrival order, every PUBLISH
// the devices send: what the platform sees, in the order it sees it. It
// can stop accepting (the platform looks unreachable) and start again on
// the same address.
type mqttProxy struct {
	target string

	mu       sync.Mutex
	addr     string
	ln       net.Listener
	conns    map[net.Conn]struct{}
	publish  []upPublish
	accepted []time.Time // when each device connection was accepted
	wg       sync.WaitGroup
}

// newProxy reserves an address for a proxy to target without listening on
// it yet: connections to it are refused until start.
func newProxy(t *testing.T, target string) *mqttProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &mqttProxy{target: target, addr: l.Addr().String(), conns: map[net.Conn]struct{}{}}
	l.Close()
	t.Cleanup(p.stop)
	return p
}

// startProxy returns a proxy that accepts at once.
func startProxy(t *testing.T, target string) *mqttProxy {
	t.Helper()
	p := newProxy(t, target)
	p.start(t)
	return p
}

func (p *mqttProxy) start(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln = l
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.accepted = append(p.accepted, time.Now())
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c)
			}()
		}
	}()
}

// stop closes the listener and every connection, and waits.
func (p *mqttProxy) stop() {
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// dropAll closes every connection going through the proxy, and goes on
// accepting new ones.
func (p *mqttProxy) dropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// acceptedSince returns when the connections accepted after t came.
func (p *mqttProxy) acceptedSince(t time.Time) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []time.Time
	for _, a := range p.accepted {
		if a.After(t) {
			out = append(out, a)
		}
	}
	return out
}

func (p *mqttProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *mqttProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		c.Close()
	}
}

func (p *mqttProxy) serve(dev net.Conn) {
	plat, err := net.Dial("tcp", p.target)
	if err != nil {
		dev.Close()
		return
	}
	if !p.track(dev, plat) {
		dev.Close()
		plat.Close()
		return
	}
	defer p.untrack(dev, plat)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(dev, plat)
		dev.Close()
	}()
	r := bufio.NewReader(dev)
	for {
		pkt, err := readPacket(r)
		if err != nil {
			break
		}
		if pkt[0]>>4 == 3 {
			p.record(pkt)
		}
		if _, err := plat.Write(pkt); err != nil {
			break
		}
	}
	plat.Close()
	<-done
}

// readPacket reads one MQTT control packet whole.
func readPacket(r *bufio.Reader) ([]byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	pkt := []byte{h}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		pkt = append(pkt, b)
		n += int(b&0x7f) * mul
		mul *= 128
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return nil, errors.New("bad remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(pkt, body...), nil
}

// record parses an MQTT 5 PUBLISH.
func (p *mqttProxy) record(pkt []byte) {
	i := 1
	for pkt[i]&0x80 != 0 {
		i++
	}
	i++
	tl := int(binary.BigEndian.Uint16(pkt[i:]))
	topic := string(pkt[i+2 : i+2+tl])
	i += 2 + tl
	if (pkt[0]>>1)&3 > 0 {
		i += 2 // packet id
	}
	plen, n := 0, 0
	for mul := 1; ; mul *= 128 {
		b := pkt[i+n]
		plen += int(b&0x7f) * mul
		n++
		if b&0x80 == 0 {
			break
		}
	}
	i += n + plen
	p.mu.Lock()
	p.publish = append(p.publish, upPublish{topic: topic, payload: append([]byte(nil), pkt[i:]...), dup: pkt[0]&0x08 != 0})
	p.mu.Unlock()
}

// published returns the PUBLISH packets recorded so far whose topic ends
// with one of the kinds (all when none is given).
func (p *mqttProxy) published(kinds ...string) []upPublish {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []upPublish
	for _, m := range p.publish {
		ok := len(kinds) == 0
		for _, k := range kinds {
			ok = ok || strings.HasSuffix(m.topic, "/up/"+k)
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

// startPlainBroker starts an MQTT broker that lets everyone in and knows
// nothing of Outpost, like a Mosquitto someone left running on the
// device's network. It returns its address.
func startPlainBroker(t *testing.T) string {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler), InlineClient: false})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := broker.NewListener("plain", l, nil, nil).AddTo(srv); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// find returns the records at level with message msg, their attributes by
// key.
func (l *logRecorder) find(level slog.Level, msg string) []map[string]slog.Value {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]slog.Value
	for _, r := range l.recs {
		if r.Level != level || r.Message != msg {
			continue
		}
		m := map[string]slog.Value{}
		r.Attrs(func(a slog.Attr) bool {
			m[a.Key] = a.Value
			return true
		})
		out = append(out, m)
	}
	return out
}
