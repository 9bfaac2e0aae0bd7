package outpost

import (
	"context"
	"time"
)

// Artifact is a file the platform holds for devices: a firmware image, a
// configuration file, anything up to 4 GiB. Its content lives in a blob
// store under BlobKey; the platform signs SHA256, Size, Version and Model
// when it offers the artifact to a device.
type Artifact struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Version is set for firmware images: the version a device runs once
	// it installed the image.
	Version string `json:"version,omitempty"`
	// Model, when set, names the device model the artifact is for.
	Model     string    `json:"model,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	BlobKey   string    `json:"-"`
}

// ArtifactFilter selects artifacts; zero fields match all.
type ArtifactFilter struct {
	Name    string
	Version string
	Model   string
	Limit   int
}

// TransferState is where a file transfer to a device stands. The device's
// states are WolkConnect's; the platform adds TransferOffered.
//
//	OFFERED ──▶ FILE_TRANSFER ──▶ FILE_READY | ERROR | ABORTED
//	   └──────────────────────────▶ FILE_READY | ERROR | ABORTED
type TransferState string

// Transfer states.
const (
	TransferOffered TransferState = "OFFERED"
	TransferActive  TransferState = "FILE_TRANSFER"
	TransferReady   TransferState = "FILE_READY"
	TransferError   TransferState = "ERROR"
	TransferAborted TransferState = "ABORTED"
)

// TransferStates lists every transfer state in lifecycle order.
var TransferStates = []TransferState{TransferOffered, TransferActive, TransferReady, TransferError, TransferAborted}

// Valid reports whether s is a known transfer state.
func (s TransferState) Valid() bool {
	for _, x := range TransferStates {
		if s == x {
			return true
		}
	}
	return false
}

// Final reports whether a transfer in state s is over.
func (s TransferState) Final() bool {
	return s == TransferReady || s == TransferError || s == TransferAborted
}

// CanTransferMove reports whether a transfer may go from one state to
// another. A transfer in progress may report progress (FILE_TRANSFER to
// FILE_TRANSFER); a finished one never changes again.
func CanTransferMove(from, to TransferState) bool {
	if !from.Valid() || !to.Valid() || from.Final() {
		return false
	}
	return to != TransferOffered
}

// Transfer is one file on its way to one device.
type Transfer struct {
	ID       string `json:"id"`
	DeviceID string `json:"device_id"`
	// ArtifactID is the artifact sent; empty for an external URL.
	ArtifactID string `json:"artifact_id,omitempty"`
	// URL is the external address the device downloads from, when the
	// platform does not hold the file.
	URL string `json:"url,omitempty"`
	// Name is the file's name on the device.
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256,omitempty"`
	Version string `json:"version,omitempty"`
	Model   string `json:"model,omitempty"`
	// Methods the platform offered; Method the one the device chose, and
	// ChunkSize its chunk size over MQTT.
	Methods   []string      `json:"methods"`
	Method    string        `json:"method,omitempty"`
	ChunkSize int           `json:"chunk_size,omitempty"`
	State     TransferState `json:"state"`
	// Bytes is the progress: what the device reported holding, or what
	// the platform sent, whichever is more recent.
	Bytes int64 `json:"bytes"`
	// Percent is Bytes of Size, filled by the platform when it shows a
	// transfer (not stored).
	Percent float64 `json:"percent"`
	// Error is an error kind (protocol.FileErr…) once in ERROR; Message
	// says more.
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
	// JobID is the firmware job the transfer serves, if any.
	JobID     string    `json:"job_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// ExpiresAt is when an offer the device has not taken up is dropped.
	ExpiresAt  time.Time `json:"expires_at"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// TokenHash and TokenExpiry are the download URL's token, when the
	// device asked for one.
	TokenHash   []byte    `json:"-"`
	TokenExpiry time.Time `json:"-"`
}

// FillPercent sets Percent from Bytes and Size.
func (t *Transfer) FillPercent() {
	switch {
	case t.State == TransferReady:
		t.Percent = 100
	case t.Size > 0:
		t.Percent = float64(min(t.Bytes, t.Size)) * 100 / float64(t.Size)
		t.Percent = float64(int64(t.Percent*10)) / 10
	default:
		t.Percent = 0
	}
}

// TransferFilter selects transfers; zero fields match all.
type TransferFilter struct {
	DeviceID string
	State    TransferState
	// Active keeps only transfers that are not finished.
	Active bool
	Limit  int
}

