package ota

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// jobChanged publishes a job, with its image's progress.
func (s *Service) jobChanged(ctx context.Context, j *outpost.FirmwareJob) {
	c := *j
	s.fillJob(ctx, &c)
	if j.State == outpost.JobSuccess {
		s.stats.UpdatesOK.Add(1)
	} else if j.State.Final() {
		s.stats.UpdatesBad.Add(1)
	}
	s.opt.Events(EventFirmware, j.DeviceID, &c)
}

// fillJob sets a job's Bytes and Percent from its transfer.
func (s *Service) fillJob(ctx context.Context, j *outpost.FirmwareJob) {
	j.TimeoutSeconds = j.Timeout.Seconds()
	t, err := s.store.Transfer(ctx, j.TransferID)
	if err != nil {
		return
	}
	s.mu.Lock()
	lt := s.live[t.ID]
	s.mu.Unlock()
	if lt != nil {
		lt.mu.Lock()
		t.Bytes = max(t.Bytes, lt.bytes)
		lt.mu.Unlock()
	}
	t.FillPercent()
	j.Bytes, j.Percent = t.Bytes, t.Percent
}

// jobProgress moves an INSTALLING job to a later phase (never back) and
// restarts its timeout.
func (s *Service) jobProgress(ctx context.Context, id, phase string) {
	moved := false
	j, err := s.store.UpdateJob(ctx, id, func(j *outpost.FirmwareJob) error {
		if j.State.Final() || outpost.PhaseRank(phase) <= outpost.PhaseRank(j.Phase) {
			return nil
		}
		moved = true
		j.Phase, j.UpdatedAt = phase, now()
		j.Deadline = j.UpdatedAt.Add(j.Timeout)
		return nil
	})
	if err != nil {
		s.log.Warn("firmware job progress", "job_id", id, "error", err)
		return
	}
	if moved {
		s.log.Info("firmware update", "device_id", j.DeviceID, "job_id", id, "phase", phase)
		s.jobChanged(ctx, j)
	}
}

// finishJob ends an INSTALLING job, and its image's transfer if that is
// still going.
func (s *Service) finishJob(ctx context.Context, id string, state outpost.JobState, kind, msg string) *outpost.FirmwareJob {
	done := false
	j, err := s.store.UpdateJob(ctx, id, func(j *outpost.FirmwareJob) error {
		if j.State.Final() {
			return nil
		}
		done = true
		j.State, j.Error, j.Message, j.UpdatedAt = state, kind, msg, now()
		j.FinishedAt = j.UpdatedAt
		return nil
	})
	if err != nil {
		s.log.Warn("finish firmware job", "job_id", id, "error", err)
		return nil
	}
	if !done {
		return j
	}
	s.log.Info("firmware update finished", "device_id", j.DeviceID, "job_id", id, "state", state, "error", kind, "message", msg)
	s.jobChanged(ctx, j)
	ts := outpost.TransferAborted
	if state == outpost.JobError {
		ts = outpost.TransferError
	}
	ended := false
	t, err := s.store.UpdateTransfer(ctx, j.TransferID, func(t *outpost.Transfer) error {
		if t.State.Final() {
			return nil
		}
		ended = true
		t.State, t.UpdatedAt, t.Message = ts, now(), "firmware job "+string(state)+": "+msg
		if ts == outpost.TransferError {
			t.Error = protocol.FileErrUnspecified
		}
		t.FinishedAt = t.UpdatedAt
		return nil
	})
	if err == nil && ended {
		s.transferChanged(t)
		s.abortDevice(j.DeviceID, t.ID, msg)
	}
	return j
}

