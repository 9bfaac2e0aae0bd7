package device

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-iot/outpost/protocol"
)

// This file is the device's side of firmware updates (docs/protocol.md
// §24–§25). An update is ordered by the platform through the down queue;
// the SDK fetches the image like any file, checks its SHA-256 and the
// platform's Ed25519 signature before anything is installed, asks the
// stage callback at each of Zerynth ADM's stages (start, record, reset),
// runs the handler's Install, and restarts the device. The platform
// counts the update a success only when the device comes back and reports
// the new version; a record in the file directory carries the job's id
// across the restart.

// FirmwareHandler installs firmware. Version reports the version running
// now (sent to the platform on every connection); Install installs the
// verified image at path. Install either restarts the device into the new
// image itself (never returning), or returns nil and lets the client
// restart it through the function given to WithReset. Its context ends
// when the platform aborts the update.
type FirmwareHandler interface {
	Version() string
	Install(ctx context.Context, path string) error
}

// FirmwareStage is a step of an update at which the stage callback may
// stop it (Zerynth ADM's fota_callback stages 0, 1 and 2).
type FirmwareStage int

// Stages of an update.
const (
	// StageStart: an update was ordered; nothing was fetched yet.
	StageStart FirmwareStage = 0
	// StageRecord: the image is here and verified; the update is about
	// to be recorded and installed.
	StageRecord FirmwareStage = 1
	// StageReset: the image is installed; the device is about to
	// restart into it.
	StageReset FirmwareStage = 2
)

// String names the stage.
func (s FirmwareStage) String() string {
	switch s {
	case StageStart:
		return "start"
	case StageRecord:
		return "record"
	case StageReset:
		return "reset"
	}
	return "stage " + strconv.Itoa(int(s))
}

// FirmwareUpdate describes an update in progress.
type FirmwareUpdate struct {
	// Job is the platform's id of the update.
	Job string
	// Version is the version the image brings; From the one running.
	Version, From string
	// Size is the image's size in bytes.
	Size int64
}

// FirmwareOption configures firmware updates (HandleFirmware).
type FirmwareOption func(*fwConfig) error

type fwConfig struct {
	key   ed25519.PublicKey
	stage func(ctx context.Context, s FirmwareStage, u FirmwareUpdate) bool
}

// FirmwareKey sets the platform's public key (`outpost keys` prints it;
// protocol.ParsePublicKey reads it). Without it every image is refused:
// the SDK installs nothing it cannot verify.
func FirmwareKey(pub ed25519.PublicKey) FirmwareOption {
	return func(c *fwConfig) error {
		if len(pub) != ed25519.PublicKeySize {
			return errors.New("firmware key must be an Ed25519 public key")
		}
		c.key = pub
		return nil
	}
}

// FirmwareStages sets a callback asked at each stage of an update; when
// it returns false the update stops there and the platform is told
// (vetoed).
func FirmwareStages(fn func(ctx context.Context, s FirmwareStage, u FirmwareUpdate) bool) FirmwareOption {
	return func(c *fwConfig) error {
		c.stage = fn
		return nil
	}
}

// fwRecord is the update in progress, kept in DIR/.outpost/firmware.json
// so that it survives the restart.
type fwRecord struct {
	Job     string             `json:"job"`
	Version string             `json:"version"`
	From    string             `json:"from"`
	Phase   string             `json:"phase"`
	Offer   protocol.FileOffer `json:"offer"`
}

// fwMgr runs firmware updates for a client.
type fwMgr struct {
	c   *Client
	h   FirmwareHandler
	cfg fwConfig

	mu     sync.Mutex
	rec    *fwRecord
	cancel context.CancelFunc // ends Install when the platform aborts
	seq    atomic.Uint64
	checks map[string]chan protocol.FirmwareCheckReply
}

