package ota_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

// fakeFirmware is a firmware handler that records what it installs.
type fakeFirmware struct {
	version string
	fail    error

	mu        sync.Mutex
	installed []string // SHA-256 of each image installed
}

func (f *fakeFirmware) Version() string { return f.version }

func (f *fakeFirmware) Install(ctx context.Context, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	f.installed = append(f.installed, hexSHA(b))
	return f.fail
}

func (f *fakeFirmware) installs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.installed...)
}

// fwDevice is an SDK device with a firmware handler, whose restart the
// test plays: WithReset signals restarted.
type fwDevice struct {
	c         *device.Client
	dir       string
	fw        *fakeFirmware
	restarted chan struct{}
}

func platformKey(t *testing.T, p *outposttest.Platform) ed25519.PublicKey {
	t.Helper()
	var k struct {
		PublicKey string `json:"public_key"`
	}
	p.Do(t, "GET", "/api/v1/signing-key", nil, &k)
	pub, err := protocol.ParsePublicKey(k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func startFirmwareDevice(t *testing.T, p *outposttest.Platform, d outposttest.Device, dir string, fw *fakeFirmware, opts ...device.FirmwareOption) *fwDevice {
	t.Helper()
	fd := &fwDevice{dir: dir, fw: fw, restarted: make(chan struct{}, 1)}
	c, err := device.New(d.URL, device.WithMemoryOutbox(), device.WithFiles(dir), device.WithLogger(outposttest.Logger(t)),
		device.WithReset(func(context.Context) error {
			fd.restarted <- struct{}{}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.HandleFirmware(fw, opts...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	fd.c = c
	outposttest.Eventually(t, waitFor, "version "+fw.version+" reported", func() bool {
		var st struct{ Version string }
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/firmware", nil, &st)
		return st.Version == fw.version
	})
	return fd
}

func orderUpdate(t *testing.T, p *outposttest.Platform, deviceID, artifact string, extra map[string]any) apiJob {
	t.Helper()
	body := map[string]any{"artifact": artifact}
	for k, v := range extra {
		body[k] = v
	}
	var j apiJob
	if st := p.Do(t, "POST", "/api/v1/devices/"+deviceID+"/firmware", body, &j); st != http.StatusAccepted {
		t.Fatalf("order update: status %d", st)
	}
	return j
}

// waitJob waits for a job to finish.
func waitJob(t *testing.T, p *outposttest.Platform, id string) apiJob {
	t.Helper()
	var j apiJob
	outposttest.Eventually(t, waitFor, "job to finish", func() bool {
		p.Do(t, "GET", "/api/v1/firmware/jobs/"+id, nil, &j)
		return j.State != "INSTALLING"
	})
	return j
}

func (fd *fwDevice) awaitRestart(t *testing.T) {
	t.Helper()
	select {
	case <-fd.restarted:
	case <-time.After(waitFor):
		t.Fatal("the device was not restarted")
	}
}

// An update runs to SUCCESS only once the device is back with the new
// version; with the old version it is an ERROR (version_unchanged).
func TestFirmwareUpdate(t *testing.T) {
	for _, tc := range []struct {
		name, after, state, kind string
	}{
		{"success", "2.0.0", "SUCCESS", ""},
		{"version unchanged", "1.0.0", "ERROR", protocol.FirmwareErrVersionUnchanged},
		{"another version", "1.5.0", "ERROR", protocol.FirmwareErrUnexpected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := outposttest.Start(t)
			d := p.CreateDevice(t, "fw")
			key := platformKey(t, p)
			image := randomBytes(200_000)
			a := upload(t, p, "fw.bin", "2.0.0", image)
			dir := t.TempDir()
			fw := &fakeFirmware{version: "1.0.0"}
			fd := startFirmwareDevice(t, p, d, dir, fw, device.FirmwareKey(key))
			j := orderUpdate(t, p, d.ID, a.ID, nil)
			fd.awaitRestart(t)
			if got := fw.installs(); len(got) != 1 || got[0] != hexSHA(image) {
				t.Fatalf("installed %v", got)
			}
			// The restart is announced before it happens; the job waits
			// for the device to come back.
			var cur apiJob
			outposttest.Eventually(t, waitFor, "phase restarting", func() bool {
				p.Do(t, "GET", "/api/v1/firmware/jobs/"+j.ID, nil, &cur)
				return cur.Phase == "restarting" && cur.State == "INSTALLING"
			})
			fd.c.Close()
			// The device comes back: a new process on the same directory.
			startFirmwareDevice(t, p, d, dir, &fakeFirmware{version: tc.after}, device.FirmwareKey(key))
			got := waitJob(t, p, j.ID)
			if got.State != tc.state || got.Error != tc.kind || got.ReportedVersion != tc.after {
				t.Fatalf("job %+v, want %s %s", got, tc.state, tc.kind)
			}
			// The device drops its record once the platform acknowledged
			// its version report.
			outposttest.Eventually(t, waitFor, "the update's record gone", func() bool {
				_, err := os.Stat(filepath.Join(dir, ".outpost", "firmware.json"))
				return os.IsNotExist(err)
			})
		})
	}
}

// An image signed by another key, or not matching its signature, is
// refused before anything is installed.
func TestBadSignatureRefused(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "fw-sig")
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	a := upload(t, p, "fw.bin", "2.0.0", randomBytes(100_000))
	dir := t.TempDir()
	fw := &fakeFirmware{version: "1.0.0"}
	startFirmwareDevice(t, p, d, dir, fw, device.FirmwareKey(other))
	j := orderUpdate(t, p, d.ID, a.ID, nil)
	got := waitJob(t, p, j.ID)
	if got.State != "ERROR" || got.Error != protocol.FirmwareErrSignature {
		t.Fatalf("job %+v, want ERROR %s", got, protocol.FirmwareErrSignature)
	}
	if n := len(fw.installs()); n != 0 {
		t.Errorf("%d images installed", n)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".outpost", "t-*"))
	if len(left) != 0 {
		t.Errorf("the refused image is left: %v", left)
	}
}

// Without a key configured the device installs nothing.
func TestUnsignedRefusedWithoutKey(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "fw-nokey")
	a := upload(t, p, "fw.bin", "2.0.0", randomBytes(10_000))
	fw := &fakeFirmware{version: "1.0.0"}
	startFirmwareDevice(t, p, d, t.TempDir(), fw)
	j := orderUpdate(t, p, d.ID, a.ID, nil)
	if got := waitJob(t, p, j.ID); got.Error != protocol.FirmwareErrSignature {
		t.Fatalf("job %+v", got)
	}
	if n := len(fw.installs()); n != 0 {
		t.Errorf("%d images installed", n)
	}
}

// The install handler fails: ERROR install_failed, with its message, and
// no restart.
func TestInstallFails(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "fw-fail")
	a := upload(t, p, "fw.bin", "2.0.0", randomBytes(10_000))
	fw := &fakeFirmware{version: "1.0.0", fail: errors.New("flash write failed at block 7")}
	fd := startFirmwareDevice(t, p, d, t.TempDir(), fw, device.FirmwareKey(platformKey(t, p)))
	j := orderUpdate(t, p, d.ID, a.ID, nil)
	got := waitJob(t, p, j.ID)
	if got.State != "ERROR" || got.Error != protocol.FirmwareErrInstall || !strings.Contains(got.Message, "flash write failed") {
		t.Fatalf("job %+v", got)
	}
	select {
	case <-fd.restarted:
		t.Error("the device restarted after a failed install")
	default:
	}
}

// The stage callback vetoes at each stage; the later steps never run.
func TestStageVeto(t *testing.T) {
	for _, stage := range []device.FirmwareStage{device.StageStart, device.StageRecord, device.StageReset} {
		t.Run(stage.String(), func(t *testing.T) {
			p := outposttest.Start(t)
			d := p.CreateDevice(t, "fw-veto")
			a := upload(t, p, "fw.bin", "2.0.0", randomBytes(10_000))
			fw := &fakeFirmware{version: "1.0.0"}
			var seen []device.FirmwareStage
			var mu sync.Mutex
			fd := startFirmwareDevice(t, p, d, t.TempDir(), fw, device.FirmwareKey(platformKey(t, p)),
				device.FirmwareStages(func(_ context.Context, s device.FirmwareStage, u device.FirmwareUpdate) bool {
					mu.Lock()
					defer mu.Unlock()
					seen = append(seen, s)
					return s != stage
				}))
			j := orderUpdate(t, p, d.ID, a.ID, nil)
			got := waitJob(t, p, j.ID)
			if got.State != "ERROR" || got.Error != protocol.FirmwareErrVetoed {
				t.Fatalf("job %+v", got)
			}
			installed := len(fw.installs())
			if (stage == device.StageReset) != (installed == 1) {
				t.Errorf("%d installs after a veto at %s", installed, stage)
			}
			select {
			case <-fd.restarted:
				t.Error("restarted after a veto")
			default:
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != int(stage)+1 {
				t.Errorf("stages seen %v", seen)
			}
		})
	}
}

// A device that never comes back from its restart times out.
func TestDeviceNeverReturns(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "fw-gone")
	a := upload(t, p, "fw.bin", "2.0.0", randomBytes(10_000))
	fd := startFirmwareDevice(t, p, d, t.TempDir(), &fakeFirmware{version: "1.0.0"}, device.FirmwareKey(platformKey(t, p)))
	j := orderUpdate(t, p, d.ID, a.ID, map[string]any{"timeout": "1s"})
	fd.awaitRestart(t)
	fd.c.Close()
	got := waitJob(t, p, j.ID)
	if got.State != "ERROR" || got.Error != protocol.FirmwareErrTimeout {
		t.Fatalf("job %+v", got)
	}
}

// check_jobs, the built-in RPC, tells whether an update waits, and the
// platform aborts an update in progress.
func TestCheckJobsAndAbort(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "fw-check")
	a := upload(t, p, "fw.bin", "2.0.0", randomBytes(10_000))
	hold := make(chan bool)
	fw := &fakeFirmware{version: "1.0.0"}
	startFirmwareDevice(t, p, d, t.TempDir(), fw, device.FirmwareKey(platformKey(t, p)),
		device.FirmwareStages(func(ctx context.Context, s device.FirmwareStage, u device.FirmwareUpdate) bool {
			if s != device.StageStart {
				return true
			}
			select {
			case ok := <-hold:
				return ok
			case <-ctx.Done():
				return false
			}
		}))
	var res struct {
		Result json.RawMessage `json:"result"`
	}
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/check_jobs", nil, &res); st != http.StatusOK || string(res.Result) != `{"pending":false}` {
		t.Fatalf("check_jobs with nothing waiting: %d %s", st, res.Result)
	}
	j := orderUpdate(t, p, d.ID, a.ID, nil)
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/check_jobs", nil, &res); st != http.StatusOK || !strings.Contains(string(res.Result), j.ID) {
		t.Fatalf("check_jobs with an update waiting: %d %s", st, res.Result)
	}
	var ab apiJob
	if st := p.Do(t, "POST", "/api/v1/firmware/jobs/"+j.ID+"/abort", nil, &ab); st != http.StatusOK || ab.State != "ABORTED" {
		t.Fatalf("abort: %d %+v", st, ab)
	}
	hold <- true // the device goes on; the platform has the last word
	if got := waitJob(t, p, j.ID); got.State != "ABORTED" {
		t.Errorf("job %+v", got)
	}
	var methods struct {
		Result []string `json:"result"`
	}
	p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/rpc_list", nil, &methods)
	if !strings.Contains(strings.Join(methods.Result, ","), "check_jobs") {
		t.Errorf("rpc_list %v lacks check_jobs", methods.Result)
	}
}

