// Package mosquittotest starts a real Mosquitto 2 broker for tests: on a
// free loopback port, from a configuration in a temporary directory, with
// the dynamic security plugin and an admin client by default, or plain
// (anonymous) and optionally with persistence. The broker is stopped when
// the test ends.
//
// Tests that use it skip, with a message saying what is missing, when the
// mosquitto binary or the dynamic security plugin is not installed (Debian:
// apt-get install mosquitto mosquitto-clients).
package mosquittotest

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Paths searched for the broker binary and the dynamic security plugin,
// in order. The environment variables MOSQUITTO_BIN and
// MOSQUITTO_DYNSEC_PLUGIN, when set, are used instead.
var (
	BinaryPaths = []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/bin/mosquitto"}
	PluginPaths = []string{
		"/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
		"/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
		"/usr/lib/mosquitto_dynamic_security.so",
		"/usr/local/lib/mosquitto_dynamic_security.so",
	}
)

// Default credentials of the dynamic security admin client.
const (
	DefaultAdminUser = "outpost-admin"
)

// Broker is a running Mosquitto.
type Broker struct {
	// Addr is HOST:PORT of the MQTT listener (127.0.0.1).
	Addr string
	// Dir holds the configuration, the log, the dynamic security file and
	// the persistence database.
	Dir string
	// ConfigPath is the mosquitto.conf the broker runs with.
	ConfigPath string
	// AdminUser and AdminPassword log in as the dynamic security admin;
	// empty for a plain broker.
	AdminUser, AdminPassword string
	// DynsecPath is the dynamic security plugin's JSON file; empty for a
	// plain broker.
	DynsecPath string

	bin, logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

type config struct {
	plain       bool
	persistence bool
	adminPass   string
	extra       []string
}

// Option changes how the broker is started.
type Option func(*config)

// Plain starts Mosquitto without the dynamic security plugin, accepting
// anonymous clients on every topic.
func Plain() Option { return func(c *config) { c.plain = true } }

// Persistence turns on `persistence true`, with the database in the
// broker's directory, so that sessions, queued and retained messages
// survive Restart.
func Persistence() Option { return func(c *config) { c.persistence = true } }

// AdminPassword sets the dynamic security admin's password instead of a
// random one.
func AdminPassword(p string) Option { return func(c *config) { c.adminPass = p } }

// ConfigLines adds lines to mosquitto.conf (for example
// "use_username_as_clientid true", which applies to the listener when
// given after it).
func ConfigLines(lines ...string) Option {
	return func(c *config) { c.extra = append(c.extra, lines...) }
}

// Binary returns the mosquitto binary's path, or an error saying it is
// missing.
func Binary() (string, error) {
	if p := os.Getenv("MOSQUITTO_BIN"); p != "" {
		if err := executable(p); err != nil {
			return "", fmt.Errorf("mosquitto binary (MOSQUITTO_BIN) not usable: %w", err)
		}
		return p, nil
	}
	for _, p := range BinaryPaths {
		if executable(p) == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	return "", errors.New("mosquitto binary not found (looked in " + strings.Join(BinaryPaths, ", ") + " and $PATH; set MOSQUITTO_BIN)")
}

// Plugin returns the dynamic security plugin's path, or an error saying it
// is missing.
func Plugin() (string, error) {
	if p := os.Getenv("MOSQUITTO_DYNSEC_PLUGIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("mosquitto dynamic security plugin (MOSQUITTO_DYNSEC_PLUGIN) not usable: %w", err)
		}
		return p, nil
	}
	for _, p := range PluginPaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("mosquitto dynamic security plugin not found (looked in " + strings.Join(PluginPaths, ", ") + "; set MOSQUITTO_DYNSEC_PLUGIN)")
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", p)
	}
	return nil
}

// Start starts a Mosquitto for the test, waits until it accepts
// connections and stops it in tb.Cleanup. It skips the test when the
// binary or (without Plain) the plugin is missing, and fails it when the
// broker does not come up.
func Start(tb testing.TB, opts ...Option) *Broker {
	tb.Helper()
	var c config
	for _, o := range opts {
		o(&c)
	}
	bin, err := Binary()
	if err != nil {
		tb.Skipf("mosquittotest: %v", err)
	}
	var plugin string
	if !c.plain {
		if plugin, err = Plugin(); err != nil {
			tb.Skipf("mosquittotest: %v", err)
		}
	}
	dir := tb.TempDir()
	// Mosquitto started as root drops to the mosquitto user unless told
	// otherwise, and then cannot read a root-only temporary directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	b := &Broker{Dir: dir, bin: bin, ConfigPath: filepath.Join(dir, "mosquitto.conf"), logPath: filepath.Join(dir, "mosquitto.log")}
	if !c.plain {
		b.AdminUser, b.AdminPassword = DefaultAdminUser, c.adminPass
		if b.AdminPassword == "" {
			b.AdminPassword = randomString(24)
		}
		b.DynsecPath = filepath.Join(dir, "dynamic-security.json")
		if err := WriteDynsecConfig(b.DynsecPath, b.AdminUser, b.AdminPassword); err != nil {
			tb.Fatalf("mosquittotest: %v", err)
		}
	}
	tb.Cleanup(func() {
		b.Stop()
		if tb.Failed() {
			tb.Logf("mosquitto log (%s):\n%s", b.logPath, b.Log())
		}
	})
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ { // a free port may be taken before mosquitto binds it
		port, err := freePort()
		if err != nil {
			tb.Fatalf("mosquittotest: free port: %v", err)
		}
		b.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err := os.WriteFile(b.ConfigPath, []byte(b.conf(c, plugin)), 0o644); err != nil {
			tb.Fatal(err)
		}
		if lastErr = b.start(); lastErr == nil {
			return b
		}
	}
	tb.Fatalf("mosquittotest: %v\nlog:\n%s", lastErr, b.Log())
	return nil
}