// HandleFirmware enables firmware updates, which need file management
// (WithFiles). It adds the built-in RPC check_jobs, which asks the
// platform whether an update is waiting and fetches it. Call it before
// Connect.
func (c *Client) HandleFirmware(h FirmwareHandler, opts ...FirmwareOption) error {
	if h == nil {
		return errors.New("device: nil firmware handler")
	}
	if c.files == nil {
		return errors.New("device: firmware updates need file management: add WithFiles(dir) to New")
	}
	var cfg fwConfig
	for _, fn := range opts {
		if err := fn(&cfg); err != nil {
			return fmt.Errorf("device: %w", err)
		}
	}
	f := &fwMgr{c: c, h: h, cfg: cfg, checks: map[string]chan protocol.FirmwareCheckReply{}}
	if b, err := os.ReadFile(f.recordPath()); err == nil {
		var r fwRecord
		if json.Unmarshal(b, &r) == nil && r.Job != "" {
			f.rec = &r
		}
	}
	c.fwMu.Lock()
	if c.fw != nil {
		c.fwMu.Unlock()
		return errors.New("device: firmware handler already set")
	}
	c.fw = f
	c.fwMu.Unlock()
	if r := f.rec; r != nil && (r.Phase == protocol.PhaseDownloading || r.Phase == protocol.PhaseVerifying) {
		// The image was on its way when the process ended: the transfer
		// resumed, and goes on to the installation.
		if !c.files.setReady(r.Offer.ID, f.downloaded) {
			f.rec.Phase = "lost"
		}
	}
	c.hmu.Lock()
	c.handlers["check_jobs"] = func(ctx context.Context, _ json.RawMessage) (any, error) {
		u, ok, err := c.CheckFirmware(ctx)
		if err != nil {
			return nil, err
		}
		if !ok {
			return map[string]any{"pending": false}, nil
		}
		return map[string]any{"pending": true, "job": u.Job, "version": u.Version}, nil
	}
	c.hmu.Unlock()
	return nil
}

func (c *Client) firmware() *fwMgr {
	c.fwMu.Lock()
	defer c.fwMu.Unlock()
	return c.fw
}

func (f *fwMgr) recordPath() string { return filepath.Join(f.c.files.state, "firmware.json") }

func (f *fwMgr) save(r *fwRecord) error {
	b, _ := json.Marshal(r)
	if err := writeFileSync(f.recordPath(), b); err != nil {
		return err
	}
	f.mu.Lock()
	f.rec = r
	f.mu.Unlock()
	return nil
}

func (f *fwMgr) clear(job string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rec != nil && f.rec.Job == job {
		f.rec = nil
		os.Remove(f.recordPath())
		syncDir(filepath.Dir(f.recordPath()))
	}
}

func (f *fwMgr) current() *fwRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rec == nil {
		return nil
	}
	r := *f.rec
	return &r
}

// status publishes a firmware status and waits for its acknowledgement
// (at most a minute).
func (f *fwMgr) status(st protocol.FirmwareStatus) {
	ctx, cancel := context.WithTimeout(f.c.lifetime, time.Minute)
	defer cancel()
	if err := f.c.sendModel(ctx, protocol.KindFirmwareStatus, st); err != nil {
		f.c.opt.log.Warn("report firmware status", "device_id", f.c.id, "job_id", st.Job, "state", st.State, "error", err)
	}
}

// fail ends a job on the device with an error.
func (f *fwMgr) fail(job, kind, msg string) {
	f.c.opt.log.Warn("firmware update failed", "device_id", f.c.id, "job_id", job, "error", kind, "message", msg)
	f.clear(job)
	f.status(protocol.FirmwareStatus{Job: job, State: protocol.FirmwareError, Error: kind, Message: msg})
}

func (f *fwMgr) stage(s FirmwareStage, r *fwRecord) bool {
	if f.cfg.stage == nil {
		return true
	}
	u := FirmwareUpdate{Job: r.Job, Version: r.Version, From: r.From, Size: r.Offer.Size}
	ok := false
	func() {
		defer func() {
			if p := recover(); p != nil {
				f.c.opt.log.Error("firmware stage callback panicked", "device_id", f.c.id, "stage", s, "panic", p)
			}
		}()
		ok = f.cfg.stage(f.c.lifetime, s, u)
	}()
	if !ok {
		f.fail(r.Job, protocol.FirmwareErrVetoed, "the device stopped the update at stage "+s.String())
	}
	return ok
}

