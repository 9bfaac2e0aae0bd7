package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/internal/outpost"
)

var _ outpost.GatewayStore = (*DB)(nil)

// migrationGateways (4): gateways, the bindings of their children and
// their sinks, as in the SQLite engine. child_seq is unique: a device is
// the child of one gateway at most.
const migrationGateways = `
CREATE TABLE gateways (
	device_seq bigint NOT NULL PRIMARY KEY REFERENCES devices(seq) ON DELETE CASCADE,
	policy     text   NOT NULL,
	created_at bigint NOT NULL
);
CREATE TABLE gateway_children (
	gateway_seq bigint NOT NULL REFERENCES gateways(device_seq) ON DELETE CASCADE,
	address     text   NOT NULL,
	child_seq   bigint NOT NULL UNIQUE REFERENCES devices(seq) ON DELETE CASCADE,
	sink        text   NOT NULL DEFAULT '',
	created_at  bigint NOT NULL,
	PRIMARY KEY (gateway_seq, address)
);
CREATE TABLE gateway_sinks (
	gateway_seq bigint NOT NULL REFERENCES gateways(device_seq) ON DELETE CASCADE,
	name        text   NOT NULL,
	config      text   NOT NULL,
	updated_at  bigint NOT NULL,
	PRIMARY KEY (gateway_seq, name)
);
`

func gatewaySeq(ctx context.Context, q querier, id, lock string) (int64, error) {
	var seq int64
	err := q.QueryRow(ctx, `SELECT g.device_seq FROM gateways g JOIN devices d ON d.seq = g.device_seq WHERE d.id = $1 `+lock, id).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, outpost.Errorf(outpost.ENOTFOUND, "gateway %s not found", id)
	}
	return seq, err
}

// SetGateway implements outpost.GatewayStore.
func (db *DB) SetGateway(ctx context.Context, g *outpost.Gateway) error {
	return db.tx(ctx, "set gateway", func(tx pgx.Tx) error {
		seq, err := seqOf(ctx, tx, g.ID, "FOR UPDATE")
		if err != nil {
			return err
		}
		var child bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM gateway_children WHERE child_seq = $1)`, seq).Scan(&child); err != nil {
			return err
		}
		if child {
			return outpost.Errorf(outpost.ECONFLICT, "device %s is the child of a gateway and cannot be one", g.ID)
		}
		_, err = tx.Exec(ctx, `INSERT INTO gateways (device_seq, policy, created_at) VALUES ($1, $2, $3)
			ON CONFLICT (device_seq) DO UPDATE SET policy = excluded.policy`, seq, g.Policy, g.CreatedAt.UnixMilli())
		return err
	})
}

const gatewayCols = `d.id, g.policy, g.created_at`

func scanGateway(s pgx.Row) (*outpost.Gateway, error) {
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
	g, err := scanGateway(db.pool.QueryRow(ctx, `SELECT `+gatewayCols+` FROM gateways g JOIN devices d ON d.seq = g.device_seq WHERE d.id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "gateway %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("get gateway: %w", err)
	}
	return g, nil
}

// Gateways implements outpost.GatewayStore.
func (db *DB) Gateways(ctx context.Context) ([]*outpost.Gateway, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+gatewayCols+` FROM gateways g JOIN devices d ON d.seq = g.device_seq ORDER BY g.created_at, d.seq`)
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

