// Package ota is the platform's side of file transfers and firmware
// updates over the air (docs/protocol.md §22–§25): it decodes and checks
// the devices' files/… and firmware/… messages, runs the state machines of
// transfers and firmware jobs, sends chunks on request, grants download
// URLs, and judges an update successful only when the device comes back
// after its restart with the target version.
//
// It is one home behind the message router: Handle takes every up/ kind
// that protocol.FilesKind reports, and the API methods (SendFile,
// UpdateFirmware, …) serve internal/httpapi. State lives in an
// outpost.TransferStore, content in the artifact repository; orders
// (offers, install orders, delete and purge commands) go through the
// persistent down queue, chunks and replies straight to the connected
// device.
//
// Flow control belongs to the device: it asks for at most a window of
// chunks at a time (protocol.MaxChunksPerRequest, protocol.MaxRequestBytes)
// sized below its MQTT Receive Maximum, so a transfer never takes the
// room its RPCs need, and it may cap the rate of its transfer. Each
// transfer's chunks go out in order from one goroutine of its own, never
// from the broker's read loop.
package ota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/internal/blob"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Publisher publishes a message to a device now, with QoS 1 (the broker).
type Publisher interface {
	PublishToDevice(deviceID, kind string, payload []byte) error
}

// Enqueuer puts a message in the device's persistent down queue (the
// queue), under id, and returns the state of the queued message.
type Enqueuer interface {
	Enqueue(ctx context.Context, id, deviceID, kind string, payload []byte, ttl time.Duration) (outpost.State, error)
}

// Artifacts is what the service needs from the artifact repository.
type Artifacts interface {
	// Artifact returns an artifact's metadata. ENOTFOUND.
	Artifact(ctx context.Context, id string) (*outpost.Artifact, error)
	// Open returns an artifact with its content. ENOTFOUND.
	Open(ctx context.Context, id string) (*outpost.Artifact, blob.Object, error)
	// Signature returns the platform's signature of an artifact.
	Signature(a *outpost.Artifact) string
}

// Event kinds published to Options.Events.
const (
	// EventTransfer carries an *outpost.Transfer (progress or state).
	EventTransfer = "transfer"
	// EventFirmware carries an *outpost.FirmwareJob.
	EventFirmware = "firmware"
	// EventFiles carries the *outpost.DeviceFiles a device reported.
	EventFiles = "files"
)

// Defaults and limits.
const (
	DefaultOfferTTL   = 24 * time.Hour
	DefaultJobTTL     = 7 * 24 * time.Hour
	MaxTTL            = 30 * 24 * time.Hour
	DefaultJobTimeout = 30 * time.Minute
	MaxJobTimeout     = 7 * 24 * time.Hour
	DefaultURLTTL     = 15 * time.Minute
	DefaultIdle       = 24 * time.Hour
	commandTTL        = 24 * time.Hour
)

// Options configure a Service. Store, Artifacts, Publisher and Queue are
// required.
type Options struct {
	Store     outpost.TransferStore
	Artifacts Artifacts
	Publisher Publisher
	Queue     Enqueuer
	// PublicURL returns the base URL (scheme://host:port) devices reach
	// the platform's HTTP listener at; download URLs are built on it.
	PublicURL func() string
	// DeviceModel, when set, returns the model a device declared (its
	// "model" attribute, "" if none); an artifact for another model is
	// refused.
	DeviceModel func(ctx context.Context, deviceID string) (string, error)
	// Online, when set, reports whether a device is connected; a
	// transfer's chunks stop going out as soon as its device is gone
	// (it asks again when it is back).
	Online func(deviceID string) bool
	// Events receives every change of a transfer, job or file list (see
	// the Event… kinds). It must not block.
	Events func(kind, deviceID string, v any)
	// URLTTL is how long a download URL stays valid (default 15m).
	URLTTL time.Duration
	// Idle is how long a transfer in progress may go without a request
	// from its device before it fails (default 24h).
	Idle time.Duration
	// Sweep is the interval of the expiry sweep (default 1s).
	Sweep time.Duration
	// ChunkHook, for fault tests, sees every chunk's data after its hash
	// was computed and before it is sent, and may change it: a changed
	// byte is a chunk corrupted in flight.
	ChunkHook func(deviceID, transferID string, index int64, data []byte)
	Logger    *slog.Logger
}

// Stats are the service's counters.
type Stats struct {
	ChunksSent   atomic.Int64
	BytesSent    atomic.Int64 // chunk data over MQTT
	BytesServed  atomic.Int64 // over download URLs
	Requests     atomic.Int64
	Rejected     atomic.Int64
	TransfersOK  atomic.Int64
	TransfersBad atomic.Int64
	UpdatesOK    atomic.Int64
	UpdatesBad   atomic.Int64
}