// onFirmwarePublish dispatches the firmware kinds of down messages.
func (c *Client) onFirmwarePublish(kind string, payload []byte) {
	f := c.firmware()
	switch kind {
	case protocol.KindFirmwareInstall:
		in, err := protocol.DecodeFirmwareInstall(payload)
		if err != nil {
			c.opt.log.Warn("refused firmware install order", "device_id", c.id, "error", err)
			var id struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(payload, &id) == nil && protocol.ValidTransferID(id.ID) == nil {
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					(&fwMgr{c: c}).status(protocol.FirmwareStatus{Job: id.ID, State: protocol.FirmwareError, Error: protocol.FirmwareErrUnspecified, Message: err.Error()})
				}()
			}
			return
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if f == nil {
				(&fwMgr{c: c}).status(protocol.FirmwareStatus{Job: in.ID, State: protocol.FirmwareError, Error: protocol.FirmwareErrUnsupported,
					Message: "this device does not update its firmware (no firmware handler)"})
				return
			}
			f.order(in)
		}()
	case protocol.KindFirmwareAbort:
		a, err := protocol.DecodeFirmwareAbort(payload)
		if err != nil || f == nil {
			return
		}
		f.abort(a.Job)
	case protocol.KindFirmwareCheck:
		r, err := protocol.DecodeFirmwareCheckReply(payload)
		if err != nil || f == nil {
			return
		}
		f.mu.Lock()
		ch := f.checks[r.ID]
		f.mu.Unlock()
		if ch != nil {
			select {
			case ch <- r:
			default:
			}
		}
	default:
		c.opt.log.Debug("ignoring message of unknown kind", "device_id", c.id, "kind", kind)
	}
}

// order takes up an install order.
func (f *fwMgr) order(in protocol.FirmwareInstall) {
	f.mu.Lock()
	cur := f.rec
	f.mu.Unlock()
	if cur != nil {
		if cur.Job != in.ID {
			f.status(protocol.FirmwareStatus{Job: in.ID, State: protocol.FirmwareError, Error: protocol.FirmwareErrBusy,
				Message: "the device is busy with update " + cur.Job})
		}
		return // a redelivered order: already on it
	}
	if !f.c.files.recent.add("fw:" + in.ID) {
		return // over already
	}
	r := &fwRecord{Job: in.ID, Version: in.Version, From: f.h.Version(), Phase: protocol.PhaseDownloading, Offer: in.File}
	if !f.stage(StageStart, r) {
		return
	}
	if err := f.save(r); err != nil {
		f.fail(in.ID, protocol.FirmwareErrFileSystem, err.Error())
		return
	}
	f.c.opt.log.Info("firmware update ordered", "device_id", f.c.id, "job_id", in.ID, "from", r.From, "to", in.Version, "size", in.File.Size)
	in.File.Job = in.ID
	if !f.c.files.offered(in.File, f.downloaded) {
		f.clear(in.ID) // the transfer's failure tells the platform
	}
}

// downloaded continues an update once its image is complete and its
// SHA-256 checked: verify, record, install, restart.
func (f *fwMgr) downloaded(path string) {
	r := f.current()
	if r == nil {
		os.Remove(path)
		return
	}
	removeImage := func() { f.c.files.removeState("t-" + r.Offer.ID) }
	f.status(protocol.FirmwareStatus{Job: r.Job, State: protocol.FirmwareInstalling, Phase: protocol.PhaseVerifying})
	if err := protocol.VerifyOffer(f.cfg.key, r.Offer); err != nil {
		removeImage()
		f.fail(r.Job, protocol.FirmwareErrSignature, "refused before installing anything: "+err.Error())
		return
	}
	if r.Offer.Version != r.Version {
		removeImage()
		f.fail(r.Job, protocol.FirmwareErrSignature, fmt.Sprintf("the signed image is version %q, the order says %q", r.Offer.Version, r.Version))
		return
	}
	if !f.stage(StageRecord, r) {
		removeImage()
		return
	}
	r.Phase = protocol.PhaseInstalling
	if err := f.save(r); err != nil {
		removeImage()
		f.fail(r.Job, protocol.FirmwareErrFileSystem, err.Error())
		return
	}
	f.status(protocol.FirmwareStatus{Job: r.Job, State: protocol.FirmwareInstalling, Phase: protocol.PhaseInstalling})
	ctx, cancel := context.WithCancel(f.c.lifetime)
	f.mu.Lock()
	f.cancel = cancel
	f.mu.Unlock()
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("install panicked: %v", p)
			}
		}()
		return f.h.Install(ctx, path)
	}()
	aborted := ctx.Err() != nil && f.c.lifetime.Err() == nil
	cancel()
	f.mu.Lock()
	f.cancel = nil
	f.mu.Unlock()
	removeImage()
	switch {
	case aborted:
		f.clear(r.Job)
		f.status(protocol.FirmwareStatus{Job: r.Job, State: protocol.FirmwareAborted, Message: "aborted during installation"})
		return
	case f.c.lifetime.Err() != nil:
		return // closing: the record stays, the version report decides
	case err != nil:
		f.fail(r.Job, protocol.FirmwareErrInstall, err.Error())
		return
	}
	if !f.stage(StageReset, r) {
		return
	}
	r.Phase = protocol.PhaseRestarting
	if err := f.save(r); err != nil {
		f.fail(r.Job, protocol.FirmwareErrFileSystem, err.Error())
		return
	}
	f.status(protocol.FirmwareStatus{Job: r.Job, State: protocol.FirmwareInstalling, Phase: protocol.PhaseRestarting})
	if f.c.opt.reset == nil {
		f.c.opt.log.Warn("firmware installed; restart the device to finish the update (WithReset sets how the client restarts it)", "device_id", f.c.id, "job_id", r.Job)
		return
	}
	f.c.opt.log.Info("firmware installed; restarting", "device_id", f.c.id, "job_id", r.Job, "version", r.Version)
	if err := f.c.opt.reset(f.c.lifetime); err != nil {
		f.fail(r.Job, protocol.FirmwareErrInstall, "installed, but the restart failed: "+err.Error())
	}
}

