package broker

import (
	"time"

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

// TuneMochi does to a new mochi server what its options cannot: it keeps
// its store of retained messages empty (mochi retains its own $SYS
// values). With MochiOptions, it is how the platform runs mochi.
func TuneMochi(srv *mqtt.Server) error {
	return srv.AddHook(&noRetainedHook{srv: srv}, nil)
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