// JobState is where a firmware update stands.
//
//	INSTALLING ──▶ SUCCESS | ERROR | ABORTED
//
// SUCCESS is decided by the platform alone, when the device reconnects
// after its restart and reports the target version.
type JobState string

// Firmware job states.
const (
	JobInstalling JobState = "INSTALLING"
	JobSuccess    JobState = "SUCCESS"
	JobError      JobState = "ERROR"
	JobAborted    JobState = "ABORTED"
)

// Final reports whether a job in state s is over.
func (s JobState) Final() bool { return s == JobSuccess || s == JobError || s == JobAborted }

// Valid reports whether s is a known job state.
func (s JobState) Valid() bool { return s == JobInstalling || s.Final() }

// Phases of an INSTALLING job, in order (see protocol.Phase…).
var JobPhases = []string{"ordered", "downloading", "verifying", "installing", "restarting"}

// PhaseRank returns the position of phase in JobPhases, -1 if unknown.
// Phases only move forward.
func PhaseRank(phase string) int {
	for i, p := range JobPhases {
		if p == phase {
			return i
		}
	}
	return -1
}

// FirmwareJob is one firmware update of one device.
type FirmwareJob struct {
	ID         string `json:"id"`
	DeviceID   string `json:"device_id"`
	ArtifactID string `json:"artifact_id"`
	// TransferID is the transfer that carries the image.
	TransferID string `json:"transfer_id"`
	// FromVersion is the version the device reported before the update
	// (empty if it never reported one); TargetVersion the artifact's.
	FromVersion   string   `json:"from_version,omitempty"`
	TargetVersion string   `json:"target_version"`
	State         JobState `json:"state"`
	// Phase details INSTALLING (protocol.Phase…).
	Phase string `json:"phase,omitempty"`
	// Error is an error kind (protocol.FirmwareErr…) once in ERROR.
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
	// ReportedVersion is the version the device reported after its
	// restart.
	ReportedVersion string `json:"reported_version,omitempty"`
	// Timeout is how long the device may stay silent in a phase (and how
	// long it may take to come back after its restart).
	Timeout time.Duration `json:"-"`
	// TimeoutSeconds is Timeout, for JSON.
	TimeoutSeconds float64   `json:"timeout_s"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	// ExpiresAt is when an order the device never took up fails
	// (expired); Deadline when the job in progress times out.
	ExpiresAt  time.Time `json:"expires_at"`
	Deadline   time.Time `json:"deadline,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// Bytes and Percent are the image transfer's progress (filled when
	// shown, not stored).
	Bytes   int64   `json:"bytes"`
	Percent float64 `json:"percent"`
}

// JobFilter selects firmware jobs; zero fields match all.
type JobFilter struct {
	DeviceID string
	State    JobState
	Active   bool
	Limit    int
}

// DeviceFile is a file the device reported holding.
type DeviceFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// DeviceFiles is the last file list a device reported.
type DeviceFiles struct {
	DeviceID   string       `json:"device_id"`
	Files      []DeviceFile `json:"files"`
	ReportedAt time.Time    `json:"reported_at,omitzero"`
}

// DeviceFirmware is the firmware version a device last reported.
type DeviceFirmware struct {
	DeviceID   string    `json:"device_id"`
	Version    string    `json:"version,omitempty"`
	ReportedAt time.Time `json:"reported_at,omitzero"`
}

// ArtifactStore keeps the artifacts' metadata (their content is in a blob
// store).
type ArtifactStore interface {
	// CreateArtifact stores a new artifact. ECONFLICT if the id is taken.
	CreateArtifact(ctx context.Context, a *Artifact) error
	// Artifact returns one artifact. ENOTFOUND.
	Artifact(ctx context.Context, id string) (*Artifact, error)
	// Artifacts lists artifacts, newest first.
	Artifacts(ctx context.Context, f ArtifactFilter) ([]*Artifact, error)
	// DeleteArtifact removes an artifact's metadata. ENOTFOUND;
	// ECONFLICT while a transfer that is not finished uses it.
	DeleteArtifact(ctx context.Context, id string) error
}

// OTAStore is what files and firmware over the air need of a store.
type OTAStore interface {
	ArtifactStore
	TransferStore
}