// abort stops the update job if it runs here.
func (f *fwMgr) abort(job string) {
	f.mu.Lock()
	r, cancel := f.rec, f.cancel
	f.mu.Unlock()
	if r == nil || r.Job != job {
		return
	}
	f.c.opt.log.Info("firmware update aborted by the platform", "device_id", f.c.id, "job_id", job)
	if cancel != nil {
		cancel() // Install decides whether it can still stop
		return
	}
	if r.Phase == protocol.PhaseRestarting {
		return // too late: the version report decides
	}
	f.c.files.mu.Lock()
	t := f.c.files.transfers[r.Offer.ID]
	f.c.files.mu.Unlock()
	if t != nil {
		t.abort("firmware update aborted by the platform", false)
	}
	f.clear(job)
}

// firmwareConnected reports the running version on every connection,
// with the job's id when the device comes back from an update's restart.
func (c *Client) firmwareConnected() {
	f := c.firmware()
	if f == nil {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.lifetime, time.Minute)
		defer cancel()
		r := f.current()
		v := protocol.FirmwareVersion{Version: f.h.Version()}
		if r != nil && (r.Phase == protocol.PhaseInstalling || r.Phase == protocol.PhaseRestarting) {
			v.Job = r.Job
		}
		if err := c.sendModel(ctx, protocol.KindFirmwareVersion, v); err != nil {
			c.opt.log.Warn("report firmware version", "device_id", c.id, "error", err)
			return
		}
		switch {
		case r == nil:
		case v.Job != "":
			c.opt.log.Info("back from a firmware update", "device_id", c.id, "job_id", r.Job, "version", v.Version, "target", r.Version)
			f.clear(r.Job)
		case r.Phase == "lost":
			f.fail(r.Job, protocol.FirmwareErrTransfer, "the image's transfer was lost when the device restarted")
		}
	}()
}

// CheckFirmware asks the platform whether an update is waiting for the
// device; if one is, the platform sends its order again, and the client
// takes it up. It reports the update and whether there is one.
func (c *Client) CheckFirmware(ctx context.Context) (FirmwareUpdate, bool, error) {
	f := c.firmware()
	if f == nil {
		return FirmwareUpdate{}, false, errors.New("device: no firmware handler (HandleFirmware)")
	}
	id := "chk-" + strconv.FormatUint(f.seq.Add(1), 10) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	ch := make(chan protocol.FirmwareCheckReply, 1)
	f.mu.Lock()
	f.checks[id] = ch
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.checks, id)
		f.mu.Unlock()
	}()
	if err := c.sendModel(ctx, protocol.KindFirmwareCheck, protocol.FirmwareCheck{ID: id}); err != nil {
		return FirmwareUpdate{}, false, err
	}
	select {
	case r := <-ch:
		if r.Job == "" {
			return FirmwareUpdate{}, false, nil
		}
		return FirmwareUpdate{Job: r.Job, Version: r.Version, From: f.h.Version()}, true, nil
	case <-ctx.Done():
		return FirmwareUpdate{}, false, fmt.Errorf("device: check firmware: %w", ctx.Err())
	}
}
