package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// CreateDevice implements outpost.DeviceStore.
func (db *DB) CreateDevice(ctx context.Context, d *outpost.Device, secretHash []byte) error {
	_, err := db.pool.Exec(ctx, `INSERT INTO devices (id, name, secret_hash, created_at) VALUES ($1, $2, $3, $4)`,
		d.ID, d.Name, secretHash, d.CreatedAt.UnixMilli())
	if code, constraint := pgCode(err); code == codeUniqueViolation {
		if constraint == "devices_name_key" {
			return outpost.Errorf(outpost.ECONFLICT, "a device named %q already exists", d.Name)
		}
		return outpost.Errorf(outpost.ECONFLICT, "device %s already exists", d.ID)
	} else if err != nil {
		return fmt.Errorf("create device: %w", err)
	}
	return nil
}

const deviceCols = `id, name, created_at, online, last_seen`

func scanDevice(s pgx.Row) (*outpost.Device, error) {
	var d outpost.Device
	var created, seen int64
	if err := s.Scan(&d.ID, &d.Name, &created, &d.Online, &seen); err != nil {
		return nil, err
	}
	d.CreatedAt = time.UnixMilli(created).UTC()
	d.LastSeen = msTime(seen)
	return &d, nil
}

// Device implements outpost.DeviceStore.
func (db *DB) Device(ctx context.Context, id string) (*outpost.Device, error) {
	d, err := scanDevice(db.pool.QueryRow(ctx, `SELECT `+deviceCols+` FROM devices WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("get device: %w", err)
	}
	return d, nil
}

// Devices implements outpost.DeviceStore.
func (db *DB) Devices(ctx context.Context, f outpost.DeviceFilter) ([]*outpost.Device, error) {
	var where []string
	var args []any
	if f.Name != nil {
		args = append(args, *f.Name)
		where = append(where, fmt.Sprintf("name = $%d", len(args)))
	}
	if f.Online != nil {
		args = append(args, *f.Online)
		where = append(where, fmt.Sprintf("online = $%d", len(args)))
	}
	q := `SELECT ` + deviceCols + ` FROM devices`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY seq`
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += fmt.Sprintf(` LIMIT $%d`, len(args))
	}
	rows, err := db.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	out := []*outpost.Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// DeleteDevice implements outpost.DeviceStore. The device row is locked
// first: appends in progress for it (which hold it FOR KEY SHARE) finish
// before its readings are deleted, and later ones find it gone.
func (db *DB) DeleteDevice(ctx context.Context, id string) error {
	var seq int64
	err := db.tx(ctx, "delete device", func(tx pgx.Tx) error {
		var err error
		if seq, err = seqOf(ctx, tx, id, "FOR UPDATE"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM readings WHERE series IN (SELECT seq FROM feeds WHERE device_seq = $1)`, seq); err != nil {
			return err
		}
		// Cascades to feeds, batches, the device model and the down queue.
		_, err = tx.Exec(ctx, `DELETE FROM devices WHERE seq = $1`, seq)
		return err
	})
	if err != nil {
		return err
	}
	db.mu.Lock()
	for k := range db.feedSeq {
		if k.dev == seq {
			delete(db.feedSeq, k)
		}
	}
	db.mu.Unlock()
	return nil
}

// SecretHash implements outpost.DeviceStore.
func (db *DB) SecretHash(ctx context.Context, id string) ([]byte, error) {
	var h []byte
	err := db.pool.QueryRow(ctx, `SELECT secret_hash FROM devices WHERE id = $1`, id).Scan(&h)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("secret hash: %w", err)
	}
	return h, nil
}

// SetSecretHash implements outpost.DeviceStore.
func (db *DB) SetSecretHash(ctx context.Context, id string, secretHash []byte) error {
	tag, err := db.pool.Exec(ctx, `UPDATE devices SET secret_hash = $1 WHERE id = $2`, secretHash, id)
	if err != nil {
		return fmt.Errorf("set secret: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	}
	return nil
}

// SetPresence implements outpost.PresenceStore: online makes this
// replica the device's owner; offline applies only while it is.
func (db *DB) SetPresence(ctx context.Context, id string, online bool, lastSeen time.Time) error {
	_, err := db.pool.Exec(ctx, `UPDATE devices SET
			online = CASE WHEN $2 THEN true WHEN presence_owner = $4 THEN false ELSE online END,
			presence_owner = CASE WHEN $2 THEN $4 ELSE presence_owner END,
			last_seen = GREATEST(last_seen, $3)
		WHERE id = $1`, id, online, lastSeen.UnixMilli(), db.opt.Replica)
	if err != nil {
		return fmt.Errorf("set presence: %w", err)
	}
	return nil
}

// ResetPresence implements outpost.PresenceStore: the devices this
// replica recorded online go offline; other replicas' stay as they are.
func (db *DB) ResetPresence(ctx context.Context) error {
	if _, err := db.pool.Exec(ctx, `UPDATE devices SET online = false WHERE online AND presence_owner = $1`, db.opt.Replica); err != nil {
		return fmt.Errorf("reset presence: %w", err)
	}
	return nil
}
