package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// CreateDevices implements outpost.DeviceStore: one transaction, all or
// none.
func (db *DB) CreateDevices(ctx context.Context, ds []*outpost.Device, secretHashes [][]byte) error {
	if len(ds) != len(secretHashes) {
		return fmt.Errorf("create devices: %d devices but %d secret hashes", len(ds), len(secretHashes))
	}
	if len(ds) == 0 {
		return nil
	}
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for i, d := range ds {
			b.Queue(`INSERT INTO devices (id, name, secret_hash, created_at) VALUES ($1, $2, $3, $4)`,
				d.ID, d.Name, secretHashes[i], d.CreatedAt.UnixMilli())
		}
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		for _, d := range ds {
			_, err := br.Exec()
			if code, constraint := pgCode(err); code == codeUniqueViolation {
				if constraint == "devices_name_key" {
					return outpost.Errorf(outpost.ECONFLICT, "a device named %q already exists", d.Name)
				}
				return outpost.Errorf(outpost.ECONFLICT, "device %s already exists", d.ID)
			} else if err != nil {
				return fmt.Errorf("create devices: %w", err)
			}
		}
		return br.Close()
	})
}

// EachSecretHash implements outpost.DeviceStore.
func (db *DB) EachSecretHash(ctx context.Context, fn func(id string, secretHash []byte) error) error {
	rows, err := db.pool.Query(ctx, `SELECT id, secret_hash FROM devices`)
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

// SetPresences implements outpost.PresenceStore: every change in one
// statement, each as SetPresence would apply it.
func (db *DB) SetPresences(ctx context.Context, ps []outpost.Presence) error {
	if len(ps) == 0 {
		return nil
	}
	ids := make([]string, len(ps))
	online := make([]bool, len(ps))
	seen := make([]int64, len(ps))
	for i, p := range ps {
		ids[i], online[i], seen[i] = p.ID, p.Online, p.LastSeen.UnixMilli()
	}
	// WITH ORDINALITY keeps the last change of a device that appears more
	// than once: an UPDATE … FROM applies one row per target, so the rows
	// are reduced to the last per id first.
	_, err := db.pool.Exec(ctx, `UPDATE devices d SET
			online = CASE WHEN p.online THEN true WHEN d.presence_owner = $4 THEN false ELSE d.online END,
			presence_owner = CASE WHEN p.online THEN $4 ELSE d.presence_owner END,
			last_seen = GREATEST(d.last_seen, p.seen)
		FROM (SELECT DISTINCT ON (id) id, online, seen FROM unnest($1::text[], $2::bool[], $3::bigint[]) WITH ORDINALITY AS u(id, online, seen, n)
		      ORDER BY id, n DESC) p
		WHERE d.id = p.id`, ids, online, seen, db.opt.Replica)
	if err != nil {
		return fmt.Errorf("set presences: %w", err)
	}
	return nil
}

// PendingDevices implements outpost.QueueStore.
func (db *DB) PendingDevices(ctx context.Context) ([]string, error) {
	rows, err := db.pool.Query(ctx, `SELECT DISTINCT device_id FROM down_queue
		WHERE state IN ('queued', 'sent') OR (state = 'delivered' AND method IS NOT NULL)`)
	if err != nil {
		return nil, fmt.Errorf("pending devices: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("pending devices: %w", err)
	}
	return ids, nil
}
