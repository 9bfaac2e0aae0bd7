package outpost

import (
	"context"
	"encoding/json"
	"time"
)

// Gateway is a device that speaks for other devices, its children, which
// it reaches through its sinks (docs/protocol.md §26).
type Gateway struct {
	// ID is the gateway's device id.
	ID string `json:"id"`
	// Policy is "auto" (children the gateway announces are registered)
	// or "provisioned" (only children the operator registered).
	Policy string `json:"policy"`
	// CreatedAt is when the device became a gateway.
	CreatedAt time.Time `json:"created_at"`
}

// Child is a device reached through a gateway. It is a device of its own
// (a row of the device registry, with telemetry, events and presence);
// the binding says which gateway reaches it and by what address. A
// device is the child of at most one gateway.
type Child struct {
	GatewayID string `json:"gateway_id"`
	// Address is the gateway's address for the child, unique per gateway.
	Address string `json:"address"`
	// DeviceID is the child's device id.
	DeviceID string `json:"device_id"`
	// Sink, optional, is the sink that reaches the child.
	Sink      string    `json:"sink,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Sink is one of a gateway's network interfaces, with the configuration
// the gateway last reported.
type Sink struct {
	GatewayID string          `json:"gateway_id"`
	Name      string          `json:"name"`
	Config    json.RawMessage `json:"config"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// GatewayStore keeps gateways, their children and their sinks. A
// gateway's bindings and sinks go when the gateway's device is deleted;
// a child's binding goes when the child's device is deleted.
type GatewayStore interface {
	// SetGateway makes a device a gateway, or changes its policy.
	// ENOTFOUND for an unknown device; ECONFLICT when the device is a
	// child.
	SetGateway(ctx context.Context, g *Gateway) error
	// Gateway returns a gateway. ENOTFOUND when the device is not one.
	Gateway(ctx context.Context, id string) (*Gateway, error)
	// Gateways lists the gateways in the order they were declared.
	Gateways(ctx context.Context) ([]*Gateway, error)
	// CreateChild stores a new device d, with the hash of its secret, and
	// binds it to c.GatewayID at c.Address, in one transaction
	// (c.DeviceID is d.ID). ENOTFOUND for an unknown gateway; ECONFLICT
	// when the address is taken or d's id or name is.
	CreateChild(ctx context.Context, c *Child, d *Device, secretHash []byte) error
	// CreateChildren is CreateChild for several children of one gateway,
	// cs[i] bound to the new device ds[i] with secretHashes[i], all or
	// none.
	CreateChildren(ctx context.Context, cs []*Child, ds []*Device, secretHashes [][]byte) error
	// AttachChild binds an existing device. ENOTFOUND for an unknown
	// gateway or device; ECONFLICT when the address is taken, the device
	// is already a child (of any gateway) or is itself a gateway.
	AttachChild(ctx context.Context, c *Child) error
	// DetachChild removes a binding; the device stays. ENOTFOUND.
	DetachChild(ctx context.Context, gatewayID, address string) error
	// Children lists a gateway's children by address. ENOTFOUND for an
	// unknown gateway.
	Children(ctx context.Context, gatewayID string) ([]*Child, error)
	// ChildOf returns the binding of a device. ENOTFOUND when the device
	// is no child.
	ChildOf(ctx context.Context, deviceID string) (*Child, error)
	// SetSinks replaces a gateway's sinks. ENOTFOUND for an unknown
	// gateway.
	SetSinks(ctx context.Context, gatewayID string, sinks []*Sink) error
	// Sinks lists a gateway's sinks by name. ENOTFOUND for an unknown
	// gateway.
	Sinks(ctx context.Context, gatewayID string) ([]*Sink, error)
}
