package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	core "github.com/outpost-iot/outpost/internal/mochi"
	coreauth "github.com/outpost-iot/outpost/internal/mochi/hooks/auth"
	corelisteners "github.com/outpost-iot/outpost/internal/mochi/listeners"

	"github.com/outpost-iot/outpost/internal/broker"
	"github.com/outpost-iot/outpost/internal/server"
)

// The connections benchmark runs each broker it measures in a process of
// its own, so that the broker's resident memory and CPU time can be read
// from /proc apart from the load, and so that broker and load each have
// the whole per-process file limit. The platform and the raw mochi broker
// are this same executable started as `bench connections-child ROLE`;
// Mosquitto is itself.

// childCommand is the hidden benchmark that runs a broker for the
// connections benchmark.
const childCommand = "connections-child"

// childMain runs `bench connections-child ROLE [flags]`: a broker that
// prints its endpoints ("mqtt: tcp://HOST:PORT", for the platform also
// "http: URL" and "admin token: T"), then "ready", and runs until SIGTERM
// or until its standard input closes (the benchmark that started it ended);
// or, for the role "load", a fleet of idle devices driven through its
// standard input (loadMain).
func childMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("bench connections-child: want a role: platform, raw, floor or load")
	}
	role := args[0]
	fs := newFlagSet(childCommand+" "+role, stderr)
	data := fs.String("data", "", "platform data directory")
	addr := fs.String("mqtt", "127.0.0.1:0", "MQTT listen address")
	opts := fs.String("options", "default", "raw broker options: default (mochi's) or platform (the platform's)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	if _, err := server.RaiseFileLimit(); err != nil {
		fmt.Fprintln(stderr, "raise file limit:", err)
	}
	if role == "load" {
		return loadMain(ctx, os.Stdin, stdout)
	}
	go func() { // the parent went away: stop
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	if os.Getenv("OUTPOST_BENCH_MEMPROFILERATE") == "1" {
		runtime.MemProfileRate = 1
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if base := os.Getenv("OUTPOST_BENCH_PROFILE"); base != "" {
		usr := make(chan os.Signal, 1)
		signal.Notify(usr, syscall.SIGUSR1, syscall.SIGUSR2)
		defer signal.Stop(usr)
		go func() {
			var cpu *os.File // SIGUSR2 starts a CPU profile, the next one ends it
			defer func() {
				if cpu != nil {
					pprof.StopCPUProfile()
					cpu.Close()
				}
			}()
			for {
				select {
				case <-ctx.Done():
					return
				case sig := <-usr:
					var err error
					switch {
					case sig == syscall.SIGUSR1:
						err = writeChildStats(base)
					case cpu == nil:
						if cpu, err = os.Create(base + "-cpu.pprof"); err == nil {
							if err = pprof.StartCPUProfile(cpu); err != nil {
								cpu.Close()
								cpu = nil
							}
						}
					default:
						pprof.StopCPUProfile()
						err = cpu.Close()
						cpu = nil
					}
					if err != nil {
						fmt.Fprintln(stderr, "bench child profile:", err)
					}
				}
			}
		}()
	}
	switch role {
	case "platform":
		if *data == "" {
			return errors.New("bench connections-child platform: --data is required")
		}
		srv, err := server.Open(ctx, server.Config{DataDir: *data, MQTTAddr: *addr, HTTPAddr: "127.0.0.1:0", Logger: log})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "mqtt: %s\nhttp: %s\nadmin token: %s\nready\n", srv.MQTTURL(), srv.HTTPURL(), srv.AdminToken())
		<-ctx.Done()
		return srv.Close()
	case "raw":
		rb, err := startRawConnBroker(*addr, *opts, log)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "mqtt: tcp://%s\nready\n", rb.addr)
		<-ctx.Done()
		rb.close()
		return nil
	case "floor":
		fb, err := startFloorBroker(*addr, log)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "mqtt: tcp://%s\nready\n", fb.addr())
		<-ctx.Done()
		fb.close()
		return nil
	}
	return fmt.Errorf("bench connections-child: unknown role %q (want platform, raw, floor or load)", role)
}

// childStats are a Go broker child's runtime figures after a collection.
type childStats struct {
	HeapInuse  int64 `json:"heap_inuse"`
	HeapAlloc  int64 `json:"heap_alloc"`
	StackInuse int64 `json:"stack_inuse"`
	Sys        int64 `json:"sys"`
	Goroutines int   `json:"goroutines"`
	// Memory is runtime/metrics' /memory/classes breakdown, in bytes,
	// before the collection.
	Memory map[string]int64 `json:"memory"`
}

