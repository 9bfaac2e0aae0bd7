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

var _ outpost.QueueStore = (*DB)(nil)

// migrationDownQueue creates the down queue. Times are Unix milliseconds,
// 0 for "not yet". Calls are the rows with a method; their request payload
// is rebuilt with the deadline when sent.
const migrationDownQueue = `
CREATE TABLE down_queue (
	seq           INTEGER PRIMARY KEY AUTOINCREMENT,
	id            TEXT    NOT NULL UNIQUE,
	device_id     TEXT    NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	kind          TEXT    NOT NULL,
	payload       BLOB    NOT NULL,
	state         TEXT    NOT NULL,
	created_at    INTEGER NOT NULL,
	expires_at    INTEGER NOT NULL,
	sent_at       INTEGER NOT NULL DEFAULT 0,
	delivered_at  INTEGER NOT NULL DEFAULT 0,
	timeout_ms    INTEGER NOT NULL DEFAULT 0,
	deadline      INTEGER NOT NULL DEFAULT 0,
	reported      INTEGER NOT NULL DEFAULT 0,
	method        TEXT,
	args          TEXT,
	finished_at   INTEGER NOT NULL DEFAULT 0,
	result        TEXT,
	error_code    TEXT,
	error_message TEXT,
	late_at       INTEGER NOT NULL DEFAULT 0,
	late_response TEXT
);
CREATE INDEX down_queue_device ON down_queue (device_id, state, seq);
CREATE INDEX down_queue_state ON down_queue (state, expires_at);
`

const queueCols = `id, device_id, kind, payload, state, created_at, expires_at, sent_at, delivered_at, timeout_ms, deadline,
	method, args, finished_at, result, error_code, error_message, late_at, late_response`

// queueRow is one row of down_queue: a message, and a call when method is
// set.
type queueRow struct {
	id, deviceID, kind, state                  string
	payload                                    []byte
	created, expires, sent, delivered, timeout int64
	deadline, finished, lateAt                 int64
	method, args, result, errCode, errMsg      sql.NullString
	late                                       sql.NullString
}

func scanQueueRow(s interface{ Scan(...any) error }) (*queueRow, error) {
	var r queueRow
	err := s.Scan(&r.id, &r.deviceID, &r.kind, &r.payload, &r.state, &r.created, &r.expires, &r.sent, &r.delivered, &r.timeout, &r.deadline,
		&r.method, &r.args, &r.finished, &r.result, &r.errCode, &r.errMsg, &r.lateAt, &r.late)
	return &r, err
}