// Service runs transfers and firmware jobs. It is safe for concurrent
// use; Close stops its goroutines.
type Service struct {
	opt   Options
	store outpost.TransferStore
	log   *slog.Logger
	stats Stats

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	live   map[string]*liveTransfer // transfer id → state of a transfer in progress
	hashes hashCache

	flushed time.Time // last store of progress (sweeper goroutine only)
}

// New starts a service.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Events == nil {
		o.Events = func(string, string, any) {}
	}
	if o.PublicURL == nil {
		o.PublicURL = func() string { return "" }
	}
	if o.URLTTL <= 0 {
		o.URLTTL = DefaultURLTTL
	}
	if o.Idle <= 0 {
		o.Idle = DefaultIdle
	}
	if o.Sweep <= 0 {
		o.Sweep = time.Second
	}
	s := &Service{opt: o, store: o.Store, log: o.Logger, live: map[string]*liveTransfer{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.sweeper()
	return s
}

// Close stops the chunk senders and the sweep, waits for them, and
// stores the progress not stored yet.
func (s *Service) Close() error {
	s.cancel()
	s.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.flush(ctx)
	s.mu.Lock()
	for id, lt := range s.live {
		lt.close()
		delete(s.live, id)
	}
	s.mu.Unlock()
	return nil
}

// Stats returns the counters.
func (s *Service) Stats() *Stats { return &s.stats }

// Handles reports whether kind is one of the service's up/ kinds.
func Handles(kind string) bool { return protocol.FilesKind(kind) }

// Handle processes a message a device published on up/{kind}, for the
// kinds Handles reports. It returns nil to acknowledge, a
// *protocol.Error to reject the message for good (the device has then
// been sent an error reply), and any other error for a transient failure
// (the message is not acknowledged and the device sends it again).
func (s *Service) Handle(ctx context.Context, deviceID, kind string, payload []byte) error {
	var err error
	switch kind {
	case protocol.KindFileList:
		err = s.handleList(ctx, deviceID, payload)
	case protocol.KindFileStatus:
		err = s.handleStatus(ctx, deviceID, payload)
	case protocol.KindFileRequest:
		err = s.handleRequest(ctx, deviceID, payload)
	case protocol.KindFileURL:
		err = s.handleURL(ctx, deviceID, payload)
	case protocol.KindFirmwareVersion:
		err = s.handleVersion(ctx, deviceID, payload)
	case protocol.KindFirmwareStatus:
		err = s.handleFirmwareStatus(ctx, deviceID, payload)
	case protocol.KindFirmwareCheck:
		err = s.handleCheck(ctx, deviceID, payload)
	default:
		err = &protocol.Error{Code: protocol.CodeUnknownKind, Message: fmt.Sprintf("unknown message kind %q", kind)}
	}
	var pe *protocol.Error
	if errors.As(err, &pe) {
		s.stats.Rejected.Add(1)
		s.reply(deviceID, protocol.ErrorReply{Kind: kind, Code: pe.Code, Message: pe.Message})
		return pe
	}
	return err
}

// reply sends an error reply.
func (s *Service) reply(deviceID string, e protocol.ErrorReply) {
	b, _ := json.Marshal(e)
	if err := s.opt.Publisher.PublishToDevice(deviceID, protocol.KindError, b); err != nil {
		s.log.Debug("send error reply", "device_id", deviceID, "error", err)
	}
}

// send publishes a message to a connected device; a device that is not
// connected misses it, which every message sent this way tolerates.
func (s *Service) send(deviceID, kind string, v any) {
	b, _ := json.Marshal(v)
	if err := s.opt.Publisher.PublishToDevice(deviceID, kind, b); err != nil {
		s.log.Debug("publish to device", "device_id", deviceID, "kind", kind, "error", err)
	}
}

func unknownTransfer(what, id string) *protocol.Error {
	return &protocol.Error{Code: protocol.CodeUnknownTransfer, Message: fmt.Sprintf("%s %s is not known for this device", what, id)}
}

func (s *Service) handleList(ctx context.Context, deviceID string, payload []byte) error {
	l, err := protocol.DecodeFileList(payload)
	if err != nil {
		return err
	}
	files := make([]outpost.DeviceFile, len(l.Files))
	for i, f := range l.Files {
		files[i] = outpost.DeviceFile{Name: f.Name, Size: f.Size, SHA256: f.SHA256}
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	if err := s.store.SetDeviceFiles(ctx, deviceID, files, now); err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil // deleted meanwhile
		}
		return err
	}
	s.opt.Events(EventFiles, deviceID, &outpost.DeviceFiles{DeviceID: deviceID, Files: files, ReportedAt: now})
	return nil
}

func newID(prefix string) string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }
