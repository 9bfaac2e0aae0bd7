package ota

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
	"time"

	"github.com/outpost-iot/outpost/internal/blob"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// liveTransfer is the in-memory side of a transfer in progress: its open
// content, the hashes of recent chunks (each chunk carries its
// predecessor's), the chunks asked for and not sent yet, and progress not
// stored yet.
type liveTransfer struct {
	id, deviceID, artifactID, jobID string
	size                            int64

	mu      sync.Mutex
	obj     blob.Object
	pending []chunkRange
	running bool
	done    bool // finished or aborted: send nothing more

	rate     int64     // bytes per second, 0 for no cap
	next     time.Time // when the rate allows the next chunk
	bytes    int64     // progress: the furthest byte sent or reported
	dirty    bool      // bytes not stored yet
	touched  time.Time // last request or report
	lastEvt  time.Time
	lastPct  float64
	snapshot outpost.Transfer // for events
}

type chunkRange struct {
	index int64
	count int
	size  int
}

func (lt *liveTransfer) close() {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	lt.done = true
	lt.pending = nil
	if lt.obj != nil {
		lt.obj.Close()
		lt.obj = nil
	}
}

// liveOf returns the live state of an unfinished transfer of deviceID,
// loading it from the store on first use. It returns the stored transfer
// too when it had to load it. A transfer of another device is unknown.
func (s *Service) liveOf(ctx context.Context, deviceID, id string) (*liveTransfer, *outpost.Transfer, error) {
	s.mu.Lock()
	lt := s.live[id]
	s.mu.Unlock()
	if lt != nil {
		if lt.deviceID != deviceID {
			return nil, nil, unknownTransfer("transfer", id)
		}
		return lt, nil, nil
	}
	t, err := s.store.Transfer(ctx, id)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND || (err == nil && t.DeviceID != deviceID) {
		return nil, nil, unknownTransfer("transfer", id)
	} else if err != nil {
		return nil, nil, err
	}
	if t.State.Final() {
		return nil, t, nil
	}
	lt = &liveTransfer{id: t.ID, deviceID: t.DeviceID, artifactID: t.ArtifactID, jobID: t.JobID, size: t.Size,
		bytes: t.Bytes, touched: time.Now(), snapshot: *t}
	s.mu.Lock()
	if cur := s.live[id]; cur != nil {
		lt = cur
	} else {
		s.live[id] = lt
	}
	s.mu.Unlock()
	return lt, t, nil
}

// drop forgets a transfer that finished.
func (s *Service) drop(id string) {
	s.mu.Lock()
	lt := s.live[id]
	delete(s.live, id)
	s.mu.Unlock()
	if lt != nil {
		lt.close()
	}
}

// abortDevice tells the device to give up a transfer.
func (s *Service) abortDevice(deviceID, id, reason string) {
	s.send(deviceID, protocol.KindFileAbort, protocol.FileAbort{Transfer: id, Reason: reason})
}

func finishedReason(t *outpost.Transfer) string {
	switch t.State {
	case outpost.TransferAborted:
		return "the transfer was aborted"
	case outpost.TransferReady:
		return "the transfer is complete"
	}
	return "the transfer failed: " + t.Error
}

