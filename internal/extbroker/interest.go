package extbroker

import (
	"encoding/json"
	"sync"
	"time"
)

// Interest: a replica mirrors its stream events to the others (Mirror)
// only while another replica has a live-stream listener. A replica with
// listeners says so on InternalRoot/interest when a listener arrives and
// then every InterestEvery while it has any; the others take it as good
// for InterestTTL. Without listeners anywhere, a replica sends nothing:
// mirroring every committed batch to every replica would carry the whole
// fleet's telemetry through the broker once more per replica.
const (
	InterestEvery = time.Second
	InterestTTL   = 3 * InterestEvery
)

// interest is what a replica knows of the others' listeners.
type interest struct {
	mu    sync.Mutex
	until map[string]time.Time // origin → its interest holds until
	wake  chan struct{}        // a listener arrived here: announce now
}

// interestMsg is the payload of InternalRoot/interest.
type interestMsg struct {
	Origin string `json:"origin"`
	TTLms  int64  `json:"ttl_ms"`
}

// WatchInterest starts telling the other replicas, while listening
// reports true, that this replica wants their stream events; Listened
// says so at once. Call it once, after Start; Close stops it.
func (l *Link) WatchInterest(listening func() bool) {
	l.wg.Add(1)
	go l.announceInterest(listening)
}

// Listened tells the other replicas at once that this replica has a new
// listener (stream.Options.OnListen). It never blocks.
func (l *Link) Listened() {
	select {
	case l.interest.wake <- struct{}{}:
	default:
	}
}

// Wanted reports whether another replica currently wants this replica's
// stream events (stream.Options.TapWanted).
func (l *Link) Wanted() bool { return l.PeersListening() > 0 }

// PeersListening returns how many other replicas currently want this
// replica's stream events, forgetting those whose interest lapsed.
func (l *Link) PeersListening() int {
	l.interest.mu.Lock()
	defer l.interest.mu.Unlock()
	now, n := time.Now(), 0
	for o, until := range l.interest.until {
		if now.Before(until) {
			n++
		} else {
			delete(l.interest.until, o)
		}
	}
	return n
}

func (l *Link) announceInterest(listening func() bool) {
	defer l.wg.Done()
	payload, _ := json.Marshal(interestMsg{Origin: l.cfg.ClientID, TTLms: InterestTTL.Milliseconds()})
	tick := time.NewTicker(InterestEvery)
	defer tick.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-tick.C:
		case <-l.interest.wake:
		}
		if listening() {
			l.publishInternal(InternalRoot+"/interest", payload)
		}
	}
}

// gotInterest records another replica's interest.
func (l *Link) gotInterest(payload []byte) {
	var m interestMsg
	if json.Unmarshal(payload, &m) != nil || m.Origin == "" || m.Origin == l.cfg.ClientID || m.TTLms <= 0 {
		return
	}
	ttl := min(time.Duration(m.TTLms)*time.Millisecond, time.Minute)
	l.interest.mu.Lock()
	if l.interest.until == nil {
		l.interest.until = map[string]time.Time{}
	}
	l.interest.until[m.Origin] = time.Now().Add(ttl)
	l.interest.mu.Unlock()
}

// Mirrored returns how many stream events this replica sent to the
// others.
func (l *Link) Mirrored() int64 { return l.mirrored.Load() }
