package httpapi

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// ArtifactService is what the artifact endpoints need.
type ArtifactService interface {
	// Upload stores body as a new artifact, reading it as it arrives.
	// EINVALID for bad metadata or a body over MaxSize.
	Upload(ctx context.Context, m outpost.ArtifactMeta, body io.Reader) (*outpost.Artifact, error)
	// MaxSize is the largest artifact Upload takes.
	MaxSize() int64
	// Artifact returns one artifact. ENOTFOUND.
	Artifact(ctx context.Context, id string) (*outpost.Artifact, error)
	// Artifacts lists artifacts, newest first.
	Artifacts(ctx context.Context, f outpost.ArtifactFilter) ([]*outpost.Artifact, error)
	// Delete removes an artifact. ENOTFOUND, ECONFLICT while it is sent.
	Delete(ctx context.Context, id string) error
	// Content opens an artifact's content. ENOTFOUND.
	Content(ctx context.Context, id string) (*outpost.Artifact, io.ReadSeekCloser, error)
	// PublicKey is the key that verifies the platform's signatures.
	PublicKey() ed25519.PublicKey
}

// OTAService is what the file transfer and firmware endpoints need.
type OTAService interface {
	// SendFile offers a file to a device. ENOTFOUND, EINVALID.
	SendFile(ctx context.Context, deviceID string, f outpost.FileSend) (*outpost.Transfer, error)
	// Transfer returns a transfer. ENOTFOUND.
	Transfer(ctx context.Context, id string) (*outpost.Transfer, error)
	// Transfers lists transfers, newest first.
	Transfers(ctx context.Context, f outpost.TransferFilter) ([]*outpost.Transfer, error)
	// AbortTransfer aborts a transfer. ENOTFOUND, ECONFLICT.
	AbortTransfer(ctx context.Context, id string) (*outpost.Transfer, error)
	// DeviceFiles returns the files a device reported. ENOTFOUND.
	DeviceFiles(ctx context.Context, deviceID string) (*outpost.DeviceFiles, error)
	// DeleteDeviceFiles queues the deletion of files on a device.
	DeleteDeviceFiles(ctx context.Context, deviceID string, names []string) (*outpost.FileCommand, error)
	// PurgeDeviceFiles queues the deletion of every file on a device.
	PurgeDeviceFiles(ctx context.Context, deviceID string) (*outpost.FileCommand, error)
	// UpdateFirmware orders a firmware update. ENOTFOUND, EINVALID,
	// ECONFLICT.
	UpdateFirmware(ctx context.Context, deviceID string, o outpost.FirmwareOrder) (*outpost.FirmwareJob, error)
	// FirmwareState returns a device's version and latest job.
	FirmwareState(ctx context.Context, deviceID string) (*outpost.FirmwareState, error)
	// Job returns a firmware job. ENOTFOUND.
	Job(ctx context.Context, id string) (*outpost.FirmwareJob, error)
	// Jobs lists firmware jobs, newest first.
	Jobs(ctx context.Context, f outpost.JobFilter) ([]*outpost.FirmwareJob, error)
	// AbortJob aborts a firmware job. ENOTFOUND, ECONFLICT.
	AbortJob(ctx context.Context, id string) (*outpost.FirmwareJob, error)
	// OpenDownload checks a download token and opens the transfer's file.
	// ENOTFOUND, EUNAUTHORIZED, ECONFLICT.
	OpenDownload(ctx context.Context, transferID, token string) (*outpost.Transfer, io.ReadSeekCloser, error)
}

// ioIdle is how long an upload or a download may go without moving a
// byte. Large bodies take longer than the server's read and write
// timeouts, so these routes push their deadlines forward as data flows.
const ioIdle = time.Minute

type otaAPI struct {
	a    *api
	arts ArtifactService
	ota  OTAService
}