func (s *Service) handleRequest(ctx context.Context, deviceID string, payload []byte) error {
	s.stats.Requests.Add(1)
	r, err := protocol.DecodeChunkRequest(payload)
	if err != nil {
		return err
	}
	lt, stored, err := s.liveOf(ctx, deviceID, r.Transfer)
	if err != nil {
		if pe := (*protocol.Error)(nil); errors.As(err, &pe) {
			s.abortDevice(deviceID, r.Transfer, "unknown transfer")
		}
		return err
	}
	if lt == nil { // finished
		s.abortDevice(deviceID, r.Transfer, finishedReason(stored))
		return nil
	}
	lt.mu.Lock()
	mqttOK := lt.artifactID != "" && contains(lt.snapshot.Methods, protocol.MethodMQTT)
	lt.mu.Unlock()
	if !mqttOK {
		return &protocol.Error{Code: protocol.CodeInvalid, Message: "transfer " + r.Transfer + " is offered by URL only"}
	}
	n, err := protocol.CheckChunkRequest(r, lt.size)
	if err != nil {
		return err
	}
	lt.mu.Lock()
	first := lt.snapshot.State == outpost.TransferOffered || lt.snapshot.Method != protocol.MethodMQTT || lt.snapshot.ChunkSize != r.Size
	lt.touched = time.Now()
	lt.rate = r.Rate
	lt.mu.Unlock()
	if first {
		t, err := s.store.UpdateTransfer(ctx, r.Transfer, func(t *outpost.Transfer) error {
			if t.State.Final() {
				return nil
			}
			t.State, t.Method, t.ChunkSize, t.UpdatedAt = outpost.TransferActive, protocol.MethodMQTT, r.Size, now()
			return nil
		})
		if err != nil {
			return err
		}
		if t.State.Final() {
			s.drop(t.ID)
			s.abortDevice(deviceID, t.ID, finishedReason(t))
			return nil
		}
		s.transferChanged(t)
		if t.JobID != "" {
			s.jobProgress(ctx, t.JobID, protocol.PhaseDownloading)
		}
	}
	s.enqueueChunks(lt, chunkRange{index: r.Index, count: n, size: r.Size})
	return nil
}

// enqueueChunks adds a range to the transfer's chunks to send and starts
// its sender if it is idle.
func (s *Service) enqueueChunks(lt *liveTransfer, r chunkRange) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if lt.done {
		return
	}
	lt.pending = append(lt.pending, r)
	if lt.running {
		return
	}
	lt.running = true
	s.wg.Add(1)
	go s.sender(lt)
}

// sender sends a transfer's requested chunks in order, then exits.
func (s *Service) sender(lt *liveTransfer) {
	defer s.wg.Done()
	for {
		lt.mu.Lock()
		if len(lt.pending) == 0 || lt.done || s.ctx.Err() != nil {
			lt.running = false
			lt.mu.Unlock()
			return
		}
		r := lt.pending[0]
		lt.pending = lt.pending[1:]
		lt.mu.Unlock()
		for i := r.index; i < r.index+int64(r.count); i++ {
			if !s.pace(lt, r.size) {
				break
			}
			if s.opt.Online != nil && !s.opt.Online(lt.deviceID) {
				lt.mu.Lock()
				lt.pending = nil // gone: it asks again when it is back
				lt.mu.Unlock()
				break
			}
			payload, err := s.chunk(lt, i, r.size)
			if err != nil {
				s.log.Warn("read chunk", "device_id", lt.deviceID, "transfer_id", lt.id, "index", i, "error", err)
				break // the device asks again
			}
			if err := s.opt.Publisher.PublishToDevice(lt.deviceID, protocol.ChunkKind(lt.id, i), payload); err != nil {
				s.log.Debug("send chunk", "device_id", lt.deviceID, "transfer_id", lt.id, "index", i, "error", err)
				break // not connected, or not taking messages: it asks again
			}
			n := int64(len(payload) - protocol.ChunkHeaderLen)
			s.stats.ChunksSent.Add(1)
			s.stats.BytesSent.Add(n)
			s.progress(lt, i*int64(r.size)+n, false)
		}
	}
}

// pace waits until the transfer's rate cap allows a chunk of size bytes.
// It reports false when the service or the transfer ends meanwhile.
func (s *Service) pace(lt *liveTransfer, size int) bool {
	lt.mu.Lock()
	if lt.done {
		lt.mu.Unlock()
		return false
	}
	if lt.rate <= 0 {
		lt.mu.Unlock()
		return true
	}
	now := time.Now()
	at := lt.next
	if at.Before(now) {
		at = now
	}
	lt.next = at.Add(time.Duration(float64(size) / float64(lt.rate) * float64(time.Second)))
	lt.mu.Unlock()
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return false
		}
	}
	return true
}