// writeChildStats collects garbage, writes the runtime figures to
// base-stats.json and, when base-want-profile names a file prefix, heap
// and goroutine profiles there.
func writeChildStats(base string) error {
	classes := memoryClasses()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := childStats{HeapInuse: int64(ms.HeapInuse), HeapAlloc: int64(ms.HeapAlloc), StackInuse: int64(ms.StackInuse),
		Sys: int64(ms.Sys), Goroutines: runtime.NumGoroutine(), Memory: classes}
	if p, err := os.ReadFile(base + "-want-profile"); err == nil && len(p) > 0 {
		os.Remove(base + "-want-profile")
		for _, name := range []string{"heap", "goroutine"} {
			f, err := os.Create(string(p) + "-" + name + ".pprof")
			if err != nil {
				return err
			}
			err = pprof.Lookup(name).WriteTo(f, 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := base + "-stats.tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, base+"-stats.json")
}

// memoryClasses reads where the runtime's memory is, by class.
func memoryClasses() map[string]int64 {
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") && d.Kind == metrics.KindUint64 {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	out := make(map[string]int64, len(samples))
	for _, s := range samples {
		out[strings.TrimSuffix(strings.TrimPrefix(s.Name, "/memory/classes/"), ":bytes")] = int64(s.Value.Uint64())
	}
	return out
}

// rawConnBroker is a broker alone: allow-all authentication, no other
// hook, one TCP listener.
type rawConnBroker struct {
	close func()
	addr  string
}

// startRawConnBroker starts upstream mochi with its default options
// (opts "default"), or the platform's broker core (internal/mochi, mochi
// as the platform changed it) with the options the platform gives it
// (opts "platform").
func startRawConnBroker(addr, opts string, log *slog.Logger) (*rawConnBroker, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	bound := l.Addr().String()
	l.Close()
	switch opts {
	case "default":
		srv := mqtt.New(&mqtt.Options{Logger: log})
		if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
			return nil, err
		}
		if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "raw", Address: bound})); err != nil {
			return nil, err
		}
		if err := srv.Serve(); err != nil {
			return nil, err
		}
		return &rawConnBroker{close: func() { _ = srv.Close() }, addr: bound}, nil
	case "platform":
		srv := core.New(broker.MochiOptions(broker.Config{Logger: log}))
		if err := srv.AddHook(new(coreauth.AllowHook), nil); err != nil {
			return nil, err
		}
		if err := srv.AddListener(corelisteners.NewTCP(corelisteners.Config{ID: "raw", Address: bound})); err != nil {
			return nil, err
		}
		if err := srv.Serve(); err != nil {
			return nil, err
		}
		return &rawConnBroker{close: func() { _ = srv.Close() }, addr: bound}, nil
	default:
		return nil, fmt.Errorf("raw broker: --options %q: want default or platform", opts)
	}
}

// child is a broker process started by the benchmark.
type child struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	fields map[string]string // "key: value" lines it printed before "ready"
	stderr *tailBuffer
	done   chan struct{} // closed when it exited
	err    error         // its exit status, once done
}

// startChild starts a broker process and waits until it is ready: until
// it prints "ready" when ready is nil, else until ready returns nil.
func startChild(ctx context.Context, name string, cmd *exec.Cmd, ready func(context.Context) error) (*child, error) {
	c := &child{name: name, cmd: cmd, fields: map[string]string{}, stderr: &tailBuffer{max: 16 << 10}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	c.stdin = stdin
	var out io.ReadCloser
	if ready == nil {
		if out, err = cmd.StdoutPipe(); err != nil {
			return nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if ready != nil {
		if err := ready(ctx); err != nil {
			c.kill()
			return nil, fmt.Errorf("%s did not start: %w%s", name, err, c.stderr.tail())
		}
		return c, nil
	}
	lines := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				lines <- nil
				go func() { _, _ = io.Copy(io.Discard, out) }()
				return
			}
			if k, v, ok := strings.Cut(line, ": "); ok {
				c.fields[k] = v
			}
		}
		lines <- fmt.Errorf("exited before it was ready")
	}()
	select {
	case err = <-lines:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		c.kill()
		return nil, fmt.Errorf("%s did not start: %w%s", name, err, c.stderr.tail())
	}
	return c, nil
}

// pid returns the process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// stop asks the process to end (SIGTERM), waits up to wait, then kills it.
func (c *child) stop(wait time.Duration) error {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-c.done:
		c.stdin.Close()
		var ee *exec.ExitError
		if c.err != nil && !(errors.As(c.err, &ee) && ee.Exited()) {
			return nil // ended by the signal
		}
		if c.err != nil {
			return fmt.Errorf("%s: %w%s", c.name, c.err, c.stderr.tail())
		}
		return nil
	case <-t.C:
		c.kill()
		return fmt.Errorf("%s did not stop within %s; killed", c.name, wait)
	}
}

