package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

var _ outpost.GatewayStore = (*DB)(nil)

// migrationGateways (8): gateways, the bindings of their children and
// their sinks. A child is a row of devices like any device; its binding
// marks it with its gateway. child_seq is unique: a device is the child
// of one gateway at most. Everything goes with the gateway's device, a
// binding with its child's.
const migrationGateways = `
CREATE TABLE gateways (
	device_seq INTEGER PRIMARY KEY REFERENCES devices(seq) ON DELETE CASCADE,
	policy     TEXT    NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE TABLE gateway_children (
	gateway_seq INTEGER NOT NULL REFERENCES gateways(device_seq) ON DELETE CASCADE,
	address     TEXT    NOT NULL,
	child_seq   INTEGER NOT NULL UNIQUE REFERENCES devices(seq) ON DELETE CASCADE,
	sink        TEXT    NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	PRIMARY KEY (gateway_seq, address)
) WITHOUT ROWID;
CREATE TABLE gateway_sinks (
	gateway_seq INTEGER NOT NULL REFERENCES gateways(device_seq) ON DELETE CASCADE,
	name        TEXT    NOT NULL,
	config      TEXT    NOT NULL,
	updated_at  INTEGER NOT NULL,
	PRIMARY KEY (gateway_seq, name)
) WITHOUT ROWID;
`

func gatewaySeq(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (int64, error) {
	var seq int64
	err := q.QueryRowContext(ctx, `SELECT g.device_seq FROM gateways g JOIN devices d ON d.seq = g.device_seq WHERE d.id = ?`, id).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, outpost.Errorf(outpost.ENOTFOUND, "gateway %s not found", id)
	}
	return seq, err
}

// SetGateway implements outpost.GatewayStore.
func (db *DB) SetGateway(ctx context.Context, g *outpost.Gateway) error {
	return db.writeTx(ctx, "set gateway", func(tx *sql.Tx) error {
		seq, err := seqOf(ctx, tx, g.ID)
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM gateway_children WHERE child_seq = ?`, seq).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return outpost.Errorf(outpost.ECONFLICT, "device %s is the child of a gateway and cannot be one", g.ID)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO gateways (device_seq, policy, created_at) VALUES (?, ?, ?)
			ON CONFLICT (device_seq) DO UPDATE SET policy = excluded.policy`, seq, g.Policy, g.CreatedAt.UnixMilli())
		return err
	})
}

const gatewayCols = `d.id, g.policy, g.created_at`

func scanGateway(s interface{ Scan(...any) error }) (*outpost.Gateway, error) {
	var g outpost.Gateway
	var created int64
	if err := s.Scan(&g.ID, &g.Policy, &created); err != nil {
		return nil, err
	}
	g.CreatedAt = time.UnixMilli(created).UTC()
	return &g, nil
}

