package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Stream event kinds of file transfers and firmware updates.
const (
	// KindTransfer: a file transfer progressed or changed state (see
	// Event.Transfer).
	KindTransfer = "transfer"
	// KindFirmware: a firmware update progressed or changed state (see
	// Event.FirmwareJob).
	KindFirmware = "firmware"
	// KindFiles: a device reported its files (see Event.DeviceFiles).
	KindFiles = "files"
)

// States of a file transfer.
const (
	TransferOffered = "OFFERED"       // waiting for the device to take it up
	TransferActive  = "FILE_TRANSFER" // on its way
	TransferReady   = "FILE_READY"    // on the device, checked
	TransferError   = "ERROR"
	TransferAborted = "ABORTED"
)

// States of a firmware update. SUCCESS means the device came back after
// its restart with the target version.
const (
	FirmwareInstalling = "INSTALLING"
	FirmwareSuccess    = "SUCCESS"
	FirmwareError      = "ERROR"
	FirmwareAborted    = "ABORTED"
)

// Artifact is a file the platform holds for devices.
type Artifact struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"`
	Version   string    `json:"version,omitempty"`
	Model     string    `json:"model,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// ArtifactMeta describes an artifact to upload.
type ArtifactMeta struct {
	// Name is the file's name on devices.
	Name string
	// Version is the version a firmware image brings (required to update
	// firmware with it).
	Version string
	// Model is the device model the artifact is for (optional).
	Model string
}

// Transfer is a file on its way to a device.
type Transfer struct {
	ID         string    `json:"id"`
	DeviceID   string    `json:"device_id"`
	ArtifactID string    `json:"artifact_id,omitempty"`
	URL        string    `json:"url,omitempty"`
	Name       string    `json:"name"`
	Size       int64     `json:"size"`
	SHA256     string    `json:"sha256,omitempty"`
	Version    string    `json:"version,omitempty"`
	Model      string    `json:"model,omitempty"`
	Methods    []string  `json:"methods"`
	Method     string    `json:"method,omitempty"`
	ChunkSize  int       `json:"chunk_size,omitempty"`
	State      string    `json:"state"`
	Bytes      int64     `json:"bytes"`
	Percent    float64   `json:"percent"`
	Error      string    `json:"error,omitempty"`
	Message    string    `json:"message,omitempty"`
	JobID      string    `json:"job_id,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// Finished reports whether the transfer is over.
func (t *Transfer) Finished() bool {
	return t.State == TransferReady || t.State == TransferError || t.State == TransferAborted
}

