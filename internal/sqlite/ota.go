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

var (
	_ outpost.ArtifactStore = (*DB)(nil)
	_ outpost.TransferStore = (*DB)(nil)
)

// migrationOTA creates the tables of file transfers and firmware updates.
// Times are Unix milliseconds, 0 for "not yet". Everything of a device
// goes with it; artifacts outlive the transfers that used them.
const migrationOTA = `
CREATE TABLE artifacts (
	seq        INTEGER PRIMARY KEY,
	id         TEXT    NOT NULL UNIQUE,
	name       TEXT    NOT NULL,
	size       INTEGER NOT NULL,
	sha256     TEXT    NOT NULL,
	version    TEXT    NOT NULL DEFAULT '',
	model      TEXT    NOT NULL DEFAULT '',
	blob_key   TEXT    NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE TABLE transfers (
	seq          INTEGER PRIMARY KEY,
	id           TEXT    NOT NULL UNIQUE,
	device_id    TEXT    NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	artifact_id  TEXT    NOT NULL DEFAULT '',
	url          TEXT    NOT NULL DEFAULT '',
	name         TEXT    NOT NULL,
	size         INTEGER NOT NULL,
	sha256       TEXT    NOT NULL DEFAULT '',
	version      TEXT    NOT NULL DEFAULT '',
	model        TEXT    NOT NULL DEFAULT '',
	methods      TEXT    NOT NULL,
	method       TEXT    NOT NULL DEFAULT '',
	chunk_size   INTEGER NOT NULL DEFAULT 0,
	state        TEXT    NOT NULL,
	bytes        INTEGER NOT NULL DEFAULT 0,
	error        TEXT    NOT NULL DEFAULT '',
	message      TEXT    NOT NULL DEFAULT '',
	job_id       TEXT    NOT NULL DEFAULT '',
	created_at   INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL,
	expires_at   INTEGER NOT NULL,
	finished_at  INTEGER NOT NULL DEFAULT 0,
	token_hash   BLOB,
	token_expiry INTEGER NOT NULL DEFAULT 0,
	active       INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX transfers_device ON transfers (device_id, seq);
CREATE INDEX transfers_active ON transfers (active, seq);
CREATE INDEX transfers_artifact ON transfers (artifact_id, active);
CREATE TABLE firmware_jobs (
	seq              INTEGER PRIMARY KEY,
	id               TEXT    NOT NULL UNIQUE,
	device_id        TEXT    NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	artifact_id      TEXT    NOT NULL,
	transfer_id      TEXT    NOT NULL,
	from_version     TEXT    NOT NULL DEFAULT '',
	target_version   TEXT    NOT NULL,
	state            TEXT    NOT NULL,
	phase            TEXT    NOT NULL DEFAULT '',
	error            TEXT    NOT NULL DEFAULT '',
	message          TEXT    NOT NULL DEFAULT '',
	reported_version TEXT    NOT NULL DEFAULT '',
	timeout_ms       INTEGER NOT NULL,
	created_at       INTEGER NOT NULL,
	updated_at       INTEGER NOT NULL,
	expires_at       INTEGER NOT NULL,
	deadline         INTEGER NOT NULL DEFAULT 0,
	finished_at      INTEGER NOT NULL DEFAULT 0,
	active           INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX firmware_jobs_device ON firmware_jobs (device_id, seq);
-- At most one unfinished job per device.
CREATE UNIQUE INDEX firmware_jobs_one_active ON firmware_jobs (device_id) WHERE active = 1;
CREATE TABLE device_files (
	device_id   TEXT    PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
	files       TEXT    NOT NULL,
	reported_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE device_firmware (
	device_id   TEXT    PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
	version     TEXT    NOT NULL,
	reported_at INTEGER NOT NULL
) WITHOUT ROWID;
`

const artifactCols = `id, name, size, sha256, version, model, blob_key, created_at`

func scanArtifact(s interface{ Scan(...any) error }) (*outpost.Artifact, error) {
	var a outpost.Artifact
	var created int64
	if err := s.Scan(&a.ID, &a.Name, &a.Size, &a.SHA256, &a.Version, &a.Model, &a.BlobKey, &created); err != nil {
		return nil, err
	}
	a.CreatedAt = msTime(created)
	return &a, nil
}

