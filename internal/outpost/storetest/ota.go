package storetest

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
)

// OTAStore is what an engine implements for file transfers and firmware
// updates.
type OTAStore interface {
	outpost.DeviceStore
	outpost.ArtifactStore
	outpost.TransferStore
}

// RunOTA runs the suite of the artifact and transfer stores. open must
// return a new, empty store for each call and close it when t ends.
func RunOTA(t *testing.T, open func(t *testing.T) OTAStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s OTAStore)
	}{
		{"Artifacts", testArtifacts},
		{"ArtifactInUse", testArtifactInUse},
		{"Transfers", testTransfers},
		{"TransferUpdate", testTransferUpdate},
		{"Jobs", testJobs},
		{"DeviceReports", testDeviceReports},
		{"DeviceDeleted", testOTADeviceDeleted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

var otaSeq atomic.Int64

func nextID(prefix string) string { return prefix + strconv.FormatInt(otaSeq.Add(1), 10) }

// MustCreateArtifact stores an artifact named name with a fresh id.
func MustCreateArtifact(tb testing.TB, s outpost.ArtifactStore, name, version string) *outpost.Artifact {
	tb.Helper()
	a := &outpost.Artifact{ID: nextID("a-"), Name: name, Size: 1000,
		SHA256: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", Version: version,
		BlobKey: "blob-" + name, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := s.CreateArtifact(context.Background(), a); err != nil {
		tb.Fatalf("create artifact %s: %v", name, err)
	}
	return a
}

func newTransfer(deviceID, artifactID, name string) *outpost.Transfer {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return &outpost.Transfer{ID: nextID("t-"), DeviceID: deviceID, ArtifactID: artifactID,
		Name: name, Size: 1000, SHA256: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
		Methods: []string{"mqtt", "url"}, State: outpost.TransferOffered, CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour)}
}

func testArtifacts(t *testing.T, s OTAStore) {
	ctx := context.Background()
	a1 := MustCreateArtifact(t, s, "fw.bin", "1.0")
	a2 := MustCreateArtifact(t, s, "config.json", "")
	got, err := s.Artifact(ctx, a1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != a1.Name || got.Size != a1.Size || got.SHA256 != a1.SHA256 || got.Version != "1.0" || got.BlobKey != a1.BlobKey || !got.CreatedAt.Equal(a1.CreatedAt) {
		t.Errorf("got %+v, want %+v", got, a1)
	}
	all, err := s.Artifacts(ctx, outpost.ArtifactFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].ID != a2.ID || all[1].ID != a1.ID {
		t.Errorf("artifacts not newest first: %v", all)
	}
	if fw, _ := s.Artifacts(ctx, outpost.ArtifactFilter{Version: "1.0"}); len(fw) != 1 || fw[0].ID != a1.ID {
		t.Errorf("filter by version: %v", fw)
	}
	wantCode(t, "duplicate id", s.CreateArtifact(ctx, a1), outpost.ECONFLICT)
	if err := s.DeleteArtifact(ctx, a2.ID); err != nil {
		t.Fatal(err)
	}
	_, err = s.Artifact(ctx, a2.ID)
	wantCode(t, "deleted artifact", err, outpost.ENOTFOUND)
	wantCode(t, "delete again", s.DeleteArtifact(ctx, a2.ID), outpost.ENOTFOUND)
}

func testArtifactInUse(t *testing.T, s OTAStore) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "pump")
	a := MustCreateArtifact(t, s, "fw.bin", "1.0")
	tr := newTransfer(d.ID, a.ID, "fw.bin")
	if err := s.CreateTransfer(ctx, tr); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "delete while sent", s.DeleteArtifact(ctx, a.ID), outpost.ECONFLICT)
	if _, err := s.UpdateTransfer(ctx, tr.ID, func(t *outpost.Transfer) error { t.State = outpost.TransferReady; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteArtifact(ctx, a.ID); err != nil {
		t.Errorf("delete once the transfer finished: %v", err)
	}
}

func testTransfers(t *testing.T, s OTAStore) {
	ctx := context.Background()
	d1 := MustCreateDevice(t, s, "pump-1")
	d2 := MustCreateDevice(t, s, "pump-2")
	a := MustCreateArtifact(t, s, "fw.bin", "1.0")
	wantCode(t, "unknown device", s.CreateTransfer(ctx, newTransfer("d-missing", a.ID, "x")), outpost.ENOTFOUND)
	wantCode(t, "unknown artifact", s.CreateTransfer(ctx, newTransfer(d1.ID, "a-missing", "x")), outpost.ENOTFOUND)
	t1 := newTransfer(d1.ID, a.ID, "one")
	t2 := newTransfer(d1.ID, a.ID, "two")
	t3 := newTransfer(d2.ID, "", "three")
	t3.URL, t3.SHA256, t3.Methods = "https://example.com/x", "", []string{"url"}
	for _, tr := range []*outpost.Transfer{t1, t2, t3} {
		if err := s.CreateTransfer(ctx, tr); err != nil {
			t.Fatal(err)
		}
	}
	wantCode(t, "duplicate", s.CreateTransfer(ctx, t1), outpost.ECONFLICT)
	got, err := s.Transfer(ctx, t3.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.URL != t3.URL || !slices.Equal(got.Methods, []string{"url"}) || got.State != outpost.TransferOffered || !got.ExpiresAt.Equal(t3.ExpiresAt) {
		t.Errorf("got %+v, want %+v", got, t3)
	}
	_, err = s.Transfer(ctx, "t-missing")
	wantCode(t, "unknown transfer", err, outpost.ENOTFOUND)
	list, err := s.Transfers(ctx, outpost.TransferFilter{DeviceID: d1.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != t2.ID || list[1].ID != t1.ID {
		t.Errorf("device transfers not newest first: %v", list)
	}
	if _, err := s.UpdateTransfer(ctx, t2.ID, func(t *outpost.Transfer) error { t.State = outpost.TransferAborted; return nil }); err != nil {
		t.Fatal(err)
	}
	active, err := s.Transfers(ctx, outpost.TransferFilter{Active: true})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tr := range active {
		ids = append(ids, tr.ID)
	}
	if !slices.Equal(ids, []string{t3.ID, t1.ID}) {
		t.Errorf("active transfers %v, want %v", ids, []string{t3.ID, t1.ID})
	}
	if l, _ := s.Transfers(ctx, outpost.TransferFilter{State: outpost.TransferAborted}); len(l) != 1 || l[0].ID != t2.ID {
		t.Errorf("by state: %v", l)
	}
	if l, _ := s.Transfers(ctx, outpost.TransferFilter{Limit: 1}); len(l) != 1 {
		t.Errorf("limit 1: %d transfers", len(l))
	}
}

func testTransferUpdate(t *testing.T, s OTAStore) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "pump")
	a := MustCreateArtifact(t, s, "fw.bin", "1.0")
	tr := newTransfer(d.ID, a.ID, "fw.bin")
	if err := s.CreateTransfer(ctx, tr); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	got, err := s.UpdateTransfer(ctx, tr.ID, func(t *outpost.Transfer) error {
		t.State, t.Method, t.ChunkSize, t.Bytes = outpost.TransferActive, "mqtt", 4096, 512
		t.TokenHash, t.TokenExpiry = []byte{1, 2, 3}, exp
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Transfer(ctx, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*outpost.Transfer{got, again} {
		if x.State != outpost.TransferActive || x.Method != "mqtt" || x.ChunkSize != 4096 || x.Bytes != 512 || string(x.TokenHash) != "\x01\x02\x03" || !x.TokenExpiry.Equal(exp) {
			t.Errorf("after update: %+v", x)
		}
	}
	boom := errors.New("boom")
	if _, err := s.UpdateTransfer(ctx, tr.ID, func(t *outpost.Transfer) error { t.Bytes = 999; return boom }); !errors.Is(err, boom) {
		t.Errorf("update whose callback fails: %v, want boom", err)
	}
	coded := outpost.Errorf(outpost.ECONFLICT, "no")
	if _, err := s.UpdateTransfer(ctx, tr.ID, func(t *outpost.Transfer) error { return coded }); outpost.ErrorCode(err) != outpost.ECONFLICT {
		t.Errorf("coded callback error: %v", err)
	}
	if x, _ := s.Transfer(ctx, tr.ID); x.Bytes != 512 {
		t.Errorf("a failed update changed the transfer: bytes %d", x.Bytes)
	}
	_, err = s.UpdateTransfer(ctx, "t-missing", func(*outpost.Transfer) error { return nil })
	wantCode(t, "update unknown", err, outpost.ENOTFOUND)
}

func testJobs(t *testing.T, s OTAStore) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "pump")
	a := MustCreateArtifact(t, s, "fw.bin", "2.0")
	now := time.Now().UTC().Truncate(time.Millisecond)
	job := func(id string) (*outpost.FirmwareJob, *outpost.Transfer) {
		tr := newTransfer(d.ID, a.ID, "fw.bin")
		tr.JobID = id
		return &outpost.FirmwareJob{ID: id, DeviceID: d.ID, ArtifactID: a.ID, TransferID: tr.ID, FromVersion: "1.0", TargetVersion: "2.0",
			State: outpost.JobInstalling, Phase: "ordered", Timeout: 90 * time.Second, CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour)}, tr
	}
	_, err := s.ActiveJob(ctx, d.ID)
	wantCode(t, "no active job", err, outpost.ENOTFOUND)
	j1, t1 := job("j-1")
	if err := s.CreateJob(ctx, j1, t1); err != nil {
		t.Fatal(err)
	}
	if tr, err := s.Transfer(ctx, t1.ID); err != nil || tr.JobID != "j-1" {
		t.Errorf("job's transfer: %+v, %v", tr, err)
	}
	j2, t2 := job("j-2")
	wantCode(t, "second active job", s.CreateJob(ctx, j2, t2), outpost.ECONFLICT)
	if _, err := s.Transfer(ctx, t2.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Errorf("the refused job's transfer was stored: %v", err)
	}
	jx, tx := job("j-x")
	jx.DeviceID, tx.DeviceID = "d-missing", "d-missing"
	wantCode(t, "job of unknown device", s.CreateJob(ctx, jx, tx), outpost.ENOTFOUND)
	got, err := s.ActiveJob(ctx, d.ID)
	if err != nil || got.ID != "j-1" || got.Timeout != 90*time.Second || got.FromVersion != "1.0" || !got.ExpiresAt.Equal(j1.ExpiresAt) {
		t.Fatalf("active job %+v, %v", got, err)
	}
	fin, err := s.UpdateJob(ctx, "j-1", func(j *outpost.FirmwareJob) error {
		j.State, j.Error, j.ReportedVersion, j.FinishedAt = outpost.JobError, "version_unchanged", "1.0", now
		return nil
	})
	if err != nil || fin.State != outpost.JobError {
		t.Fatalf("finish job: %+v, %v", fin, err)
	}
	_, err = s.UpdateJob(ctx, "j-1", func(j *outpost.FirmwareJob) error { j.State = outpost.JobInstalling; return nil })
	wantCode(t, "reopen a finished job", err, outpost.ECONFLICT)
	if err := s.CreateJob(ctx, j2, t2); err != nil {
		t.Fatalf("new job once the first finished: %v", err)
	}
	jobs, err := s.Jobs(ctx, outpost.JobFilter{DeviceID: d.ID})
	if err != nil || len(jobs) != 2 || jobs[0].ID != "j-2" || jobs[1].ID != "j-1" || jobs[1].ReportedVersion != "1.0" {
		t.Errorf("jobs newest first: %v, %v", jobs, err)
	}
	if act, _ := s.Jobs(ctx, outpost.JobFilter{Active: true}); len(act) != 1 || act[0].ID != "j-2" {
		t.Errorf("active jobs: %v", act)
	}
	_, err = s.Job(ctx, "j-missing")
	wantCode(t, "unknown job", err, outpost.ENOTFOUND)
}

func testDeviceReports(t *testing.T, s OTAStore) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "pump")
	files, err := s.DeviceFiles(ctx, d.ID)
	if err != nil || len(files.Files) != 0 || !files.ReportedAt.IsZero() {
		t.Errorf("no report yet: %+v, %v", files, err)
	}
	at := time.Now().UTC().Truncate(time.Millisecond)
	want := []outpost.DeviceFile{{Name: "a b.txt", Size: 3, SHA256: "ab"}, {Name: "ünïcode", Size: 0, SHA256: ""}}
	if err := s.SetDeviceFiles(ctx, d.ID, want, at); err != nil {
		t.Fatal(err)
	}
	files, err = s.DeviceFiles(ctx, d.ID)
	if err != nil || !slices.Equal(files.Files, want) || !files.ReportedAt.Equal(at) {
		t.Errorf("files %+v, %v; want %v", files, err, want)
	}
	if err := s.SetDeviceFiles(ctx, d.ID, nil, at); err != nil {
		t.Fatal(err)
	}
	if files, _ := s.DeviceFiles(ctx, d.ID); len(files.Files) != 0 {
		t.Errorf("after an empty report: %v", files.Files)
	}
	if v, err := s.FirmwareVersion(ctx, d.ID); err != nil || v.Version != "" {
		t.Errorf("no version yet: %+v, %v", v, err)
	}
	if err := s.SetFirmwareVersion(ctx, d.ID, "1.2.3", at); err != nil {
		t.Fatal(err)
	}
	if v, err := s.FirmwareVersion(ctx, d.ID); err != nil || v.Version != "1.2.3" || !v.ReportedAt.Equal(at) {
		t.Errorf("version %+v, %v", v, err)
	}
	wantCode(t, "files of unknown device", s.SetDeviceFiles(ctx, "d-missing", nil, at), outpost.ENOTFOUND)
	wantCode(t, "version of unknown device", s.SetFirmwareVersion(ctx, "d-missing", "1", at), outpost.ENOTFOUND)
	_, err = s.DeviceFiles(ctx, "d-missing")
	wantCode(t, "list of unknown device", err, outpost.ENOTFOUND)
	_, err = s.FirmwareVersion(ctx, "d-missing")
	wantCode(t, "version of unknown device", err, outpost.ENOTFOUND)
}

func testOTADeviceDeleted(t *testing.T, s OTAStore) {
	ctx := context.Background()
	d := MustCreateDevice(t, s, "pump")
	a := MustCreateArtifact(t, s, "fw.bin", "2.0")
	tr := newTransfer(d.ID, a.ID, "fw.bin")
	if err := s.CreateTransfer(ctx, tr); err != nil {
		t.Fatal(err)
	}
	if err := s.SetFirmwareVersion(ctx, d.ID, "1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	_, err := s.Transfer(ctx, tr.ID)
	wantCode(t, "transfer of a deleted device", err, outpost.ENOTFOUND)
	if err := s.DeleteArtifact(ctx, a.ID); err != nil {
		t.Errorf("artifact whose only transfer went with its device: %v", err)
	}
}
