package ota_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
	"github.com/outpost-iot/outpost/protocol"
)

// chunkLog records every chunk the platform sends (ChunkHook), and can
// damage chosen ones.
type chunkLog struct {
	mu      sync.Mutex
	sent    map[string]map[int64]int // transfer → index → times sent
	corrupt func(transfer string, index int64, n int) bool
}

func newChunkLog() *chunkLog { return &chunkLog{sent: map[string]map[int64]int{}} }

func (l *chunkLog) hook(_, transfer string, index int64, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.sent[transfer]
	if m == nil {
		m = map[int64]int{}
		l.sent[transfer] = m
	}
	m[index]++
	if l.corrupt != nil && l.corrupt(transfer, index, m[index]) {
		data[len(data)/2] ^= 0x5a // a byte flipped in flight
	}
}

func (l *chunkLog) count(transfer string, index int64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent[transfer][index]
}

// snapshot returns how often each chunk was sent so far.
func (l *chunkLog) snapshot(transfer string) map[int64]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int64]int{}
	for k, v := range l.sent[transfer] {
		out[k] = v
	}
	return out
}

func withHook(l *chunkLog) func(*server.Config) {
	return func(c *server.Config) { c.ChunkHook = l.hook }
}

// proc is a device process: the test binary started again as a device.
type proc struct {
	cmd   *exec.Cmd
	lines chan string
}

func startProc(t *testing.T, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{roleEnv + "=device"}, env...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, lines: make(chan string, 100)}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			p.lines <- s.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() { p.kill() })
	p.await(t, "ready")
	return p
}

func (p *proc) await(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("device process ended before %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			t.Fatalf("device process: no %q within %s", prefix, waitFor)
		}
	}
}

func (p *proc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
	}
}

