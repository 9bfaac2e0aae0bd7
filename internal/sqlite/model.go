package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

var _ outpost.ModelStore = (*DB)(nil)

// migrationModel creates the device-model tables. Every table hangs off
// devices(seq) and goes with the device.
const migrationModel = `
CREATE TABLE feed_defs (
	device_seq INTEGER NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	ref        TEXT    NOT NULL,
	name       TEXT    NOT NULL,
	type       TEXT    NOT NULL,
	data_type  TEXT    NOT NULL,
	unit       TEXT    NOT NULL DEFAULT '',
	removed    INTEGER NOT NULL DEFAULT 0,
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (device_seq, ref)
) WITHOUT ROWID;
CREATE TABLE attributes (
	device_seq INTEGER NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	name       TEXT    NOT NULL,
	data_type  TEXT    NOT NULL,
	value      TEXT    NOT NULL,
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (device_seq, name)
) WITHOUT ROWID;
-- source is 'desired' (owned by the platform) or 'reported' (by the device).
CREATE TABLE parameters (
	device_seq INTEGER NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	source     TEXT    NOT NULL,
	key        TEXT    NOT NULL,
	value      TEXT    NOT NULL,
	PRIMARY KEY (device_seq, source, key)
) WITHOUT ROWID;
CREATE TABLE parameter_versions (
	device_seq INTEGER PRIMARY KEY REFERENCES devices(seq) ON DELETE CASCADE,
	version    INTEGER NOT NULL
);
CREATE TABLE device_events (
	seq         INTEGER PRIMARY KEY,
	device_seq  INTEGER NOT NULL REFERENCES devices(seq) ON DELETE CASCADE,
	kind        TEXT    NOT NULL,
	name        TEXT    NOT NULL DEFAULT '',
	data        TEXT,
	title       TEXT    NOT NULL DEFAULT '',
	text        TEXT    NOT NULL DEFAULT '',
	ts          INTEGER NOT NULL,
	received_at INTEGER NOT NULL
);
CREATE INDEX device_events_device ON device_events (device_seq, seq);
`

// seqOf returns the devices.seq of id, or ENOTFOUND.
func seqOf(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (int64, error) {
	var seq int64
	err := q.QueryRowContext(ctx, `SELECT seq FROM devices WHERE id = ?`, id).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	}
	return seq, err
}