// blockingFirmware installs until its context ends.
type blockingFirmware struct {
	started chan struct{}
	ended   chan error
}

func (b *blockingFirmware) Version() string { return "1.0.0" }
func (b *blockingFirmware) Install(ctx context.Context, path string) error {
	close(b.started)
	<-ctx.Done()
	b.ended <- ctx.Err()
	return ctx.Err()
}

// The platform aborts an update while the device installs: the install's
// context ends, the device reports ABORTED and does not restart.
func TestAbortDuringInstall(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "fw-abort")
	a := upload(t, p, "fw.bin", "2.0.0", randomBytes(10_000))
	bf := &blockingFirmware{started: make(chan struct{}), ended: make(chan error, 1)}
	fd := &fwDevice{restarted: make(chan struct{}, 1)}
	c, err := device.New(d.URL, device.WithMemoryOutbox(), device.WithFiles(t.TempDir()),
		device.WithReset(func(context.Context) error { fd.restarted <- struct{}{}; return nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.HandleFirmware(bf, device.FirmwareKey(platformKey(t, p))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	outposttest.Eventually(t, waitFor, "version reported", func() bool {
		var st struct{ Version string }
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/firmware", nil, &st)
		return st.Version == "1.0.0"
	})
	j := orderUpdate(t, p, d.ID, a.ID, nil)
	select {
	case <-bf.started:
	case <-ctx.Done():
		t.Fatal("install did not start")
	}
	if st := p.Do(t, "POST", "/api/v1/firmware/jobs/"+j.ID+"/abort", nil, nil); st != http.StatusOK {
		t.Fatalf("abort: %d", st)
	}
	select {
	case err := <-bf.ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("install ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the install's context did not end")
	}
	if got := waitJob(t, p, j.ID); got.State != "ABORTED" {
		t.Errorf("job %+v", got)
	}
	select {
	case <-fd.restarted:
		t.Error("restarted after an abort")
	case <-time.After(200 * time.Millisecond):
	}
}