// routeOTA adds the artifact, file transfer and firmware endpoints, and
// the download URLs (/dl/…), which take a transfer's token instead of the
// API token.
func (a *api) routeOTA(mux *http.ServeMux, arts ArtifactService, svc OTAService) {
	o := &otaAPI{a: a, arts: arts, ota: svc}
	if arts != nil {
		mux.HandleFunc("POST /api/v1/artifacts", a.auth(o.upload))
		mux.HandleFunc("GET /api/v1/artifacts", a.auth(o.artifacts))
		mux.HandleFunc("GET /api/v1/artifacts/{id}", a.auth(o.artifact))
		mux.HandleFunc("DELETE /api/v1/artifacts/{id}", a.auth(o.deleteArtifact))
		mux.HandleFunc("GET /api/v1/artifacts/{id}/content", a.auth(o.content))
		mux.HandleFunc("GET /api/v1/signing-key", a.auth(o.signingKey))
	}
	if svc == nil {
		return
	}
	mux.HandleFunc("POST /api/v1/devices/{id}/files", a.auth(o.sendFile))
	mux.HandleFunc("GET /api/v1/devices/{id}/files", a.auth(o.deviceFiles))
	mux.HandleFunc("DELETE /api/v1/devices/{id}/files/{name}", a.auth(o.deleteFile))
	mux.HandleFunc("POST /api/v1/devices/{id}/files/purge", a.auth(o.purgeFiles))
	mux.HandleFunc("GET /api/v1/devices/{id}/transfers", a.auth(o.deviceTransfers))
	mux.HandleFunc("GET /api/v1/transfers/{id}", a.auth(o.transfer))
	mux.HandleFunc("POST /api/v1/transfers/{id}/abort", a.auth(o.abortTransfer))
	mux.HandleFunc("POST /api/v1/devices/{id}/firmware", a.auth(o.updateFirmware))
	mux.HandleFunc("GET /api/v1/devices/{id}/firmware", a.auth(o.firmware))
	mux.HandleFunc("GET /api/v1/devices/{id}/firmware/jobs", a.auth(o.deviceJobs))
	mux.HandleFunc("GET /api/v1/firmware/jobs/{id}", a.auth(o.job))
	mux.HandleFunc("POST /api/v1/firmware/jobs/{id}/abort", a.auth(o.abortJob))
	mux.HandleFunc("GET /dl/{transfer}", o.download)
	mux.HandleFunc("HEAD /dl/{transfer}", o.download)
}

