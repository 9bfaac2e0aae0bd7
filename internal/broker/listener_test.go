package broker_test

import (
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/hooks/auth"

	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// emfileListener is a real TCP listener whose Accept fails with EMFILE
// ("too many open files") the first fails times, as the kernel does when
// the process is out of file descriptors.
type emfileListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// One EMFILE from accept does not end the MQTT listener: it backs off,
// counts the error and goes on accepting. (Before: the listener returned
// for good and no device could ever connect again.)
func TestListenerSurvivesEMFILE(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &emfileListener{Listener: inner}
	ln.fails.Store(5)
	bl := broker.NewListener("emfile", ln, nil, nil)
	if err := bl.AddTo(srv); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bl.Stop()
		srv.Close()
		bl.Shutdown()
	})

	c := outposttest.DialRaw(t, inner.Addr().String(), 4)
	done := make(chan error, 1)
	go func() { done <- c.Login("dev-emfile", "password-1") }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("login after accept errors: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no CONNACK: the listener stopped accepting after EMFILE")
	}
	if n := bl.Stats().AcceptErrors.Load(); n != 5 {
		t.Errorf("accept errors counted: %d, want 5", n)
	}
}
