package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/outpost-iot/outpost/internal/httpapi"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/rpc"
	"github.com/outpost-iot/outpost/internal/stream"
)

// service is what the HTTP API calls: the registry, telemetry queries, the
// RPC relay and the live stream, with presence merged in.
type service struct{ s *Server }

var (
	_ httpapi.Service     = (*service)(nil)
	_ httpapi.BulkCreator = (*service)(nil)
)

// MaxNameLen bounds device names.
const MaxNameLen = 128

// MaxBulkDevices bounds the devices one bulk creation registers.
const MaxBulkDevices = 5000

// checkName trims a device name and checks it.
func checkName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return "", outpost.Errorf(outpost.EINVALID, "device name is required")
	}
	if len(name) > MaxNameLen || !utf8.ValidString(name) {
		return "", outpost.Errorf(outpost.EINVALID, "device name must be valid UTF-8 of at most %d bytes", MaxNameLen)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", outpost.Errorf(outpost.EINVALID, "device name contains a control character")
		}
	}
	return name, nil
}

func (v *service) CreateDevice(ctx context.Context, name string) (*outpost.Device, string, error) {
	name, err := checkName(name)
	if err != nil {
		return nil, "", err
	}
	secret := outpost.NewSecret()
	hash := outpost.HashSecret(secret)
	d := &outpost.Device{ID: outpost.NewDeviceID(), Name: name, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := v.s.db.CreateDevice(ctx, d, hash); err != nil {
		return nil, "", err
	}
	v.s.creds.set(d.ID, hash)
	v.s.metrics.devicesCreated.Inc()
	return d, secret, nil
}

// CreateDevices implements httpapi.BulkCreator: every device or none, in
// one transaction.
func (v *service) CreateDevices(ctx context.Context, names []string) ([]*outpost.Device, []string, error) {
	if len(names) == 0 {
		return nil, nil, outpost.Errorf(outpost.EINVALID, "names: at least one device name is required")
	}
	if len(names) > MaxBulkDevices {
		return nil, nil, outpost.Errorf(outpost.EINVALID, "names: at most %d devices at once, not %d", MaxBulkDevices, len(names))
	}
	seen := make(map[string]int, len(names))
	ds := make([]*outpost.Device, len(names))
	secrets := make([]string, len(names))
	hashes := make([][]byte, len(names))
	now := time.Now().UTC().Truncate(time.Millisecond)
	for i, n := range names {
		name, err := checkName(n)
		if err != nil {
			return nil, nil, outpost.Errorf(outpost.EINVALID, "names[%d]: %s", i, outpost.ErrorMessage(err))
		}
		if j, dup := seen[name]; dup {
			return nil, nil, outpost.Errorf(outpost.EINVALID, "names[%d]: %q is also names[%d]", i, name, j)
		}
		seen[name] = i
		secrets[i] = outpost.NewSecret()
		hashes[i] = outpost.HashSecret(secrets[i])
		ds[i] = &outpost.Device{ID: outpost.NewDeviceID(), Name: name, CreatedAt: now}
	}
	if err := v.s.db.CreateDevices(ctx, ds, hashes); err != nil {
		return nil, nil, err
	}
	for i, d := range ds {
		v.s.creds.set(d.ID, hashes[i])
	}
	v.s.metrics.devicesCreated.Add(float64(len(ds)))
	return ds, secrets, nil
}

func (v *service) Device(ctx context.Context, id string) (*outpost.Device, error) {
	d, err := v.s.db.Device(ctx, id)
	if err != nil {
		return nil, err
	}
	v.live(d)
	v.decorate(ctx, d)
	return d, nil
}

// live overlays the in-memory presence, which is fresher than the store.
// A device the tracker does not know has had no session since the start:
// it is offline, whatever the store says (the reset at start may have
// failed on a full disk).
func (v *service) live(d *outpost.Device) {
	if online, seen, ok := v.s.presence.State(d.ID); ok {
		d.Online = online
		if seen.After(d.LastSeen) {
			d.LastSeen = seen.UTC()
		}
	} else {
		d.Online = false
	}
}

func (v *service) Devices(ctx context.Context, f outpost.DeviceFilter) ([]*outpost.Device, error) {
	online, limit := f.Online, f.Limit
	if online != nil {
		// Presence is filtered on the live state below, so the limit can
		// only be applied after it.
		f.Online, f.Limit = nil, 0
	}
	ds, err := v.s.db.Devices(ctx, f)
	if err != nil {
		return nil, err
	}
	out := ds[:0]
	for _, d := range ds {
		if limit > 0 && len(out) == limit {
			break
		}
		v.live(d)
		if online == nil || d.Online == *online {
			out = append(out, d)
		}
	}
	return out, nil
}

func (v *service) DeleteDevice(ctx context.Context, id string) error {
	if err := v.s.db.DeleteDevice(ctx, id); err != nil {
		return err
	}
	// The credentials go before the sessions are revoked: a login racing
	// the deletion either fails its check or is ended by the revocation
	// (broker/sessions.go).
	v.s.creds.forget(id)
	v.s.broker.DisconnectDevice(id)
	v.s.presence.Forget(id)
	v.s.model.forget(id)
	v.s.gatewayDeviceDeleted(id)
	return nil
}

func (v *service) RotateSecret(ctx context.Context, id string) (string, error) {
	secret := outpost.NewSecret()
	hash := outpost.HashSecret(secret)
	if err := v.s.db.SetSecretHash(ctx, id, hash); err != nil {
		return "", err
	}
	v.s.creds.set(id, hash)
	v.s.broker.DisconnectDevice(id)
	return secret, nil
}

func (v *service) Call(ctx context.Context, id, method string, args json.RawMessage, timeout time.Duration) (*rpc.Result, error) {
	// An online device exists; only an offline id needs the store, to tell
	// "offline" from "no such device".
	if !v.s.presence.Online(id) {
		if _, err := v.s.db.Device(ctx, id); err != nil {
			return nil, err
		}
	}
	res, err := v.s.relay.Call(ctx, id, method, args, timeout)
	v.s.metrics.observeRPC(err, res)
	return res, err
}

func (v *service) Readings(ctx context.Context, f outpost.ReadingFilter) ([]outpost.Reading, error) {
	return v.s.db.Readings(ctx, f)
}

func (v *service) Feeds(ctx context.Context, id string) ([]string, error) {
	if _, err := v.s.db.Device(ctx, id); err != nil {
		return nil, err
	}
	return v.s.db.Feeds(ctx, id)
}

func (v *service) Subscribe(f stream.Filter, afterID uint64) (*stream.Subscription, uint64) {
	return v.s.hub.Subscribe(f, 4096, afterID)
}

// Health is liveness: the process serves and its database answers.
func (v *service) Health(ctx context.Context) error {
	return v.s.db.Ping(ctx)
}

// Ready is readiness: a write to the store commits and reads back, and
// the MQTT and HTTP listeners accept connections. Changes are logged, with
// the cause, once each.
func (v *service) Ready(ctx context.Context) error {
	s := v.s
	var errs []error
	if err := s.db.CheckWrite(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := s.broker.Ready(); err != nil {
		errs = append(errs, err)
	}
	if p := s.httpErr.Load(); p != nil {
		errs = append(errs, fmt.Errorf("http listener stopped: %w", *p))
	}
	if len(errs) > 0 {
		if free, _, ok := diskSpace(s.cfg.DataDir); ok && free < 1<<20 {
			errs = append(errs, fmt.Errorf("data directory %s: %d bytes free", s.cfg.DataDir, free))
		}
	}
	err := errors.Join(errs...)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	s.readyMu.Lock()
	changed := msg != s.readyErr
	s.readyErr = msg
	s.readyMu.Unlock()
	if changed && err != nil {
		s.log.Error("not ready", "error", err)
	} else if changed {
		s.log.Info("ready again")
	}
	return err
}

// EachReading implements httpapi.ReadingStreamer.
func (v *service) EachReading(ctx context.Context, f outpost.ReadingFilter, fn func(outpost.Reading) error) error {
	return v.s.db.EachReading(ctx, f, fn)
}
