package protocol

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Message kinds of file management and firmware update (docs/protocol.md
// §22 to §25). Each is two topic levels; the chunks of a transfer travel
// on KindFileChunk followed by two more levels, the transfer id and the
// chunk index (ChunkKind).
const (
	// KindFileList carries a FileList (up): the files on the device, sent
	// on every connection and after every change, with what the device
	// accepts for transfers.
	KindFileList = "files/list"
	// KindFileOffer carries a FileOffer (down): the platform has a file
	// for the device. Offers go through the down queue.
	KindFileOffer = "files/offer"
	// KindFileStatus carries a FileStatus (up): the device's state of one
	// transfer.
	KindFileStatus = "files/status"
	// KindFileRequest carries a ChunkRequest (up): the device asks for
	// chunks of a transfer.
	KindFileRequest = "files/request"
	// KindFileChunk is the first two levels of a chunk's kind (down):
	// files/chunk/{transfer}/{index}, payload as EncodeChunk.
	KindFileChunk = "files/chunk"
	// KindFileURL carries a URLRequest (up) or a URLGrant (down): the
	// device asks for a download URL, and gets one.
	KindFileURL = "files/url"
	// KindFileAbort carries a FileAbort (down): the platform gave up a
	// transfer (or does not know it).
	KindFileAbort = "files/abort"
	// KindFileDelete carries a FileDelete (down): delete files.
	KindFileDelete = "files/delete"
	// KindFilePurge carries a FilePurge (down): delete every file.
	KindFilePurge = "files/purge"

	// KindFirmwareVersion carries a FirmwareVersion (up): the version the
	// device runs, on every connection.
	KindFirmwareVersion = "firmware/version"
	// KindFirmwareInstall carries a FirmwareInstall (down): install an
	// image. Install orders go through the down queue.
	KindFirmwareInstall = "firmware/install"
	// KindFirmwareStatus carries a FirmwareStatus (up).
	KindFirmwareStatus = "firmware/status"
	// KindFirmwareAbort carries a FirmwareAbort (down).
	KindFirmwareAbort = "firmware/abort"
	// KindFirmwareCheck carries a FirmwareCheck (up), answered by a
	// FirmwareCheckReply (down): is an update waiting for the device?
	KindFirmwareCheck = "firmware/check"
)

// FilesKind reports whether kind is one of the file management or
// firmware kinds, the ones the platform's OTA service handles.
func FilesKind(kind string) bool {
	return strings.HasPrefix(kind, "files/") || strings.HasPrefix(kind, "firmware/")
}

// Transfer methods, in FileOffer.Methods and FileStatus.Method.
const (
	// MethodMQTT: the file comes in chunks over MQTT, on request.
	MethodMQTT = "mqtt"
	// MethodURL: the device downloads the file over HTTP(S).
	MethodURL = "url"
)

// States of a file transfer, reported by the device in FileStatus (the
// names are WolkConnect's). The platform adds TransferOffered for a
// transfer the device has not taken up yet.
const (
	FileTransfer = "FILE_TRANSFER" // in progress
	FileReady    = "FILE_READY"    // complete and checked
	FileError    = "ERROR"         // failed; FileStatus.Error says why
	FileAborted  = "ABORTED"       // given up by the device or the platform
)

// Error kinds of a failed transfer (FileStatus.Error), WolkConnect's.
const (
	FileErrUnspecified       = "unspecified"
	FileErrProtocolDisabled  = "transfer_protocol_disabled"
	FileErrUnsupportedSize   = "unsupported_file_size"
	FileErrMalformedURL      = "malformed_url"
	FileErrHashMismatch      = "file_hash_mismatch"
	FileErrFileSystem        = "file_system_error"
	FileErrRetryExceeded     = "retry_count_exceeded"
	FileErrOfferExpired      = "offer_expired"      // platform: never taken up
	FileErrTransferAbandoned = "transfer_abandoned" // platform: no request for too long
)

// FileErrors lists the error kinds a device may report.
var FileErrors = []string{FileErrUnspecified, FileErrProtocolDisabled, FileErrUnsupportedSize, FileErrMalformedURL,
	FileErrHashMismatch, FileErrFileSystem, FileErrRetryExceeded}

// States of a firmware update (FirmwareStatus.State and the platform's
// jobs). SUCCESS is the platform's verdict alone: the device proves it by
// reconnecting after its restart with the target version.
const (
	FirmwareInstalling = "INSTALLING"
	FirmwareSuccess    = "SUCCESS"
	FirmwareError      = "ERROR"
	FirmwareAborted    = "ABORTED"
)

// Phases of an INSTALLING firmware update (FirmwareStatus.Phase).
const (
	PhaseOrdered     = "ordered"     // queued for the device
	PhaseDownloading = "downloading" // the image is being transferred
	PhaseVerifying   = "verifying"   // hash and signature being checked
	PhaseInstalling  = "installing"  // the device's installer runs
	PhaseRestarting  = "restarting"  // installed; the device restarts into it
)

// Error kinds of a failed firmware update (FirmwareStatus.Error and the
// platform's jobs).
const (
	FirmwareErrUnspecified      = "unspecified"
	FirmwareErrTransfer         = "transfer_failed"    // the image did not arrive
	FirmwareErrSignature        = "signature_invalid"  // unsigned, tampered, or signed by another key
	FirmwareErrFileSystem       = "file_system_error"  // the device could not store or read the image
	FirmwareErrInstall          = "install_failed"     // the device's installer failed
	FirmwareErrVetoed           = "vetoed"             // the device's stage callback said no
	FirmwareErrUnsupported      = "not_supported"      // the device does not update firmware
	FirmwareErrBusy             = "busy"               // another update runs on the device
	FirmwareErrVersionUnchanged = "version_unchanged"  // back after the restart with the old version
	FirmwareErrRolledBack       = "rolled_back"        // the device went back to the old image
	FirmwareErrUnexpected       = "unexpected_version" // back with neither version
	FirmwareErrTimeout          = "timeout"            // the device did not come back in time
	FirmwareErrExpired          = "expired"            // the order never reached the device
)

// Limits of file transfers. Sizes are bytes.
const (
	// MinChunkSize, MaxChunkSize and DefaultChunkSize bound the chunk size
	// a device asks for: 256 bytes for the smallest devices, 1 MiB at
	// most, 64 KiB by default.
	MinChunkSize     = 256
	MaxChunkSize     = 1 << 20
	DefaultChunkSize = 64 << 10
	// MaxChunksPerRequest and MaxRequestBytes bound one ChunkRequest: at
	// most this many chunks, and this many bytes, requested at once.
	MaxChunksPerRequest = 64
	MaxRequestBytes     = 4 << 20
	// MaxFileSize is the largest file or firmware image (4 GiB).
	MaxFileSize = 4 << 30
	// MaxFileNameLen bounds a file name, in bytes of UTF-8.
	MaxFileNameLen = 255
	// MaxFilesInList bounds the files in one FileList, and in a
	// FileDelete.
	MaxFilesInList = 1000
	// MaxVersionLen bounds a firmware version and an artifact's target
	// model.
	MaxVersionLen = 64
	// MaxURLLen bounds a download URL.
	MaxURLLen = 2048
	// MaxTransferIDLen bounds transfer, job and command ids.
	MaxTransferIDLen = 64
	// ChunkHeaderLen is the length of a chunk's header: the SHA-256 of the
	// previous chunk, then that of this chunk.
	ChunkHeaderLen = 2 * sha256.Size
)

// Error codes of file transfers in error replies.
const (
	// CodeUnknownTransfer: a message names a transfer or firmware job the
	// platform does not know for this device.
	CodeUnknownTransfer = "unknown_transfer"
)

// FileInfo describes one file on the device, in a FileList.
type FileInfo struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// FileAccept is what a device accepts for transfers, sent with its file
// list. Zero fields mean the defaults.
type FileAccept struct {
	// Methods the device accepts, in order of preference (default both).
	Methods []string `json:"methods,omitempty"`
	// ChunkSize is the device's preferred chunk size.
	ChunkSize int `json:"chunk_size,omitempty"`
	// MaxSize is the largest file the device takes.
	MaxSize int64 `json:"max_size,omitempty"`
}

// FileList is published by a device on up/files/list.
type FileList struct {
	Files  []FileInfo  `json:"files"`
	Accept *FileAccept `json:"accept,omitempty"`
}

// FileOffer is published by the platform on down/files/offer (through the
// down queue) and inside a FirmwareInstall: a file the device should
// fetch.
type FileOffer struct {
	// ID is the transfer's id; every later message about the transfer
	// names it.
	ID string `json:"id"`
	// Name is the file's name on the device (ValidFileName).
	Name string `json:"name"`
	// Size in bytes; 0 only for an external URL whose size is unknown.
	Size int64 `json:"size"`
	// SHA256 is the whole file's hash (lower-case hex); empty only for an
	// external URL given without one.
	SHA256 string `json:"sha256,omitempty"`
	// Methods the platform offers: MethodMQTT, MethodURL or both.
	Methods []string `json:"methods"`
	// URL is set for a file the platform does not hold: the device
	// downloads it from there (MethodURL only).
	URL string `json:"url,omitempty"`
	// Version and Model are the artifact's, when it has them.
	Version string `json:"version,omitempty"`
	Model   string `json:"model,omitempty"`
	// Signature is the platform's Ed25519 signature of
	// ArtifactStatement(SHA256, Size, Version, Model), base64.
	Signature string `json:"signature,omitempty"`
	// Job is the firmware job the transfer belongs to, if any.
	Job string `json:"job,omitempty"`
}

// FileStatus is published by a device on up/files/status.
type FileStatus struct {
	Transfer string `json:"transfer"`
	State    string `json:"state"`
	// Method and ChunkSize say how the device fetches the file (with
	// FILE_TRANSFER).
	Method    string `json:"method,omitempty"`
	ChunkSize int    `json:"chunk_size,omitempty"`
	// Bytes the device holds so far.
	Bytes int64 `json:"bytes,omitempty"`
	// Error is an error kind (with ERROR); Message says more, for people.
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
}

// ChunkRequest is published by a device on up/files/request: send chunks
// Index to Index+Count-1 of the transfer, cut at Size bytes.
type ChunkRequest struct {
	Transfer string `json:"transfer"`
	Index    int64  `json:"index"`
	Count    int    `json:"count"`
	Size     int    `json:"size"`
	// Rate, when set, caps the transfer at that many bytes per second.
	Rate int64 `json:"rate,omitempty"`
}

// URLRequest is published by a device on up/files/url.
type URLRequest struct {
	Transfer string `json:"transfer"`
}

// URLGrant is the platform's answer on down/files/url: a URL that serves
// the transfer's file (with HTTP Range requests) until Expires.
type URLGrant struct {
	Transfer string `json:"transfer"`
	URL      string `json:"url"`
	// Expires is the end of the URL's validity, in Unix milliseconds.
	Expires int64 `json:"expires"`
}

// FileAbort is published by the platform on down/files/abort.
type FileAbort struct {
	Transfer string `json:"transfer"`
	Reason   string `json:"reason,omitempty"`
}

// FileDelete is published by the platform on down/files/delete.
type FileDelete struct {
	ID    string   `json:"id"`
	Names []string `json:"names"`
}

// FilePurge is published by the platform on down/files/purge.
type FilePurge struct {
	ID string `json:"id"`
}

// FirmwareVersion is published by a device on up/firmware/version on
// every connection. Job is set when the device restarted during that
// firmware update (it kept the job's id across the restart).
type FirmwareVersion struct {
	Version string `json:"version"`
	Job     string `json:"job,omitempty"`
}

// FirmwareInstall is published by the platform on down/firmware/install
// (through the down queue).
type FirmwareInstall struct {
	// ID is the job's id.
	ID string `json:"id"`
	// Version is the version the device must run once updated.
	Version string `json:"version"`
	// File is the image to fetch, verify and install.
	File FileOffer `json:"file"`
}

// FirmwareStatus is published by a device on up/firmware/status.
type FirmwareStatus struct {
	Job     string `json:"job"`
	State   string `json:"state"`
	Phase   string `json:"phase,omitempty"`
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
}

// FirmwareAbort is published by the platform on down/firmware/abort.
type FirmwareAbort struct {
	Job string `json:"job"`
}

// FirmwareCheck is published by a device on up/firmware/check.
type FirmwareCheck struct {
	ID string `json:"id"`
}

// FirmwareCheckReply answers a FirmwareCheck on down/firmware/check. Job
// and Version name the update waiting for the device, if any; its install
// order follows on down/firmware/install.
type FirmwareCheckReply struct {
	ID      string `json:"id"`
	Job     string `json:"job,omitempty"`
	Version string `json:"version,omitempty"`
}

// ValidFileName checks the name of a file on a device: 1 to
// MaxFileNameLen bytes of UTF-8 without control characters (NUL
// included), no '/' or '\', not "." or "..", and not starting with '.'
// (names starting with a dot are the SDK's own). Such a name is always one
// entry inside the device's file directory: it can never reach outside.
func ValidFileName(name string) error {
	switch {
	case name == "":
		return errors.New("file name is empty")
	case len(name) > MaxFileNameLen:
		return fmt.Errorf("file name is longer than %d bytes", MaxFileNameLen)
	case !utf8.ValidString(name):
		return errors.New("file name is not valid UTF-8")
	case name[0] == '.':
		return errors.New("file name starts with '.'")
	case strings.ContainsAny(name, `/\`):
		return errors.New("file name contains a path separator")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("file name contains a control character")
		}
	}
	return nil
}

// ValidTransferID checks a transfer, job or command id: 1 to
// MaxTransferIDLen characters of [A-Za-z0-9_.:-], so that it can be a
// topic level.
func ValidTransferID(id string) error {
	return validName("transfer id", id, MaxTransferIDLen, true)
}

// ValidVersion checks a firmware version or target model: 1 to
// MaxVersionLen bytes of printable UTF-8.
func ValidVersion(v string) error {
	if v == "" {
		return errors.New("version is empty")
	}
	if err := checkText("version", v, MaxVersionLen); err != nil {
		return errors.New(err.Message)
	}
	return nil
}

// ValidSHA256 checks a lower-case hex SHA-256.
func ValidSHA256(s string) error {
	if len(s) != 2*sha256.Size {
		return errors.New("sha256 must be 64 hex digits")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return errors.New("sha256 must be lower-case hex")
		}
	}
	return nil
}

// ChunkKind returns the kind a chunk is published on:
// files/chunk/{transfer}/{index}.
func ChunkKind(transfer string, index int64) string {
	return KindFileChunk + "/" + transfer + "/" + strconv.FormatInt(index, 10)
}

// ParseChunkKind splits a chunk's kind into the transfer id and the chunk
// index.
func ParseChunkKind(kind string) (transfer string, index int64, ok bool) {
	rest, ok := strings.CutPrefix(kind, KindFileChunk+"/")
	if !ok {
		return "", 0, false
	}
	transfer, idx, ok := strings.Cut(rest, "/")
	if !ok || ValidTransferID(transfer) != nil || idx == "" || len(idx) > 12 {
		return "", 0, false
	}
	n, err := strconv.ParseInt(idx, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != idx {
		return "", 0, false
	}
	return transfer, n, true
}

// EncodeChunk builds a chunk's payload: the SHA-256 of the previous chunk
// (32 zero bytes before the first chunk), the SHA-256 of data, then data.
// It returns the hash of data, which is the next chunk's prev.
func EncodeChunk(prev [sha256.Size]byte, data []byte) (payload []byte, sum [sha256.Size]byte) {
	sum = sha256.Sum256(data)
	payload = make([]byte, ChunkHeaderLen+len(data))
	copy(payload, prev[:])
	copy(payload[sha256.Size:], sum[:])
	copy(payload[ChunkHeaderLen:], data)
	return payload, sum
}

// ErrBadChunk is returned by DecodeChunk for a chunk whose data does not
// match its own hash, or that does not follow the previous chunk.
var ErrBadChunk = errors.New("chunk hash mismatch")

// DecodeChunk checks a chunk's payload against the hash of the previous
// chunk the device holds (zero before the first) and returns its data and
// hash. A chunk that was corrupted on the way, or that belongs after
// another chunk, fails with ErrBadChunk.
func DecodeChunk(prev [sha256.Size]byte, payload []byte) (data []byte, sum [sha256.Size]byte, err error) {
	if len(payload) < ChunkHeaderLen+1 {
		return nil, sum, fmt.Errorf("%w: chunk of %d bytes is shorter than its header", ErrBadChunk, len(payload))
	}
	if !bytes.Equal(payload[:sha256.Size], prev[:]) {
		return nil, sum, fmt.Errorf("%w: it does not follow the previous chunk", ErrBadChunk)
	}
	data = payload[ChunkHeaderLen:]
	sum = sha256.Sum256(data)
	if !bytes.Equal(sum[:], payload[sha256.Size:ChunkHeaderLen]) {
		return nil, sum, fmt.Errorf("%w: data does not match its hash", ErrBadChunk)
	}
	return data, sum, nil
}

// ChunkCount returns how many chunks of size bytes a file of fileSize
// bytes has. An empty file has none: the device creates it from the offer
// alone.
func ChunkCount(fileSize int64, size int) int64 {
	if size <= 0 {
		return 0
	}
	return (fileSize + int64(size) - 1) / int64(size)
}

// ArtifactStatement is what the platform signs for an artifact, byte for
// byte:
//
//	"outpost-artifact-v1\n" + sha256 (lower-case hex) + "\n" + size (decimal)
//	+ "\n" + version + "\n" + model + "\n"
//
// Version and model may be empty; they never hold a line break.
func ArtifactStatement(sha256Hex string, size int64, version, model string) []byte {
	var b bytes.Buffer
	b.WriteString("outpost-artifact-v1\n")
	b.WriteString(sha256Hex)
	b.WriteByte('\n')
	b.WriteString(strconv.FormatInt(size, 10))
	b.WriteByte('\n')
	b.WriteString(version)
	b.WriteByte('\n')
	b.WriteString(model)
	b.WriteByte('\n')
	return b.Bytes()
}

// ErrBadSignature is returned by VerifyOffer for an unsigned offer or one
// whose signature does not verify.
var ErrBadSignature = errors.New("signature does not verify")

// VerifyOffer checks the platform's signature of an offer with the
// platform's public key (see `outpost keys`). It checks the signature of
// the statement only: the device must also check that the file's SHA-256
// and size are the offer's.
func VerifyOffer(pub ed25519.PublicKey, o FileOffer) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: no valid public key configured", ErrBadSignature)
	}
	if o.Signature == "" {
		return fmt.Errorf("%w: the image is not signed", ErrBadSignature)
	}
	sig, err := base64.StdEncoding.DecodeString(o.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: malformed signature", ErrBadSignature)
	}
	if !ed25519.Verify(pub, ArtifactStatement(o.SHA256, o.Size, o.Version, o.Model), sig) {
		return ErrBadSignature
	}
	return nil
}

// ParsePublicKey parses a platform signing key as `outpost keys` prints
// it: the 32-byte Ed25519 key in standard base64, optionally prefixed by
// "ed25519:".
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "ed25519:")
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("public key must be 32 bytes of base64 (as `outpost keys` prints it)")
	}
	return ed25519.PublicKey(b), nil
}

// FormatPublicKey formats a platform signing key as ParsePublicKey reads
// it.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return "ed25519:" + base64.StdEncoding.EncodeToString(pub)
}

// HashHex returns the lower-case hex of a SHA-256.
func HashHex(sum [sha256.Size]byte) string { return hex.EncodeToString(sum[:]) }

func checkFileInfo(f FileInfo) error {
	if err := ValidFileName(f.Name); err != nil {
		return invalid("file %q: %v", f.Name, err)
	}
	if f.Size < 0 || f.Size > MaxFileSize {
		return invalid("file %s: size %d out of range", f.Name, f.Size)
	}
	if f.SHA256 != "" {
		if err := ValidSHA256(f.SHA256); err != nil {
			return invalid("file %s: %v", f.Name, err)
		}
	}
	return nil
}

func checkMethods(what string, ms []string, empty bool) error {
	if len(ms) == 0 && !empty {
		return invalid("%s: no method", what)
	}
	if len(ms) > 2 {
		return invalid("%s: too many methods", what)
	}
	for _, m := range ms {
		if m != MethodMQTT && m != MethodURL {
			return invalid("%s: unknown method %q", what, m)
		}
	}
	return nil
}

func checkTransferRef(what, id string) error {
	if err := ValidTransferID(id); err != nil {
		return invalid("%s: %v", what, err)
	}
	return nil
}

// DecodeFileList parses a device's file list.
func DecodeFileList(payload []byte) (FileList, error) {
	var l FileList
	if err := decodeStrict("file list", payload, &l); err != nil {
		return FileList{}, err
	}
	if l.Files == nil {
		return FileList{}, invalid(`file list: missing "files" array`)
	}
	if len(l.Files) > MaxFilesInList {
		return FileList{}, tooLarge("file list: %d files exceed %d", len(l.Files), MaxFilesInList)
	}
	seen := make(map[string]bool, len(l.Files))
	for _, f := range l.Files {
		if err := checkFileInfo(f); err != nil {
			return FileList{}, err
		}
		if seen[f.Name] {
			return FileList{}, invalid("file list: %s listed twice", f.Name)
		}
		seen[f.Name] = true
	}
	if a := l.Accept; a != nil {
		if err := checkMethods("file list: accept", a.Methods, true); err != nil {
			return FileList{}, err
		}
		if a.ChunkSize != 0 && (a.ChunkSize < MinChunkSize || a.ChunkSize > MaxChunkSize) {
			return FileList{}, invalid("file list: chunk size %d out of range %d to %d", a.ChunkSize, MinChunkSize, MaxChunkSize)
		}
		if a.MaxSize < 0 {
			return FileList{}, invalid("file list: negative max size")
		}
	}
	return l, nil
}

// ValidateOffer checks an offer.
func ValidateOffer(o FileOffer) error {
	if err := checkTransferRef("file offer", o.ID); err != nil {
		return err
	}
	if err := ValidFileName(o.Name); err != nil {
		return invalid("file offer: %v", err)
	}
	if o.Size < 0 || o.Size > MaxFileSize {
		return tooLarge("file offer: size %d out of range 0 to %d", o.Size, int64(MaxFileSize))
	}
	if err := checkMethods("file offer", o.Methods, false); err != nil {
		return err
	}
	if o.SHA256 != "" {
		if err := ValidSHA256(o.SHA256); err != nil {
			return invalid("file offer: %v", err)
		}
	} else if o.URL == "" {
		return invalid("file offer: no sha256")
	}
	if len(o.URL) > MaxURLLen {
		return tooLarge("file offer: url longer than %d bytes", MaxURLLen)
	}
	if o.Version != "" {
		if err := ValidVersion(o.Version); err != nil {
			return invalid("file offer: %v", err)
		}
	}
	if o.Model != "" {
		if err := ValidVersion(o.Model); err != nil {
			return invalid("file offer: model: %v", err)
		}
	}
	if o.Job != "" {
		if err := checkTransferRef("file offer: job", o.Job); err != nil {
			return err
		}
	}
	return nil
}

// DecodeFileOffer parses an offer published to a device.
func DecodeFileOffer(payload []byte) (FileOffer, error) {
	var o FileOffer
	if err := decodeStrict("file offer", payload, &o); err != nil {
		return FileOffer{}, err
	}
	if err := ValidateOffer(o); err != nil {
		return FileOffer{}, err
	}
	return o, nil
}

// DecodeFileStatus parses a device's transfer status.
func DecodeFileStatus(payload []byte) (FileStatus, error) {
	var s FileStatus
	if err := decodeStrict("file status", payload, &s); err != nil {
		return FileStatus{}, err
	}
	if err := checkTransferRef("file status", s.Transfer); err != nil {
		return FileStatus{}, err
	}
	switch s.State {
	case FileTransfer, FileReady, FileError, FileAborted:
	default:
		return FileStatus{}, invalid("file status: unknown state %q", s.State)
	}
	if s.Method != "" {
		if err := checkMethods("file status", []string{s.Method}, false); err != nil {
			return FileStatus{}, err
		}
	}
	if s.ChunkSize != 0 && (s.ChunkSize < MinChunkSize || s.ChunkSize > MaxChunkSize) {
		return FileStatus{}, invalid("file status: chunk size %d out of range %d to %d", s.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	if s.Bytes < 0 || s.Bytes > MaxFileSize {
		return FileStatus{}, invalid("file status: bytes %d out of range", s.Bytes)
	}
	if s.State == FileError && s.Error == "" {
		s.Error = FileErrUnspecified
	}
	if len(s.Error) > 64 {
		return FileStatus{}, invalid("file status: error kind longer than 64 bytes")
	}
	if len(s.Message) > MaxTextLen {
		s.Message = s.Message[:MaxTextLen]
	}
	return s, nil
}

// DecodeChunkRequest parses a device's chunk request and checks it
// against the protocol's bounds (not against the file: see
// CheckChunkRequest).
func DecodeChunkRequest(payload []byte) (ChunkRequest, error) {
	var r ChunkRequest
	if err := decodeStrict("chunk request", payload, &r); err != nil {
		return ChunkRequest{}, err
	}
	if err := checkTransferRef("chunk request", r.Transfer); err != nil {
		return ChunkRequest{}, err
	}
	if r.Size < MinChunkSize || r.Size > MaxChunkSize {
		return ChunkRequest{}, invalid("chunk request: size %d out of range %d to %d", r.Size, MinChunkSize, MaxChunkSize)
	}
	if r.Count < 1 {
		return ChunkRequest{}, invalid("chunk request: count must be at least 1")
	}
	if r.Count > MaxChunksPerRequest {
		return ChunkRequest{}, tooLarge("chunk request: %d chunks exceed %d per request", r.Count, MaxChunksPerRequest)
	}
	if int64(r.Count)*int64(r.Size) > MaxRequestBytes {
		return ChunkRequest{}, tooLarge("chunk request: %d chunks of %d bytes exceed %d bytes per request", r.Count, r.Size, MaxRequestBytes)
	}
	if r.Index < 0 {
		return ChunkRequest{}, invalid("chunk request: negative index")
	}
	if r.Rate < 0 {
		return ChunkRequest{}, invalid("chunk request: negative rate")
	}
	return r, nil
}

// CheckChunkRequest checks a request against the size of the file: the
// first chunk must exist. It returns how many of the requested chunks
// exist (the request may run past the end).
func CheckChunkRequest(r ChunkRequest, fileSize int64) (int, error) {
	n := ChunkCount(fileSize, r.Size)
	if r.Index >= n {
		return 0, invalid("chunk request: chunk %d out of range (the file has %d chunks of %d bytes)", r.Index, n, r.Size)
	}
	return int(min(int64(r.Count), n-r.Index)), nil
}

// DecodeURLRequest parses a device's request for a download URL.
func DecodeURLRequest(payload []byte) (URLRequest, error) {
	var r URLRequest
	if err := decodeStrict("url request", payload, &r); err != nil {
		return URLRequest{}, err
	}
	if err := checkTransferRef("url request", r.Transfer); err != nil {
		return URLRequest{}, err
	}
	return r, nil
}

// DecodeURLGrant parses the platform's answer to a URLRequest.
func DecodeURLGrant(payload []byte) (URLGrant, error) {
	var g URLGrant
	if err := decodeStrict("url grant", payload, &g); err != nil {
		return URLGrant{}, err
	}
	if err := checkTransferRef("url grant", g.Transfer); err != nil {
		return URLGrant{}, err
	}
	if g.URL == "" || len(g.URL) > MaxURLLen {
		return URLGrant{}, invalid("url grant: url must be 1 to %d bytes", MaxURLLen)
	}
	return g, nil
}

// DecodeFileAbort parses an abort published to a device.
func DecodeFileAbort(payload []byte) (FileAbort, error) {
	var a FileAbort
	if err := decodeStrict("file abort", payload, &a); err != nil {
		return FileAbort{}, err
	}
	if err := checkTransferRef("file abort", a.Transfer); err != nil {
		return FileAbort{}, err
	}
	return a, nil
}

// DecodeFileDelete parses a delete command published to a device. Every
// name must be valid: a command naming something outside the file
// directory is refused as a whole.
func DecodeFileDelete(payload []byte) (FileDelete, error) {
	var d FileDelete
	if err := decodeStrict("file delete", payload, &d); err != nil {
		return FileDelete{}, err
	}
	if err := checkTransferRef("file delete", d.ID); err != nil {
		return FileDelete{}, err
	}
	if len(d.Names) == 0 || len(d.Names) > MaxFilesInList {
		return FileDelete{}, invalid("file delete: 1 to %d names", MaxFilesInList)
	}
	for _, n := range d.Names {
		if err := ValidFileName(n); err != nil {
			return FileDelete{}, invalid("file delete: %q: %v", n, err)
		}
	}
	return d, nil
}

// DecodeFilePurge parses a purge command published to a device.
func DecodeFilePurge(payload []byte) (FilePurge, error) {
	var p FilePurge
	if err := decodeStrict("file purge", payload, &p); err != nil {
		return FilePurge{}, err
	}
	if err := checkTransferRef("file purge", p.ID); err != nil {
		return FilePurge{}, err
	}
	return p, nil
}

// DecodeFirmwareVersion parses a device's version report.
func DecodeFirmwareVersion(payload []byte) (FirmwareVersion, error) {
	var v FirmwareVersion
	if err := decodeStrict("firmware version", payload, &v); err != nil {
		return FirmwareVersion{}, err
	}
	if err := ValidVersion(v.Version); err != nil {
		return FirmwareVersion{}, invalid("firmware version: %v", err)
	}
	if v.Job != "" {
		if err := checkTransferRef("firmware version: job", v.Job); err != nil {
			return FirmwareVersion{}, err
		}
	}
	return v, nil
}

// DecodeFirmwareInstall parses an install order published to a device.
func DecodeFirmwareInstall(payload []byte) (FirmwareInstall, error) {
	var in FirmwareInstall
	if err := decodeStrict("firmware install", payload, &in); err != nil {
		return FirmwareInstall{}, err
	}
	if err := checkTransferRef("firmware install", in.ID); err != nil {
		return FirmwareInstall{}, err
	}
	if err := ValidVersion(in.Version); err != nil {
		return FirmwareInstall{}, invalid("firmware install: %v", err)
	}
	if err := ValidateOffer(in.File); err != nil {
		return FirmwareInstall{}, err
	}
	return in, nil
}

// DecodeFirmwareStatus parses a device's firmware status.
func DecodeFirmwareStatus(payload []byte) (FirmwareStatus, error) {
	var s FirmwareStatus
	if err := decodeStrict("firmware status", payload, &s); err != nil {
		return FirmwareStatus{}, err
	}
	if err := checkTransferRef("firmware status", s.Job); err != nil {
		return FirmwareStatus{}, err
	}
	switch s.State {
	case FirmwareInstalling, FirmwareError, FirmwareAborted:
	case FirmwareSuccess:
		return FirmwareStatus{}, invalid("firmware status: SUCCESS is the platform's to decide: reconnect after the restart and report the version")
	default:
		return FirmwareStatus{}, invalid("firmware status: unknown state %q", s.State)
	}
	switch s.Phase {
	case "", PhaseDownloading, PhaseVerifying, PhaseInstalling, PhaseRestarting:
	default:
		return FirmwareStatus{}, invalid("firmware status: unknown phase %q", s.Phase)
	}
	if s.State == FirmwareError && s.Error == "" {
		s.Error = FirmwareErrUnspecified
	}
	if len(s.Error) > 64 {
		return FirmwareStatus{}, invalid("firmware status: error kind longer than 64 bytes")
	}
	if len(s.Message) > MaxTextLen {
		s.Message = s.Message[:MaxTextLen]
	}
	return s, nil
}

// DecodeFirmwareAbort parses a firmware abort published to a device.
func DecodeFirmwareAbort(payload []byte) (FirmwareAbort, error) {
	var a FirmwareAbort
	if err := decodeStrict("firmware abort", payload, &a); err != nil {
		return FirmwareAbort{}, err
	}
	if err := checkTransferRef("firmware abort", a.Job); err != nil {
		return FirmwareAbort{}, err
	}
	return a, nil
}

// DecodeFirmwareCheck parses a device's check for waiting updates.
func DecodeFirmwareCheck(payload []byte) (FirmwareCheck, error) {
	var c FirmwareCheck
	if err := decodeStrict("firmware check", payload, &c); err != nil {
		return FirmwareCheck{}, err
	}
	if c.ID == "" || len(c.ID) > MaxBatchIDLen {
		return FirmwareCheck{}, invalid("firmware check: id must be 1 to %d bytes", MaxBatchIDLen)
	}
	return c, nil
}

// DecodeFirmwareCheckReply parses the platform's answer to a check.
func DecodeFirmwareCheckReply(payload []byte) (FirmwareCheckReply, error) {
	var r FirmwareCheckReply
	if err := decodeStrict("firmware check reply", payload, &r); err != nil {
		return FirmwareCheckReply{}, err
	}
	if r.ID == "" {
		return FirmwareCheckReply{}, invalid("firmware check reply: no id")
	}
	return r, nil
}