func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func timeMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func (r *queueRow) isCall() bool { return r.method.Valid }

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
		ID: r.id, DeviceID: r.deviceID, Method: r.method.String, State: outpost.State(r.state),
		CreatedAt: msTime(r.created), ExpiresAt: msTime(r.expires), Timeout: time.Duration(r.timeout) * time.Millisecond,
		SentAt: msTime(r.sent), DeliveredAt: msTime(r.delivered), FinishedAt: msTime(r.finished), LateAt: msTime(r.lateAt),
	}
	if r.args.Valid && r.args.String != "" {
		c.Args = []byte(r.args.String)
	}
	if r.result.Valid {
		c.Result = []byte(r.result.String)
	}
	if r.errCode.Valid {
		c.Error = &outpost.CallError{Code: r.errCode.String, Message: r.errMsg.String}
	}
	if r.late.Valid {
		c.LateResponse = []byte(r.late.String)
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
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	defer tx.Rollback()
	var exists, pending int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE id = ?`, m.DeviceID).Scan(&exists); err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	if exists == 0 {
		return outpost.Errorf(outpost.ENOTFOUND, "device %s not found", m.DeviceID)
	}
	if maxPending > 0 {
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM down_queue WHERE device_id = ? AND `+statesIn(outpost.StateQueued, outpost.StateSent), m.DeviceID).Scan(&pending); err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
		if pending >= maxPending {
			return outpost.Errorf(outpost.ECONFLICT, "device %s already has %d messages waiting (the limit)", m.DeviceID, pending)
		}
	}
	var method, args any
	if c != nil {
		method = c.Method
		if len(c.Args) > 0 {
			args = string(c.Args)
		}
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO down_queue (id, device_id, kind, payload, state, created_at, expires_at, timeout_ms, method, args)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		m.ID, m.DeviceID, m.Kind, []byte(m.Payload), string(outpost.StateQueued), timeMS(m.CreatedAt), timeMS(m.ExpiresAt), m.Timeout.Milliseconds(), method, args)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return outpost.Errorf(outpost.ECONFLICT, "message %s already exists", m.ID)
		}
		return fmt.Errorf("enqueue: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("enqueue: %w", err)
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
	n := now.UnixMilli()
	cond := `(state = 'queued' AND expires_at > ?1)`
	if resend {
		cond += ` OR (state = 'sent' AND method IS NULL AND expires_at > ?1)
			OR (state IN ('sent','delivered') AND method IS NOT NULL AND deadline > ?1)`
	}
	rows, err := db.r.QueryContext(ctx, `SELECT `+queueCols+` FROM down_queue WHERE device_id = ?2 AND (`+cond+`) ORDER BY seq LIMIT ?3`, n, deviceID, limit)
	if err != nil {
		return nil, fmt.Errorf("deliverable messages: %w", err)
	}
	defer rows.Close()
	var out []*outpost.QueuedMessage
	for rows.Next() {
		r, err := scanQueueRow(rows)
		if err != nil {
			return nil, fmt.Errorf("deliverable messages: %w", err)
		}
		out = append(out, r.message())
	}
	return out, rows.Err()
}

