package router_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/router"
	"github.com/outpost-iot/outpost/protocol"
)

type presence struct {
	mu   sync.Mutex
	seen map[string]int
}

func (p *presence) Connected(string, outpost.SessionID)                 {}
func (p *presence) Disconnected(string, outpost.SessionID, string) bool { return true }
func (p *presence) Seen(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = map[string]int{}
	}
	p.seen[id]++
}

type rejecter struct{ codes []string }

func (r *rejecter) Reject(_, _, _ string, err error) error {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		pe = &protocol.Error{Code: protocol.CodeInvalid, Message: err.Error()}
	}
	r.codes = append(r.codes, pe.Code)
	return pe
}

// home records the kinds it handled.
type home struct {
	name  string
	kinds []string
}

func (h *home) Handle(_ context.Context, _, kind string, _ []byte) error {
	h.kinds = append(h.kinds, kind)
	return nil
}

// asyncHome finishes later: it keeps done.
type asyncHome struct {
	home
	done     func(error)
	deadline bool
}

func (h *asyncHome) Start(_, storeCtx context.Context, _ string, _ []byte, done func(error)) (bool, error) {
	_, h.deadline = storeCtx.Deadline()
	h.done = done
	return true, nil
}

func newRouter() (*router.Router, *presence, *rejecter) {
	p, r := &presence{}, &rejecter{}
	rt := router.New(p)
	rt.SetRejecter(r)
	return rt, p, r
}

// TestRoutesByKind: each kind reaches its one home; an exact route goes
// before a family route that also matches.
func TestRoutesByKind(t *testing.T) {
	rt, p, rej := newRouter()
	rpc, raw, special := &home{name: "rpc"}, &home{name: "raw"}, &home{name: "special"}
	rt.Route(protocol.KindRPC, rpc)
	rt.Route("raw/special", special)
	rt.RouteMatch(func(k string) bool { return strings.HasPrefix(k, "raw/") }, raw)
	ctx := context.Background()
	for _, k := range []string{protocol.KindRPC, "raw/a/b", "raw/special", "raw/c"} {
		if err := rt.HandleMessage(ctx, "d-1", k, []byte(`{}`)); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
	}
	if got := strings.Join(rpc.kinds, ","); got != "rpc" {
		t.Errorf("rpc home got %q", got)
	}
	if got := strings.Join(raw.kinds, ","); got != "raw/a/b,raw/c" {
		t.Errorf("raw home got %q", got)
	}
	if got := strings.Join(special.kinds, ","); got != "raw/special" {
		t.Errorf("exact route got %q", got)
	}
	if len(rej.codes) != 0 {
		t.Errorf("rejections %v", rej.codes)
	}
	if p.seen["d-1"] != 4 {
		t.Errorf("presence saw the device %d times, want 4", p.seen["d-1"])
	}
	if !rt.Kinds("raw/zzz") || rt.Kinds("nope") {
		t.Error("Kinds does not follow the routes")
	}
}

// TestRejects: a kind no home owns and a payload over the protocol's
// bound are rejected for good, with the device's error reply, and reach
// no home.
func TestRejects(t *testing.T) {
	rt, _, rej := newRouter()
	h := &home{}
	rt.Route(protocol.KindTelemetry, h)
	ctx := context.Background()
	var pe *protocol.Error
	if err := rt.HandleMessage(ctx, "d-1", "nope", nil); !errors.As(err, &pe) || pe.Code != protocol.CodeUnknownKind {
		t.Fatalf("unknown kind: %v", err)
	}
	big := make([]byte, protocol.MaxMessageBytes+1)
	if _, err := rt.StartMessage(ctx, "d-1", protocol.KindTelemetry, big, func(error) {}); !errors.As(err, &pe) || pe.Code != protocol.CodeTooLarge {
		t.Fatalf("oversized: %v", err)
	}
	if len(h.kinds) != 0 {
		t.Fatalf("a rejected message reached its home: %v", h.kinds)
	}
	if strings.Join(rej.codes, ",") != protocol.CodeUnknownKind+","+protocol.CodeTooLarge {
		t.Fatalf("error replies %v", rej.codes)
	}
}

// TestStartMessage: an asynchronous home takes its kind and finishes it
// later, with a bounded context for its store work; other kinds finish
// at once.
func TestStartMessage(t *testing.T) {
	rt, _, _ := newRouter()
	tel := &asyncHome{}
	ev := &home{}
	rt.RouteAsync(protocol.KindTelemetry, tel)
	rt.Route(protocol.KindEvent, ev)
	ctx := context.Background()
	var got error = errors.New("not called")
	async, err := rt.StartMessage(ctx, "d-1", protocol.KindTelemetry, []byte(`{}`), func(err error) { got = err })
	if !async || err != nil || tel.done == nil || !tel.deadline {
		t.Fatalf("telemetry: async %v err %v started %v store deadline %v", async, err, tel.done != nil, tel.deadline)
	}
	tel.done(nil)
	if got != nil {
		t.Fatalf("done: %v", got)
	}
	if async, err := rt.StartMessage(ctx, "d-1", protocol.KindEvent, []byte(`{}`), func(error) { t.Error("done called for a sync kind") }); async || err != nil || len(ev.kinds) != 1 {
		t.Fatalf("event: async %v err %v handled %v", async, err, ev.kinds)
	}
	// The synchronous path of an async home is its Handle.
	if err := rt.HandleMessage(ctx, "d-1", protocol.KindTelemetry, []byte(`{}`)); err != nil || len(tel.kinds) != 1 {
		t.Fatalf("sync telemetry: %v %v", err, tel.kinds)
	}
}

// TestOneHomePerKind: registering a second home for a kind is a wiring
// mistake, caught at start.
func TestOneHomePerKind(t *testing.T) {
	rt, _, _ := newRouter()
	rt.Route(protocol.KindRPC, &home{})
	defer func() {
		if recover() == nil {
			t.Fatal("a second home for rpc was accepted")
		}
	}()
	rt.Route(protocol.KindRPC, &home{})
}
