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

// CreateDevice implements outpost.DeviceStore.
func (db *DB) CreateDevice(ctx context.Context, d *outpost.Device, secretHash []byte) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	_, err := db.w.ExecContext(ctx, insertDevice, d.ID, d.Name, secretHash, d.CreatedAt.UnixMilli())
	return createError(err, d)
}

const insertDevice = `INSERT INTO devices (id, name, secret_hash, created_at) VALUES (?, ?, ?, ?)`

// createError names the taken name or id of a failed insert.
func createError(err error, d *outpost.Device) error {
	switch {
	case err == nil:
		return nil
	case strings.Contains(err.Error(), "UNIQUE constraint failed: devices.name"):
		return outpost.Errorf(outpost.ECONFLICT, "a device named %q already exists", d.Name)
	case strings.Contains(err.Error(), "UNIQUE constraint failed"):
		return outpost.Errorf(outpost.ECONFLICT, "device %s already exists", d.ID)
	}
	return fmt.Errorf("create device: %w", err)
}

// CreateDevices implements outpost.DeviceStore: one transaction, one
// prepared statement.
func (db *DB) CreateDevices(ctx context.Context, ds []*outpost.Device, secretHashes [][]byte) error {
	if len(ds) != len(secretHashes) {
		return fmt.Errorf("create devices: %d devices but %d secret hashes", len(ds), len(secretHashes))
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("create devices: %w", err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, insertDevice)
	if err != nil {
		return fmt.Errorf("create devices: %w", err)
	}
	defer st.Close()
	for i, d := range ds {
		if _, err := st.ExecContext(ctx, d.ID, d.Name, secretHashes[i], d.CreatedAt.UnixMilli()); err != nil {
			return createError(err, d)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("create devices: %w", err)
	}
	return nil
}

// EachSecretHash implements outpost.DeviceStore.
func (db *DB) EachSecretHash(ctx context.Context, fn func(id string, secretHash []byte) error) error {
	rows, err := db.r.QueryContext(ctx, `SELECT id, secret_hash FROM devices`)
	if err != nil {
		return fmt.Errorf("secret hashes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var h []byte
		if err := rows.Scan(&id, &h); err != nil {
			return fmt.Errorf("secret hashes: %w", err)
		}
		if err := fn(id, h); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("secret hashes: %w", err)
	}
	return nil
}

const deviceCols = `id, name, created_at, online, last_seen`

func scanDevice(s interface{ Scan(...any) error }) (*outpost.Device, error) {
	var d outpost.Device
	var created, seen int64
	var online int
	if err := s.Scan(&d.ID, &d.Name, &created, &online, &seen); err != nil {
		return nil, err
	}
	d.CreatedAt = time.UnixMilli(created).UTC()
	d.Online = online != 0
	if seen > 0 {
		d.LastSeen = time.UnixMilli(seen).UTC()
	}
	return &d, nil
}

// Device implements outpost.DeviceStore.
func (db *DB) Device(ctx context.Context, id string) (*outpost.Device, error) {
	d, err := scanDevice(db.r.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
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
		where, args = append(where, "name = ?"), append(args, *f.Name)
	}
	if f.Online != nil {
		where, args = append(where, "online = ?"), append(args, boolInt(*f.Online))
	}
	q := `SELECT ` + deviceCols + ` FROM devices`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY seq`
	if f.Limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	rows, err := db.r.QueryContext(ctx, q, args...)
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
	return out, rows.Err()
}

// DeleteDevice implements outpost.DeviceStore.
func (db *DB) DeleteDevice(ctx context.Context, id string) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	defer tx.Rollback()
	var seq int64
	if err := tx.QueryRowContext(ctx, `SELECT seq FROM devices WHERE id = ?`, id).Scan(&seq); errors.Is(err, sql.ErrNoRows) {
		return outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	} else if err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	r, err := tx.ExecContext(ctx, `DELETE FROM readings_landing WHERE series IN (SELECT seq FROM feeds WHERE device_seq = ?)`, seq)
	if err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	landed, err := r.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	for _, q := range []string{
		`DELETE FROM readings_merged WHERE series IN (SELECT seq FROM feeds WHERE device_seq = ?)`,
		`DELETE FROM readings WHERE series IN (SELECT seq FROM feeds WHERE device_seq = ?)`,
		`DELETE FROM batches WHERE device_seq = ?`,
		`DELETE FROM devices WHERE seq = ?`, // cascades to feeds
	} {
		if _, err := tx.ExecContext(ctx, q, seq); err != nil {
			return fmt.Errorf("delete device: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	db.forgetLanding(seq, int(landed))
	delete(db.devSeq, id)
	for k := range db.feedSeq {
		if k.dev == seq {
			delete(db.feedSeq, k)
		}
	}
	return nil
}

// SecretHash implements outpost.DeviceStore.
func (db *DB) SecretHash(ctx context.Context, id string) ([]byte, error) {
	var h []byte
	err := db.r.QueryRowContext(ctx, `SELECT secret_hash FROM devices WHERE id = ?`, id).Scan(&h)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("secret hash: %w", err)
	}
	return h, nil
}

// SetSecretHash implements outpost.DeviceStore.
func (db *DB) SetSecretHash(ctx context.Context, id string, secretHash []byte) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	res, err := db.w.ExecContext(ctx, `UPDATE devices SET secret_hash = ? WHERE id = ?`, secretHash, id)
	if err != nil {
		return fmt.Errorf("set secret: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	}
	return nil
}

// SetPresence implements outpost.DeviceStore.
func (db *DB) SetPresence(ctx context.Context, id string, online bool, lastSeen time.Time) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	_, err := db.w.ExecContext(ctx, setPresence, boolInt(online), lastSeen.UnixMilli(), id)
	if err != nil {
		return fmt.Errorf("set presence: %w", err)
	}
	return nil
}

// SetPresences implements outpost.DeviceStore: one transaction, one
// prepared statement.
func (db *DB) SetPresences(ctx context.Context, ps []outpost.Presence) error {
	if len(ps) == 0 {
		return nil
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("set presences: %w", err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, setPresence)
	if err != nil {
		return fmt.Errorf("set presences: %w", err)
	}
	defer st.Close()
	for _, p := range ps {
		if _, err := st.ExecContext(ctx, boolInt(p.Online), p.LastSeen.UnixMilli(), p.ID); err != nil {
			return fmt.Errorf("set presences: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("set presences: %w", err)
	}
	return nil
}

const setPresence = `UPDATE devices SET online = ?, last_seen = MAX(last_seen, ?) WHERE id = ?`

// ResetPresence implements outpost.DeviceStore.
func (db *DB) ResetPresence(ctx context.Context) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	if _, err := db.w.ExecContext(ctx, `UPDATE devices SET online = 0 WHERE online != 0`); err != nil {
		return fmt.Errorf("reset presence: %w", err)
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