// chunk builds the payload of chunk index of size bytes: the chain's
// hashes, then the data read straight into place (one allocation; the
// broker copies what it keeps).
func (s *Service) chunk(lt *liveTransfer, index int64, size int) ([]byte, error) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if lt.obj == nil {
		_, o, err := s.opt.Artifacts.Open(s.ctx, lt.artifactID)
		if err != nil {
			return nil, err
		}
		lt.obj = o
	}
	off := index * int64(size)
	n := min(int64(size), lt.size-off)
	if n <= 0 {
		return nil, fmt.Errorf("chunk %d beyond the end", index)
	}
	payload := make([]byte, protocol.ChunkHeaderLen+int(n))
	data := payload[protocol.ChunkHeaderLen:]
	if _, err := lt.obj.ReadAt(data, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	sums := s.hashes.of(lt.artifactID, size, protocol.ChunkCount(lt.size, size))
	sum := sums.get(index, func() ([sha256.Size]byte, error) { return sha256.Sum256(data), nil })
	if index > 0 {
		prev := sums.get(index-1, func() ([sha256.Size]byte, error) {
			b := make([]byte, size)
			if _, err := lt.obj.ReadAt(b, off-int64(size)); err != nil && !errors.Is(err, io.EOF) {
				return [sha256.Size]byte{}, err
			}
			return sha256.Sum256(b), nil
		})
		copy(payload, prev[:])
	}
	copy(payload[sha256.Size:], sum[:])
	if s.opt.ChunkHook != nil {
		s.opt.ChunkHook(lt.deviceID, lt.id, index, data)
	}
	return payload, nil
}

// chunkHashes caches the hashes of an artifact's chunks of one size:
// many devices fetching the same image with the same chunk size share
// them, so each chunk is hashed once.
type chunkHashes struct {
	mu   sync.Mutex
	sums [][sha256.Size]byte
	have []bool
	used time.Time
}

// get returns the hash of chunk i, computing it with fn the first time.
// A failed computation is not cached.
func (c *chunkHashes) get(i int64, fn func() ([sha256.Size]byte, error)) [sha256.Size]byte {
	if c == nil || i >= int64(len(c.sums)) {
		h, _ := fn()
		return h
	}
	c.mu.Lock()
	if c.have[i] {
		h := c.sums[i]
		c.mu.Unlock()
		return h
	}
	c.mu.Unlock()
	h, err := fn()
	if err == nil {
		c.mu.Lock()
		c.sums[i], c.have[i] = h, true
		c.mu.Unlock()
	}
	return h
}

type hashKey struct {
	artifact string
	size     int
}

// hashCache holds chunkHashes for the artifacts being sent, bounded in
// entries and in chunks per entry.
type hashCache struct {
	mu sync.Mutex
	m  map[hashKey]*chunkHashes
}

const (
	maxHashSets   = 8
	maxHashChunks = 1 << 16 // 2 MiB of hashes per artifact and size
)

func (hc *hashCache) of(artifact string, size int, chunks int64) *chunkHashes {
	if chunks > maxHashChunks {
		return nil
	}
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.m == nil {
		hc.m = map[hashKey]*chunkHashes{}
	}
	k := hashKey{artifact, size}
	c := hc.m[k]
	if c == nil {
		if len(hc.m) >= maxHashSets {
			var oldest hashKey
			var at time.Time
			for k, v := range hc.m {
				if at.IsZero() || v.used.Before(at) {
					oldest, at = k, v.used
				}
			}
			delete(hc.m, oldest)
		}
		c = &chunkHashes{sums: make([][sha256.Size]byte, chunks), have: make([]bool, chunks)}
		hc.m[k] = c
	}
	c.used = time.Now()
	return c
}

// progress records that the transfer reached bytes, and publishes an
// event when it moved by a percent or a second passed (or always when
// force is set).
func (s *Service) progress(lt *liveTransfer, bytes int64, force bool) {
	lt.mu.Lock()
	if bytes > lt.bytes {
		lt.bytes, lt.dirty = bytes, true
	}
	lt.touched = time.Now()
	t := lt.snapshot
	t.Bytes = lt.bytes
	t.FillPercent()
	if !force && t.Percent-lt.lastPct < 1 && time.Since(lt.lastEvt) < time.Second && t.Bytes < t.Size {
		lt.mu.Unlock()
		return
	}
	lt.lastPct, lt.lastEvt = t.Percent, time.Now()
	lt.mu.Unlock()
	s.opt.Events(EventTransfer, t.DeviceID, &t)
}