func partSize(dir, transfer string) int64 {
	fi, err := os.Stat(filepath.Join(dir, ".outpost", "t-"+transfer+".part"))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// A device process killed with SIGKILL halfway through a transfer over
// MQTT resumes after its restart from the last chunk it wrote: no chunk it
// had is sent again. Only chunks still on their way when it died are sent
// twice: at most one with a window of one (the low-resource mode), at
// most the window otherwise.
func TestKilledDeviceResumesMQTT(t *testing.T) {
	for _, window := range []int{1, 8} {
		t.Run(fmt.Sprintf("window %d", window), func(t *testing.T) {
			const size, chunk = 2 << 20, 16 << 10
			log := newChunkLog()
			p := outposttest.Start(t, withHook(log))
			d := p.CreateDevice(t, "killed")
			a := uploadStream(t, p, "data.bin", "", 3, size)
			dir := t.TempDir()
			env := []string{"OUTPOST_OTA_URL=" + d.URL, "OUTPOST_OTA_DIR=" + dir, "OUTPOST_OTA_METHOD=mqtt",
				"OUTPOST_OTA_RATE=1000000", "OUTPOST_OTA_WINDOW=" + strconv.Itoa(window)}
			dev := startProc(t, env...)
			tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
			outposttest.Eventually(t, waitFor, "half the file on the device", func() bool { return partSize(dir, tr.ID) >= size/2 })
			dev.kill()
			had := partSize(dir, tr.ID) / chunk // chunks on disk when the process died
			before := log.snapshot(tr.ID)
			dev = startProc(t, env...)
			if l := dev.await(t, "file "); l != "file FILE_READY data.bin" {
				t.Fatalf("device: %s", l)
			}
			if got := fileSHA(t, filepath.Join(dir, "data.bin")); got != a.SHA256 {
				t.Fatal("file hash mismatch after the resume")
			}
			after := log.snapshot(tr.ID)
			again := 0
			for i := int64(0); i < size/chunk; i++ {
				if i < had && after[i] != before[i] {
					t.Errorf("chunk %d, which the device had, was sent again", i)
				}
				again += after[i] - 1
			}
			// What is sent again is what was on its way when the device
			// died: with a window of one, at most one chunk; with a larger
			// window at most the window (the platform stops as soon as it
			// sees the device gone, but a device that lags behind its
			// socket may have had a full window in transit).
			if again > window {
				t.Errorf("%d chunks sent again after the restart, want at most %d", again, window)
			}
			t.Logf("killed with %d of %d chunks on disk; %d chunks sent again", had, size/chunk, again)
			waitTransfer(t, p, tr.ID, "FILE_READY")
		})
	}
}

// rangeProxy stands between devices and the platform's download URLs: it
// records each request's Range header and slows the answers down, so a
// test can kill a device halfway.
type rangeProxy struct {
	target string
	mu     sync.Mutex
	ranges []string
	served []int64 // bytes passed on, per request
}

func (rp *rangeProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rp.mu.Lock()
	rp.ranges = append(rp.ranges, r.Header.Get("Range"))
	rp.served = append(rp.served, 0)
	i := len(rp.served) - 1
	rp.mu.Unlock()
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, rp.target+r.URL.RequestURI(), nil)
	if v := r.Header.Get("Range"); v != "" {
		req.Header.Set("Range", v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	buf := make([]byte, 16<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			w.(http.Flusher).Flush()
			rp.mu.Lock()
			rp.served[i] += int64(n)
			rp.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
		if err != nil {
			return
		}
	}
}

// A device process killed halfway through a download resumes it after its
// restart with a Range request from what it had written.
func TestKilledDeviceResumesURL(t *testing.T) {
	const size = 2 << 20
	rp := &rangeProxy{}
	proxy := httptest.NewServer(rp)
	t.Cleanup(proxy.Close)
	p := outposttest.Start(t, func(c *server.Config) { c.PublicURL = proxy.URL })
	rp.target = p.HTTPURL()
	d := p.CreateDevice(t, "killed-url")
	a := uploadStream(t, p, "data.bin", "", 4, size)
	dir := t.TempDir()
	env := []string{"OUTPOST_OTA_URL=" + d.URL, "OUTPOST_OTA_DIR=" + dir, "OUTPOST_OTA_METHOD=url"}
	dev := startProc(t, env...)
	tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
	outposttest.Eventually(t, waitFor, "half the file on the device", func() bool { return partSize(dir, tr.ID) >= size/2 })
	dev.kill()
	had := partSize(dir, tr.ID)
	dev = startProc(t, env...)
	if l := dev.await(t, "file "); l != "file FILE_READY data.bin" {
		t.Fatalf("device: %s", l)
	}
	if got := fileSHA(t, filepath.Join(dir, "data.bin")); got != a.SHA256 {
		t.Fatal("file hash mismatch after the resume")
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	want := fmt.Sprintf("bytes=%d-", had)
	if len(rp.ranges) != 2 || rp.ranges[0] != "" || rp.ranges[1] != want {
		t.Errorf("range headers %q, want [\"\" %q]", rp.ranges, want)
	}
	if len(rp.served) == 2 && rp.served[1] != size-had {
		t.Errorf("%d bytes served after the restart, want the %d missing", rp.served[1], size-had)
	}
	t.Logf("killed with %d of %d bytes; resumed with %q", had, size, want)
}

// The platform restarts in the middle of a transfer; the device reconnects
// and the transfer goes on to the end.
func TestPlatformRestartMidTransfer(t *testing.T) {
	const size = 2 << 20
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "restart")
	a := uploadStream(t, p, "data.bin", "", 5, size)
	ev := newEvents()
	_, dir := startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler), device.FileRate(1 << 20),
		device.FileChunkSize(16 << 10), device.FileTimeout(2 * time.Second)}, device.WithReconnectBackoff(20*time.Millisecond, 100*time.Millisecond))
	tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
	outposttest.Eventually(t, waitFor, "a quarter of the file on the device", func() bool { return partSize(dir, tr.ID) >= size/4 })
	p.Restart(t)
	if got := ev.wait(t, tr.ID, waitFor); got.State != protocol.FileReady {
		t.Fatalf("transfer ended %+v", got)
	}
	if fileSHA(t, filepath.Join(dir, "data.bin")) != a.SHA256 {
		t.Fatal("file hash mismatch")
	}
	waitTransfer(t, p, tr.ID, "FILE_READY")
}