// noDotSegments refuses request paths with "." or ".." segments. The
// ServeMux would otherwise answer them with a redirect to the cleaned
// path, and for other methods than GET that redirect is a 307, which
// clients follow with the same method: DELETE /api/v1/devices/D/files/..
// would come back as DELETE /api/v1/devices/D and delete the device.
func noDotSegments(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, seg := range strings.Split(r.URL.Path, "/") {
			if seg == "." || seg == ".." {
				writeError(w, outpost.Errorf(outpost.EINVALID, "path %q has a %q segment", r.URL.Path, seg))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// deadlineReader pushes the request's read deadline forward while the
// body keeps arriving.
type deadlineReader struct {
	r    io.Reader
	rc   *http.ResponseController
	last time.Time
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if now := time.Now(); now.Sub(d.last) > time.Second {
		d.last = now
		_ = d.rc.SetReadDeadline(now.Add(ioIdle)) // unsupported on some transports: their own limits apply
	}
	return d.r.Read(p)
}

// deadlineContent pushes the response's write deadline forward while the
// content is being sent.
type deadlineContent struct {
	io.ReadSeeker
	rc   *http.ResponseController
	last time.Time
}

func (d *deadlineContent) Read(p []byte) (int, error) {
	if now := time.Now(); now.Sub(d.last) > time.Second {
		d.last = now
		_ = d.rc.SetWriteDeadline(now.Add(ioIdle))
	}
	return d.ReadSeeker.Read(p)
}

func (o *otaAPI) upload(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	m := outpost.ArtifactMeta{Name: q.Get("name"), Version: q.Get("version"), Model: q.Get("model")}
	if r.ContentLength > o.arts.MaxSize() {
		// Refused before a byte is read.
		w.Header().Set("Connection", "close")
		writeError(w, outpost.Errorf(outpost.EINVALID, "artifact of %d bytes is larger than %d", r.ContentLength, o.arts.MaxSize()))
		return
	}
	body := &deadlineReader{r: r.Body, rc: http.NewResponseController(w)}
	a, err := o.arts.Upload(r.Context(), m, body)
	if err != nil {
		w.Header().Set("Connection", "close") // the rest of the body is not read
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/artifacts/"+a.ID)
	writeJSON(w, http.StatusCreated, a)
}

func queryLimit(q string, max int) (int, error) {
	if q == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(q)
	if err != nil || n < 1 || n > max {
		return 0, outpost.Errorf(outpost.EINVALID, "limit must be between 1 and %d", max)
	}
	return n, nil
}

func (o *otaAPI) artifacts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := outpost.ArtifactFilter{Name: q.Get("name"), Version: q.Get("version"), Model: q.Get("model")}
	var err error
	if f.Limit, err = queryLimit(q.Get("limit"), 10_000); err != nil {
		writeError(w, err)
		return
	}
	as, err := o.arts.Artifacts(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"artifacts": as})
}

func (o *otaAPI) artifact(w http.ResponseWriter, r *http.Request) {
	a, err := o.arts.Artifact(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (o *otaAPI) deleteArtifact(w http.ResponseWriter, r *http.Request) {
	if err := o.arts.Delete(r.Context(), r.PathValue("id")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// serve sends content with Range support; etag lets a resumed download
// check with If-Range that the file did not change.
func serve(w http.ResponseWriter, r *http.Request, name, sha string, mod time.Time, content io.ReadSeeker) {
	w.Header().Set("ETag", `"`+sha+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="`+strings.ReplaceAll(name, `"`, "_")+`"`)
	http.ServeContent(w, r, "", mod, &deadlineContent{ReadSeeker: content, rc: http.NewResponseController(w)})
}

func (o *otaAPI) content(w http.ResponseWriter, r *http.Request) {
	a, c, err := o.arts.Content(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	defer c.Close()
	serve(w, r, a.Name, a.SHA256, a.CreatedAt, c)
}

func (o *otaAPI) signingKey(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"algorithm": "ed25519", "public_key": protocol.FormatPublicKey(o.arts.PublicKey())})
}

// download serves GET /dl/{transfer}?token=T: a transfer's file for the
// device holding the transfer's token, with Range requests. It takes no
// API token.
func (o *otaAPI) download(w http.ResponseWriter, r *http.Request) {
	t, c, err := o.ota.OpenDownload(r.Context(), r.PathValue("transfer"), r.URL.Query().Get("token"))
	if err != nil {
		writeError(w, err)
		return
	}
	defer c.Close()
	serve(w, r, t.Name, t.SHA256, t.CreatedAt, c)
}

// duration is a JSON duration: "30s", "1h", or a number of seconds.
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var f float64
		if err := json.Unmarshal(b, &f); err != nil || f <= 0 {
			return errors.New("a duration is a string such as \"30s\" or \"1h\", or a positive number of seconds")
		}
		*d = duration(f * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return errors.New("a duration is a string such as \"30s\" or \"1h\", or a positive number of seconds")
	}
	*d = duration(v)
	return nil
}

func (o *otaAPI) sendFile(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Artifact string   `json:"artifact"`
		URL      string   `json:"url"`
		SHA256   string   `json:"sha256"`
		Size     int64    `json:"size"`
		Name     string   `json:"name"`
		Methods  []string `json:"methods"`
		TTL      duration `json:"ttl"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	t, err := o.ota.SendFile(r.Context(), r.PathValue("id"), outpost.FileSend{Artifact: req.Artifact, URL: req.URL, SHA256: req.SHA256,
		Size: req.Size, Name: req.Name, Methods: req.Methods, TTL: time.Duration(req.TTL)})
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/transfers/"+t.ID)
	writeJSON(w, http.StatusAccepted, t)
}

func (o *otaAPI) deviceFiles(w http.ResponseWriter, r *http.Request) {
	fs, err := o.ota.DeviceFiles(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fs)
}

func (o *otaAPI) deleteFile(w http.ResponseWriter, r *http.Request) {
	c, err := o.ota.DeleteDeviceFiles(r.Context(), r.PathValue("id"), []string{r.PathValue("name")})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, c)
}

func (o *otaAPI) purgeFiles(w http.ResponseWriter, r *http.Request) {
	c, err := o.ota.PurgeDeviceFiles(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, c)
}

func (o *otaAPI) deviceTransfers(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := o.a.p.Devices.Device(r.Context(), id); err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	f := outpost.TransferFilter{DeviceID: id, State: outpost.TransferState(q.Get("state"))}
	var err error
	if f.Limit, err = queryLimit(q.Get("limit"), 10_000); err != nil {
		writeError(w, err)
		return
	}
	if f.Limit == 0 {
		f.Limit = 100
	}
	if v := q.Get("active"); v != "" {
		if f.Active, err = strconv.ParseBool(v); err != nil {
			writeError(w, outpost.Errorf(outpost.EINVALID, "active must be true or false"))
			return
		}
	}
	ts, err := o.ota.Transfers(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_id": id, "transfers": ts})
}

func (o *otaAPI) transfer(w http.ResponseWriter, r *http.Request) {
	t, err := o.ota.Transfer(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (o *otaAPI) abortTransfer(w http.ResponseWriter, r *http.Request) {
	t, err := o.ota.AbortTransfer(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (o *otaAPI) updateFirmware(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Artifact string   `json:"artifact"`
		Methods  []string `json:"methods"`
		TTL      duration `json:"ttl"`
		Timeout  duration `json:"timeout"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	j, err := o.ota.UpdateFirmware(r.Context(), r.PathValue("id"), outpost.FirmwareOrder{Artifact: req.Artifact, Methods: req.Methods,
		TTL: time.Duration(req.TTL), Timeout: time.Duration(req.Timeout)})
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/firmware/jobs/"+j.ID)
	writeJSON(w, http.StatusAccepted, j)
}

func (o *otaAPI) firmware(w http.ResponseWriter, r *http.Request) {
	st, err := o.ota.FirmwareState(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (o *otaAPI) deviceJobs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := o.a.p.Devices.Device(r.Context(), id); err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	f := outpost.JobFilter{DeviceID: id, State: outpost.JobState(q.Get("state"))}
	var err error
	if f.Limit, err = queryLimit(q.Get("limit"), 10_000); err != nil {
		writeError(w, err)
		return
	}
	if f.Limit == 0 {
		f.Limit = 100
	}
	js, err := o.ota.Jobs(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_id": id, "jobs": js})
}

func (o *otaAPI) job(w http.ResponseWriter, r *http.Request) {
	j, err := o.ota.Job(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

func (o *otaAPI) abortJob(w http.ResponseWriter, r *http.Request) {
	j, err := o.ota.AbortJob(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}
