package ota

import (
	"context"
	"net/url"
	"slices"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// This file holds what the HTTP API calls.

func checkTTL(name string, d, def, max time.Duration) (time.Duration, error) {
	if d == 0 {
		return def, nil
	}
	if d < time.Second || d > max {
		return 0, outpost.Errorf(outpost.EINVALID, "%s must be between 1s and %s", name, max)
	}
	return d, nil
}

func checkMethods(ms []string, def []string) ([]string, error) {
	if len(ms) == 0 {
		return def, nil
	}
	var out []string
	for _, m := range ms {
		if m != protocol.MethodMQTT && m != protocol.MethodURL {
			return nil, outpost.Errorf(outpost.EINVALID, "unknown transfer method %q (want mqtt or url)", m)
		}
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out, nil
}

// SendFile offers a file to a device, through its down queue: the device
// gets the offer when it is connected (PUSH) or pulls, and fetches the
// file as it chooses. Errors: ENOTFOUND (device, artifact), EINVALID.
func (s *Service) SendFile(ctx context.Context, deviceID string, f outpost.FileSend) (*outpost.Transfer, error) {
	ttl, err := checkTTL("ttl", f.TTL, DefaultOfferTTL, MaxTTL)
	if err != nil {
		return nil, err
	}
	n := now()
	t := &outpost.Transfer{ID: newID("t-"), DeviceID: deviceID, State: outpost.TransferOffered, CreatedAt: n, UpdatedAt: n, ExpiresAt: n.Add(ttl)}
	var a *outpost.Artifact
	switch {
	case (f.Artifact == "") == (f.URL == ""):
		return nil, outpost.Errorf(outpost.EINVALID, "give either an artifact or a url")
	case f.URL != "":
		u, err := url.Parse(f.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(f.URL) > protocol.MaxURLLen {
			return nil, outpost.Errorf(outpost.EINVALID, "url must be an http(s) URL of at most %d bytes", protocol.MaxURLLen)
		}
		if f.SHA256 != "" {
			if err := protocol.ValidSHA256(f.SHA256); err != nil {
				return nil, outpost.Errorf(outpost.EINVALID, "%v", err)
			}
		}
		if f.Size < 0 || f.Size > protocol.MaxFileSize {
			return nil, outpost.Errorf(outpost.EINVALID, "size must be between 0 and %d", int64(protocol.MaxFileSize))
		}
		if t.Methods, err = checkMethods(f.Methods, []string{protocol.MethodURL}); err != nil {
			return nil, err
		}
		if !slices.Equal(t.Methods, []string{protocol.MethodURL}) {
			return nil, outpost.Errorf(outpost.EINVALID, "a file the platform does not hold goes by url only")
		}
		t.URL, t.SHA256, t.Size, t.Name = f.URL, f.SHA256, f.Size, f.Name
		if t.Name == "" {
			return nil, outpost.Errorf(outpost.EINVALID, "name is required with a url")
		}
	default:
		if a, err = s.opt.Artifacts.Artifact(ctx, f.Artifact); err != nil {
			return nil, err
		}
		if t.Methods, err = checkMethods(f.Methods, []string{protocol.MethodMQTT, protocol.MethodURL}); err != nil {
			return nil, err
		}
		t.ArtifactID, t.Size, t.SHA256, t.Version, t.Model, t.Name = a.ID, a.Size, a.SHA256, a.Version, a.Model, f.Name
		if t.Name == "" {
			t.Name = a.Name
		}
	}
	if err := protocol.ValidFileName(t.Name); err != nil {
		return nil, outpost.Errorf(outpost.EINVALID, "name: %v", err)
	}
	if err := s.store.CreateTransfer(ctx, t); err != nil {
		return nil, err
	}
	if _, err := s.opt.Queue.Enqueue(ctx, t.ID, deviceID, protocol.KindFileOffer, mustJSON(s.offer(t, a)), ttl); err != nil {
		s.failTransfer(context.WithoutCancel(ctx), t.ID, protocol.FileErrUnspecified, "the offer could not be queued: "+outpost.ErrorMessage(err))
		return nil, err
	}
	s.log.Info("file offered", "device_id", deviceID, "transfer_id", t.ID, "name", t.Name, "size", t.Size)
	if cur, err := s.store.Transfer(ctx, t.ID); err == nil {
		t = cur
	}
	s.transferChanged(t)
	t.FillPercent()
	return t, nil
}

// Transfer returns a transfer with its progress. ENOTFOUND.
func (s *Service) Transfer(ctx context.Context, id string) (*outpost.Transfer, error) {
	t, err := s.store.Transfer(ctx, id)
	if err != nil {
		return nil, err
	}
	s.fillTransfer(t)
	return t, nil
}

func (s *Service) fillTransfer(t *outpost.Transfer) {
	s.mu.Lock()
	lt := s.live[t.ID]
	s.mu.Unlock()
	if lt != nil && !t.State.Final() {
		lt.mu.Lock()
		t.Bytes = max(t.Bytes, lt.bytes)
		lt.mu.Unlock()
	}
	t.FillPercent()
}

// Transfers lists transfers, newest first.
func (s *Service) Transfers(ctx context.Context, f outpost.TransferFilter) ([]*outpost.Transfer, error) {
	if f.State != "" && !f.State.Valid() {
		return nil, outpost.Errorf(outpost.EINVALID, "unknown transfer state %q", f.State)
	}
	ts, err := s.store.Transfers(ctx, f)
	if err != nil {
		return nil, err
	}
	for _, t := range ts {
		s.fillTransfer(t)
	}
	return ts, nil
}

// AbortTransfer aborts a transfer and tells the device (and fails the
// firmware job it serves). ENOTFOUND; ECONFLICT when it is over.
func (s *Service) AbortTransfer(ctx context.Context, id string) (*outpost.Transfer, error) {
	t, err := s.store.UpdateTransfer(ctx, id, func(t *outpost.Transfer) error {
		if t.State.Final() {
			return outpost.Errorf(outpost.ECONFLICT, "transfer %s is over (%s)", id, t.State)
		}
		t.State, t.Message, t.UpdatedAt = outpost.TransferAborted, "aborted by the platform", now()
		t.FinishedAt = t.UpdatedAt
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("transfer aborted", "device_id", t.DeviceID, "transfer_id", id)
	s.transferChanged(t)
	s.abortDevice(t.DeviceID, t.ID, "aborted by the platform")
	if t.JobID != "" {
		s.finishJob(ctx, t.JobID, outpost.JobAborted, "", "the image's transfer was aborted by the platform")
	}
	t.FillPercent()
	return t, nil
}

// DeviceFiles returns the files a device last reported. ENOTFOUND.
func (s *Service) DeviceFiles(ctx context.Context, deviceID string) (*outpost.DeviceFiles, error) {
	return s.store.DeviceFiles(ctx, deviceID)
}

// DeleteDeviceFiles queues a command deleting files on a device.
// ENOTFOUND, EINVALID.
func (s *Service) DeleteDeviceFiles(ctx context.Context, deviceID string, names []string) (*outpost.FileCommand, error) {
	if len(names) == 0 || len(names) > protocol.MaxFilesInList {
		return nil, outpost.Errorf(outpost.EINVALID, "give 1 to %d file names", protocol.MaxFilesInList)
	}
	for _, n := range names {
		if err := protocol.ValidFileName(n); err != nil {
			return nil, outpost.Errorf(outpost.EINVALID, "file name %q: %v", n, err)
		}
	}
	c := &outpost.FileCommand{ID: newID("c-"), DeviceID: deviceID, Kind: "delete", Names: names}
	st, err := s.opt.Queue.Enqueue(ctx, c.ID, deviceID, protocol.KindFileDelete, mustJSON(protocol.FileDelete{ID: c.ID, Names: names}), commandTTL)
	if err != nil {
		return nil, err
	}
	c.State = st
	return c, nil
}

// PurgeDeviceFiles queues a command deleting every file on a device.
// ENOTFOUND.
func (s *Service) PurgeDeviceFiles(ctx context.Context, deviceID string) (*outpost.FileCommand, error) {
	c := &outpost.FileCommand{ID: newID("c-"), DeviceID: deviceID, Kind: "purge"}
	st, err := s.opt.Queue.Enqueue(ctx, c.ID, deviceID, protocol.KindFilePurge, mustJSON(protocol.FilePurge{ID: c.ID}), commandTTL)
	if err != nil {
		return nil, err
	}
	c.State = st
	return c, nil
}

// UpdateFirmware orders a device to install an artifact, through its down
// queue, so that a device that is away or pulls gets the order too. The
// job ends SUCCESS only when the device reconnects after its restart and
// reports the artifact's version. Errors: ENOTFOUND (device, artifact),
// EINVALID (an artifact without a version, or for another model),
// ECONFLICT (the device runs that version already, or is being updated).
func (s *Service) UpdateFirmware(ctx context.Context, deviceID string, o outpost.FirmwareOrder) (*outpost.FirmwareJob, error) {
	ttl, err := checkTTL("ttl", o.TTL, DefaultJobTTL, MaxTTL)
	if err != nil {
		return nil, err
	}
	timeout, err := checkTTL("timeout", o.Timeout, DefaultJobTimeout, MaxJobTimeout)
	if err != nil {
		return nil, err
	}
	methods, err := checkMethods(o.Methods, []string{protocol.MethodMQTT, protocol.MethodURL})
	if err != nil {
		return nil, err
	}
	a, err := s.opt.Artifacts.Artifact(ctx, o.Artifact)
	if err != nil {
		return nil, err
	}
	if a.Version == "" {
		return nil, outpost.Errorf(outpost.EINVALID, "artifact %s has no version: upload firmware images with a version", a.ID)
	}
	fw, err := s.store.FirmwareVersion(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	if fw.Version == a.Version {
		return nil, outpost.Errorf(outpost.ECONFLICT, "device %s runs version %s already", deviceID, a.Version)
	}
	if a.Model != "" && s.opt.DeviceModel != nil {
		m, err := s.opt.DeviceModel(ctx, deviceID)
		if err != nil {
			return nil, err
		}
		if m != "" && m != a.Model {
			return nil, outpost.Errorf(outpost.EINVALID, "artifact %s is for model %s; device %s is a %s", a.ID, a.Model, deviceID, m)
		}
	}
	n := now()
	j := &outpost.FirmwareJob{ID: newID("j-"), DeviceID: deviceID, ArtifactID: a.ID, FromVersion: fw.Version, TargetVersion: a.Version,
		State: outpost.JobInstalling, Phase: protocol.PhaseOrdered, Timeout: timeout, CreatedAt: n, UpdatedAt: n, ExpiresAt: n.Add(ttl)}
	t := &outpost.Transfer{ID: newID("t-"), DeviceID: deviceID, ArtifactID: a.ID, Name: a.Name, Size: a.Size, SHA256: a.SHA256,
		Version: a.Version, Model: a.Model, Methods: methods, State: outpost.TransferOffered, JobID: j.ID,
		CreatedAt: n, UpdatedAt: n, ExpiresAt: n.Add(ttl)}
	j.TransferID = t.ID
	if err := s.store.CreateJob(ctx, j, t); err != nil {
		return nil, err
	}
	in := protocol.FirmwareInstall{ID: j.ID, Version: a.Version, File: s.offer(t, a)}
	if _, err := s.opt.Queue.Enqueue(ctx, j.ID, deviceID, protocol.KindFirmwareInstall, mustJSON(in), ttl); err != nil {
		s.finishJob(context.WithoutCancel(ctx), j.ID, outpost.JobError, protocol.FirmwareErrUnspecified, "the order could not be queued: "+outpost.ErrorMessage(err))
		return nil, err
	}
	s.log.Info("firmware update ordered", "device_id", deviceID, "job_id", j.ID, "from", fw.Version, "to", a.Version)
	if cur, err := s.store.Job(ctx, j.ID); err == nil {
		j = cur
	}
	s.jobChanged(ctx, j)
	s.fillJob(ctx, j)
	return j, nil
}

// FirmwareState returns a device's reported version and latest job.
// ENOTFOUND.
func (s *Service) FirmwareState(ctx context.Context, deviceID string) (*outpost.FirmwareState, error) {
	fw, err := s.store.FirmwareVersion(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	st := &outpost.FirmwareState{DeviceFirmware: *fw}
	js, err := s.store.Jobs(ctx, outpost.JobFilter{DeviceID: deviceID, Limit: 1})
	if err != nil {
		return nil, err
	}
	if len(js) > 0 {
		s.fillJob(ctx, js[0])
		st.Job = js[0]
	}
	return st, nil
}

// Job returns a firmware job. ENOTFOUND.
func (s *Service) Job(ctx context.Context, id string) (*outpost.FirmwareJob, error) {
	j, err := s.store.Job(ctx, id)
	if err != nil {
		return nil, err
	}
	s.fillJob(ctx, j)
	return j, nil
}

// Jobs lists firmware jobs, newest first.
func (s *Service) Jobs(ctx context.Context, f outpost.JobFilter) ([]*outpost.FirmwareJob, error) {
	if f.State != "" && !f.State.Valid() {
		return nil, outpost.Errorf(outpost.EINVALID, "unknown job state %q", f.State)
	}
	js, err := s.store.Jobs(ctx, f)
	if err != nil {
		return nil, err
	}
	for _, j := range js {
		s.fillJob(ctx, j)
	}
	return js, nil
}

// AbortJob aborts a firmware update and tells the device. Once the device
// is installing, the abort is a request: the device's installer decides
// whether it can still stop. ENOTFOUND; ECONFLICT when it is over.
func (s *Service) AbortJob(ctx context.Context, id string) (*outpost.FirmwareJob, error) {
	j, err := s.store.Job(ctx, id)
	if err != nil {
		return nil, err
	}
	if j.State.Final() {
		return nil, outpost.Errorf(outpost.ECONFLICT, "firmware job %s is over (%s)", id, j.State)
	}
	s.send(j.DeviceID, protocol.KindFirmwareAbort, protocol.FirmwareAbort{Job: j.ID})
	j = s.finishJob(ctx, id, outpost.JobAborted, "", "aborted by the platform")
	if j == nil {
		return nil, outpost.Errorf(outpost.EINTERNAL, "abort firmware job %s", id)
	}
	s.fillJob(ctx, j)
	return j, nil
}