// jobTransferChanged follows the transfer of a job's image.
func (s *Service) jobTransferChanged(ctx context.Context, t *outpost.Transfer) {
	switch t.State {
	case outpost.TransferActive:
		s.jobProgress(ctx, t.JobID, protocol.PhaseDownloading)
	case outpost.TransferReady:
		s.jobProgress(ctx, t.JobID, protocol.PhaseVerifying)
	case outpost.TransferError:
		s.finishJob(ctx, t.JobID, outpost.JobError, protocol.FirmwareErrTransfer, fmt.Sprintf("the image did not arrive: %s %s", t.Error, t.Message))
	case outpost.TransferAborted:
		s.finishJob(ctx, t.JobID, outpost.JobAborted, "", "the image's transfer was aborted: "+t.Message)
	}
}

// activeJobOf returns a job of deviceID by id, or a protocol error when
// it is not the device's.
func (s *Service) jobOf(ctx context.Context, deviceID, id string) (*outpost.FirmwareJob, error) {
	j, err := s.store.Job(ctx, id)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND || (err == nil && j.DeviceID != deviceID) {
		return nil, unknownTransfer("firmware job", id)
	}
	return j, err
}

func (s *Service) handleVersion(ctx context.Context, deviceID string, payload []byte) error {
	v, err := protocol.DecodeFirmwareVersion(payload)
	if err != nil {
		return err
	}
	if err := s.store.SetFirmwareVersion(ctx, deviceID, v.Version, now()); err != nil {
		if outpost.ErrorCode(err) == outpost.ENOTFOUND {
			return nil
		}
		return err
	}
	j, err := s.store.ActiveJob(ctx, deviceID)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND {
		return nil
	} else if err != nil {
		return err
	}
	// The report decides the job when it comes from the restart the job
	// caused: the device says so (it kept the job's id across the
	// restart), or the job was waiting for exactly that.
	if v.Job != j.ID && j.Phase != protocol.PhaseRestarting {
		return nil
	}
	s.judge(ctx, j, v.Version)
	return nil
}

// judge decides a job on the version the device came back with.
func (s *Service) judge(ctx context.Context, j *outpost.FirmwareJob, version string) {
	state, kind, msg := outpost.JobSuccess, "", "the device came back with version "+version
	switch {
	case version == j.TargetVersion:
	case j.FromVersion != "" && version == j.FromVersion:
		state, kind = outpost.JobError, protocol.FirmwareErrVersionUnchanged
		msg = fmt.Sprintf("the device came back with version %s, the version it had before: the new image did not take (rolled back?)", version)
	default:
		state, kind = outpost.JobError, protocol.FirmwareErrUnexpected
		msg = fmt.Sprintf("the device came back with version %s, not the target %s", version, j.TargetVersion)
	}
	if _, err := s.store.UpdateJob(ctx, j.ID, func(j *outpost.FirmwareJob) error {
		j.ReportedVersion = version
		return nil
	}); err != nil {
		s.log.Warn("record reported version", "job_id", j.ID, "error", err)
	}
	s.finishJob(ctx, j.ID, state, kind, msg)
}

func (s *Service) handleFirmwareStatus(ctx context.Context, deviceID string, payload []byte) error {
	st, err := protocol.DecodeFirmwareStatus(payload)
	if err != nil {
		return err
	}
	j, err := s.jobOf(ctx, deviceID, st.Job)
	if err != nil {
		return err
	}
	if j.State.Final() {
		return nil // late: acknowledged, changes nothing
	}
	switch st.State {
	case protocol.FirmwareInstalling:
		phase := st.Phase
		if phase == "" {
			phase = j.Phase
		}
		if outpost.PhaseRank(phase) > outpost.PhaseRank(j.Phase) {
			s.jobProgress(ctx, j.ID, phase)
		} else {
			// Still alive: restart the timeout.
			if _, err := s.store.UpdateJob(ctx, j.ID, func(j *outpost.FirmwareJob) error {
				if !j.State.Final() {
					j.UpdatedAt = now()
					j.Deadline = j.UpdatedAt.Add(j.Timeout)
				}
				return nil
			}); err != nil {
				return err
			}
		}
	case protocol.FirmwareError:
		msg := st.Message
		if msg == "" {
			msg = "reported by the device"
		}
		s.finishJob(ctx, j.ID, outpost.JobError, st.Error, msg)
	case protocol.FirmwareAborted:
		msg := st.Message
		if msg == "" {
			msg = "aborted by the device"
		}
		s.finishJob(ctx, j.ID, outpost.JobAborted, "", msg)
	}
	return nil
}

