package broker

import (
	"errors"
	"sync"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/packets"
)

// Sessions: at most one live session per device, and none left over from
// revoked credentials.
//
// mochi registers a session (inheritClientSession, then Clients.Add) and
// ends one (removing it from Clients and its subscriptions from the topic
// index, when its session was clean and not taken over) without any lock
// per client id. Two logins of one device can therefore both end up live,
// and the end of a dropped session can remove the session and
// subscriptions of the login that just replaced it, leaving the device
// connected but deaf. The broker closes both gaps with a session lock per
// device id:
//
//   - a login takes it once its credentials are checked and holds it until
//     its CONNACK is encoded, i.e. across mochi's takeover and
//     registration;
//   - the end of an authenticated session takes it in OnDisconnect and
//     holds it until mochi has finished cleaning up (the listener releases
//     it when mochi is done with the connection).
//
// So every login sees the previous session registered (and takes it over),
// and every cleanup either runs before the next login or sees itself taken
// over.
//
// Revoked credentials: every device has a generation, bumped when its
// secret is rotated or it is deleted (Broker.DisconnectDevice). A login
// reads the generation before checking the secret and registers its
// connection under the session lock only if the generation is unchanged;
// revocation bumps the generation and then closes every registered
// connection of the device. Either the login registers first and is
// closed, or it sees the new generation and is refused: no connection
// authenticated with an old secret survives a rotation, whatever the
// timing.

// lockWait bounds how long a login or the end of a session waits for a
// device's session lock. Holders never wait on the network for longer than
// the write timeout or endGrace, so this is a safety net only.
const lockWait = 30 * time.Second

var errRevoked = errors.New("credentials revoked while connecting")

type sessions struct {
	mu sync.Mutex
	m  map[string]*devSessions
}

type devSessions struct {
	gen  uint64             // bumped by revoke
	live map[*conn]struct{} // authenticated connections
	lock chan struct{}      // the session lock (capacity 1)
	refs int                // lock holders and waiters
}

func (s *sessions) entry(id string) *devSessions {
	if s.m == nil {
		s.m = map[string]*devSessions{}
	}
	d := s.m[id]
	if d == nil {
		d = &devSessions{live: map[*conn]struct{}{}, lock: make(chan struct{}, 1)}
		s.m[id] = d
	}
	return d
}

// drop forgets an entry nobody uses; a revoked device's entry is kept, its
// generation must not go back to 0. s.mu is held.
func (s *sessions) drop(id string, d *devSessions) {
	if d.refs == 0 && len(d.live) == 0 && d.gen == 0 {
		delete(s.m, id)
	}
}

// generation returns the device's current generation.
func (s *sessions) generation(id string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.m[id]; d != nil {
		return d.gen
	}
	return 0
}

// lock takes the device's session lock, waiting at most lockWait or until
// stop is closed. It reports whether it got the lock.
func (s *sessions) lock(id string, stop <-chan struct{}) bool {
	s.mu.Lock()
	d := s.entry(id)
	d.refs++
	s.mu.Unlock()
	t := time.NewTimer(lockWait)
	defer t.Stop()
	select {
	case d.lock <- struct{}{}:
		return true
	case <-t.C:
	case <-stop:
	}
	s.mu.Lock()
	d.refs--
	s.drop(id, d)
	s.mu.Unlock()
	return false
}

func (s *sessions) unlock(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.m[id]
	if d == nil {
		return
	}
	<-d.lock
	d.refs--
	s.drop(id, d)
}

// register records c as an authenticated connection of the device if the
// device's generation is still gen.
func (s *sessions) register(id string, c *conn, gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.entry(id)
	if d.gen != gen {
		s.drop(id, d)
		return false
	}
	d.live[c] = struct{}{}
	return true
}

func (s *sessions) unregister(id string, c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.m[id]; d != nil {
		delete(d.live, c)
		s.drop(id, d)
	}
}

// revoke bumps the device's generation and returns its authenticated
// connections.
func (s *sessions) revoke(id string) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.entry(id)
	d.gen++
	out := make([]*conn, 0, len(d.live))
	for c := range d.live {
		out = append(out, c)
	}
	return out
}

// sessionHook holds a device's session lock across mochi's takeover and
// registration of a new session (until its CONNACK is encoded) and across
// the cleanup after an authenticated session ends (see the comment at the
// top of this file). It is added first, so its OnDisconnect runs before
// every other hook's.
type sessionHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *sessionHook) ID() string { return "outpost-session" }

func (h *sessionHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnPacketEncode || b == mqtt.OnDisconnect
}

// OnSessionEstablish runs with the new session's lock held, just before
// mochi takes over the device's previous session: the previous connection
// gets at most endGrace to take its DISCONNECT, so a device that stopped
// reading cannot hold up the takeover.
func (h *sessionHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	c := connOf(cl)
	if c == nil {
		return
	}
	c.client = cl
	h.b.stats.Sessions.Add(1)
	if old, ok := h.b.srv.Clients.Get(cl.ID); ok && old != cl {
		if oc := connOf(old); oc != nil {
			oc.end()
		}
	}
}

// OnPacketEncode releases the session lock when the CONNACK of a new
// session is encoded: mochi has registered the session by then.
func (h *sessionHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack {
		if c := connOf(cl); c != nil && c.lockHeld {
			c.lockHeld = false
			h.b.sess.unlock(c.deviceID)
		}
	}
	return pk
}

// OnDisconnect takes the session lock for mochi's cleanup of an
// authenticated session; the listener releases it once mochi is done.
func (h *sessionHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	c := connOf(cl)
	if c == nil || c.deviceID == "" || c.lockHeld {
		return
	}
	if h.b.sess.lock(c.deviceID, nil) {
		c.lockHeld = true
	} else {
		h.b.log.Error("mqtt: session lock not available for the end of a session", "device_id", c.deviceID)
	}
}

// connEnded is called by the listener once mochi is done with a
// connection: it releases the session lock, forgets the connection, and
// reports the end of a session whose start was reported but whose end was
// not (mochi skips OnDisconnect when the CONNACK cannot be written).
func (b *Broker) connEnded(c *conn, err error) {
	if c.deviceID == "" {
		return
	}
	if c.connected && !c.ended {
		c.ended = true
		b.h.DeviceDisconnected(c.deviceID, c.session, b.endReason(c, c.client, err))
	}
	if c.lockHeld {
		c.lockHeld = false
		b.sess.unlock(c.deviceID)
	}
	b.sess.unregister(c.deviceID, c)
}