// transferChanged refreshes the live copy of a stored transfer and
// publishes it.
func (s *Service) transferChanged(t *outpost.Transfer) {
	s.mu.Lock()
	lt := s.live[t.ID]
	s.mu.Unlock()
	if lt != nil {
		lt.mu.Lock()
		lt.snapshot = *t
		if t.Bytes > lt.bytes {
			lt.bytes = t.Bytes
		}
		lt.lastPct, lt.lastEvt = 0, time.Now()
		lt.mu.Unlock()
	}
	if t.State.Final() {
		s.drop(t.ID)
		if t.State == outpost.TransferReady {
			s.stats.TransfersOK.Add(1)
		} else {
			s.stats.TransfersBad.Add(1)
		}
	}
	c := *t
	c.FillPercent()
	s.opt.Events(EventTransfer, t.DeviceID, &c)
}

func (s *Service) handleStatus(ctx context.Context, deviceID string, payload []byte) error {
	st, err := protocol.DecodeFileStatus(payload)
	if err != nil {
		return err
	}
	cur, err := s.store.Transfer(ctx, st.Transfer)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND || (err == nil && cur.DeviceID != deviceID) {
		if st.State == protocol.FileTransfer {
			s.abortDevice(deviceID, st.Transfer, "unknown transfer")
		}
		return unknownTransfer("transfer", st.Transfer)
	} else if err != nil {
		return err
	}
	if cur.State.Final() {
		if st.State == protocol.FileTransfer {
			s.abortDevice(deviceID, cur.ID, finishedReason(cur))
		}
		return nil // a late report: acknowledged, changes nothing
	}
	lt, _, _ := s.liveOf(ctx, deviceID, cur.ID)
	if lt != nil {
		lt.mu.Lock()
		lt.touched = time.Now()
		lt.mu.Unlock()
	}
	to := outpost.TransferState(st.State)
	t, err := s.store.UpdateTransfer(ctx, cur.ID, func(t *outpost.Transfer) error {
		if !outpost.CanTransferMove(t.State, to) {
			return nil
		}
		t.State, t.UpdatedAt = to, now()
		if st.Method != "" {
			t.Method = st.Method
		}
		if st.ChunkSize != 0 {
			t.ChunkSize = st.ChunkSize
		}
		if st.Bytes > t.Bytes {
			t.Bytes = min(st.Bytes, t.Size)
		}
		switch to {
		case outpost.TransferReady:
			t.Bytes, t.FinishedAt = t.Size, t.UpdatedAt
		case outpost.TransferError:
			t.Error, t.Message, t.FinishedAt = st.Error, st.Message, t.UpdatedAt
		case outpost.TransferAborted:
			t.Message, t.FinishedAt = "aborted by the device", t.UpdatedAt
			if st.Message != "" {
				t.Message = st.Message
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.transferChanged(t)
	if t.JobID != "" {
		s.jobTransferChanged(ctx, t)
	}
	return nil
}

func (s *Service) handleURL(ctx context.Context, deviceID string, payload []byte) error {
	r, err := protocol.DecodeURLRequest(payload)
	if err != nil {
		return err
	}
	cur, err := s.store.Transfer(ctx, r.Transfer)
	if outpost.ErrorCode(err) == outpost.ENOTFOUND || (err == nil && cur.DeviceID != deviceID) {
		s.abortDevice(deviceID, r.Transfer, "unknown transfer")
		return unknownTransfer("transfer", r.Transfer)
	} else if err != nil {
		return err
	}
	if cur.State.Final() {
		s.abortDevice(deviceID, cur.ID, finishedReason(cur))
		return nil
	}
	if !contains(cur.Methods, protocol.MethodURL) {
		return &protocol.Error{Code: protocol.CodeInvalid, Message: "transfer " + cur.ID + " is not offered by URL"}
	}
	grant := protocol.URLGrant{Transfer: cur.ID, URL: cur.URL}
	var token string
	exp := time.Now().Add(s.opt.URLTTL)
	if cur.URL == "" {
		base := s.opt.PublicURL()
		if base == "" {
			return &protocol.Error{Code: protocol.CodeNotSupported, Message: "the platform has no URL for downloads"}
		}
		var b [24]byte
		_, _ = rand.Read(b[:])
		token = base64.RawURLEncoding.EncodeToString(b[:])
		grant.URL = base + DownloadPath(cur.ID) + "?token=" + url.QueryEscape(token)
		grant.Expires = exp.UnixMilli()
	}
	t, err := s.store.UpdateTransfer(ctx, cur.ID, func(t *outpost.Transfer) error {
		if t.State.Final() {
			return nil
		}
		t.State, t.Method, t.UpdatedAt = outpost.TransferActive, protocol.MethodURL, now()
		if token != "" {
			h := sha256.Sum256([]byte(token))
			t.TokenHash, t.TokenExpiry = h[:], exp.UTC().Truncate(time.Millisecond)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if t.State.Final() {
		s.abortDevice(deviceID, t.ID, finishedReason(t))
		return nil
	}
	if lt, _, _ := s.liveOf(ctx, deviceID, t.ID); lt != nil {
		lt.mu.Lock()
		lt.touched = time.Now()
		lt.mu.Unlock()
	}
	s.transferChanged(t)
	if t.JobID != "" {
		s.jobProgress(ctx, t.JobID, protocol.PhaseDownloading)
	}
	s.send(deviceID, protocol.KindFileURL, grant)
	return nil
}

// DownloadPath returns the path, on the platform's HTTP listener, that
// serves a transfer's file to the holder of its token.
func DownloadPath(transferID string) string { return "/dl/" + transferID }

// OpenDownload checks a download URL's token and opens the transfer's
// file; reading it reports the transfer's progress. The caller closes it.
// Errors: ENOTFOUND for an unknown transfer, EUNAUTHORIZED for a token
// that is not this transfer's (another transfer's, another device's) or
// that expired, ECONFLICT for a finished transfer.
func (s *Service) OpenDownload(ctx context.Context, transferID, token string) (*outpost.Transfer, io.ReadSeekCloser, error) {
	t, err := s.store.Transfer(ctx, transferID)
	if err != nil {
		return nil, nil, err
	}
	h := sha256.Sum256([]byte(token))
	if token == "" || len(t.TokenHash) != len(h) || subtle.ConstantTimeCompare(t.TokenHash, h[:]) != 1 {
		return nil, nil, outpost.Errorf(outpost.EUNAUTHORIZED, "the token is not valid for transfer %s", transferID)
	}
	if time.Now().After(t.TokenExpiry) {
		return nil, nil, outpost.Errorf(outpost.EUNAUTHORIZED, "the token of transfer %s expired; the device asks for a new URL (up/files/url)", transferID)
	}
	if t.State.Final() {
		return nil, nil, outpost.Errorf(outpost.ECONFLICT, "transfer %s is over: %s", transferID, finishedReason(t))
	}
	_, o, err := s.opt.Artifacts.Open(ctx, t.ArtifactID)
	if err != nil {
		return nil, nil, err
	}
	lt, _, _ := s.liveOf(ctx, t.DeviceID, t.ID)
	return t, &countingReader{Object: o, s: s, lt: lt}, nil
}

// countingReader reports a download's progress.
type countingReader struct {
	blob.Object
	s   *Service
	lt  *liveTransfer
	off int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.Object.Read(p)
	c.off += int64(n)
	c.s.stats.BytesServed.Add(int64(n))
	if c.lt != nil && n > 0 {
		c.s.progress(c.lt, c.off, false)
	}
	return n, err
}

func (c *countingReader) Seek(off int64, whence int) (int64, error) {
	n, err := c.Object.Seek(off, whence)
	if err == nil {
		c.off = n
	}
	return n, err
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// flush stores the progress of transfers in progress.
func (s *Service) flush(ctx context.Context) {
	s.mu.Lock()
	var dirty []*liveTransfer
	for _, lt := range s.live {
		dirty = append(dirty, lt)
	}
	s.mu.Unlock()
	for _, lt := range dirty {
		lt.mu.Lock()
		b, d := lt.bytes, lt.dirty
		lt.dirty = false
		lt.mu.Unlock()
		if !d {
			continue
		}
		if _, err := s.store.UpdateTransfer(ctx, lt.id, func(t *outpost.Transfer) error {
			if b > t.Bytes && !t.State.Final() {
				t.Bytes = b
			}
			return nil
		}); err != nil && outpost.ErrorCode(err) != outpost.ENOTFOUND && ctx.Err() == nil {
			s.log.Warn("store transfer progress", "transfer_id", lt.id, "error", err)
		}
	}
}

// sweeper finishes what is due every Options.Sweep: offers never taken
// up, transfers abandoned, jobs expired or timed out; and stores progress.
func (s *Service) sweeper() {
	defer s.wg.Done()
	t := time.NewTicker(s.opt.Sweep)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.sweep(s.ctx, time.Now())
		}
	}
}

func (s *Service) sweep(ctx context.Context, at time.Time) {
	// Progress goes to the store now and then (the API reads the live
	// figure anyway): every 5 seconds, not at every sweep.
	if at.Sub(s.flushed) >= 5*time.Second {
		s.flushed = at
		s.flush(ctx)
	}
	ts, err := s.store.Transfers(ctx, outpost.TransferFilter{Active: true})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("ota sweep", "error", err)
		}
		return
	}
	active := make(map[string]bool, len(ts))
	for _, t := range ts {
		active[t.ID] = true
		var kind, msg string
		switch {
		case t.State == outpost.TransferOffered && at.After(t.ExpiresAt):
			kind, msg = protocol.FileErrOfferExpired, "the device did not take up the offer in time"
		case t.State == outpost.TransferActive && at.Sub(s.touched(t)) > s.opt.Idle:
			kind, msg = protocol.FileErrTransferAbandoned, fmt.Sprintf("no request from the device for %s", s.opt.Idle)
		default:
			continue
		}
		if t.JobID != "" {
			continue // the job's own deadlines decide
		}
		s.failTransfer(ctx, t.ID, kind, msg)
	}
	// Forget live state of transfers that finished elsewhere or went with
	// their device.
	s.mu.Lock()
	var gone []string
	for id := range s.live {
		if !active[id] {
			gone = append(gone, id)
		}
	}
	s.mu.Unlock()
	for _, id := range gone {
		s.drop(id)
	}
	s.sweepJobs(ctx, at)
}

// touched returns when the device last did something about a transfer.
func (s *Service) touched(t *outpost.Transfer) time.Time {
	s.mu.Lock()
	lt := s.live[t.ID]
	s.mu.Unlock()
	last := t.UpdatedAt
	if lt != nil {
		lt.mu.Lock()
		if lt.touched.After(last) {
			last = lt.touched
		}
		lt.mu.Unlock()
	}
	return last
}

// failTransfer ends a transfer in ERROR and tells the device.
func (s *Service) failTransfer(ctx context.Context, id, kind, msg string) *outpost.Transfer {
	t, err := s.store.UpdateTransfer(ctx, id, func(t *outpost.Transfer) error {
		if t.State.Final() {
			return nil
		}
		t.State, t.Error, t.Message, t.UpdatedAt = outpost.TransferError, kind, msg, now()
		t.FinishedAt = t.UpdatedAt
		return nil
	})
	if err != nil {
		s.log.Warn("fail transfer", "transfer_id", id, "error", err)
		return nil
	}
	s.log.Info("transfer failed", "device_id", t.DeviceID, "transfer_id", id, "error", kind, "message", msg)
	s.transferChanged(t)
	s.abortDevice(t.DeviceID, t.ID, msg)
	return t
}