// CreateArtifact implements outpost.ArtifactStore.
func (db *DB) CreateArtifact(ctx context.Context, a *outpost.Artifact) error {
	return db.writeTx(ctx, "create artifact", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO artifacts (`+artifactCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			a.ID, a.Name, a.Size, a.SHA256, a.Version, a.Model, a.BlobKey, timeMS(a.CreatedAt))
		if err != nil && strings.Contains(err.Error(), "UNIQUE") {
			return outpost.Errorf(outpost.ECONFLICT, "artifact %s exists", a.ID)
		}
		return err
	})
}

// Artifact implements outpost.ArtifactStore.
func (db *DB) Artifact(ctx context.Context, id string) (*outpost.Artifact, error) {
	a, err := scanArtifact(db.r.QueryRowContext(ctx, `SELECT `+artifactCols+` FROM artifacts WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "artifact %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("artifact: %w", err)
	}
	return a, nil
}

// Artifacts implements outpost.ArtifactStore.
func (db *DB) Artifacts(ctx context.Context, f outpost.ArtifactFilter) ([]*outpost.Artifact, error) {
	q := `SELECT ` + artifactCols + ` FROM artifacts WHERE 1=1`
	var args []any
	for _, c := range []struct{ col, v string }{{"name", f.Name}, {"version", f.Version}, {"model", f.Model}} {
		if c.v != "" {
			q += ` AND ` + c.col + ` = ?`
			args = append(args, c.v)
		}
	}
	q += ` ORDER BY seq DESC`
	if f.Limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	rows, err := db.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("artifacts: %w", err)
	}
	defer rows.Close()
	out := []*outpost.Artifact{}
	for rows.Next() {
		a, err := scanArtifact(rows)
		if err != nil {
			return nil, fmt.Errorf("artifacts: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// DeleteArtifact implements outpost.ArtifactStore.
func (db *DB) DeleteArtifact(ctx context.Context, id string) error {
	return db.writeTx(ctx, "delete artifact", func(tx *sql.Tx) error {
		var busy int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM transfers WHERE artifact_id = ? AND active = 1`, id).Scan(&busy); err != nil {
			return err
		}
		if busy > 0 {
			return outpost.Errorf(outpost.ECONFLICT, "artifact %s is being sent to %d device(s); abort those transfers first", id, busy)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM artifacts WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return outpost.Errorf(outpost.ENOTFOUND, "artifact %s not found", id)
		}
		return nil
	})
}

const transferCols = `id, device_id, artifact_id, url, name, size, sha256, version, model, methods, method, chunk_size, state, bytes,
	error, message, job_id, created_at, updated_at, expires_at, finished_at, token_hash, token_expiry`

func scanTransfer(s interface{ Scan(...any) error }) (*outpost.Transfer, error) {
	var t outpost.Transfer
	var methods, state string
	var created, updated, expires, finished, tokenExp int64
	if err := s.Scan(&t.ID, &t.DeviceID, &t.ArtifactID, &t.URL, &t.Name, &t.Size, &t.SHA256, &t.Version, &t.Model, &methods, &t.Method,
		&t.ChunkSize, &state, &t.Bytes, &t.Error, &t.Message, &t.JobID, &created, &updated, &expires, &finished, &t.TokenHash, &tokenExp); err != nil {
		return nil, err
	}
	if methods != "" {
		t.Methods = strings.Split(methods, ",")
	}
	t.State = outpost.TransferState(state)
	t.CreatedAt, t.UpdatedAt, t.ExpiresAt, t.FinishedAt, t.TokenExpiry = msTime(created), msTime(updated), msTime(expires), msTime(finished), msTime(tokenExp)
	return &t, nil
}

func transferArgs(t *outpost.Transfer) []any {
	return []any{t.ID, t.DeviceID, t.ArtifactID, t.URL, t.Name, t.Size, t.SHA256, t.Version, t.Model, strings.Join(t.Methods, ","), t.Method,
		t.ChunkSize, string(t.State), t.Bytes, t.Error, t.Message, t.JobID, timeMS(t.CreatedAt), timeMS(t.UpdatedAt), timeMS(t.ExpiresAt),
		timeMS(t.FinishedAt), t.TokenHash, timeMS(t.TokenExpiry)}
}

func activeFlag(final bool) int {
	if final {
		return 0
	}
	return 1
}

func deviceExists(ctx context.Context, tx *sql.Tx, id string) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE id = ?`, id).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return outpost.Errorf(outpost.ENOTFOUND, "device %s not found", id)
	}
	return nil
}

func insertTransfer(ctx context.Context, tx *sql.Tx, t *outpost.Transfer) error {
	if t.ArtifactID != "" {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM artifacts WHERE id = ?`, t.ArtifactID).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return outpost.Errorf(outpost.ENOTFOUND, "artifact %s not found", t.ArtifactID)
		}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO transfers (`+transferCols+`, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		append(transferArgs(t), activeFlag(t.State.Final()))...)
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return outpost.Errorf(outpost.ECONFLICT, "transfer %s exists", t.ID)
	}
	return err
}

// CreateTransfer implements outpost.TransferStore.
func (db *DB) CreateTransfer(ctx context.Context, t *outpost.Transfer) error {
	return db.writeTx(ctx, "create transfer", func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, t.DeviceID); err != nil {
			return err
		}
		return insertTransfer(ctx, tx, t)
	})
}

// Transfer implements outpost.TransferStore.
func (db *DB) Transfer(ctx context.Context, id string) (*outpost.Transfer, error) {
	t, err := scanTransfer(db.r.QueryRowContext(ctx, `SELECT `+transferCols+` FROM transfers WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "transfer %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	return t, nil
}

// Transfers implements outpost.TransferStore.
func (db *DB) Transfers(ctx context.Context, f outpost.TransferFilter) ([]*outpost.Transfer, error) {
	q := `SELECT ` + transferCols + ` FROM transfers WHERE 1=1`
	var args []any
	if f.DeviceID != "" {
		q += ` AND device_id = ?`
		args = append(args, f.DeviceID)
	}
	if f.State != "" {
		q += ` AND state = ?`
		args = append(args, string(f.State))
	}
	if f.Active {
		q += ` AND active = 1`
	}
	q += ` ORDER BY seq DESC`
	if f.Limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	rows, err := db.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("transfers: %w", err)
	}
	defer rows.Close()
	out := []*outpost.Transfer{}
	for rows.Next() {
		t, err := scanTransfer(rows)
		if err != nil {
			return nil, fmt.Errorf("transfers: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// UpdateTransfer implements outpost.TransferStore.
func (db *DB) UpdateTransfer(ctx context.Context, id string, fn func(*outpost.Transfer) error) (*outpost.Transfer, error) {
	var out *outpost.Transfer
	err := db.writeTx(ctx, "update transfer", func(tx *sql.Tx) error {
		t, err := scanTransfer(tx.QueryRowContext(ctx, `SELECT `+transferCols+` FROM transfers WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return outpost.Errorf(outpost.ENOTFOUND, "transfer %s not found", id)
		} else if err != nil {
			return err
		}
		if err := fn(t); err != nil {
			return wrapCallback(err)
		}
		t.ID = id
		args := transferArgs(t)[1:]
		_, err = tx.ExecContext(ctx, `UPDATE transfers SET device_id = ?, artifact_id = ?, url = ?, name = ?, size = ?, sha256 = ?, version = ?,
			model = ?, methods = ?, method = ?, chunk_size = ?, state = ?, bytes = ?, error = ?, message = ?, job_id = ?, created_at = ?,
			updated_at = ?, expires_at = ?, finished_at = ?, token_hash = ?, token_expiry = ?, active = ? WHERE id = ?`,
			append(args, activeFlag(t.State.Final()), id)...)
		out = t
		return err
	})
	if err != nil {
		return nil, unwrapCallback(err)
	}
	return out, nil
}

// callbackError carries an error from an update callback through
// writeTx untouched.
type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }
func (e *callbackError) Unwrap() error { return e.err }

func wrapCallback(err error) error {
	if outpost.ErrorCode(err) != outpost.EINTERNAL {
		return err // writeTx passes coded errors through
	}
	return &callbackError{err}
}

func unwrapCallback(err error) error {
	var ce *callbackError
	if errors.As(err, &ce) {
		return ce.err
	}
	return err
}

const jobCols = `id, device_id, artifact_id, transfer_id, from_version, target_version, state, phase, error, message, reported_version,
	timeout_ms, created_at, updated_at, expires_at, deadline, finished_at`

func scanJob(s interface{ Scan(...any) error }) (*outpost.FirmwareJob, error) {
	var j outpost.FirmwareJob
	var state string
	var timeout, created, updated, expires, deadline, finished int64
	if err := s.Scan(&j.ID, &j.DeviceID, &j.ArtifactID, &j.TransferID, &j.FromVersion, &j.TargetVersion, &state, &j.Phase, &j.Error,
		&j.Message, &j.ReportedVersion, &timeout, &created, &updated, &expires, &deadline, &finished); err != nil {
		return nil, err
	}
	j.State = outpost.JobState(state)
	j.Timeout = time.Duration(timeout) * time.Millisecond
	j.CreatedAt, j.UpdatedAt, j.ExpiresAt, j.Deadline, j.FinishedAt = msTime(created), msTime(updated), msTime(expires), msTime(deadline), msTime(finished)
	return &j, nil
}

func jobArgs(j *outpost.FirmwareJob) []any {
	return []any{j.ID, j.DeviceID, j.ArtifactID, j.TransferID, j.FromVersion, j.TargetVersion, string(j.State), j.Phase, j.Error,
		j.Message, j.ReportedVersion, j.Timeout.Milliseconds(), timeMS(j.CreatedAt), timeMS(j.UpdatedAt), timeMS(j.ExpiresAt),
		timeMS(j.Deadline), timeMS(j.FinishedAt)}
}

// CreateJob implements outpost.TransferStore.
func (db *DB) CreateJob(ctx context.Context, j *outpost.FirmwareJob, t *outpost.Transfer) error {
	return db.writeTx(ctx, "create firmware job", func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, j.DeviceID); err != nil {
			return err
		}
		var active string
		err := tx.QueryRowContext(ctx, `SELECT id FROM firmware_jobs WHERE device_id = ? AND active = 1`, j.DeviceID).Scan(&active)
		if err == nil {
			return outpost.Errorf(outpost.ECONFLICT, "device %s is already being updated (job %s); wait for it or abort it", j.DeviceID, active)
		} else if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if err := insertTransfer(ctx, tx, t); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO firmware_jobs (`+jobCols+`, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			append(jobArgs(j), activeFlag(j.State.Final()))...)
		if err != nil && strings.Contains(err.Error(), "UNIQUE") {
			return outpost.Errorf(outpost.ECONFLICT, "firmware job %s exists", j.ID)
		}
		return err
	})
}

// Job implements outpost.TransferStore.
func (db *DB) Job(ctx context.Context, id string) (*outpost.FirmwareJob, error) {
	j, err := scanJob(db.r.QueryRowContext(ctx, `SELECT `+jobCols+` FROM firmware_jobs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "firmware job %s not found", id)
	} else if err != nil {
		return nil, fmt.Errorf("firmware job: %w", err)
	}
	return j, nil
}

// ActiveJob implements outpost.TransferStore.
func (db *DB) ActiveJob(ctx context.Context, deviceID string) (*outpost.FirmwareJob, error) {
	j, err := scanJob(db.r.QueryRowContext(ctx, `SELECT `+jobCols+` FROM firmware_jobs WHERE device_id = ? AND active = 1`, deviceID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, outpost.Errorf(outpost.ENOTFOUND, "device %s has no firmware update in progress", deviceID)
	} else if err != nil {
		return nil, fmt.Errorf("active firmware job: %w", err)
	}
	return j, nil
}

// Jobs implements outpost.TransferStore.
func (db *DB) Jobs(ctx context.Context, f outpost.JobFilter) ([]*outpost.FirmwareJob, error) {
	q := `SELECT ` + jobCols + ` FROM firmware_jobs WHERE 1=1`
	var args []any
	if f.DeviceID != "" {
		q += ` AND device_id = ?`
		args = append(args, f.DeviceID)
	}
	if f.State != "" {
		q += ` AND state = ?`
		args = append(args, string(f.State))
	}
	if f.Active {
		q += ` AND active = 1`
	}
	q += ` ORDER BY seq DESC`
	if f.Limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	rows, err := db.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("firmware jobs: %w", err)
	}
	defer rows.Close()
	out := []*outpost.FirmwareJob{}
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("firmware jobs: %w", err)
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// UpdateJob implements outpost.TransferStore.
func (db *DB) UpdateJob(ctx context.Context, id string, fn func(*outpost.FirmwareJob) error) (*outpost.FirmwareJob, error) {
	var out *outpost.FirmwareJob
	err := db.writeTx(ctx, "update firmware job", func(tx *sql.Tx) error {
		j, err := scanJob(tx.QueryRowContext(ctx, `SELECT `+jobCols+` FROM firmware_jobs WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return outpost.Errorf(outpost.ENOTFOUND, "firmware job %s not found", id)
		} else if err != nil {
			return err
		}
		wasActive := !j.State.Final()
		if err := fn(j); err != nil {
			return wrapCallback(err)
		}
		if !wasActive && !j.State.Final() {
			return outpost.Errorf(outpost.ECONFLICT, "firmware job %s is finished", id)
		}
		j.ID = id
		args := jobArgs(j)[1:]
		_, err = tx.ExecContext(ctx, `UPDATE firmware_jobs SET device_id = ?, artifact_id = ?, transfer_id = ?, from_version = ?,
			target_version = ?, state = ?, phase = ?, error = ?, message = ?, reported_version = ?, timeout_ms = ?, created_at = ?,
			updated_at = ?, expires_at = ?, deadline = ?, finished_at = ?, active = ? WHERE id = ?`,
			append(args, activeFlag(j.State.Final()), id)...)
		out = j
		return err
	})
	if err != nil {
		return nil, unwrapCallback(err)
	}
	return out, nil
}

// SetDeviceFiles implements outpost.TransferStore.
func (db *DB) SetDeviceFiles(ctx context.Context, deviceID string, files []outpost.DeviceFile, at time.Time) error {
	var b strings.Builder
	for i, f := range files {
		if i > 0 {
			b.WriteByte('\n')
		}
		// Names hold no control characters (protocol.ValidFileName), so
		// a tab and a line break separate the fields and the files.
		fmt.Fprintf(&b, "%s\t%d\t%s", f.Name, f.Size, f.SHA256)
	}
	return db.writeTx(ctx, "set device files", func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, deviceID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO device_files (device_id, files, reported_at) VALUES (?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET files = excluded.files, reported_at = excluded.reported_at`, deviceID, b.String(), timeMS(at))
		return err
	})
}

// DeviceFiles implements outpost.TransferStore.
func (db *DB) DeviceFiles(ctx context.Context, deviceID string) (*outpost.DeviceFiles, error) {
	if _, err := seqOf(ctx, db.r, deviceID); err != nil {
		return nil, err
	}
	out := &outpost.DeviceFiles{DeviceID: deviceID, Files: []outpost.DeviceFile{}}
	var files string
	var at int64
	err := db.r.QueryRowContext(ctx, `SELECT files, reported_at FROM device_files WHERE device_id = ?`, deviceID).Scan(&files, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return out, nil
	} else if err != nil {
		return nil, fmt.Errorf("device files: %w", err)
	}
	out.ReportedAt = msTime(at)
	if files == "" {
		return out, nil
	}
	for _, line := range strings.Split(files, "\n") {
		parts := strings.Split(line, "\t")
		if len(parts) != 3 {
			continue
		}
		var f outpost.DeviceFile
		f.Name, f.SHA256 = parts[0], parts[2]
		fmt.Sscan(parts[1], &f.Size)
		out.Files = append(out.Files, f)
	}
	return out, nil
}

// SetFirmwareVersion implements outpost.TransferStore.
func (db *DB) SetFirmwareVersion(ctx context.Context, deviceID, version string, at time.Time) error {
	return db.writeTx(ctx, "set firmware version", func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, deviceID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO device_firmware (device_id, version, reported_at) VALUES (?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET version = excluded.version, reported_at = excluded.reported_at`, deviceID, version, timeMS(at))
		return err
	})
}

// FirmwareVersion implements outpost.TransferStore.
func (db *DB) FirmwareVersion(ctx context.Context, deviceID string) (*outpost.DeviceFirmware, error) {
	if _, err := seqOf(ctx, db.r, deviceID); err != nil {
		return nil, err
	}
	out := &outpost.DeviceFirmware{DeviceID: deviceID}
	var at int64
	err := db.r.QueryRowContext(ctx, `SELECT version, reported_at FROM device_firmware WHERE device_id = ?`, deviceID).Scan(&out.Version, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return out, nil
	} else if err != nil {
		return nil, fmt.Errorf("firmware version: %w", err)
	}
	out.ReportedAt = msTime(at)
	return out, nil
}
