package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// The down queue: the same table and the same conditional updates as the
// SQLite engine, each state change one UPDATE … WHERE state IN (the states
// outpost.CanTransition allows) RETURNING, so two replicas acting on one
// message at once make at most one transition.

const queueCols = `id, device_id, kind, payload, state, created_at, expires_at, sent_at, delivered_at, timeout_ms, deadline,
	method, args, finished_at, result, error_code, error_message, late_at, late_response`

// queueRow is one row of down_queue: a message, and a call when method is
// set.
type queueRow struct {
	id, deviceID, kind, state                  string
	payload                                    []byte
	created, expires, sent, delivered, timeout int64
	deadline, finished, lateAt                 int64
	method, args, result, errCode, errMsg      *string
	late                                       *string
}

func scanQueueRow(s pgx.Row) (*queueRow, error) {
	var r queueRow
	err := s.Scan(&r.id, &r.deviceID, &r.kind, &r.payload, &r.state, &r.created, &r.expires, &r.sent, &r.delivered, &r.timeout, &r.deadline,
		&r.method, &r.args, &r.finished, &r.result, &r.errCode, &r.errMsg, &r.lateAt, &r.late)
	return &r, err
}

func (r *queueRow) isCall() bool { return r.method != nil }

func (r *queueRow) message() *outpost.QueuedMessage {
	return &outpost.QueuedMessage{
		ID: r.id, DeviceID: r.deviceID, Kind: r.kind, Payload: r.payload,
		CreatedAt: msTime(r.created), ExpiresAt: msTime(r.expires), State: outpost.State(r.state),
		SentAt: msTime(r.sent), DeliveredAt: msTime(r.delivered),
		Timeout: time.Duration(r.timeout) * time.Millisecond, Deadline: msTime(r.deadline),
	}
}

func (r *queueRow) call() *outpost.Call {
	c := &outpost.Call{
		ID: r.id, DeviceID: r.deviceID, State: outpost.State(r.state),
		CreatedAt: msTime(r.created), ExpiresAt: msTime(r.expires), Timeout: time.Duration(r.timeout) * time.Millisecond,
		SentAt: msTime(r.sent), DeliveredAt: msTime(r.delivered), FinishedAt: msTime(r.finished), LateAt: msTime(r.lateAt),
	}
	if r.method != nil {
		c.Method = *r.method
	}
	if r.args != nil && *r.args != "" {
		c.Args = []byte(*r.args)
	}
	if r.result != nil {
		c.Result = []byte(*r.result)
	}
	if r.errCode != nil {
		c.Error = &outpost.CallError{Code: *r.errCode}
		if r.errMsg != nil {
			c.Error.Message = *r.errMsg
		}
	}
	if r.late != nil {
		c.LateResponse = []byte(*r.late)
	}
	return c
}

// inStates renders "state IN ('a','b')" for the states from which to can
// be reached, so every conditional update follows outpost.CanTransition.
func inStates(to outpost.State) string {
	return statesIn(outpost.TransitionSources(to)...)
}

func statesIn(states ...outpost.State) string {
	q := make([]string, len(states))
	for i, s := range states {
		q[i] = "'" + string(s) + "'"
	}
	return "state IN (" + strings.Join(q, ",") + ")"
}

