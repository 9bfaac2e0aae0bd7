// Package httplimit bounds the open connections of an HTTP server.
package httplimit

import (
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Conns bounds the open HTTP connections. A connection that is not in
// the middle of a request (it has sent nothing yet, or waits idle between
// requests) can be closed at any time without harm to a client that
// follows HTTP; so when the bound is reached, the oldest such connection
// makes room for the new one. Only when every connection is busy with a
// request is the new one closed at once. Thousands of idle or silent
// connections therefore cannot lock the API out.
type Conns struct {
	max int

	mu    sync.Mutex
	conns map[*trackedConn]struct{}

	// Evicted counts idle connections closed to make room, Refused new
	// connections closed because every connection was busy.
	Evicted, Refused atomic.Int64
}

// New returns a bound of max open connections.
func New(max int) *Conns {
	return &Conns{max: max, conns: map[*trackedConn]struct{}{}}
}

// trackedConn is a connection with its HTTP state.
type trackedConn struct {
	net.Conn
	busy  bool      // in a request (guarded by httpConns.mu)
	since time.Time // when it last became idle
}

// Listener wraps l so that every accepted connection counts.
func (h *Conns) Listener(l net.Listener) net.Listener { return &limitedListener{l, h} }

type limitedListener struct {
	net.Listener
	h *Conns
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc := l.h.admit(c); tc != nil {
			return tc, nil
		}
	}
}

// admit tracks c, closing the oldest idle connection when the bound is
// reached; it closes c and returns nil when every connection is busy.
func (h *Conns) admit(c net.Conn) *trackedConn {
	tc := &trackedConn{Conn: c, since: time.Now()}
	h.mu.Lock()
	var victim *trackedConn
	if len(h.conns) >= h.max {
		for o := range h.conns {
			if !o.busy && (victim == nil || o.since.Before(victim.since)) {
				victim = o
			}
		}
		if victim == nil {
			h.mu.Unlock()
			h.Refused.Add(1)
			c.Close()
			return nil
		}
		delete(h.conns, victim)
		h.Evicted.Add(1)
	}
	h.conns[tc] = struct{}{}
	h.mu.Unlock()
	if victim != nil {
		victim.Close()
	}
	return tc
}

// connState is the http.Server's ConnState hook.
// ConnState is the http.Server's ConnState hook: it tells which
// connections are idle.
func (h *Conns) ConnState(c net.Conn, st http.ConnState) {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	tc, ok := c.(*trackedConn)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[tc]; !ok {
		return // evicted
	}
	switch st {
	case http.StateActive:
		tc.busy = true
	case http.StateIdle:
		tc.busy, tc.since = false, time.Now()
	case http.StateHijacked, http.StateClosed:
		delete(h.conns, tc)
	}
}

// open returns the number of connections tracked.
// Open returns the number of open connections.
func (h *Conns) Open() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}
