package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// binDir holds the outpost binary that the tests of the real command run.
var binDir string

// TestMain keeps device outboxes in a temporary directory, removes the
// built binary afterwards and checks for leaked goroutines.
func TestMain(m *testing.M) {
	outbox, err := os.MkdirTemp("", "outpost-outbox-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("OUTPOST_OUTBOX_DIR", outbox)
	if binDir, err = os.MkdirTemp("", "outpost-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(outbox)
	os.RemoveAll(binDir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
)

// binary builds the outpost command once per test run and returns its path.
func binary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(binDir, "outpost")
	buildOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", path, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return path
}

// cleanEnv is the environment without the variables the CLI reads, so
// that the tests do not depend on the caller's shell.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTPOST_SERVER=") && !strings.HasPrefix(kv, "OUTPOST_TOKEN=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// result is the outcome of one run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

// outpost runs the binary in dir with args and waits for it (at most a
// minute).
func outpost(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Dir, cmd.Env = dir, cleanEnv(env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("outpost %v: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

// serveProc is `outpost serve` running as a process.
type serveProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    []string
	lines  chan string
	stderr bytes.Buffer
	done   chan struct{}
}

// startServe starts `outpost serve args…` in dir and waits until it printed
// its endpoints (the "data:" line and what follows it on the same start).
func startServe(t *testing.T, dir string, args ...string) *serveProc {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"serve", "--log-level", "warn"}, args...)...)
	cmd.Dir, cmd.Env = dir, cleanEnv()
	p := &serveProc{cmd: cmd, lines: make(chan string, 100), done: make(chan struct{})}
	cmd.Stderr = &syncWriter{mu: &p.mu, w: &p.stderr}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.kill)
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.done
				t.Fatalf("serve exited before printing its endpoints: %s", p.stderrText())
			}
			if strings.HasPrefix(l, "admin token") {
				return p
			}
		case <-deadline:
			t.Fatalf("serve printed no admin token line within 30s: %q %s", p.stdoutText(), p.stderrText())
		}
	}
}

func (p *serveProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop ends serve with SIGINT, as Ctrl-C does, and waits for it.
func (p *serveProc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s of SIGINT")
	}
}

func (p *serveProc) stdoutText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.out, "\n")
}

func (p *serveProc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// line returns the value of the "name: " line serve printed.
func (p *serveProc) line(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.out {
		if v, ok := strings.CutPrefix(l, name+": "); ok {
			return v
		}
	}
	return ""
}

type syncWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