// URL returns mqtt://HOST:PORT, with user and password when given.
func (b *Broker) URL(user, password string) string {
	if user == "" {
		return "mqtt://" + b.Addr
	}
	return "mqtt://" + urlUserinfo(user, password) + "@" + b.Addr
}

func urlUserinfo(user, password string) string {
	u := strings.NewReplacer("%", "%25", "@", "%40", ":", "%3A", "/", "%2F").Replace(user)
	p := strings.NewReplacer("%", "%25", "@", "%40", "/", "%2F").Replace(password)
	return u + ":" + p
}

// AdminURL returns the URL with the dynamic security admin's credentials.
func (b *Broker) AdminURL() string { return b.URL(b.AdminUser, b.AdminPassword) }

func (b *Broker) conf(c config, plugin string) string {
	var s strings.Builder
	if os.Geteuid() == 0 {
		s.WriteString("user root\n")
	}
	fmt.Fprintf(&s, "log_dest file %s\n", b.logPath)
	s.WriteString("log_type all\nlog_timestamp true\nper_listener_settings false\n")
	if c.persistence {
		fmt.Fprintf(&s, "persistence true\npersistence_location %s/\nautosave_interval 1\n", b.Dir)
	} else {
		s.WriteString("persistence false\n")
	}
	if c.plain {
		s.WriteString("allow_anonymous true\n")
	} else {
		fmt.Fprintf(&s, "allow_anonymous false\nplugin %s\nplugin_opt_config_file %s\n", plugin, b.DynsecPath)
	}
	fmt.Fprintf(&s, "listener %s 127.0.0.1\n", b.Addr[strings.LastIndexByte(b.Addr, ':')+1:])
	for _, l := range c.extra {
		s.WriteString(l + "\n")
	}
	return s.String()
}

// start runs the broker and waits until its listener accepts connections,
// or it exits, or 15 s pass.
func (b *Broker) start() error {
	cmd := exec.Command(b.bin, "-c", b.ConfigPath)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test binary
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", b.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }() // owned: reaped by Stop, which waits on done
	b.mu.Lock()
	b.cmd, b.done = cmd, done
	b.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for delay := time.Millisecond; ; delay = min(delay*2, 50*time.Millisecond) {
		select {
		case <-done:
			return fmt.Errorf("mosquitto exited before accepting connections: %s (output: %s)", cmd.ProcessState, strings.TrimSpace(out.String()))
		default:
		}
		conn, err := net.DialTimeout("tcp", b.Addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			b.Stop()
			return fmt.Errorf("mosquitto did not accept connections on %s within 15s: %v", b.Addr, err)
		}
		t := time.NewTimer(delay) // poll interval, not synchronisation: the exit is watched above
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
}

// Stop stops the broker (SIGTERM, then SIGKILL after 10 s) and waits for
// it to exit. Mosquitto writes its persistence database on a clean stop.
// Stopping a stopped broker does nothing.
func (b *Broker) Stop() {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		_ = cmd.Process.Kill()
		<-done
	}
}

// Kill stops the broker with SIGKILL, as a crash would: nothing is saved.
func (b *Broker) Kill() {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart stops the broker and starts it again on the same port, with the
// same configuration and directory (so a persistent broker keeps its
// sessions and the dynamic security file its clients).
func (b *Broker) Restart(tb testing.TB) {
	tb.Helper()
	b.Stop()
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The old socket may linger an instant after the process exits.
		if err = b.start(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("mosquittotest: restart: %v\nlog:\n%s", err, b.Log())
		}
		time.Sleep(50 * time.Millisecond) // back-off between attempts, not synchronisation
	}
}

// Log returns the broker's log so far.
func (b *Broker) Log() string {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return string(data)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

// WriteDynsecConfig writes a dynamic security plugin file holding one
// admin client, as `mosquitto_ctrl dynsec init FILE ADMIN PASSWORD` does:
// the admin may administer the plugin (and read $SYS) but not publish to
// ordinary topics. The password is hashed as the plugin does (PBKDF2 with
// SHA-512, 101 iterations, a 12-byte salt).
func WriteDynsecConfig(path, admin, password string) error {
	salt := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		return err
	}
	hash, err := pbkdf2.Key(sha512.New, password, salt, 101, sha512.Size)
	if err != nil {
		return fmt.Errorf("hash admin password: %w", err)
	}
	type acl struct {
		ACLType string `json:"acltype"`
		Topic   string `json:"topic"`
		Allow   bool   `json:"allow"`
	}
	cfg := map[string]any{
		"clients": []any{map[string]any{
			"username":   admin,
			"textName":   "Dynsec admin user",
			"password":   base64.StdEncoding.EncodeToString(hash),
			"salt":       base64.StdEncoding.EncodeToString(salt),
			"iterations": 101,
			"roles":      []any{map[string]any{"rolename": "admin"}},
		}},
		"roles": []any{map[string]any{
			"rolename": "admin",
			"acls": []acl{
				{"publishClientSend", "$CONTROL/dynamic-security/#", true},
				{"publishClientReceive", "$CONTROL/dynamic-security/#", true},
				{"subscribePattern", "$CONTROL/dynamic-security/#", true},
				{"publishClientReceive", "$SYS/#", true},
				{"subscribePattern", "$SYS/#", true},
				{"unsubscribePattern", "#", true},
			},
		}},
		"defaultACLAccess": map[string]bool{
			"publishClientSend":    false,
			"publishClientReceive": true,
			"subscribe":            false,
			"unsubscribe":          true,
		},
	}
	data, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