func (db *DB) enqueue(ctx context.Context, m *outpost.QueuedMessage, c *outpost.Call, maxPending int) error {
	var method, args *string
	if c != nil {
		method = &c.Method
		if len(c.Args) > 0 {
			s := string(c.Args)
			args = &s
		}
	}
	err := db.tx(ctx, "enqueue", func(tx pgx.Tx) error {
		// One enqueuer per device at a time, across replicas, so the
		// count below holds until the insert commits. An advisory lock
		// rather than the device row: presence and ingestion update and
		// share that row and must not wait for this.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('outpost.queue'), hashtext($1))`, m.DeviceID); err != nil {
			return err
		}
		if _, err := seqOf(ctx, tx, m.DeviceID, "FOR KEY SHARE"); err != nil {
			return err
		}
		if maxPending > 0 {
			var pending int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM down_queue WHERE device_id = $1 AND `+statesIn(outpost.StateQueued, outpost.StateSent), m.DeviceID).Scan(&pending); err != nil {
				return err
			}
			if pending >= maxPending {
				return outpost.Errorf(outpost.ECONFLICT, "device %s already has %d messages waiting (the limit)", m.DeviceID, pending)
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO down_queue (id, device_id, kind, payload, state, created_at, expires_at, timeout_ms, method, args)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			m.ID, m.DeviceID, m.Kind, []byte(m.Payload), string(outpost.StateQueued), timeMS(m.CreatedAt), timeMS(m.ExpiresAt), m.Timeout.Milliseconds(), method, args)
		if code, _ := pgCode(err); code == codeUniqueViolation {
			return outpost.Errorf(outpost.ECONFLICT, "message %s already exists", m.ID)
		}
		return err
	})
	if err != nil {
		return err
	}
	m.State = outpost.StateQueued
	if c != nil {
		c.State = outpost.StateQueued
	}
	return nil
}

// EnqueueMessage implements outpost.QueueStore.
func (db *DB) EnqueueMessage(ctx context.Context, m *outpost.QueuedMessage, maxPending int) error {
	return db.enqueue(ctx, m, nil, maxPending)
}

// EnqueueCall implements outpost.QueueStore.
func (db *DB) EnqueueCall(ctx context.Context, c *outpost.Call, m *outpost.QueuedMessage, maxPending int) error {
	if c.ID != m.ID || c.DeviceID != m.DeviceID {
		return outpost.Errorf(outpost.EINVALID, "call and request message differ in id or device")
	}
	return db.enqueue(ctx, m, c, maxPending)
}

// Deliverable implements outpost.QueueStore.
func (db *DB) Deliverable(ctx context.Context, deviceID string, now time.Time, resend bool, limit int) ([]*outpost.QueuedMessage, error) {
	if limit <= 0 {
		limit = 1000
	}
	cond := `(state = 'queued' AND expires_at > $1)`
	if resend {
		cond += ` OR (state = 'sent' AND method IS NULL AND expires_at > $1)
			OR (state IN ('sent','delivered') AND method IS NOT NULL AND deadline > $1)`
	}
	rows, err := db.pool.Query(ctx, `SELECT `+queueCols+` FROM down_queue WHERE device_id = $2 AND (`+cond+`) ORDER BY seq LIMIT $3`, now.UnixMilli(), deviceID, limit)
	if err != nil {
		return nil, fmt.Errorf("deliverable messages: %w", err)
	}
	rs, err := collectQueueRows(rows)
	if err != nil {
		return nil, fmt.Errorf("deliverable messages: %w", err)
	}
	var out []*outpost.QueuedMessage
	for _, r := range rs {
		out = append(out, r.message())
	}
	return out, nil
}

func collectQueueRows(rows pgx.Rows) ([]*queueRow, error) {
	defer rows.Close()
	var out []*queueRow
	for rows.Next() {
		r, err := scanQueueRow(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// updateReturning runs a conditional UPDATE … RETURNING and collects the
// rows it changed.
func updateReturning(ctx context.Context, q querier, sql string, args ...any) ([]*queueRow, error) {
	rows, err := q.Query(ctx, sql+` RETURNING `+queueCols, args...)
	if err != nil {
		return nil, err
	}
	return collectQueueRows(rows)
}

// MarkSent implements outpost.QueueStore.
func (db *DB) MarkSent(ctx context.Context, marks []outpost.SendMark, at time.Time) ([]*outpost.Call, error) {
	if len(marks) == 0 {
		return nil, nil
	}
	var calls []*outpost.Call
	err := db.tx(ctx, "mark sent", func(tx pgx.Tx) error {
		calls = nil
		for _, m := range marks {
			// queued → sent, or sent again (a new sent_at and deadline:
			// the device never acknowledged the first copy). A delivered
			// call sent again keeps its deadline: the device is running it.
			rs, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'sent', sent_at = $1, deadline = $2
				WHERE id = $3 AND (`+inStates(outpost.StateSent)+` OR state = 'sent')`, at.UnixMilli(), timeMS(m.Deadline), m.ID)
			if err != nil {
				return err
			}
			for _, r := range rs {
				if r.isCall() {
					calls = append(calls, r.call())
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return calls, nil
}

// MarkDelivered implements outpost.QueueStore.
func (db *DB) MarkDelivered(ctx context.Context, deviceID string, ids []string, at time.Time) ([]*outpost.QueuedMessage, []*outpost.Call, error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	var msgs []*outpost.QueuedMessage
	var calls []*outpost.Call
	err := db.tx(ctx, "mark delivered", func(tx pgx.Tx) error {
		msgs, calls = nil, nil
		for _, id := range ids {
			rs, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'delivered', delivered_at = $1
				WHERE id = $2 AND device_id = $3 AND `+inStates(outpost.StateDelivered), at.UnixMilli(), id, deviceID)
			if err != nil {
				return err
			}
			for _, r := range rs {
				if r.isCall() {
					calls = append(calls, r.call())
				} else {
					msgs = append(msgs, r.message())
				}
			}
			// An answer can overtake the PUBACK; the delivery time is
			// still worth keeping.
			if len(rs) == 0 {
				if _, err := tx.Exec(ctx, `UPDATE down_queue SET delivered_at = $1 WHERE id = $2 AND device_id = $3 AND delivered_at = 0 AND sent_at > 0`, at.UnixMilli(), id, deviceID); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return msgs, calls, nil
}

// AnswerCall implements outpost.QueueStore.
func (db *DB) AnswerCall(ctx context.Context, a outpost.CallAnswer) (*outpost.Call, bool, error) {
	to := outpost.StateSucceeded
	var result, code, msg *string
	if a.Error != nil {
		to, code, msg = outpost.StateFailed, &a.Error.Code, &a.Error.Message
	} else {
		r := string(a.Result)
		if r == "" {
			r = "null"
		}
		result = &r
	}
	var c *outpost.Call
	late := false
	err := db.tx(ctx, "answer call", func(tx pgx.Tx) error {
		late = false
		rs, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = $1, finished_at = $2, result = $3, error_code = $4, error_message = $5
			WHERE id = $6 AND device_id = $7 AND method IS NOT NULL AND `+inStates(to), string(to), a.At.UnixMilli(), result, code, msg, a.ID, a.DeviceID)
		if err != nil {
			return err
		}
		if len(rs) == 0 {
			// Finished already (or never sent): keep the answer as late.
			rs, err = updateReturning(ctx, tx, `UPDATE down_queue SET late_at = $1, late_response = $2
				WHERE id = $3 AND device_id = $4 AND method IS NOT NULL`, a.At.UnixMilli(), string(a.Raw), a.ID, a.DeviceID)
			if err != nil {
				return err
			}
			if len(rs) == 0 {
				return outpost.Errorf(outpost.ENOTFOUND, "device %s has no call %s", a.DeviceID, a.ID)
			}
			late = true
		}
		c = rs[0].call()
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return c, late, nil
}

// CancelCall implements outpost.QueueStore.
func (db *DB) CancelCall(ctx context.Context, id string, at time.Time) (*outpost.Call, error) {
	var c *outpost.Call
	err := db.tx(ctx, "cancel call", func(tx pgx.Tx) error {
		rs, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'cancelled', finished_at = $1
			WHERE id = $2 AND method IS NOT NULL AND `+inStates(outpost.StateCancelled), at.UnixMilli(), id)
		if err != nil {
			return err
		}
		if len(rs) == 0 {
			var state string
			err := tx.QueryRow(ctx, `SELECT state FROM down_queue WHERE id = $1 AND method IS NOT NULL`, id).Scan(&state)
			if errors.Is(err, pgx.ErrNoRows) {
				return outpost.Errorf(outpost.ENOTFOUND, "call %s not found", id)
			} else if err != nil {
				return err
			}
			return outpost.Errorf(outpost.ECONFLICT, "call %s is %s; only a queued call can be cancelled", id, state)
		}
		c = rs[0].call()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// timeoutText renders timeout_ms in seconds as the SQLite engine does
// (1000 → "1.0", 1500 → "1.5").
const timeoutText = `(CASE WHEN timeout_ms % 1000 = 0 THEN (timeout_ms / 1000)::text || '.0' ELSE ((timeout_ms / 1000.0)::float8)::text END)`

// ExpireDue implements outpost.QueueStore.
func (db *DB) ExpireDue(ctx context.Context, deviceID string, now time.Time) (outpost.Expiry, error) {
	var ex outpost.Expiry
	dev := ""
	args := []any{now.UnixMilli()}
	if deviceID != "" {
		dev = ` AND device_id = $2`
		args = append(args, deviceID)
	}
	err := db.tx(ctx, "expire queue", func(tx pgx.Tx) error {
		ex = outpost.Expiry{}
		// Not sent in time; plain messages also when sent but never
		// acknowledged (calls are then governed by their deadline).
		expired, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'expired', finished_at = $1,
				error_code = CASE WHEN method IS NULL THEN NULL ELSE 'expired' END,
				error_message = CASE WHEN method IS NULL THEN NULL ELSE 'the device did not fetch the call before it expired' END
			WHERE expires_at <= $1 AND `+inStates(outpost.StateExpired)+` AND (state = 'queued' OR method IS NULL)`+dev, args...)
		if err != nil {
			return err
		}
		timedOut, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'timed_out', finished_at = $1,
				error_code = 'timeout', error_message = 'the device did not answer within ' || `+timeoutText+` || 's'
			WHERE deadline > 0 AND deadline <= $1 AND method IS NOT NULL AND `+inStates(outpost.StateTimedOut)+dev, args...)
		if err != nil {
			return err
		}
		for _, r := range append(expired, timedOut...) {
			if r.isCall() {
				ex.Calls = append(ex.Calls, r.call())
			} else {
				ex.Messages = append(ex.Messages, r.message())
			}
		}
		return nil
	})
	return ex, err
}

// TakeExpiredUnreported implements outpost.QueueStore.
func (db *DB) TakeExpiredUnreported(ctx context.Context, deviceID string) ([]string, error) {
	rows, err := db.pool.Query(ctx, `UPDATE down_queue SET reported = true WHERE device_id = $1 AND state = 'expired' AND NOT reported RETURNING seq, id`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("expired messages: %w", err)
	}
	type item struct {
		seq int64
		id  string
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (item, error) {
		var it item
		err := r.Scan(&it.seq, &it.id)
		return it, err
	})
	if err != nil {
		return nil, fmt.Errorf("expired messages: %w", err)
	}
	// RETURNING does not promise an order.
	slices.SortFunc(items, func(a, b item) int { return cmp.Compare(a.seq, b.seq) })
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.id
	}
	return ids, nil
}

// QueuedMessage implements outpost.QueueStore.
func (db *DB) QueuedMessage(ctx context.Context, id string) (*outpost.QueuedMessage, error) {
	r, err := scanQueueRow(db.pool.QueryRow(ctx, `SELECT `+queueCols+` FROM down_queue WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "message %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("get message: %w", err)
	}
	return r.message(), nil
}

// Call implements outpost.QueueStore.
func (db *DB) Call(ctx context.Context, id string) (*outpost.Call, error) {
	r, err := scanQueueRow(db.pool.QueryRow(ctx, `SELECT `+queueCols+` FROM down_queue WHERE id = $1 AND method IS NOT NULL`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "call %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("get call: %w", err)
	}
	return r.call(), nil
}

// Calls implements outpost.QueueStore.
func (db *DB) Calls(ctx context.Context, f outpost.CallFilter) ([]*outpost.Call, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q := `SELECT ` + queueCols + ` FROM down_queue WHERE device_id = $1 AND method IS NOT NULL`
	args := []any{f.DeviceID}
	if f.State != "" {
		args = append(args, string(f.State))
		q += ` AND state = $2`
	}
	args = append(args, f.Limit)
	q += fmt.Sprintf(` ORDER BY seq DESC LIMIT $%d`, len(args))
	rows, err := db.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	rs, err := collectQueueRows(rows)
	if err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	out := []*outpost.Call{}
	for _, r := range rs {
		out = append(out, r.call())
	}
	return out, nil
}
