package ota_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/protocol"
)

// pattern is a reproducible stream of pseudo-random bytes.
type pattern struct {
	r    *rand.ChaCha8
	left int64
}

func newPattern(seed byte, n int64) *pattern {
	var s [32]byte
	s[0] = seed
	return &pattern{r: rand.NewChaCha8(s), left: n}
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	p.r.Read(b)
	p.left -= int64(len(b))
	return len(b), nil
}

func patternSHA(seed byte, n int64) string {
	h := sha256.New()
	io.Copy(h, newPattern(seed, n))
	return hex.EncodeToString(h.Sum(nil))
}

// uploadStream uploads n bytes of a pattern without holding them.
func uploadStream(t testing.TB, p *outposttest.Platform, name, version string, seed byte, n int64) apiArtifact {
	t.Helper()
	req, _ := http.NewRequest("POST", p.HTTPURL()+"/api/v1/artifacts?name="+name+"&version="+version, newPattern(seed, n))
	req.ContentLength = n
	req.Header.Set("Authorization", "Bearer "+p.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var a apiArtifact
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(raw, &a) != nil {
		t.Fatalf("upload: %d %s", resp.StatusCode, raw)
	}
	return a
}

// events collects the FileEvents of a device.
type events struct {
	mu  sync.Mutex
	got []device.FileEvent
	ch  chan struct{}
}

func newEvents() *events { return &events{ch: make(chan struct{}, 1)} }

func (e *events) handler(_ context.Context, ev device.FileEvent) {
	e.mu.Lock()
	e.got = append(e.got, ev)
	e.mu.Unlock()
	select {
	case e.ch <- struct{}{}:
	default:
	}
}

func (e *events) wait(t testing.TB, transfer string, timeout time.Duration) device.FileEvent {
	t.Helper()
	deadline := time.After(timeout)
	for {
		e.mu.Lock()
		for _, ev := range e.got {
			if ev.Transfer == transfer {
				e.mu.Unlock()
				return ev
			}
		}
		e.mu.Unlock()
		select {
		case <-e.ch:
		case <-deadline:
			t.Fatalf("transfer %s did not end within %s", transfer, timeout)
		}
	}
}

// startDevice connects an SDK device with file management in a temporary
// directory.
func startDevice(t testing.TB, p *outposttest.Platform, d outposttest.Device, fopts []device.FileOption, opts ...device.Option) (*device.Client, string) {
	t.Helper()
	dir := t.TempDir()
	c, err := device.New(d.URL, append([]device.Option{device.WithMemoryOutbox(), device.WithFiles(dir, fopts...),
		device.WithLogger(outposttest.Logger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func sendFile(t testing.TB, p *outposttest.Platform, deviceID string, body map[string]any) apiTransfer {
	t.Helper()
	var tr apiTransfer
	if st := p.Do(t, "POST", "/api/v1/devices/"+deviceID+"/files", body, &tr); st != http.StatusAccepted {
		t.Fatalf("send file: status %d", st)
	}
	return tr
}

func fileSHA(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

func waitTransfer(t testing.TB, p *outposttest.Platform, id, state string) apiTransfer {
	t.Helper()
	var tr apiTransfer
	outposttest.Eventually(t, waitFor, "transfer "+state, func() bool {
		p.Do(t, "GET", "/api/v1/transfers/"+id, nil, &tr)
		return tr.State == state
	})
	return tr
}

// A 50 MiB file over 64 KiB MQTT chunks, while the device keeps answering
// RPCs; and the same file by URL. The hashes are checked on both sides.
func TestTransfer50MiB(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MiB transfers")
	}
	const size = 50 << 20
	p := outposttest.Start(t)
	a := uploadStream(t, p, "big.bin", "", 7, size)
	want := patternSHA(7, size)
	if a.SHA256 != want || a.Size != size {
		t.Fatalf("artifact %+v", a)
	}
	for _, method := range []string{"mqtt", "url"} {
		t.Run(method, func(t *testing.T) {
			d := p.CreateDevice(t, "big-"+method)
			ev := newEvents()
			c, dir := startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler), device.FileMethods(method)})
			c.Handle("ping", func(context.Context, json.RawMessage) (any, error) { return "pong", nil })
			start := time.Now()
			tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
			// RPCs keep working while the file streams in.
			calls := 0
			for {
				e := func() bool {
					ev.mu.Lock()
					defer ev.mu.Unlock()
					return len(ev.got) > 0
				}()
				if e || calls >= 200 {
					break
				}
				var res struct {
					Result string `json:"result"`
				}
				if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/rpc/ping?timeout=5s", nil, &res); st != http.StatusOK || res.Result != "pong" {
					t.Fatalf("rpc during the transfer: status %d %+v", st, res)
				}
				calls++
			}
			got := ev.wait(t, tr.ID, 2*time.Minute)
			took := time.Since(start)
			if got.State != protocol.FileReady {
				t.Fatalf("transfer ended %+v", got)
			}
			if got.Path != filepath.Join(dir, "big.bin") || fileSHA(t, got.Path) != want {
				t.Fatalf("file at %s does not match", got.Path)
			}
			fin := waitTransfer(t, p, tr.ID, "FILE_READY")
			if fin.Method != method || fin.Percent != 100 {
				t.Errorf("transfer %+v", fin)
			}
			var files struct {
				Files []struct{ Name, SHA256 string } `json:"files"`
			}
			outposttest.Eventually(t, waitFor, "file list reported", func() bool {
				p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/files", nil, &files)
				return len(files.Files) == 1 && files.Files[0].SHA256 == want
			})
			t.Logf("%s: 50 MiB in %s (%.0f MB/s), %d RPCs answered meanwhile", method, took.Round(time.Millisecond), float64(size)/took.Seconds()/1e6, calls)
		})
	}
}

// A file the platform does not hold: the device downloads it from the
// URL the application gave, with its own downloader, and checks the
// hash.
func TestExternalURLWithOwnDownloader(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "external")
	content := randomBytes(70_000)
	var asked []string
	var mu sync.Mutex
	dl := func(_ context.Context, u string, off int64, w io.Writer) error {
		mu.Lock()
		asked = append(asked, u)
		mu.Unlock()
		_, err := w.Write(content[off:])
		return err
	}
	ev := newEvents()
	_, dir := startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler), device.FileDownloader(dl)})
	tr := sendFile(t, p, d.ID, map[string]any{"url": "https://files.example.com/data.bin", "name": "data.bin", "sha256": hexSHA(content), "size": len(content)})
	if got := ev.wait(t, tr.ID, waitFor); got.State != protocol.FileReady {
		t.Fatalf("transfer %+v", got)
	}
	if fileSHA(t, filepath.Join(dir, "data.bin")) != hexSHA(content) {
		t.Fatal("hash mismatch")
	}
	mu.Lock()
	if len(asked) != 1 || asked[0] != "https://files.example.com/data.bin" {
		t.Errorf("downloader asked for %v", asked)
	}
	mu.Unlock()
	fin := waitTransfer(t, p, tr.ID, "FILE_READY")
	if fin.Method != "url" {
		t.Errorf("transfer %+v", fin)
	}
	// A wrong hash fails the transfer with file_hash_mismatch.
	tr2 := sendFile(t, p, d.ID, map[string]any{"url": "https://files.example.com/data.bin", "name": "other.bin", "sha256": hexSHA([]byte("not it"))})
	if got := ev.wait(t, tr2.ID, waitFor); got.Error != protocol.FileErrHashMismatch {
		t.Errorf("transfer %+v", got)
	}
}

// The low-resource mode asks for small chunks, one at a time.
func TestLowResourceMode(t *testing.T) {
	log := newChunkLog()
	p := outposttest.Start(t, withHook(log))
	d := p.CreateDevice(t, "small-device")
	a := uploadStream(t, p, "data.bin", "", 11, 40_000)
	ev := newEvents()
	startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler)}, device.WithLowResource())
	tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
	if got := ev.wait(t, tr.ID, waitFor); got.State != protocol.FileReady {
		t.Fatalf("transfer %+v", got)
	}
	fin := waitTransfer(t, p, tr.ID, "FILE_READY")
	if fin.ChunkSize != 4096 {
		t.Errorf("chunk size %d, want 4096", fin.ChunkSize)
	}
	if n := len(log.snapshot(tr.ID)); n != 10 {
		t.Errorf("%d chunks sent, want 10", n)
	}
}