// A chunk damaged on its way (a flipped byte) fails its hash; the device
// asks for it again and the file arrives intact.
func TestCorruptChunkIsRequestedAgain(t *testing.T) {
	log := newChunkLog()
	log.corrupt = func(_ string, index int64, n int) bool { return index == 5 && n == 1 }
	p := outposttest.Start(t, withHook(log))
	d := p.CreateDevice(t, "corrupt")
	a := uploadStream(t, p, "data.bin", "", 6, 1<<20)
	ev := newEvents()
	_, dir := startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler), device.FileChunkSize(16 << 10)})
	tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
	if got := ev.wait(t, tr.ID, waitFor); got.State != protocol.FileReady {
		t.Fatalf("transfer ended %+v", got)
	}
	if fileSHA(t, filepath.Join(dir, "data.bin")) != a.SHA256 {
		t.Fatal("file hash mismatch")
	}
	if n := log.count(tr.ID, 5); n != 2 {
		t.Errorf("chunk 5 sent %d times, want 2 (once damaged, once again)", n)
	}
}

// A chunk that arrives damaged every time fails the transfer once the
// retries are used up.
func TestRetriesExhausted(t *testing.T) {
	log := newChunkLog()
	log.corrupt = func(_ string, index int64, _ int) bool { return index == 3 }
	p := outposttest.Start(t, withHook(log))
	d := p.CreateDevice(t, "retries")
	a := uploadStream(t, p, "data.bin", "", 8, 256<<10)
	ev := newEvents()
	_, dir := startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler), device.FileChunkSize(16 << 10), device.FileRetries(2)})
	tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
	got := ev.wait(t, tr.ID, waitFor)
	if got.State != protocol.FileError || got.Error != protocol.FileErrRetryExceeded {
		t.Fatalf("transfer ended %+v, want ERROR %s", got, protocol.FileErrRetryExceeded)
	}
	fin := waitTransfer(t, p, tr.ID, "ERROR")
	if fin.Error != protocol.FileErrRetryExceeded {
		t.Errorf("platform: %+v", fin)
	}
	if n := log.count(tr.ID, 3); n != 3 {
		t.Errorf("chunk 3 sent %d times, want 3 (1 + 2 retries)", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "data.bin")); err == nil {
		t.Error("a failed file was put in place")
	}
	if partSize(dir, tr.ID) != 0 {
		t.Error("the failed transfer's part file is left")
	}
}

// The platform aborts a transfer halfway: the device stops, drops what it
// has, and nothing is put in place.
func TestPlatformAbortsTransfer(t *testing.T) {
	const size = 2 << 20
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "abort")
	a := uploadStream(t, p, "data.bin", "", 9, size)
	ev := newEvents()
	_, dir := startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler), device.FileRate(1 << 20), device.FileChunkSize(16 << 10)})
	tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
	outposttest.Eventually(t, waitFor, "some of the file on the device", func() bool { return partSize(dir, tr.ID) >= size/8 })
	var ab apiTransfer
	if st := p.Do(t, "POST", "/api/v1/transfers/"+tr.ID+"/abort", nil, &ab); st != http.StatusOK || ab.State != "ABORTED" {
		t.Fatalf("abort: %d %+v", st, ab)
	}
	got := ev.wait(t, tr.ID, waitFor)
	if got.State != protocol.FileAborted {
		t.Fatalf("device: transfer ended %+v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, ".outpost", "t-"+tr.ID+".part")); err == nil {
		t.Error("the aborted transfer's part file is left")
	}
	if _, err := os.Stat(filepath.Join(dir, "data.bin")); err == nil {
		t.Error("an aborted file was put in place")
	}
	if st := p.Do(t, "POST", "/api/v1/transfers/"+tr.ID+"/abort", nil, nil); st != http.StatusConflict {
		t.Errorf("abort twice: %d, want 409", st)
	}
	_ = io.EOF
}