// FirmwareJob is one firmware update of one device.
type FirmwareJob struct {
	ID              string    `json:"id"`
	DeviceID        string    `json:"device_id"`
	ArtifactID      string    `json:"artifact_id"`
	TransferID      string    `json:"transfer_id"`
	FromVersion     string    `json:"from_version,omitempty"`
	TargetVersion   string    `json:"target_version"`
	State           string    `json:"state"`
	Phase           string    `json:"phase,omitempty"`
	Error           string    `json:"error,omitempty"`
	Message         string    `json:"message,omitempty"`
	ReportedVersion string    `json:"reported_version,omitempty"`
	TimeoutSeconds  float64   `json:"timeout_s"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
	ExpiresAt       time.Time `json:"expires_at"`
	Deadline        time.Time `json:"deadline,omitzero"`
	FinishedAt      time.Time `json:"finished_at,omitzero"`
	Bytes           int64     `json:"bytes"`
	Percent         float64   `json:"percent"`
}

// Finished reports whether the update is over.
func (j *FirmwareJob) Finished() bool { return j.State != FirmwareInstalling }

// DeviceFile is a file a device reported holding.
type DeviceFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// DeviceFiles is the file list a device last reported.
type DeviceFiles struct {
	DeviceID   string       `json:"device_id"`
	Files      []DeviceFile `json:"files"`
	ReportedAt time.Time    `json:"reported_at,omitzero"`
}

// FirmwareState is a device's reported version and latest update.
type FirmwareState struct {
	DeviceID   string       `json:"device_id"`
	Version    string       `json:"version,omitempty"`
	ReportedAt time.Time    `json:"reported_at,omitzero"`
	Job        *FirmwareJob `json:"job,omitempty"`
}

// FileCommand is a delete or purge command queued for a device.
type FileCommand struct {
	ID       string   `json:"id"`
	DeviceID string   `json:"device_id"`
	Kind     string   `json:"kind"`
	Names    []string `json:"names,omitempty"`
	State    string   `json:"state"`
}

// UploadArtifact streams r (size bytes, or -1 when unknown) to the
// platform as a new artifact; progress, if set, is told how many bytes
// went so far. Nothing is held in memory. Errors: ErrInvalid (a bad name,
// an empty or too large file).
func (c *Client) UploadArtifact(ctx context.Context, r io.Reader, size int64, m ArtifactMeta, progress func(sent int64)) (*Artifact, error) {
	q := url.Values{"name": {m.Name}}
	if m.Version != "" {
		q.Set("version", m.Version)
	}
	if m.Model != "" {
		q.Set("model", m.Model)
	}
	u := *c.base
	u.Path += "/api/v1/artifacts"
	u.RawQuery = q.Encode()
	body := io.Reader(r)
	if progress != nil {
		body = &progressReader{r: r, fn: progress}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if size >= 0 {
		req.ContentLength = size
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return nil, &transportError{op: "POST " + c.base.Scheme + "://" + c.base.Host + u.Path, err: ue}
		}
		return nil, fmt.Errorf("fleet: upload: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("fleet: upload: %w", err)
	}
	if resp.StatusCode >= 300 {
		return nil, apiError(resp.StatusCode, raw)
	}
	var a Artifact
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, fmt.Errorf("fleet: decode upload: %w", err)
	}
	return &a, nil
}

// UploadFile uploads the file at path (see UploadArtifact); the name
// defaults to the file's base name.
func (c *Client) UploadFile(ctx context.Context, path string, m ArtifactMeta, progress func(sent, total int64)) (*Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("fleet: %s is not a regular file", path)
	}
	if m.Name == "" {
		m.Name = st.Name()
	}
	var fn func(int64)
	if progress != nil {
		total := st.Size()
		fn = func(sent int64) { progress(sent, total) }
	}
	return c.UploadArtifact(ctx, f, st.Size(), m, fn)
}

type progressReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if n > 0 {
		p.fn(p.n)
	}
	return n, err
}

// Artifacts lists artifacts, newest first.
func (c *Client) Artifacts(ctx context.Context) ([]Artifact, error) {
	var out struct {
		Artifacts []Artifact `json:"artifacts"`
	}
	if err := c.do(ctx, "GET", "/api/v1/artifacts", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Artifacts, nil
}

// Artifact returns one artifact (ErrNotFound).
func (c *Client) Artifact(ctx context.Context, id string) (*Artifact, error) {
	var a Artifact
	if err := c.do(ctx, "GET", "/api/v1/artifacts/"+url.PathEscape(id), nil, nil, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// DeleteArtifact deletes an artifact (ErrNotFound; ErrConflict while it
// is being sent to a device).
func (c *Client) DeleteArtifact(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/artifacts/"+url.PathEscape(id), nil, nil, nil)
}

// SigningKey returns the platform's public signing key, as devices are
// configured with it ("ed25519:BASE64").
func (c *Client) SigningKey(ctx context.Context) (string, error) {
	var out struct {
		PublicKey string `json:"public_key"`
	}
	if err := c.do(ctx, "GET", "/api/v1/signing-key", nil, nil, &out); err != nil {
		return "", err
	}
	return out.PublicKey, nil
}

// SendOptions tune a file sent to a device; zero fields take the
// platform's defaults.
type SendOptions struct {
	// Name is the file's name on the device (default: the artifact's).
	Name string
	// Methods the device may use: "mqtt", "url" (default both).
	Methods []string
	// TTL is how long the offer waits for the device (default 24h).
	TTL time.Duration
}

func durationString(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// SendFile offers an artifact to a device, through its down queue: a
// device that is away gets it when it connects. Follow the transfer with
// Transfer, WaitTransfer or KindTransfer events. Errors: ErrNotFound,
// ErrInvalid.
func (c *Client) SendFile(ctx context.Context, deviceID, artifactID string, o SendOptions) (*Transfer, error) {
	body := map[string]any{"artifact": artifactID}
	if o.Name != "" {
		body["name"] = o.Name
	}
	if len(o.Methods) > 0 {
		body["methods"] = o.Methods
	}
	if o.TTL != 0 {
		body["ttl"] = durationString(o.TTL)
	}
	var t Transfer
	if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(deviceID)+"/files", nil, body, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// SendURL tells a device to download a file the platform does not hold
// from rawURL, under name; sha256 and size (optional) are checked by the
// device.
func (c *Client) SendURL(ctx context.Context, deviceID, rawURL, name, sha256 string, size int64, ttl time.Duration) (*Transfer, error) {
	body := map[string]any{"url": rawURL, "name": name}
	if sha256 != "" {
		body["sha256"] = sha256
	}
	if size > 0 {
		body["size"] = size
	}
	if ttl != 0 {
		body["ttl"] = durationString(ttl)
	}
	var t Transfer
	if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(deviceID)+"/files", nil, body, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Transfer returns a transfer (ErrNotFound).
func (c *Client) Transfer(ctx context.Context, id string) (*Transfer, error) {
	var t Transfer
	if err := c.do(ctx, "GET", "/api/v1/transfers/"+url.PathEscape(id), nil, nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Transfers lists a device's transfers, newest first (the last 100), or
// only those in progress.
func (c *Client) Transfers(ctx context.Context, deviceID string, activeOnly bool) ([]Transfer, error) {
	q := url.Values{}
	if activeOnly {
		q.Set("active", "true")
	}
	var out struct {
		Transfers []Transfer `json:"transfers"`
	}
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/transfers", q, nil, &out); err != nil {
		return nil, err
	}
	return out.Transfers, nil
}

// AbortTransfer aborts a transfer and tells the device (ErrNotFound;
// ErrConflict when it is over).
func (c *Client) AbortTransfer(ctx context.Context, id string) (*Transfer, error) {
	var t Transfer
	if err := c.do(ctx, "POST", "/api/v1/transfers/"+url.PathEscape(id)+"/abort", nil, emptyBody{}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// WaitTransfer polls a transfer until it is over or ctx ends, calling
// progress (if set) on every change, and returns it as it ended.
func (c *Client) WaitTransfer(ctx context.Context, id string, progress func(*Transfer)) (*Transfer, error) {
	var last string
	for {
		t, err := c.Transfer(ctx, id)
		if err != nil {
			return nil, err
		}
		if key := t.State + "/" + strconv.FormatInt(t.Bytes, 10); key != last && progress != nil {
			progress(t)
			last = key
		}
		if t.Finished() {
			return t, nil
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return t, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// DeviceFiles returns the files a device last reported (ErrNotFound).
func (c *Client) DeviceFiles(ctx context.Context, deviceID string) (*DeviceFiles, error) {
	var fs DeviceFiles
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/files", nil, nil, &fs); err != nil {
		return nil, err
	}
	return &fs, nil
}

// DeleteDeviceFile queues the deletion of a file on a device (ErrInvalid
// for a name that is not a plain file name).
func (c *Client) DeleteDeviceFile(ctx context.Context, deviceID, name string) (*FileCommand, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") {
		return nil, fmt.Errorf("fleet: %q is not a file name: %w", name, ErrInvalid)
	}
	var fc FileCommand
	if err := c.do(ctx, "DELETE", "/api/v1/devices/"+url.PathEscape(deviceID)+"/files/"+url.PathEscape(name), nil, nil, &fc); err != nil {
		return nil, err
	}
	return &fc, nil
}

// PurgeDeviceFiles queues the deletion of every file on a device.
func (c *Client) PurgeDeviceFiles(ctx context.Context, deviceID string) (*FileCommand, error) {
	var fc FileCommand
	if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(deviceID)+"/files/purge", nil, emptyBody{}, &fc); err != nil {
		return nil, err
	}
	return &fc, nil
}

// UpdateOptions tune a firmware update; zero fields take the platform's
// defaults.
type UpdateOptions struct {
	// Methods the device may fetch the image with (default both).
	Methods []string
	// TTL is how long the order waits for the device (default 7 days);
	// Timeout how long the device may stay silent once it started, and
	// take to come back after its restart (default 30 minutes).
	TTL, Timeout time.Duration
}

// UpdateFirmware orders a device to install an artifact (which must have
// a version), through its down queue. The update ends SUCCESS only when
// the device comes back after its restart with the artifact's version.
// Errors: ErrNotFound, ErrInvalid, ErrConflict (runs that version
// already, or another update is in progress).
func (c *Client) UpdateFirmware(ctx context.Context, deviceID, artifactID string, o UpdateOptions) (*FirmwareJob, error) {
	body := map[string]any{"artifact": artifactID}
	if len(o.Methods) > 0 {
		body["methods"] = o.Methods
	}
	if o.TTL != 0 {
		body["ttl"] = durationString(o.TTL)
	}
	if o.Timeout != 0 {
		body["timeout"] = durationString(o.Timeout)
	}
	var j FirmwareJob
	if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(deviceID)+"/firmware", nil, body, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

// Firmware returns a device's reported version and latest update.
func (c *Client) Firmware(ctx context.Context, deviceID string) (*FirmwareState, error) {
	var st FirmwareState
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/firmware", nil, nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// FirmwareJob returns a firmware update (ErrNotFound).
func (c *Client) FirmwareJob(ctx context.Context, id string) (*FirmwareJob, error) {
	var j FirmwareJob
	if err := c.do(ctx, "GET", "/api/v1/firmware/jobs/"+url.PathEscape(id), nil, nil, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

// FirmwareJobs lists a device's updates, newest first (the last 100).
func (c *Client) FirmwareJobs(ctx context.Context, deviceID string) ([]FirmwareJob, error) {
	var out struct {
		Jobs []FirmwareJob `json:"jobs"`
	}
	if err := c.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(deviceID)+"/firmware/jobs", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Jobs, nil
}

// AbortFirmware aborts an update (ErrNotFound; ErrConflict when over).
func (c *Client) AbortFirmware(ctx context.Context, id string) (*FirmwareJob, error) {
	var j FirmwareJob
	if err := c.do(ctx, "POST", "/api/v1/firmware/jobs/"+url.PathEscape(id)+"/abort", nil, emptyBody{}, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

// WaitFirmware polls an update until it is over or ctx ends, calling
// progress (if set) on every change.
func (c *Client) WaitFirmware(ctx context.Context, id string, progress func(*FirmwareJob)) (*FirmwareJob, error) {
	var last string
	for {
		j, err := c.FirmwareJob(ctx, id)
		if err != nil {
			return nil, err
		}
		if key := j.State + "/" + j.Phase + "/" + strconv.FormatInt(j.Bytes, 10); key != last && progress != nil {
			progress(j)
			last = key
		}
		if j.Finished() {
			return j, nil
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return j, err
		}
	}
}

// Transfer decodes a KindTransfer event.
func (e Event) Transfer() (*Transfer, error) {
	var t Transfer
	return &t, e.decode(KindTransfer, &t)
}

// FirmwareJob decodes a KindFirmware event.
func (e Event) FirmwareJob() (*FirmwareJob, error) {
	var j FirmwareJob
	return &j, e.decode(KindFirmware, &j)
}

// DeviceFiles decodes a KindFiles event.
func (e Event) DeviceFiles() (*DeviceFiles, error) {
	var fs DeviceFiles
	return &fs, e.decode(KindFiles, &fs)
}