func (s *Service) handleCheck(ctx context.Context, deviceID string, payload []byte) error {
	c, err := protocol.DecodeFirmwareCheck(payload)
	if err != nil {
		return err
	}
	reply := protocol.FirmwareCheckReply{ID: c.ID}
	j, err := s.store.ActiveJob(ctx, deviceID)
	switch {
	case outpost.ErrorCode(err) == outpost.ENOTFOUND:
	case err != nil:
		return err
	default:
		reply.Job, reply.Version = j.ID, j.TargetVersion
		// The order again, straight to the device: the queued one may
		// have been taken in and lost.
		if in, err := s.installOrder(ctx, j); err == nil {
			s.send(deviceID, protocol.KindFirmwareInstall, in)
		} else {
			s.log.Warn("firmware check: rebuild the install order", "device_id", deviceID, "job_id", j.ID, "error", err)
		}
	}
	s.send(deviceID, protocol.KindFirmwareCheck, reply)
	return nil
}

// installOrder builds a job's install order.
func (s *Service) installOrder(ctx context.Context, j *outpost.FirmwareJob) (*protocol.FirmwareInstall, error) {
	t, err := s.store.Transfer(ctx, j.TransferID)
	if err != nil {
		return nil, err
	}
	a, err := s.opt.Artifacts.Artifact(ctx, j.ArtifactID)
	if err != nil {
		return nil, err
	}
	return &protocol.FirmwareInstall{ID: j.ID, Version: j.TargetVersion, File: s.offer(t, a)}, nil
}

// offer builds a transfer's offer; a is its artifact (nil for an
// external URL).
func (s *Service) offer(t *outpost.Transfer, a *outpost.Artifact) protocol.FileOffer {
	o := protocol.FileOffer{ID: t.ID, Name: t.Name, Size: t.Size, SHA256: t.SHA256, Methods: t.Methods, URL: t.URL,
		Version: t.Version, Model: t.Model, Job: t.JobID}
	if a != nil {
		o.Signature = s.opt.Artifacts.Signature(a)
	}
	return o
}

// sweepJobs fails jobs whose order did not reach the device in time, and
// jobs whose device went silent for longer than their timeout.
func (s *Service) sweepJobs(ctx context.Context, at time.Time) {
	js, err := s.store.Jobs(ctx, outpost.JobFilter{Active: true})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("ota sweep: jobs", "error", err)
		}
		return
	}
	for _, j := range js {
		if j.Phase == protocol.PhaseOrdered {
			if at.After(j.ExpiresAt) {
				s.finishJob(ctx, j.ID, outpost.JobError, protocol.FirmwareErrExpired, "the order did not reach the device in time")
			}
			continue
		}
		dl := j.Deadline
		if j.Phase == protocol.PhaseDownloading {
			// Every request of the image keeps the job alive.
			if t, err := s.store.Transfer(ctx, j.TransferID); err == nil {
				if d := s.touched(t).Add(j.Timeout); d.After(dl) {
					dl = d
				}
			}
		}
		if dl.IsZero() || !at.After(dl) {
			continue
		}
		msg := fmt.Sprintf("no word from the device for %s while %s", j.Timeout, j.Phase)
		if j.Phase == protocol.PhaseRestarting {
			msg = fmt.Sprintf("the device did not come back within %s of its restart", j.Timeout)
		}
		s.finishJob(ctx, j.ID, outpost.JobError, protocol.FirmwareErrTimeout, msg)
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
