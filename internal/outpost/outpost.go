// Package outpost holds the platform's domain: devices, readings, the coded
// errors that every edge maps to its own vocabulary, and the store
// interfaces that storage engines implement. It imports nothing else from
// the project.
package outpost

import (
	"context"
	"encoding/json"
	"time"
)

// Device is a registered device as the platform knows it.
type Device struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Online is true while the device holds a live MQTT session.
	Online bool `json:"online"`
	// LastSeen is the last time the device connected, sent a message or
	// disconnected; zero if it never connected.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Attributes the device registered (filled when one device is shown).
	Attributes []Attribute `json:"attributes,omitempty"`
	// Rejected counts what the platform rejected from the device since it
	// started, by "kind/code" (e.g. "telemetry/unknown_feed"): filled when
	// one device is shown.
	Rejected map[string]int64 `json:"rejected,omitempty"`
	// Gateway is the gateway a child is reached through, and its address
	// there: filled when one device is shown, nil for a device that is no
	// child.
	Gateway *GatewayRef `json:"gateway,omitempty"`
}

// GatewayRef names a child's gateway and its address there.
type GatewayRef struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

// DeviceFilter selects devices in DeviceStore.Devices. Nil fields match all.
type DeviceFilter struct {
	Name   *string
	Online *bool
	Limit  int
}

// DeviceStore keeps the device registry, credentials and presence.
type DeviceStore interface {
	// CreateDevice stores a new device with the hash of its secret.
	// Returns ECONFLICT if the id or name is taken.
	CreateDevice(ctx context.Context, d *Device, secretHash []byte) error
	// CreateDevices stores several new devices, secretHashes[i] being the
	// hash of ds[i]'s secret, all or none. Returns ECONFLICT if an id or
	// name is taken.
	CreateDevices(ctx context.Context, ds []*Device, secretHashes [][]byte) error
	// EachSecretHash calls fn with the id and secret hash of every device,
	// in no particular order, and stops at fn's first error.
	EachSecretHash(ctx context.Context, fn func(id string, secretHash []byte) error) error
	// Device returns one device. Returns ENOTFOUND.
	Device(ctx context.Context, id string) (*Device, error)
	// Devices lists devices ordered by creation.
	Devices(ctx context.Context, f DeviceFilter) ([]*Device, error)
	// DeleteDevice removes a device and everything stored for it.
	// Returns ENOTFOUND.
	DeleteDevice(ctx context.Context, id string) error
	// SecretHash returns the stored hash of a device's secret. Returns
	// ENOTFOUND.
	SecretHash(ctx context.Context, id string) ([]byte, error)
	// SetSecretHash replaces a device's secret hash. Returns ENOTFOUND.
	SetSecretHash(ctx context.Context, id string, secretHash []byte) error
	// Presence: SetPresence and ResetPresence.
	PresenceStore
}

// Presence is a device's presence as the store keeps it.
type Presence struct {
	ID       string
	Online   bool
	LastSeen time.Time
}

// Reading is one stored value of one feed.
type Reading struct {
	Feed  string          `json:"feed"`
	TS    int64           `json:"ts"` // milliseconds since the Unix epoch
	Value json.RawMessage `json:"value"`
}

// Batch is a set of readings from one device, stored atomically.
type Batch struct {
	DeviceID string
	// ID deduplicates redeliveries; empty means no deduplication.
	ID       string
	Readings []Reading
}

// AppendResult tells what AppendBatches did with one batch.
type AppendResult uint8

// Outcomes of AppendBatches for one batch.
const (
	AppendStored AppendResult = iota
	AppendDuplicate
	AppendUnknownDevice
)

// ReadingFilter selects readings of one device.
type ReadingFilter struct {
	DeviceID string
	Feed     string // empty: all feeds
	Since    int64  // inclusive, ms; 0 = no bound
	Until    int64  // exclusive, ms; 0 = no bound
	// Limit is the maximum number of readings (default 1000). With Since
	// set, the first Limit readings from Since are returned; without it, the
	// most recent Limit readings.
	Limit int
}

// TelemetryStore stores and queries readings.
type TelemetryStore interface {
	// AppendBatches stores batches in one transaction and reports what
	// became of each: stored, skipped as a duplicate of a batch already
	// stored (same device, same non-empty ID), or skipped because the device
	// no longer exists. An error means nothing was stored.
	AppendBatches(ctx context.Context, batches []*Batch) ([]AppendResult, error)
	// Readings returns readings in ascending time order (ties in arrival
	// order). Returns ENOTFOUND for an unknown device.
	Readings(ctx context.Context, f ReadingFilter) ([]Reading, error)
	// Feeds lists the feed references a device has readings for.
	Feeds(ctx context.Context, deviceID string) ([]string, error)
}

// SessionID names one MQTT session of a device: the broker numbers every
// connection it accepts, never reusing a number while it runs. Presence
// and delivery compare session ids to tell a device's new session from
// the one it replaced (a takeover), so a late end of the old session
// never marks the new one offline.
type SessionID uint64