// update runs a conditional UPDATE … RETURNING in tx and collects the rows
// it changed.
func updateReturning(ctx context.Context, tx *sql.Tx, q string, args ...any) ([]*queueRow, error) {
	rows, err := tx.QueryContext(ctx, q+` RETURNING `+queueCols, args...)
	if err != nil {
		return nil, err
	}
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

// MarkSent implements outpost.QueueStore.
func (db *DB) MarkSent(ctx context.Context, marks []outpost.SendMark, at time.Time) ([]*outpost.Call, error) {
	if len(marks) == 0 {
		return nil, nil
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("mark sent: %w", err)
	}
	defer tx.Rollback()
	var calls []*outpost.Call
	for _, m := range marks {
		// queued → sent, or sent again (a new sent_at and deadline: the
		// device never acknowledged the first copy). A delivered call sent
		// again keeps its deadline: the device is running it.
		rs, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'sent', sent_at = ?, deadline = ?
			WHERE id = ? AND (`+inStates(outpost.StateSent)+` OR state = 'sent')`, at.UnixMilli(), timeMS(m.Deadline), m.ID)
		if err != nil {
			return nil, fmt.Errorf("mark sent: %w", err)
		}
		for _, r := range rs {
			if r.isCall() {
				calls = append(calls, r.call())
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("mark sent: %w", err)
	}
	return calls, nil
}

// MarkDelivered implements outpost.QueueStore.
func (db *DB) MarkDelivered(ctx context.Context, deviceID string, ids []string, at time.Time) ([]*outpost.QueuedMessage, []*outpost.Call, error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("mark delivered: %w", err)
	}
	defer tx.Rollback()
	var msgs []*outpost.QueuedMessage
	var calls []*outpost.Call
	for _, id := range ids {
		rs, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'delivered', delivered_at = ?
			WHERE id = ? AND device_id = ? AND `+inStates(outpost.StateDelivered), at.UnixMilli(), id, deviceID)
		if err != nil {
			return nil, nil, fmt.Errorf("mark delivered: %w", err)
		}
		for _, r := range rs {
			if r.isCall() {
				calls = append(calls, r.call())
			} else {
				msgs = append(msgs, r.message())
			}
		}
		// An answer can overtake the PUBACK; the delivery time is still
		// worth keeping.
		if len(rs) == 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE down_queue SET delivered_at = ? WHERE id = ? AND device_id = ? AND delivered_at = 0 AND sent_at > 0`, at.UnixMilli(), id, deviceID); err != nil {
				return nil, nil, fmt.Errorf("mark delivered: %w", err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, nil, fmt.Errorf("mark delivered: %w", err)
	}
	return msgs, calls, nil
}

// AnswerCall implements outpost.QueueStore.
func (db *DB) AnswerCall(ctx context.Context, a outpost.CallAnswer) (*outpost.Call, bool, error) {
	to := outpost.StateSucceeded
	var result, code, msg any
	if a.Error != nil {
		to, code, msg = outpost.StateFailed, a.Error.Code, a.Error.Message
	} else {
		r := a.Result
		if len(r) == 0 {
			r = []byte("null")
		}
		result = string(r)
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, false, fmt.Errorf("answer call: %w", err)
	}
	defer tx.Rollback()
	rs, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = ?, finished_at = ?, result = ?, error_code = ?, error_message = ?
		WHERE id = ? AND device_id = ? AND method IS NOT NULL AND `+inStates(to), string(to), a.At.UnixMilli(), result, code, msg, a.ID, a.DeviceID)
	if err != nil {
		return nil, false, fmt.Errorf("answer call: %w", err)
	}
	late := false
	if len(rs) == 0 {
		// Finished already (or never sent): keep the answer as late.
		rs, err = updateReturning(ctx, tx, `UPDATE down_queue SET late_at = ?, late_response = ?
			WHERE id = ? AND device_id = ? AND method IS NOT NULL`, a.At.UnixMilli(), string(a.Raw), a.ID, a.DeviceID)
		if err != nil {
			return nil, false, fmt.Errorf("answer call: %w", err)
		}
		if len(rs) == 0 {
			return nil, false, outpost.Errorf(outpost.ENOTFOUND, "device %s has no call %s", a.DeviceID, a.ID)
		}
		late = true
	}
	if err := tx.Commit(); err != nil {
		return nil, false, fmt.Errorf("answer call: %w", err)
	}
	return rs[0].call(), late, nil
}

// CancelCall implements outpost.QueueStore.
func (db *DB) CancelCall(ctx context.Context, id string, at time.Time) (*outpost.Call, error) {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("cancel call: %w", err)
	}
	defer tx.Rollback()
	rs, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'cancelled', finished_at = ?
		WHERE id = ? AND method IS NOT NULL AND `+inStates(outpost.StateCancelled), at.UnixMilli(), id)
	if err != nil {
		return nil, fmt.Errorf("cancel call: %w", err)
	}
	if len(rs) == 0 {
		var state string
		err := tx.QueryRowContext(ctx, `SELECT state FROM down_queue WHERE id = ? AND method IS NOT NULL`, id).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, outpost.Errorf(outpost.ENOTFOUND, "call %s not found", id)
		} else if err != nil {
			return nil, fmt.Errorf("cancel call: %w", err)
		}
		return nil, outpost.Errorf(outpost.ECONFLICT, "call %s is %s; only a queued call can be cancelled", id, state)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("cancel call: %w", err)
	}
	return rs[0].call(), nil
}

// ExpireDue implements outpost.QueueStore.
func (db *DB) ExpireDue(ctx context.Context, deviceID string, now time.Time) (outpost.Expiry, error) {
	var ex outpost.Expiry
	n := now.UnixMilli()
	dev := ""
	args := []any{n, n}
	if deviceID != "" {
		dev = ` AND device_id = ?`
		args = append(args, deviceID)
	}
	db.wmu.Lock()
	defer db.wmu.Unlock()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return ex, fmt.Errorf("expire queue: %w", err)
	}
	defer tx.Rollback()
	// Not sent in time; plain messages also when sent but never
	// acknowledged (calls are then governed by their deadline).
	expired, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'expired', finished_at = ?,
			error_code = CASE WHEN method IS NULL THEN NULL ELSE 'expired' END,
			error_message = CASE WHEN method IS NULL THEN NULL ELSE 'the device did not fetch the call before it expired' END
		WHERE expires_at <= ? AND `+inStates(outpost.StateExpired)+` AND (state = 'queued' OR method IS NULL)`+dev, args...)
	if err != nil {
		return ex, fmt.Errorf("expire queue: %w", err)
	}
	timedOut, err := updateReturning(ctx, tx, `UPDATE down_queue SET state = 'timed_out', finished_at = ?,
			error_code = 'timeout', error_message = 'the device did not answer within ' || (timeout_ms / 1000.0) || 's'
		WHERE deadline > 0 AND deadline <= ? AND method IS NOT NULL AND `+inStates(outpost.StateTimedOut)+dev, args...)
	if err != nil {
		return ex, fmt.Errorf("expire queue: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return ex, fmt.Errorf("expire queue: %w", err)
	}
	for _, r := range append(expired, timedOut...) {
		if r.isCall() {
			ex.Calls = append(ex.Calls, r.call())
		} else {
			ex.Messages = append(ex.Messages, r.message())
		}
	}
	return ex, nil
}