// Gateway implements outpost.GatewayStore.
func (db *DB) Gateway(ctx context.Context, id string) (*outpost.Gateway, error) {
	g, err := scanGateway(db.r.QueryRowContext(ctx, `SELECT `+gatewayCols+` FROM gateways g JOIN devices d ON d.seq = g.device_seq WHERE d.id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "gateway %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("get gateway: %w", err)
	}
	return g, nil
}

// Gateways implements outpost.GatewayStore.
func (db *DB) Gateways(ctx context.Context) ([]*outpost.Gateway, error) {
	rows, err := db.r.QueryContext(ctx, `SELECT `+gatewayCols+` FROM gateways g JOIN devices d ON d.seq = g.device_seq ORDER BY g.created_at, d.seq`)
	if err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	defer rows.Close()
	out := []*outpost.Gateway{}
	for rows.Next() {
		g, err := scanGateway(rows)
		if err != nil {
			return nil, fmt.Errorf("list gateways: %w", err)
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// bindChild inserts a binding; the caller checked the gateway.
func bindChild(ctx context.Context, tx *sql.Tx, gw, child int64, c *outpost.Child) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO gateway_children (gateway_seq, address, child_seq, sink, created_at) VALUES (?, ?, ?, ?, ?)`,
		gw, c.Address, child, c.Sink, c.CreatedAt.UnixMilli())
	if err != nil && isUnique(err) {
		return outpost.Errorf(outpost.ECONFLICT, "gateway %s already has a child at address %s, or device %s is a child already", c.GatewayID, c.Address, c.DeviceID)
	}
	return err
}

func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// CreateChild implements outpost.GatewayStore.
func (db *DB) CreateChild(ctx context.Context, c *outpost.Child, d *outpost.Device, secretHash []byte) error {
	return db.CreateChildren(ctx, []*outpost.Child{c}, []*outpost.Device{d}, [][]byte{secretHash})
}

// CreateChildren implements outpost.GatewayStore: one transaction.
func (db *DB) CreateChildren(ctx context.Context, cs []*outpost.Child, ds []*outpost.Device, secretHashes [][]byte) error {
	if len(cs) != len(ds) || len(cs) != len(secretHashes) {
		return fmt.Errorf("create children: %d children, %d devices, %d secret hashes", len(cs), len(ds), len(secretHashes))
	}
	if len(cs) == 0 {
		return nil
	}
	return db.writeTx(ctx, "create children", func(tx *sql.Tx) error {
		gws := map[string]int64{}
		for i, c := range cs {
			gw, ok := gws[c.GatewayID]
			if !ok {
				var err error
				if gw, err = gatewaySeq(ctx, tx, c.GatewayID); err != nil {
					return err
				}
				gws[c.GatewayID] = gw
			}
			d := ds[i]
			res, err := tx.ExecContext(ctx, insertDevice, d.ID, d.Name, secretHashes[i], d.CreatedAt.UnixMilli())
			if err != nil {
				return createError(err, d)
			}
			seq, err := res.LastInsertId()
			if err != nil {
				return err
			}
			c.DeviceID = d.ID
			if err := bindChild(ctx, tx, gw, seq, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// AttachChild implements outpost.GatewayStore.
func (db *DB) AttachChild(ctx context.Context, c *outpost.Child) error {
	return db.writeTx(ctx, "attach child", func(tx *sql.Tx) error {
		gw, err := gatewaySeq(ctx, tx, c.GatewayID)
		if err != nil {
			return err
		}
		seq, err := seqOf(ctx, tx, c.DeviceID)
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM gateways WHERE device_seq = ?`, seq).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return outpost.Errorf(outpost.ECONFLICT, "device %s is a gateway and cannot be a child", c.DeviceID)
		}
		return bindChild(ctx, tx, gw, seq, c)
	})
}

// DetachChild implements outpost.GatewayStore.
func (db *DB) DetachChild(ctx context.Context, gatewayID, address string) error {
	return db.writeTx(ctx, "detach child", func(tx *sql.Tx) error {
		gw, err := gatewaySeq(ctx, tx, gatewayID)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM gateway_children WHERE gateway_seq = ? AND address = ?`, gw, address)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return outpost.Errorf(outpost.ENOTFOUND, "gateway %s has no child at address %s", gatewayID, address)
		}
		return nil
	})
}

const childQuery = `SELECT gd.id, c.address, cd.id, c.sink, c.created_at FROM gateway_children c
	JOIN devices gd ON gd.seq = c.gateway_seq JOIN devices cd ON cd.seq = c.child_seq`

func scanChild(s interface{ Scan(...any) error }) (*outpost.Child, error) {
	var c outpost.Child
	var created int64
	if err := s.Scan(&c.GatewayID, &c.Address, &c.DeviceID, &c.Sink, &created); err != nil {
		return nil, err
	}
	c.CreatedAt = time.UnixMilli(created).UTC()
	return &c, nil
}

// Children implements outpost.GatewayStore.
func (db *DB) Children(ctx context.Context, gatewayID string) ([]*outpost.Child, error) {
	gw, err := gatewaySeq(ctx, db.r, gatewayID)
	if err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil, err
		}
		return nil, fmt.Errorf("children: %w", err)
	}
	rows, err := db.r.QueryContext(ctx, childQuery+` WHERE c.gateway_seq = ? ORDER BY c.address`, gw)
	if err != nil {
		return nil, fmt.Errorf("children: %w", err)
	}
	defer rows.Close()
	out := []*outpost.Child{}
	for rows.Next() {
		c, err := scanChild(rows)
		if err != nil {
			return nil, fmt.Errorf("children: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// ChildOf implements outpost.GatewayStore.
func (db *DB) ChildOf(ctx context.Context, deviceID string) (*outpost.Child, error) {
	c, err := scanChild(db.r.QueryRowContext(ctx, childQuery+` WHERE cd.id = ?`, deviceID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "device %s is no gateway's child", deviceID)
	} else if err != nil {
		return nil, fmt.Errorf("child of: %w", err)
	}
	return c, nil
}

// SetSinks implements outpost.GatewayStore.
func (db *DB) SetSinks(ctx context.Context, gatewayID string, sinks []*outpost.Sink) error {
	return db.writeTx(ctx, "set sinks", func(tx *sql.Tx) error {
		gw, err := gatewaySeq(ctx, tx, gatewayID)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM gateway_sinks WHERE gateway_seq = ?`, gw); err != nil {
			return err
		}
		for _, s := range sinks {
			if _, err := tx.ExecContext(ctx, `INSERT INTO gateway_sinks (gateway_seq, name, config, updated_at) VALUES (?, ?, ?, ?)`,
				gw, s.Name, string(s.Config), s.UpdatedAt.UnixMilli()); err != nil {
				if isUnique(err) {
					return outpost.Errorf(outpost.EINVALID, "sink %s given twice", s.Name)
				}
				return err
			}
		}
		return nil
	})
}

// Sinks implements outpost.GatewayStore.
func (db *DB) Sinks(ctx context.Context, gatewayID string) ([]*outpost.Sink, error) {
	gw, err := gatewaySeq(ctx, db.r, gatewayID)
	if err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil, err
		}
		return nil, fmt.Errorf("sinks: %w", err)
	}
	rows, err := db.r.QueryContext(ctx, `SELECT name, config, updated_at FROM gateway_sinks WHERE gateway_seq = ? ORDER BY name`, gw)
	if err != nil {
		return nil, fmt.Errorf("sinks: %w", err)
	}
	defer rows.Close()
	out := []*outpost.Sink{}
	for rows.Next() {
		s := &outpost.Sink{GatewayID: gatewayID}
		var cfg string
		var upd int64
		if err := rows.Scan(&s.Name, &cfg, &upd); err != nil {
			return nil, fmt.Errorf("sinks: %w", err)
		}
		s.Config, s.UpdatedAt = []byte(cfg), time.UnixMilli(upd).UTC()
		out = append(out, s)
	}
	return out, rows.Err()
}