func bindChild(ctx context.Context, tx pgx.Tx, gw, child int64, c *outpost.Child) error {
	_, err := tx.Exec(ctx, `INSERT INTO gateway_children (gateway_seq, address, child_seq, sink, created_at) VALUES ($1, $2, $3, $4, $5)`,
		gw, c.Address, child, c.Sink, c.CreatedAt.UnixMilli())
	if code, _ := pgCode(err); code == codeUniqueViolation {
		return outpost.Errorf(outpost.ECONFLICT, "gateway %s already has a child at address %s, or device %s is a child already", c.GatewayID, c.Address, c.DeviceID)
	}
	return err
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
	return db.tx(ctx, "create children", func(tx pgx.Tx) error {
		gws := map[string]int64{}
		for i, c := range cs {
			gw, ok := gws[c.GatewayID]
			if !ok {
				var err error
				if gw, err = gatewaySeq(ctx, tx, c.GatewayID, "FOR SHARE OF g"); err != nil {
					return err
				}
				gws[c.GatewayID] = gw
			}
			d := ds[i]
			var seq int64
			err := tx.QueryRow(ctx, `INSERT INTO devices (id, name, secret_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING seq`,
				d.ID, d.Name, secretHashes[i], d.CreatedAt.UnixMilli()).Scan(&seq)
			if code, constraint := pgCode(err); code == codeUniqueViolation {
				if constraint == "devices_name_key" {
					return outpost.Errorf(outpost.ECONFLICT, "a device named %q already exists", d.Name)
				}
				return outpost.Errorf(outpost.ECONFLICT, "device %s already exists", d.ID)
			} else if err != nil {
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
	return db.tx(ctx, "attach child", func(tx pgx.Tx) error {
		gw, err := gatewaySeq(ctx, tx, c.GatewayID, "FOR SHARE OF g")
		if err != nil {
			return err
		}
		seq, err := seqOf(ctx, tx, c.DeviceID, "FOR UPDATE")
		if err != nil {
			return err
		}
		var isGateway bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM gateways WHERE device_seq = $1)`, seq).Scan(&isGateway); err != nil {
			return err
		}
		if isGateway {
			return outpost.Errorf(outpost.ECONFLICT, "device %s is a gateway and cannot be a child", c.DeviceID)
		}
		return bindChild(ctx, tx, gw, seq, c)
	})
}

// DetachChild implements outpost.GatewayStore.
func (db *DB) DetachChild(ctx context.Context, gatewayID, address string) error {
	return db.tx(ctx, "detach child", func(tx pgx.Tx) error {
		gw, err := gatewaySeq(ctx, tx, gatewayID, "")
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM gateway_children WHERE gateway_seq = $1 AND address = $2`, gw, address)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return outpost.Errorf(outpost.ENOTFOUND, "gateway %s has no child at address %s", gatewayID, address)
		}
		return nil
	})
}

const childQuery = `SELECT gd.id, c.address, cd.id, c.sink, c.created_at FROM gateway_children c
	JOIN devices gd ON gd.seq = c.gateway_seq JOIN devices cd ON cd.seq = c.child_seq`

func scanChild(s pgx.Row) (*outpost.Child, error) {
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
	gw, err := gatewaySeq(ctx, db.pool, gatewayID, "")
	if err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil, err
		}
		return nil, fmt.Errorf("children: %w", err)
	}
	rows, err := db.pool.Query(ctx, childQuery+` WHERE c.gateway_seq = $1 ORDER BY c.address`, gw)
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
	c, err := scanChild(db.pool.QueryRow(ctx, childQuery+` WHERE cd.id = $1`, deviceID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "device %s is no gateway's child", deviceID)
	} else if err != nil {
		return nil, fmt.Errorf("child of: %w", err)
	}
	return c, nil
}

// SetSinks implements outpost.GatewayStore.
func (db *DB) SetSinks(ctx context.Context, gatewayID string, sinks []*outpost.Sink) error {
	return db.tx(ctx, "set sinks", func(tx pgx.Tx) error {
		gw, err := gatewaySeq(ctx, tx, gatewayID, "FOR UPDATE OF g")
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM gateway_sinks WHERE gateway_seq = $1`, gw); err != nil {
			return err
		}
		for _, s := range sinks {
			_, err := tx.Exec(ctx, `INSERT INTO gateway_sinks (gateway_seq, name, config, updated_at) VALUES ($1, $2, $3, $4)`,
				gw, s.Name, string(s.Config), s.UpdatedAt.UnixMilli())
			if code, _ := pgCode(err); code == codeUniqueViolation {
				return outpost.Errorf(outpost.EINVALID, "sink %s given twice", s.Name)
			} else if err != nil {
				return err
			}
		}
		return nil
	})
}

// Sinks implements outpost.GatewayStore.
func (db *DB) Sinks(ctx context.Context, gatewayID string) ([]*outpost.Sink, error) {
	gw, err := gatewaySeq(ctx, db.pool, gatewayID, "")
	if err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil, err
		}
		return nil, fmt.Errorf("sinks: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT name, config, updated_at FROM gateway_sinks WHERE gateway_seq = $1 ORDER BY name`, gw)
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