// TakeExpiredUnreported implements outpost.QueueStore.
func (db *DB) TakeExpiredUnreported(ctx context.Context, deviceID string) ([]string, error) {
	db.wmu.Lock()
	defer db.wmu.Unlock()
	rows, err := db.w.QueryContext(ctx, `UPDATE down_queue SET reported = 1 WHERE device_id = ? AND state = 'expired' AND reported = 0 RETURNING seq, id`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("expired messages: %w", err)
	}
	defer rows.Close()
	type item struct {
		seq int64
		id  string
	}
	var items []item
	for rows.Next() {
		var it item
		if err := rows.Scan(&it.seq, &it.id); err != nil {
			return nil, fmt.Errorf("expired messages: %w", err)
		}
		items = append(items, it)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("expired messages: %w", err)
	}
	// RETURNING does not promise an order.
	for i := 1; i < len(items); i++ {
		for j := i; j > 0 && items[j].seq < items[j-1].seq; j-- {
			items[j], items[j-1] = items[j-1], items[j]
		}
	}
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.id
	}
	return ids, nil
}

// QueuedMessage implements outpost.QueueStore.
func (db *DB) QueuedMessage(ctx context.Context, id string) (*outpost.QueuedMessage, error) {
	r, err := scanQueueRow(db.r.QueryRowContext(ctx, `SELECT `+queueCols+` FROM down_queue WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "message %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("get message: %w", err)
	}
	return r.message(), nil
}

// Call implements outpost.QueueStore.
func (db *DB) Call(ctx context.Context, id string) (*outpost.Call, error) {
	r, err := scanQueueRow(db.r.QueryRowContext(ctx, `SELECT `+queueCols+` FROM down_queue WHERE id = ? AND method IS NOT NULL`, id))
	if errors.Is(err, sql.ErrNoRows) {
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
	q := `SELECT ` + queueCols + ` FROM down_queue WHERE device_id = ? AND method IS NOT NULL`
	args := []any{f.DeviceID}
	if f.State != "" {
		q += ` AND state = ?`
		args = append(args, string(f.State))
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, f.Limit)
	rows, err := db.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	defer rows.Close()
	out := []*outpost.Call{}
	for rows.Next() {
		r, err := scanQueueRow(rows)
		if err != nil {
			return nil, fmt.Errorf("list calls: %w", err)
		}
		out = append(out, r.call())
	}
	return out, rows.Err()
}
