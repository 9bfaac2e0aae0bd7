package broker

import (
	"errors"
	"reflect"
	"time"
	"unsafe"

	mqtt "github.com/outpost-iot/outpost/internal/mochi"
	"github.com/outpost-iot/outpost/internal/mochi/packets"
	"github.com/outpost-iot/outpost/internal/mochi/system"
)

// sweepInterval is how often mochi looks for expired sessions and expired
// in-flight messages.
//
// mochi v2.7.9 does both every second, each time copying its whole client
// map and, for the second, every client's in-flight map: at 19,000 idle
// devices that was about 2% of a core spent finding nothing, growing with
// the number of devices (issue 16). Nothing the platform relies on needs
// it that often: sessions are capped at an hour (Config.MaxSessionExpiry)
// and in-flight messages at a day, so they now go up to 30 seconds late.
// Retained messages and delayed wills keep mochi's second (their maps are
// small).
const sweepInterval = 30 * time.Second

// TuneMochi does to a new mochi server what its options cannot: it slows
// its expiry sweeps down to every 30 seconds (SlowMochiSweeps) and keeps
// its store of retained messages empty (mochi retains its own $SYS
// values). With MochiOptions, it is how the platform runs mochi. The
// error is SlowMochiSweeps's (mochi's layout changed); the server is
// usable all the same, with the sweeps at once a second.
func TuneMochi(srv *mqtt.Server) error {
	if err := srv.AddHook(&noRetainedHook{srv: srv}, nil); err != nil {
		return err
	}
	return SlowMochiSweeps(srv, sweepInterval)
}

// SlowMochiSweeps makes mochi's expiry sweeps of clients and in-flight
// messages run every interval instead of every second. mochi has no option
// for it: the tickers are fields of an unexported struct, reached by
// reflection. Their names and types are checked first; when they do not
// match (another mochi version), nothing is changed and an error says so.
// Call it before the server starts serving.
func SlowMochiSweeps(srv *mqtt.Server, interval time.Duration) error {
	if interval <= 0 {
		return errors.New("mochi sweeps: interval must be positive")
	}
	lp := reflect.ValueOf(srv).Elem().FieldByName("loop")
	if !lp.IsValid() || lp.Kind() != reflect.Pointer || lp.IsNil() || lp.Type().Elem().Kind() != reflect.Struct {
		return errors.New("mochi sweeps: mqtt.Server has no loop struct (mochi version changed?)")
	}
	tickerType := reflect.TypeFor[*time.Ticker]()
	var tickers []*time.Ticker
	for _, name := range []string{"clientExpiry", "inflightExpiry"} {
		f, ok := lp.Type().Elem().FieldByName(name)
		if !ok || f.Type != tickerType {
			return errors.New("mochi sweeps: no ticker " + name + " in mochi's loop (mochi version changed?)")
		}
		t := *(**time.Ticker)(unsafe.Add(lp.UnsafePointer(), f.Offset))
		if t == nil {
			return errors.New("mochi sweeps: ticker " + name + " not set")
		}
		tickers = append(tickers, t)
	}
	for _, t := range tickers {
		t.Reset(interval)
	}
	return nil
}

// noRetainedHook keeps mochi's store of retained messages empty. Nothing
// a device sends is retained (the route hook never lets mochi retain a
// device's publish, docs/protocol.md §2.8), but mochi
// retains its own $SYS values whenever it publishes them; with any message
// retained, every SUBSCRIBE scans the topic tree for matches recursively,
// in 4 KiB frames, and the subscribing connection's goroutine stack grows
// to 64 KiB (issue 16).
type noRetainedHook struct {
	mqtt.HookBase
	srv *mqtt.Server
}

func (h *noRetainedHook) ID() string { return "outpost-no-retained" }

func (h *noRetainedHook) Provides(b byte) bool { return b == mqtt.OnSysInfoTick }

// OnSysInfoTick runs right after mochi published (and retained) its $SYS
// values: it unsets them.
func (h *noRetainedHook) OnSysInfoTick(*system.Info) {
	for topic := range h.srv.Topics.Retained.GetAll() {
		h.srv.Topics.RetainMessage(packets.Packet{TopicName: topic})
	}
}
