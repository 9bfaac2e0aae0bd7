package sqlite

import (
	"context"
	"fmt"
)

// PendingDevices implements outpost.QueueStore.
func (db *DB) PendingDevices(ctx context.Context) ([]string, error) {
	rows, err := db.r.QueryContext(ctx, `SELECT DISTINCT device_id FROM down_queue
		WHERE state IN ('queued', 'sent') OR (state = 'delivered' AND method IS NOT NULL)`)
	if err != nil {
		return nil, fmt.Errorf("pending devices: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("pending devices: %w", err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending devices: %w", err)
	}
	return out, nil
}
