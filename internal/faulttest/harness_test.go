// Package faulttest holds the fault tests of issue 3: the platform or a
// device process is killed with SIGKILL, or the platform goes away for a
// while, and every reading a device accepted must end up stored exactly
// once.
//
// The test binary plays every part. Run normally it is the test driver;
// started again with OUTPOST_FAULT_ROLE set it becomes a platform process
// (role "platform") or a device process (role "device"), so a test can kill
// one of them with SIGKILL and start it again on the same data directory.
// Everything listens on 127.0.0.1 and every test is bounded in time.
package faulttest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/server"
	"github.com/outpost-iot/outpost/internal/sqlite"
)

const roleEnv = "OUTPOST_FAULT_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "platform":
		os.Exit(runPlatform())
	case "device":
		os.Exit(runDevice())
	}
	os.Exit(m.Run())
}

// runPlatform is the platform process: it serves until SIGTERM (clean
// shutdown) or SIGKILL (crash).
func runPlatform() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s, err := server.Open(ctx, server.Config{
		DataDir:    os.Getenv("OUTPOST_FAULT_DATA"),
		MQTTAddr:   os.Getenv("OUTPOST_FAULT_MQTT"),
		HTTPAddr:   os.Getenv("OUTPOST_FAULT_HTTP"),
		AdminToken: "op_faulttest",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "platform:", err)
		return 1
	}
	fmt.Printf("mqtt: %s\nhttp: %s\n", s.MQTTAddr(), s.HTTPURL())
	<-ctx.Done()
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "platform close:", err)
		return 1
	}
	return 0
}

// proc is a child process of the test binary.
type proc struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	mu    sync.Mutex
	out   []string
}

// spawn starts the test binary in role with env and collects its stdout
// lines. The process is killed when the test ends.
func spawn(t *testing.T, role string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{roleEnv + "=" + role}, env...)...)
	cmd.Stderr = &testWriter{t: t, prefix: role + ": "}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s process: %v", role, err)
	}
	p := &proc{cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill() })
	return p
}

// waitLine returns the first line with prefix, or fails after timeout.
func (p *proc) waitLine(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("process exited before printing %q", prefix)
			}
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return strings.TrimSpace(rest)
			}
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %q", timeout, prefix)
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop asks for a clean shutdown and waits up to 30 s.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("process exited with status %d", code)
		}
	case <-time.After(30 * time.Second):
		p.kill()
		t.Fatal("process did not stop within 30 s of SIGTERM")
	}
}

// platform is a platform process and how to reach it.
type platform struct {
	*proc
	dir        string
	mqtt, http string
}

// startPlatform starts a platform process on dir. mqttAddr and httpAddr
// are listen addresses ("127.0.0.1:0" for a fresh port; a restart passes
// the previous ports so devices find it again).
func startPlatform(t *testing.T, dir, mqttAddr, httpAddr string) *platform {
	t.Helper()
	var p *proc
	for attempt := 0; ; attempt++ {
		p = spawn(t, "platform", "OUTPOST_FAULT_DATA="+dir, "OUTPOST_FAULT_MQTT="+mqttAddr, "OUTPOST_FAULT_HTTP="+httpAddr)
		select {
		case l, ok := <-p.lines:
			if ok && strings.HasPrefix(l, "mqtt: ") {
				pl := &platform{proc: p, dir: dir, mqtt: strings.TrimPrefix(l, "mqtt: ")}
				pl.http = p.waitLine(t, "http: ", 30*time.Second)
				return pl
			}
		case <-time.After(60 * time.Second):
			t.Fatal("platform did not start within 60 s")
		}
		// The process exited: the old port may linger for an instant
		// after a kill. Try again for a few seconds.
		<-p.done
		if attempt == 50 {
			t.Fatal("platform process keeps failing to start (see its log above)")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// restart starts the platform again on the same directory and ports.
func (pl *platform) restart(t *testing.T) *platform {
	t.Helper()
	return startPlatform(t, pl.dir, pl.mqtt, strings.TrimPrefix(pl.http, "http://"))
}

// do calls the platform API.
func (pl *platform) do(t *testing.T, method, path string, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, pl.http+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer op_faulttest")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %v (%s)", method, path, err, raw)
		}
	}
	return resp.StatusCode
}

type testDevice struct {
	ID       string `json:"id"`
	Password string `json:"password"`
}

func (pl *platform) createDevice(t *testing.T, name string) testDevice {
	t.Helper()
	var d testDevice
	if st := pl.do(t, "POST", "/api/v1/devices", `{"name":"`+name+`"}`, &d); st != http.StatusCreated {
		t.Fatalf("create device: status %d", st)
	}
	return d
}

func (pl *platform) url(d testDevice) string {
	return "mqtt://" + d.ID + ":" + d.Password + "@" + pl.mqtt
}

// storedReadings scrapes outpost_readings_stored_total; -1 when the
// platform does not answer.
func (pl *platform) storedReadings() int {
	return int(metricValue(pl.http, "outpost_readings_stored_total"))
}

// metricValue reads one unlabelled metric from the platform at httpURL;
// -1 when the platform does not answer or has no such metric.
func metricValue(httpURL, name string) float64 {
	resp, err := http.Get(httpURL + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// verifyExactlyOnce opens the stopped platform's database and checks that
// device id holds exactly the readings of feed "seq" with values 0..n-1,
// each once, stored in the order they were produced. The readings share
// one timestamp, so the store returns them in the order it stored them.
func verifyExactlyOnce(t *testing.T, dir string, ids []string, n int) {
	t.Helper()
	ctx := context.Background()
	db, err := sqlite.Open(ctx, filepath.Join(dir, "outpost.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, id := range ids {
		rs, err := db.Readings(ctx, outpost.ReadingFilter{DeviceID: id, Feed: "seq", Since: 1, Limit: 10 * n})
		if err != nil {
			t.Fatal(err)
		}
		seen := make([]int, n)
		prev := -1
		outOfOrder, bad := 0, 0
		for _, r := range rs {
			v, err := strconv.Atoi(string(r.Value))
			if err != nil || v < 0 || v >= n {
				bad++
				continue
			}
			seen[v]++
			if v < prev {
				outOfOrder++
			}
			prev = v
		}
		missing, dup := 0, 0
		for _, c := range seen {
			switch {
			case c == 0:
				missing++
			case c > 1:
				dup += c - 1
			}
		}
		if missing != 0 || dup != 0 || bad != 0 || outOfOrder != 0 {
			t.Errorf("device %s: %d readings stored for %d sent: %d missing, %d stored twice, %d foreign, %d out of order",
				id, len(rs), n, missing, dup, bad, outOfOrder)
		}
	}
}

type testWriter struct {
	t      *testing.T
	prefix string
	mu     sync.Mutex
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if os.Getenv("OUTPOST_TEST_LOG") != "" {
		fmt.Fprint(os.Stderr, w.prefix+string(p))
	}
	return len(p), nil
}
