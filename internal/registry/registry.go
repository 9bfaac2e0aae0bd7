// Package registry is the device registry: it creates, lists, shows,
// deletes devices and rotates their secrets, keeps the in-memory
// credentials the broker checks every login against (Credentials), and
// overlays the live presence on what the store says.
package registry

import (
	"context"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// Store is what the registry needs from the platform's store.
type Store interface {
	CreateDevice(ctx context.Context, d *outpost.Device, secretHash []byte) error
	CreateDevices(ctx context.Context, ds []*outpost.Device, secretHashes [][]byte) error
	Device(ctx context.Context, id string) (*outpost.Device, error)
	Devices(ctx context.Context, f outpost.DeviceFilter) ([]*outpost.Device, error)
	DeleteDevice(ctx context.Context, id string) error
	SetSecretHash(ctx context.Context, id string, hash []byte) error
}

// Sessions ends a device's live sessions (the broker implements it).
type Sessions interface {
	DisconnectDevice(deviceID string)
}

// Presence is the live presence (internal/presence implements it).
type Presence interface {
	// State reports whether the device is online and when it was last
	// seen; ok is false for a device without a session since the start.
	State(deviceID string) (online bool, lastSeen time.Time, ok bool)
	Forget(deviceID string)
}

// Accounts keeps the devices' logins at an external broker (Mosquitto's
// dynamic security: internal/dynsec), when the broker authenticates
// devices itself.
type Accounts interface {
	CreateDevice(ctx context.Context, deviceID, password string) error
	SetPassword(ctx context.Context, deviceID, password string) error
	DeleteDevice(ctx context.Context, deviceID string) error
}

// Options connect the registry.
type Options struct {
	Store       Store
	Credentials *Credentials
	Sessions    Sessions
	Presence    Presence
	// Decorate adds to a device shown alone what other homes know of it
	// (the device model's attributes and rejection counts).
	Decorate func(ctx context.Context, d *outpost.Device)
	// OnDelete is told of every deleted device, after its sessions ended,
	// so other homes drop what they cached of it.
	OnDelete []func(deviceID string)
	// Metrics, when set, receives the registry's counters.
	Metrics prometheus.Registerer
	// Accounts, when set, gets every created, rotated and deleted device:
	// a device exists for the platform only once its broker login does.
	// Its DeleteDevice returns nil for a login that is already gone.
	Accounts Accounts
}

// Registry is the device registry. It is safe for concurrent use.
type Registry struct {
	o       Options
	created prometheus.Counter
}

// New returns the registry.
func New(o Options) *Registry {
	r := &Registry{o: o, created: prometheus.NewCounter(prometheus.CounterOpts{Name: "outpost_devices_created_total", Help: "Devices created."})}
	if o.Metrics != nil {
		o.Metrics.MustRegister(r.created)
	}
	return r
}

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

// CreateDevice registers a device and returns it with its secret, which
// is shown this once (the store keeps its hash).
func (r *Registry) CreateDevice(ctx context.Context, name string) (*outpost.Device, string, error) {
	name, err := checkName(name)
	if err != nil {
		return nil, "", err
	}
	secret := outpost.NewSecret()
	hash := outpost.HashSecret(secret)
	d := &outpost.Device{ID: outpost.NewDeviceID(), Name: name, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := r.o.Store.CreateDevice(ctx, d, hash); err != nil {
		return nil, "", err
	}
	if err := r.account(ctx, []*outpost.Device{d}, []string{secret}); err != nil {
		return nil, "", err
	}
	r.o.Credentials.set(d.ID, hash)
	r.created.Inc()
	return d, secret, nil
}

// CreateDevices registers every device or none, in one transaction.
func (r *Registry) CreateDevices(ctx context.Context, names []string) ([]*outpost.Device, []string, error) {
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
	if err := r.o.Store.CreateDevices(ctx, ds, hashes); err != nil {
		return nil, nil, err
	}
	if err := r.account(ctx, ds, secrets); err != nil {
		return nil, nil, err
	}
	for i, d := range ds {
		r.o.Credentials.set(d.ID, hashes[i])
	}
	r.created.Add(float64(len(ds)))
	return ds, secrets, nil
}

// Device returns a device with its live presence and its model.
func (r *Registry) Device(ctx context.Context, id string) (*outpost.Device, error) {
	d, err := r.o.Store.Device(ctx, id)
	if err != nil {
		return nil, err
	}
	r.live(d)
	if r.o.Decorate != nil {
		r.o.Decorate(ctx, d)
	}
	return d, nil
}

// live overlays the in-memory presence, which is fresher than the store.
// A device the tracker does not know has had no session since the start:
// it is offline, whatever the store says (the reset at start may have
// failed on a full disk).
func (r *Registry) live(d *outpost.Device) {
	if online, seen, ok := r.o.Presence.State(d.ID); ok {
		d.Online = online
		if seen.After(d.LastSeen) {
			d.LastSeen = seen.UTC()
		}
	} else {
		d.Online = false
	}
}

// Devices lists devices with their live presence.
func (r *Registry) Devices(ctx context.Context, f outpost.DeviceFilter) ([]*outpost.Device, error) {
	online, limit := f.Online, f.Limit
	if online != nil {
		// Presence is filtered on the live state below, so the limit can
		// only be applied after it.
		f.Online, f.Limit = nil, 0
	}
	ds, err := r.o.Store.Devices(ctx, f)
	if err != nil {
		return nil, err
	}
	out := ds[:0]
	for _, d := range ds {
		if limit > 0 && len(out) == limit {
			break
		}
		r.live(d)
		if online == nil || d.Online == *online {
			out = append(out, d)
		}
	}
	return out, nil
}

// DeleteDevice deletes a device and ends its sessions.
func (r *Registry) DeleteDevice(ctx context.Context, id string) error {
	if err := r.o.Store.DeleteDevice(ctx, id); err != nil {
		return err
	}
	if a := r.o.Accounts; a != nil {
		// The broker ends the device's sessions with its login.
		if err := a.DeleteDevice(ctx, id); err != nil {
			return outpost.Errorf(outpost.EUNAVAILABLE, "device %s is deleted, but the broker still has its login: %v; delete it again to retry", id, err)
		}
	}
	// The credentials go before the sessions are revoked: a login racing
	// the deletion either fails its check or is ended by the revocation
	// (broker/sessions.go).
	r.o.Credentials.forget(id)
	r.o.Sessions.DisconnectDevice(id)
	r.o.Presence.Forget(id)
	for _, f := range r.o.OnDelete {
		f(id)
	}
	return nil
}

// RotateSecret gives a device a new secret and ends its sessions, which
// used the old one.
func (r *Registry) RotateSecret(ctx context.Context, id string) (string, error) {
	secret := outpost.NewSecret()
	hash := outpost.HashSecret(secret)
	if err := r.o.Store.SetSecretHash(ctx, id, hash); err != nil {
		return "", err
	}
	if a := r.o.Accounts; a != nil {
		if err := a.SetPassword(ctx, id, secret); err != nil {
			return "", outpost.Errorf(outpost.EUNAVAILABLE, "the broker did not take device %s's new secret (%v): the old one still works there; rotate again", id, err)
		}
	}
	r.o.Credentials.set(id, hash)
	r.o.Sessions.DisconnectDevice(id)
	return secret, nil
}

// account creates the broker logins of new devices; when the broker
// refuses one, the devices are removed again and the creation fails.
func (r *Registry) account(ctx context.Context, ds []*outpost.Device, secrets []string) error {
	a := r.o.Accounts
	if a == nil {
		return nil
	}
	for i, d := range ds {
		if err := a.CreateDevice(ctx, d.ID, secrets[i]); err != nil {
			cctx := context.WithoutCancel(ctx)
			for _, x := range ds[:i] {
				_ = a.DeleteDevice(cctx, x.ID)
			}
			for _, x := range ds {
				_ = r.o.Store.DeleteDevice(cctx, x.ID)
			}
			return outpost.Errorf(outpost.EUNAVAILABLE, "the broker did not create the login of device %s: %v", d.Name, err)
		}
	}
	return nil
}
