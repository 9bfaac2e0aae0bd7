package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// PutFeeds implements outpost.ModelStore.
func (db *DB) PutFeeds(ctx context.Context, deviceID string, register []outpost.Feed, remove []string) ([]outpost.Feed, error) {
	now := time.Now().UnixMilli()
	var out []outpost.Feed
	err := db.tx(ctx, "put feeds", func(tx pgx.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID, "FOR KEY SHARE")
		if err != nil {
			return err
		}
		for _, f := range register {
			if _, err := tx.Exec(ctx, `INSERT INTO feed_defs (device_seq, ref, name, type, data_type, unit, removed, updated_at)
				VALUES ($1, $2, $3, $4, $5, $6, false, $7)
				ON CONFLICT (device_seq, ref) DO UPDATE SET name = excluded.name, type = excluded.type,
					data_type = excluded.data_type, unit = excluded.unit, removed = false, updated_at = excluded.updated_at`,
				seq, f.Ref, f.Name, f.Type, f.DataType, f.Unit, now); err != nil {
				return err
			}
		}
		for _, ref := range remove {
			if _, err := tx.Exec(ctx, `INSERT INTO feed_defs (device_seq, ref, name, type, data_type, unit, removed, updated_at)
				VALUES ($1, $2, $2, 'IN', '', '', true, $3)
				ON CONFLICT (device_seq, ref) DO UPDATE SET removed = true, updated_at = excluded.updated_at`,
				seq, ref, now); err != nil {
				return err
			}
		}
		out, err = feedDefs(ctx, tx, seq)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FeedDefs implements outpost.ModelStore.
func (db *DB) FeedDefs(ctx context.Context, deviceID string) ([]outpost.Feed, error) {
	seq, err := seqOf(ctx, db.pool, deviceID, "")
	if err != nil {
		return nil, wrap("feed definitions", err)
	}
	out, err := feedDefs(ctx, db.pool, seq)
	if err != nil {
		return nil, fmt.Errorf("feed definitions: %w", err)
	}
	return out, nil
}

func feedDefs(ctx context.Context, q querier, seq int64) ([]outpost.Feed, error) {
	rows, err := q.Query(ctx, `SELECT ref, name, type, data_type, unit, removed, updated_at FROM feed_defs WHERE device_seq = $1 ORDER BY ref`, seq)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []outpost.Feed
	for rows.Next() {
		var f outpost.Feed
		var at int64
		if err := rows.Scan(&f.Ref, &f.Name, &f.Type, &f.DataType, &f.Unit, &f.Removed, &at); err != nil {
			return nil, err
		}
		f.UpdatedAt = time.UnixMilli(at).UTC()
		out = append(out, f)
	}
	return out, rows.Err()
}

// wrap wraps an error that is not a coded domain error.
func wrap(what string, err error) error {
	if err == nil || outpost.ErrorCode(err) != outpost.EINTERNAL {
		return err
	}
	return fmt.Errorf("%s: %w", what, err)
}

// PutAttributes implements outpost.ModelStore.
func (db *DB) PutAttributes(ctx context.Context, deviceID string, attrs []outpost.Attribute) error {
	now := time.Now().UnixMilli()
	return db.tx(ctx, "put attributes", func(tx pgx.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID, "FOR KEY SHARE")
		if err != nil {
			return err
		}
		for _, a := range attrs {
			if _, err := tx.Exec(ctx, `INSERT INTO attributes (device_seq, name, data_type, value, updated_at) VALUES ($1, $2, $3, $4, $5)
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
	seq, err := seqOf(ctx, db.pool, deviceID, "")
	if err != nil {
		return nil, wrap("attributes", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT name, data_type, value, updated_at FROM attributes WHERE device_seq = $1 ORDER BY name`, seq)
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("attributes: %w", err)
	}
	return out, nil
}

// UpdateParameters implements outpost.ModelStore. The new set is read in
// the same transaction, so it is the one this change made even when
// another change follows at once.
func (db *DB) UpdateParameters(ctx context.Context, deviceID string, changes map[string]json.RawMessage) (*outpost.Parameters, error) {
	var p *outpost.Parameters
	err := db.tx(ctx, "update parameters", func(tx pgx.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID, "FOR KEY SHARE")
		if err != nil {
			return err
		}
		// The version row first: it serialises concurrent changes of
		// one device.
		if _, err := tx.Exec(ctx, `INSERT INTO parameter_versions (device_seq, version) VALUES ($1, 1)
			ON CONFLICT (device_seq) DO UPDATE SET version = parameter_versions.version + 1`, seq); err != nil {
			return err
		}
		for k, v := range changes {
			if string(v) == "null" {
				_, err = tx.Exec(ctx, `DELETE FROM parameters WHERE device_seq = $1 AND source = 'desired' AND key = $2`, seq, k)
			} else {
				_, err = tx.Exec(ctx, `INSERT INTO parameters (device_seq, source, key, value) VALUES ($1, 'desired', $2, $3)
					ON CONFLICT (device_seq, source, key) DO UPDATE SET value = excluded.value`, seq, k, string(v))
			}
			if err != nil {
				return err
			}
		}
		p, err = parameters(ctx, tx, seq)
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// SetReportedParameters implements outpost.ModelStore.
func (db *DB) SetReportedParameters(ctx context.Context, deviceID string, values map[string]json.RawMessage) error {
	return db.tx(ctx, "report parameters", func(tx pgx.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID, "FOR KEY SHARE")
		if err != nil {
			return err
		}
		for k, v := range values {
			if _, err := tx.Exec(ctx, `INSERT INTO parameters (device_seq, source, key, value) VALUES ($1, 'reported', $2, $3)
				ON CONFLICT (device_seq, source, key) DO UPDATE SET value = excluded.value`, seq, k, string(v)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Parameters implements outpost.ModelStore.
func (db *DB) Parameters(ctx context.Context, deviceID string) (*outpost.Parameters, error) {
	var p *outpost.Parameters
	// One snapshot for the version and the values.
	err := db.tx(ctx, "parameters", func(tx pgx.Tx) error {
		seq, err := seqOf(ctx, tx, deviceID, "")
		if err != nil {
			return err
		}
		p, err = parameters(ctx, tx, seq)
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

func parameters(ctx context.Context, q querier, seq int64) (*outpost.Parameters, error) {
	p := &outpost.Parameters{Desired: map[string]json.RawMessage{}, Reported: map[string]json.RawMessage{}}
	rows, err := q.Query(ctx, `SELECT 'version', '', version::text FROM parameter_versions WHERE device_seq = $1
		UNION ALL SELECT source, key, value FROM parameters WHERE device_seq = $1`, seq)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var src, k, v string
		if err := rows.Scan(&src, &k, &v); err != nil {
			return nil, err
		}
		switch src {
		case "version":
			if _, err := fmt.Sscan(v, &p.Version); err != nil {
				return nil, err
			}
		case "desired":
			p.Desired[k] = json.RawMessage(v)
		default:
			p.Reported[k] = json.RawMessage(v)
		}
	}
	return p, rows.Err()
}

// AddEvent implements outpost.ModelStore.
func (db *DB) AddEvent(ctx context.Context, e *outpost.DeviceEvent) error {
	var data, msgID *string
	if len(e.Data) > 0 {
		s := string(e.Data)
		data = &s
	}
	if e.MessageID != "" {
		msgID = &e.MessageID
	}
	return db.tx(ctx, "add event", func(tx pgx.Tx) error {
		seq, err := seqOf(ctx, tx, e.DeviceID, "FOR KEY SHARE")
		if err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `INSERT INTO device_events (device_seq, kind, name, data, title, text, ts, received_at, msg_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING seq`,
			seq, e.Kind, e.Name, data, e.Title, e.Text, e.TS, e.ReceivedAt, msgID).Scan(&e.Seq)
		if errors.Is(err, pgx.ErrNoRows) {
			e.Seq = 0 // the device sent this event before
			return nil
		}
		return err
	})
}

// Events implements outpost.ModelStore.
func (db *DB) Events(ctx context.Context, f outpost.EventFilter) ([]outpost.DeviceEvent, error) {
	seq, err := seqOf(ctx, db.pool, f.DeviceID, "")
	if err != nil {
		return nil, wrap("events", err)
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q := `SELECT seq, kind, name, data, title, text, ts, received_at, COALESCE(msg_id, '') FROM device_events WHERE device_seq = $1`
	args := []any{seq}
	if f.Kind != "" {
		args = append(args, f.Kind)
		q += fmt.Sprintf(` AND kind = $%d`, len(args))
	}
	if f.Since > 0 {
		args = append(args, f.Since)
		q += fmt.Sprintf(` AND ts >= $%d`, len(args))
	}
	args = append(args, f.Limit)
	q = `SELECT * FROM (` + q + fmt.Sprintf(` ORDER BY seq DESC LIMIT $%d) x ORDER BY seq`, len(args))
	rows, err := db.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	defer rows.Close()
	out := []outpost.DeviceEvent{}
	for rows.Next() {
		e := outpost.DeviceEvent{DeviceID: f.DeviceID}
		var data *string
		if err := rows.Scan(&e.Seq, &e.Kind, &e.Name, &data, &e.Title, &e.Text, &e.TS, &e.ReceivedAt, &e.MessageID); err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		if data != nil {
			e.Data = json.RawMessage(*data)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	return out, nil
}
