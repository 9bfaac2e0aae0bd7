package broker

import (
	"errors"
	"fmt"

	"github.com/outpost-iot/outpost/internal/mochi/listeners"
)

// serveTracker is the Listener as mochi sees it: it records when the
// accept loop ends without Stop, so Ready can tell.
type serveTracker struct{ *Listener }

// Serve implements listeners.Listener.
func (t serveTracker) Serve(establish listeners.EstablishFn) {
	t.Listener.Serve(establish)
	if !t.done.Load() {
		t.exited.Store(true)
	}
}

// Ready reports why the broker does not accept device connections: it is
// shutting down, or a listener's accept loop has ended. Nil means every
// listener accepts.
func (b *Broker) Ready() error {
	if b.closing.Load() {
		return errors.New("mqtt broker is shutting down")
	}
	var errs []error
	for _, l := range b.lns {
		if l.done.Load() || l.exited.Load() {
			errs = append(errs, fmt.Errorf("mqtt listener %s on %s does not accept connections", l.id, l.l.Addr()))
		}
	}
	return errors.Join(errs...)
}