// kill ends the process at once and waits for it.
func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	c.stdin.Close()
	<-c.done
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// tail returns what the process wrote last to stderr, for an error message.
func (t *tailBuffer) tail() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.buf))
	if s == "" {
		return ""
	}
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	return "\n" + s
}

// procRSS returns the resident set size of a process in bytes.
func procRSS(pid int) (int64, error) {
	v := procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS")
	kb, err := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read RSS of process %d: %q", pid, v)
	}
	return kb << 10, nil
}

// clockTick is the unit of the CPU times in /proc/PID/stat (USER_HZ,
// 100 on every Linux platform Go supports).
const clockTick = 10 * time.Millisecond

// procCPU returns the CPU time (user and system) a process has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	// Fields 14 and 15 (utime, stime) are 12 and 13 after the name.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// loadAvgs returns the 1, 5 and 15 minute load averages as /proc/loadavg
// shows them.
func loadAvgs() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// freePort returns a loopback address with a port free right now.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitListening polls addr until it accepts a TCP connection.
func waitListening(ctx context.Context, addr string) error {
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", addr, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// mosquittoFiles writes a Mosquitto configuration for the devices into
// dir: a listener on addr, a password file (hashed by mosquitto_passwd -U)
// and an ACL confining each device to its own topics, like the platform.
func mosquittoFiles(ctx context.Context, dir, addr string, devs []apiDevice) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	var pw bytes.Buffer
	for _, d := range devs {
		fmt.Fprintf(&pw, "%s:%s\n", d.ID, d.Password)
	}
	pwFile := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pwFile, pw.Bytes(), 0o644); err != nil {
		return "", err
	}
	if out, err := exec.CommandContext(ctx, "mosquitto_passwd", "-U", pwFile).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mosquitto_passwd -U: %w: %s", err, bytes.TrimSpace(out))
	}
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("pattern readwrite outpost/v1/%u/#\n"), 0o644); err != nil {
		return "", err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	// Started as root, Mosquitto drops to the mosquitto user unless told
	// otherwise, and then cannot read files in a private temporary
	// directory.
	text := fmt.Sprintf("user root\nlistener %s %s\nallow_anonymous false\npassword_file %s\nacl_file %s\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nmax_keepalive 65535\n",
		port, host, pwFile, acl)
	if os.Geteuid() != 0 {
		text = strings.Replace(text, "user root\n", "", 1)
	}
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return "", err
	}
	return conf, nil
}

// childArgs returns how to start this executable as a broker child.
func childArgs(role string, extra ...string) (string, []string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	return exe, append([]string{"bench", childCommand, role}, extra...), nil
}

// loadMain holds idle devices for another process, driven by lines on in:
//
//	connect ADDR FILE   connect every device of FILE (lines "ID PASSWORD")
//	                    to the broker at ADDR; answers "connected N" once
//	                    all are connected and subscribed
//	disconnect          disconnects them; answers "disconnected"
//
// An error is answered "error: …". It ends when in closes.
func loadMain(ctx context.Context, in io.Reader, out io.Writer) error {
	var f *loadFleet
	defer func() {
		if f != nil {
			f.stop()
		}
	}()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd := strings.Fields(sc.Text())
		var answer string
		switch {
		case len(cmd) == 3 && cmd[0] == "connect" && f == nil:
			devs, err := readLoadDevices(cmd[2])
			if err != nil {
				answer = "error: " + err.Error()
				break
			}
			f = newLoadFleet(cmd[1], devs, loadOptions{keepalive: time.Minute, timeout: 10 * time.Second,
				minBack: 250 * time.Millisecond, maxBack: 5 * time.Second, sources: 16})
			f.start()
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			err = f.waitConnected(wctx, false)
			cancel()
			if err != nil {
				answer = "error: " + err.Error()
			} else {
				answer = fmt.Sprintf("connected %d", len(devs))
			}
		case len(cmd) == 1 && cmd[0] == "disconnect" && f != nil:
			f.stop()
			f = nil
			answer = "disconnected"
		default:
			answer = fmt.Sprintf("error: unexpected command %q", sc.Text())
		}
		if _, err := fmt.Fprintln(out, answer); err != nil {
			return err
		}
	}
	return sc.Err()
}

// readLoadDevices reads "ID PASSWORD" lines.
func readLoadDevices(path string) ([]apiDevice, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var devs []apiDevice
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		id, pw, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			return nil, fmt.Errorf("%s: bad line %q", path, line)
		}
		devs = append(devs, apiDevice{ID: id, Password: pw})
	}
	return devs, nil
}
