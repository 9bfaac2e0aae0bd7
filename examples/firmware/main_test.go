package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

func TestMain(m *testing.M) { outposttest.Main(m) }

// build compiles this example with its version set.
func build(t *testing.T, version, out string) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go toolchain not found")
	}
	cmd := exec.Command(gobin, "build", "-ldflags", "-X main.version="+version, "-o", out, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", version, err, b)
	}
}

// The example updates itself: the running 1.0.0 binary fetches 1.1.0,
// checks its signature, replaces itself and re-executes; the platform
// counts the update a success once the same process is back with 1.1.0.
func TestSelfUpdate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the example twice")
	}
	bin := t.TempDir()
	build(t, "1.0.0", filepath.Join(bin, "v1"))
	build(t, "1.1.0", filepath.Join(bin, "v2"))
	image, err := os.ReadFile(filepath.Join(bin, "v2"))
	if err != nil {
		t.Fatal(err)
	}
	p := outposttest.Start(t)
	var key struct {
		PublicKey string `json:"public_key"`
	}
	p.Do(t, "GET", "/api/v1/signing-key", nil, &key)
	req, _ := http.NewRequest("POST", p.HTTPURL()+"/api/v1/artifacts?name=fwdemo&version=1.1.0", bytes.NewReader(image))
	req.Header.Set("Authorization", "Bearer "+p.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var a struct{ ID string }
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	jsonDecode(t, b, &a)

	for _, method := range []string{"mqtt", "url"} {
		t.Run(method, func(t *testing.T) {
			d := p.CreateDevice(t, "fwdemo-"+method)
			work := t.TempDir()
			exe := filepath.Join(work, "fwdemo")
			v1, _ := os.ReadFile(filepath.Join(bin, "v1"))
			if err := os.WriteFile(exe, v1, 0o755); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(exe, "-method", method)
			cmd.Env = append(os.Environ(), "OUTPOST_DEVICE_URL="+d.URL, "OUTPOST_FIRMWARE_KEY="+key.PublicKey,
				"OUTPOST_FILES_DIR="+filepath.Join(work, "files"), "OUTPOST_OUTBOX_DIR="+filepath.Join(work, "outbox"))
			out, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cmd.Process.Signal(os.Interrupt)
				done := make(chan struct{})
				go func() { cmd.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					cmd.Process.Kill()
					<-done
				}
			})
			lines := make(chan string, 100)
			go func() {
				s := bufio.NewScanner(out)
				for s.Scan() {
					lines <- s.Text()
				}
				close(lines)
			}()
			await := func(prefix string) string {
				t.Helper()
				deadline := time.After(30 * time.Second)
				for {
					select {
					case l, ok := <-lines:
						if !ok {
							t.Fatalf("the device ended before %q", prefix)
						}
						if strings.HasPrefix(l, prefix) {
							return l
						}
					case <-deadline:
						t.Fatalf("no %q from the device", prefix)
					}
				}
			}
			first := await("running version 1.0.0")
			var job struct {
				ID, State, Error, Message string
				ReportedVersion           string `json:"reported_version"`
			}
			outposttest.Eventually(t, 10*time.Second, "version reported", func() bool {
				var st struct{ Version string }
				p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/firmware", nil, &st)
				return st.Version == "1.0.0"
			})
			if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/firmware", map[string]any{"artifact": a.ID, "timeout": "1m"}, &job); st != http.StatusAccepted {
				t.Fatalf("order: %d", st)
			}
			await("restarting into the new version")
			second := await("running version 1.1.0")
			// exec keeps the process: same pid, new program.
			if pid := func(l string) string { return l[strings.LastIndex(l, "pid "):] }; pid(first) != pid(second) {
				t.Errorf("%q then %q: not the same process", first, second)
			}
			outposttest.Eventually(t, 20*time.Second, "update SUCCESS", func() bool {
				p.Do(t, "GET", "/api/v1/firmware/jobs/"+job.ID, nil, &job)
				return job.State != "INSTALLING"
			})
			if job.State != "SUCCESS" || job.ReportedVersion != "1.1.0" {
				t.Fatalf("update %+v", job)
			}
			if _, err := os.Stat(exe + ".previous"); err != nil {
				t.Errorf("old binary not kept: %v", err)
			}
		})
	}
}

func jsonDecode(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}