// writeTx runs fn in a write transaction on the single writer.
func (db *DB) writeTx(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		if outpost.ErrorCode(err) != outpost.EINTERNAL {
			return err
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// PutFeeds implements outpost.ModelStore.
func (db *DB) PutFeeds(ctx context.Context, deviceID string, register []outpost.Feed, remove []string) ([]outpost.Feed, error) {
	now := time.Now().UnixMilli()
	err := db.writeTx(ctx, "put feeds", func(tx *sql.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		for _, f := range register {
			if _, err := tx.ExecContext(ctx, `INSERT INTO feed_defs (device_seq, ref, name, type, data_type, unit, removed, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, 0, ?)
				ON CONFLICT (device_seq, ref) DO UPDATE SET name = excluded.name, type = excluded.type,
					data_type = excluded.data_type, unit = excluded.unit, removed = 0, updated_at = excluded.updated_at`,
				seq, f.Ref, f.Name, f.Type, f.DataType, f.Unit, now); err != nil {
				return err
			}
		}
		for _, ref := range remove {
			if _, err := tx.ExecContext(ctx, `INSERT INTO feed_defs (device_seq, ref, name, type, data_type, unit, removed, updated_at)
				VALUES (?, ?, ?, 'IN', '', '', 1, ?)
				ON CONFLICT (device_seq, ref) DO UPDATE SET removed = 1, updated_at = excluded.updated_at`,
				seq, ref, ref, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return db.FeedDefs(ctx, deviceID)
}

// FeedDefs implements outpost.ModelStore.
func (db *DB) FeedDefs(ctx context.Context, deviceID string) ([]outpost.Feed, error) {
	seq, err := seqOf(ctx, db.r, deviceID)
	if err != nil {
		return nil, err
	}
	rows, err := db.r.QueryContext(ctx, `SELECT ref, name, type, data_type, unit, removed, updated_at FROM feed_defs WHERE device_seq = ? ORDER BY ref`, seq)
	if err != nil {
		return nil, fmt.Errorf("feed definitions: %w", err)
	}
	defer rows.Close()
	var out []outpost.Feed
	for rows.Next() {
		var f outpost.Feed
		var removed int
		var at int64
		if err := rows.Scan(&f.Ref, &f.Name, &f.Type, &f.DataType, &f.Unit, &removed, &at); err != nil {
			return nil, fmt.Errorf("feed definitions: %w", err)
		}
		f.Removed, f.UpdatedAt = removed != 0, time.UnixMilli(at).UTC()
		out = append(out, f)
	}
	return out, rows.Err()
}

// PutAttributes implements outpost.ModelStore.
func (db *DB) PutAttributes(ctx context.Context, deviceID string, attrs []outpost.Attribute) error {
	now := time.Now().UnixMilli()
	return db.writeTx(ctx, "put attributes", func(tx *sql.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		for _, a := range attrs {
			if _, err := tx.ExecContext(ctx, `INSERT INTO attributes (device_seq, name, data_type, value, updated_at) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (device_seq, name) DO UPDATE SET data_type = excluded.data_type, value = excluded.value, updated_at = excluded.updated_at`,
				seq, a.Name, a.DataType, string(a.Value), now); err != nil {
				return err
			}
		}
		return nil
	})
}

// Attributes implements outpost.ModelStore.
func (db *DB) Attributes(ctx context.Context, deviceID string) ([]outpost.Attribute, error) {
	seq, err := seqOf(ctx, db.r, deviceID)
	if err != nil {
		return nil, err
	}
	rows, err := db.r.QueryContext(ctx, `SELECT name, data_type, value, updated_at FROM attributes WHERE device_seq = ? ORDER BY name`, seq)
	if err != nil {
		return nil, fmt.Errorf("attributes: %w", err)
	}
	defer rows.Close()
	var out []outpost.Attribute
	for rows.Next() {
		var a outpost.Attribute
		var v string
		var at int64
		if err := rows.Scan(&a.Name, &a.DataType, &v, &at); err != nil {
			return nil, fmt.Errorf("attributes: %w", err)
		}
		a.Value, a.UpdatedAt = json.RawMessage(v), time.UnixMilli(at).UTC()
		out = append(out, a)
	}
	return out, rows.Err()
}

// UpdateParameters implements outpost.ModelStore.
func (db *DB) UpdateParameters(ctx context.Context, deviceID string, changes map[string]json.RawMessage) (*outpost.Parameters, error) {
	err := db.writeTx(ctx, "update parameters", func(tx *sql.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		for k, v := range changes {
			if string(v) == "null" {
				_, err = tx.ExecContext(ctx, `DELETE FROM parameters WHERE device_seq = ? AND source = 'desired' AND key = ?`, seq, k)
			} else {
				_, err = tx.ExecContext(ctx, `INSERT INTO parameters (device_seq, source, key, value) VALUES (?, 'desired', ?, ?)
					ON CONFLICT (device_seq, source, key) DO UPDATE SET value = excluded.value`, seq, k, string(v))
			}
			if err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO parameter_versions (device_seq, version) VALUES (?, 1)
			ON CONFLICT (device_seq) DO UPDATE SET version = version + 1`, seq)
		return err
	})
	if err != nil {
		return nil, err
	}
	return db.Parameters(ctx, deviceID)
}

// SetReportedParameters implements outpost.ModelStore.
func (db *DB) SetReportedParameters(ctx context.Context, deviceID string, values map[string]json.RawMessage) error {
	return db.writeTx(ctx, "report parameters", func(tx *sql.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		for k, v := range values {
			if _, err := tx.ExecContext(ctx, `INSERT INTO parameters (device_seq, source, key, value) VALUES (?, 'reported', ?, ?)
				ON CONFLICT (device_seq, source, key) DO UPDATE SET value = excluded.value`, seq, k, string(v)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Parameters implements outpost.ModelStore.
func (db *DB) Parameters(ctx context.Context, deviceID string) (*outpost.Parameters, error) {
	seq, err := seqOf(ctx, db.r, deviceID)
	if err != nil {
		return nil, err
	}
	p := &outpost.Parameters{Desired: map[string]json.RawMessage{}, Reported: map[string]json.RawMessage{}}
	if err := db.r.QueryRowContext(ctx, `SELECT version FROM parameter_versions WHERE device_seq = ?`, seq).Scan(&p.Version); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("parameters: %w", err)
	}
	rows, err := db.r.QueryContext(ctx, `SELECT source, key, value FROM parameters WHERE device_seq = ?`, seq)
	if err != nil {
		return nil, fmt.Errorf("parameters: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var src, k, v string
		if err := rows.Scan(&src, &k, &v); err != nil {
			return nil, fmt.Errorf("parameters: %w", err)
		}
		if src == "desired" {
			p.Desired[k] = json.RawMessage(v)
		} else {
			p.Reported[k] = json.RawMessage(v)
		}
	}
	return p, rows.Err()
}

// AddEvent implements outpost.ModelStore.
func (db *DB) AddEvent(ctx context.Context, e *outpost.DeviceEvent) error {
	return db.writeTx(ctx, "add event", func(tx *sql.Tx) error {
		seq, err := seqOf(ctx, tx, e.DeviceID)
		if err != nil {
			return err
		}
		var data any
		if len(e.Data) > 0 {
			data = string(e.Data)
		}
		var msgID any
		if e.MessageID != "" {
			msgID = e.MessageID
		}
		res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO device_events (device_seq, kind, name, data, title, text, ts, received_at, msg_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			seq, e.Kind, e.Name, data, e.Title, e.Text, e.TS, e.ReceivedAt, msgID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			e.Seq = 0 // the device sent this event before
			return err
		}
		e.Seq, err = res.LastInsertId()
		return err
	})
}

// Events implements outpost.ModelStore.
func (db *DB) Events(ctx context.Context, f outpost.EventFilter) ([]outpost.DeviceEvent, error) {
	seq, err := seqOf(ctx, db.r, f.DeviceID)
	if err != nil {
		return nil, err
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q := `SELECT seq, kind, name, data, title, text, ts, received_at, COALESCE(msg_id, '') FROM device_events WHERE device_seq = ?`
	args := []any{seq}
	if f.Kind != "" {
		q, args = q+` AND kind = ?`, append(args, f.Kind)
	}
	if f.Since > 0 {
		q, args = q+` AND ts >= ?`, append(args, f.Since)
	}
	q = `SELECT * FROM (` + q + ` ORDER BY seq DESC LIMIT ?) ORDER BY seq`
	args = append(args, f.Limit)
	rows, err := db.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	defer rows.Close()
	out := []outpost.DeviceEvent{}
	for rows.Next() {
		e := outpost.DeviceEvent{DeviceID: f.DeviceID}
		var data sql.NullString
		if err := rows.Scan(&e.Seq, &e.Kind, &e.Name, &data, &e.Title, &e.Text, &e.TS, &e.ReceivedAt, &e.MessageID); err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		if data.Valid {
			e.Data = json.RawMessage(data.String)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