// TransferStore keeps file transfers and firmware jobs, with what devices
// reported about their files and firmware. Everything belonging to a
// device goes when the device is deleted.
type TransferStore interface {
	// CreateTransfer stores a new transfer. ENOTFOUND for an unknown
	// device or artifact.
	CreateTransfer(ctx context.Context, t *Transfer) error
	// Transfer returns one transfer. ENOTFOUND.
	Transfer(ctx context.Context, id string) (*Transfer, error)
	// Transfers lists transfers, newest first.
	Transfers(ctx context.Context, f TransferFilter) ([]*Transfer, error)
	// UpdateTransfer applies fn to the stored transfer and stores the
	// result, atomically. An error from fn is returned and nothing
	// changes. ENOTFOUND.
	UpdateTransfer(ctx context.Context, id string, fn func(*Transfer) error) (*Transfer, error)

	// CreateJob stores a firmware job together with the transfer of its
	// image. ENOTFOUND for an unknown device or artifact; ECONFLICT if
	// the device has a job that is not finished.
	CreateJob(ctx context.Context, j *FirmwareJob, t *Transfer) error
	// Job returns one job. ENOTFOUND.
	Job(ctx context.Context, id string) (*FirmwareJob, error)
	// Jobs lists jobs, newest first.
	Jobs(ctx context.Context, f JobFilter) ([]*FirmwareJob, error)
	// ActiveJob returns the device's unfinished job. ENOTFOUND when it
	// has none.
	ActiveJob(ctx context.Context, deviceID string) (*FirmwareJob, error)
	// UpdateJob is UpdateTransfer for jobs. ENOTFOUND.
	UpdateJob(ctx context.Context, id string, fn func(*FirmwareJob) error) (*FirmwareJob, error)

	// SetDeviceFiles replaces the device's file list. ENOTFOUND.
	SetDeviceFiles(ctx context.Context, deviceID string, files []DeviceFile, at time.Time) error
	// DeviceFiles returns the last list (empty when none was reported).
	// ENOTFOUND for an unknown device.
	DeviceFiles(ctx context.Context, deviceID string) (*DeviceFiles, error)
	// SetFirmwareVersion records the version a device reports. ENOTFOUND.
	SetFirmwareVersion(ctx context.Context, deviceID, version string, at time.Time) error
	// FirmwareVersion returns what the device last reported (Version empty
	// when it never did). ENOTFOUND for an unknown device.
	FirmwareVersion(ctx context.Context, deviceID string) (*DeviceFirmware, error)
}

// FileSend asks for a file to be sent to a device: an artifact, or an
// external URL the device downloads itself.
type FileSend struct {
	// Artifact is the artifact to send; or set URL.
	Artifact string
	// URL is an external http(s) address the device downloads from (the
	// platform does not hold the file); Name is then required, SHA256 and
	// Size are checked by the device when given.
	URL    string
	SHA256 string
	Size   int64
	// Name is the file's name on the device (default: the artifact's).
	Name string
	// Methods the device may use (default: mqtt and url; url only for an
	// external URL).
	Methods []string
	// TTL bounds how long the offer waits for the device (default 24h).
	TTL time.Duration
}

// FirmwareOrder asks for a device's firmware to be updated to an
// artifact's version.
type FirmwareOrder struct {
	// Artifact is the firmware image; it must have a version.
	Artifact string
	// Methods the device may fetch the image with (default both).
	Methods []string
	// TTL bounds how long the order waits for the device (default 7
	// days); Timeout how long the device may stay silent once it started
	// (and take to come back after its restart; default 30 minutes).
	TTL, Timeout time.Duration
}

// FirmwareState is what the platform knows of a device's firmware: the
// version it last reported and its latest job.
type FirmwareState struct {
	DeviceFirmware
	// Job is the device's latest firmware job, if any.
	Job *FirmwareJob `json:"job,omitempty"`
}

// FileCommand is a delete or purge command queued for a device.
type FileCommand struct {
	ID       string   `json:"id"`
	DeviceID string   `json:"device_id"`
	Kind     string   `json:"kind"` // "delete" or "purge"
	Names    []string `json:"names,omitempty"`
	State    State    `json:"state"` // of the queued message
}

// ArtifactMeta is what an uploader tells about an artifact.
type ArtifactMeta struct {
	// Name is the file's name on devices.
	Name string
	// Version is the version a firmware image brings; optional.
	Version string
	// Model is the device model the artifact is for; optional.
	Model string
}
