package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
)

// runArgs runs the command in-process and returns its output and exit
// status as main would.
func runArgs(t *testing.T, args ...string) (stdout, stderr string, code int, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = run(ctx, args, &out, &errb)
	code = exitCode(err, &errb)
	return out.String(), errb.String(), code, err
}

// closedURL is an http URL where nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

// Every command and subcommand answers -h and --help with its usage on
// stdout, its positional arguments and only its own flags, and exits 0.
func TestHelpEverywhere(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the help
		not  string // must not be in the help
	}{
		{[]string{"serve"}, "Usage: outpost serve [flags]", "--server"},
		{[]string{"device"}, "create NAME", ""},
		{[]string{"device", "create"}, "Usage: outpost device create NAME… [flags]", "--online"},
		{[]string{"device", "list"}, "--online", "--state"},
		{[]string{"device", "show"}, "Usage: outpost device show DEVICE", "--online"},
		{[]string{"device", "delete"}, "Usage: outpost device delete DEVICE", "--name"},
		{[]string{"device", "rotate-secret"}, "Usage: outpost device rotate-secret DEVICE", "--online"},
		{[]string{"rpc"}, "Usage: outpost rpc DEVICE METHOD [JSON-ARGS] [flags]", "--state"},
		{[]string{"call"}, "list DEVICE", "Usage of rpc"},
		{[]string{"call", "show"}, "Usage: outpost call show ID", "--state"},
		{[]string{"call", "cancel"}, "Usage: outpost call cancel ID", "--state"},
		{[]string{"call", "list"}, "Usage: outpost call list DEVICE", "--timeout"},
		{[]string{"telemetry"}, "Usage: outpost telemetry DEVICE", "--kind"},
		{[]string{"model"}, "Usage: outpost model DEVICE", "--limit"},
		{[]string{"feed"}, "set DEVICE REF VALUE", ""},
		{[]string{"feed", "list"}, "Usage: outpost feed list DEVICE", "--limit"},
		{[]string{"feed", "set"}, "Usage: outpost feed set DEVICE REF VALUE", "-o FORMAT"},
		{[]string{"attributes"}, "Usage: outpost attributes DEVICE", "--limit"},
		{[]string{"params"}, "unset DEVICE KEY", ""},
		{[]string{"params", "show"}, "Usage: outpost params show DEVICE", "--limit"},
		{[]string{"params", "set"}, "Usage: outpost params set DEVICE KEY=VALUE", "-o FORMAT"},
		{[]string{"params", "unset"}, "Usage: outpost params unset DEVICE KEY", "-o FORMAT"},
		{[]string{"events"}, "Usage: outpost events DEVICE", "--feed"},
		{[]string{"stream"}, "Usage: outpost stream [flags]", "--limit"},
		{[]string{"env"}, "eval \"$(outpost env)\"", "--server"},
		{[]string{"bench"}, "usage: outpost bench BENCHMARK", ""},
		{[]string{"bench", "ingest"}, "-readings", ""},
		{[]string{"bench", "rpc"}, "-callers", ""},
		{nil, "Usage:", ""},
	} {
		for _, h := range []string{"-h", "--help"} {
			args := append(append([]string{}, tc.args...), h)
			stdout, stderr, code, _ := runArgs(t, args...)
			if code != 0 || !strings.Contains(stdout, tc.want) || (tc.not != "" && strings.Contains(stdout, tc.not)) {
				t.Errorf("outpost %s: exit %d, stdout %q, stderr %q; want exit 0 and help with %q without %q",
					strings.Join(args, " "), code, stdout, stderr, tc.want, tc.not)
			}
		}
	}
	// "help COMMAND" is "COMMAND -h"; a positional argument before -h
	// does not matter.
	if stdout, _, code, _ := runArgs(t, "help", "rpc"); code != 0 || !strings.Contains(stdout, "Usage: outpost rpc DEVICE") {
		t.Errorf("outpost help rpc: exit %d, %q", code, stdout)
	}
	if stdout, _, code, _ := runArgs(t, "rpc", "dev", "-h"); code != 0 || !strings.Contains(stdout, "Usage: outpost rpc DEVICE") {
		t.Errorf("outpost rpc dev -h: exit %d, %q", code, stdout)
	}

	// The real binary exits 0 on help, and 2 on an unknown subcommand.
	dir := t.TempDir()
	for _, args := range [][]string{{"device", "-h"}, {"feed", "--help"}, {"call", "-h"}, {"device", "create", "-h"}} {
		if r := outpost(t, dir, nil, args...); r.code != 0 || !strings.Contains(r.stdout, "Usage: outpost "+args[0]) {
			t.Errorf("outpost %v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
	if r := outpost(t, dir, nil, "device", "explode"); r.code != 2 || !strings.Contains(r.stderr, `unknown subcommand "explode"`) {
		t.Errorf("outpost device explode: exit %d, stderr %q", r.code, r.stderr)
	}
}

// fixture is a platform with one device that has sent readings, an event,
// registered a feed and an attribute, and has a parameter and a queued
// call.
type fixture struct {
	p      *outposttest.Platform
	id     string
	callID string
	c      *device.Client
	stamps []time.Time // of the readings of feed "temp", oldest first
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "fixture")
	c, err := device.New(d.URL, device.WithMemoryOutbox())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f := &fixture{p: p, id: d.ID, c: c}
	now := time.Now().Truncate(time.Millisecond)
	for i, ago := range []time.Duration{3 * time.Hour, 2 * time.Hour, 30 * time.Minute, time.Minute} {
		ts := now.Add(-ago)
		f.stamps = append(f.stamps, ts)
		if err := c.AddAt("temp", 20+i, ts); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAttribute(ctx, "model", device.String, "T-1"); err != nil {
		t.Fatal(err)
	}
	if err := c.SendEvent(ctx, "door_open", map[string]int{"door": 2}); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, p, "params", "set", d.ID, "rate=5")
	if err != nil {
		t.Fatalf("params set: %v %s", err, out)
	}
	out, _, err = runCLI(t, p, "rpc", d.ID, "later", "--queue")
	if err != nil {
		t.Fatalf("rpc --queue: %v", err)
	}
	var call struct{ ID string }
	if err := json.Unmarshal([]byte(out), &call); err != nil || call.ID == "" {
		t.Fatalf("rpc --queue printed %q", out)
	}
	f.callID = call.ID
	return f
}

// Every listing and show command takes -o table and -o json, and refuses
// any other format before doing anything.
func TestOutputFormats(t *testing.T) {
	f := newFixture(t)
	for _, args := range [][]string{
		{"device", "list"},
		{"device", "show", f.id},
		{"telemetry", f.id},
		{"events", f.id},
		{"call", "list", f.id},
		{"call", "show", f.callID},
		{"model", f.id},
		{"feed", "list", f.id},
		{"attributes", f.id},
		{"params", f.id},
		{"params", "show", f.id},
	} {
		name := strings.Join(args[:min(2, len(args))], " ")
		out, _, err := runCLI(t, f.p, append(args, "-o", "json")...)
		if err != nil || !json.Valid([]byte(out)) {
			t.Errorf("%s -o json: %v, not JSON: %q", name, err, out)
		}
		out, _, err = runCLI(t, f.p, append(args, "-o", "table")...)
		if err != nil || json.Valid([]byte(out)) || out == "" || strings.HasPrefix(strings.TrimSpace(out), "{") {
			t.Errorf("%s -o table: %v, want a table: %q", name, err, out)
		}
		stdout, stderr, code, _ := runArgs(t, append(args, "-o", "yaml", "--server", closedURL(t), "--token", "t")...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, "-o yaml: unknown output format (want table or json)") {
			t.Errorf("%s -o yaml: exit %d, stdout %q, stderr %q; want a refusal", name, code, stdout, stderr)
		}
	}
	// The tables show the data.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"telemetry", f.id}, "temp 23"},
		{[]string{"events", f.id}, `event door_open {"door":2}`},
		{[]string{"call", "list", f.id}, f.callID + " later"},
		{[]string{"params", f.id, "-o", "table"}, "rate 5 -"},
		{[]string{"params", "-o", "table", f.id}, "rate 5 -"},
		{[]string{"attributes", f.id}, `model string "T-1"`},
	} {
		if out, _, err := runCLI(t, f.p, tc.args...); err != nil || !strings.Contains(strings.Join(strings.Fields(out), " "), tc.want) {
			t.Errorf("%v: %v, want %q in\n%s", tc.args, err, tc.want, out)
		}
	}
}

// Values outside what the platform accepts are refused as usage errors
// (exit 2) before the platform is asked.
func TestValueChecks(t *testing.T) {
	srv := closedURL(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"telemetry", "d", "--limit", "-5"}, "--limit -5: must be between 1 and 100000"},
		{[]string{"telemetry", "d", "--limit", "0"}, "--limit 0: must be between 1 and 100000"},
		{[]string{"telemetry", "d", "--limit", "100001"}, "--limit 100001"},
		{[]string{"events", "d", "--limit", "-1"}, "--limit -1: must be between 1 and 10000"},
		{[]string{"device", "list", "--limit", "-5"}, "--limit -5: must be 0 (all) or more"},
		{[]string{"rpc", "d", "m", "--timeout", "10m"}, "--timeout 10m0s: must be more than 0 and at most 5m"},
		{[]string{"rpc", "d", "m", "--timeout", "-1s"}, "--timeout -1s: must be more than 0"},
		{[]string{"call", "d", "m", "--timeout", "6m"}, "at most 5m"},
		{[]string{"rpc", "d", "m", "--queue", "--timeout", "2h"}, "--timeout 2h0m0s: must be more than 0 and at most 1h"},
		{[]string{"rpc", "d", "m", "--queue", "--ttl", "745h"}, "--ttl 745h0m0s: must be more than 0 and at most 30 days"},
		{[]string{"rpc", "d", "m", "--queue", "--ttl", "0s"}, "--ttl 0s: must be more than 0"},
		{[]string{"rpc", "d", "m", "--ttl", "1h"}, "--ttl: only with --queue"},
		{[]string{"rpc", "d", "m", "{bad"}, "not valid JSON"},
		{[]string{"stream", "-n", "-1"}, "-n -1"},
		{[]string{"call", "list", "d", "--state", "bogus"}, `--state "bogus"`},
		{[]string{"events", "d", "--kind", "bogus"}, `--kind "bogus"`},
		{[]string{"device", "list", "--online", "maybe"}, `--online "maybe": want true or false`},
		{[]string{"device", "show"}, "device show: want DEVICE, got 0 arguments"},
		{[]string{"rpc", "d"}, "rpc: want DEVICE METHOD [JSON-ARGS], got 1 argument"},
		{[]string{"device", "list", "--bogus"}, "flag provided but not defined: -bogus"},
	} {
		_, stderr, code, _ := runArgs(t, append(tc.args, "--server", srv, "--token", "t")...)
		if code != 2 || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("outpost %s: exit %d, stderr %q; want exit 2 and one line with %q", strings.Join(tc.args, " "), code, stderr, tc.want)
		}
	}
}

// Time flags take RFC 3339, durations ago and Unix milliseconds.
func TestTimeFlags(t *testing.T) {
	f := newFixture(t)
	count := func(args ...string) int {
		t.Helper()
		out, _, err := runCLI(t, f.p, append([]string{"telemetry", f.id, "-o", "json"}, args...)...)
		if err != nil {
			t.Fatalf("telemetry %v: %v", args, err)
		}
		var body struct{ Readings []json.RawMessage }
		if err := json.Unmarshal([]byte(out), &body); err != nil {
			t.Fatal(err)
		}
		return len(body.Readings)
	}
	mid := f.stamps[1].Add(-time.Minute) // between the first and the second reading
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 4},
		{[]string{"--since", "-90m"}, 2},
		{[]string{"--since", "90m"}, 2},
		{[]string{"--since", "-1h30m"}, 2},
		{[]string{"--since", mid.Format(time.RFC3339Nano)}, 3},
		{[]string{"--since", mid.UTC().Format(time.RFC3339)}, 3},
		{[]string{"--since", strconv.FormatInt(mid.UnixMilli(), 10)}, 3},
		{[]string{"--until", "-45m"}, 2},
		{[]string{"--since", strconv.FormatInt(mid.UnixMilli(), 10), "--until", "-45m"}, 1},
	} {
		if got := count(tc.args...); got != tc.want {
			t.Errorf("telemetry %v: %d readings, want %d", tc.args, got, tc.want)
		}
	}
	out, _, err := runCLI(t, f.p, "events", f.id, "--since", "-10m", "-o", "json")
	if err != nil || !strings.Contains(out, "door_open") {
		t.Errorf("events --since -10m: %v %s", err, out)
	}
	for _, bad := range []string{"yesterday", "2026-13-01", "1h-", "99999999999999999999"} {
		_, stderr, code, _ := runArgs(t, "telemetry", f.id, "--since", bad, "--server", f.p.HTTPURL(), "--token", f.p.AdminToken())
		if code != 2 || !strings.Contains(stderr, "RFC 3339") || !strings.Contains(stderr, "-1h") || !strings.Contains(stderr, "Unix milliseconds") {
			t.Errorf("--since %s: exit %d, %q; want an error naming the accepted forms", bad, code, stderr)
		}
	}
}

// Errors are one line, without repeated prefixes, and say what to do.
func TestErrorTexts(t *testing.T) {
	f := newFixture(t)
	offline := f.p.CreateDevice(t, "sleeper")
	srv, tok := f.p.HTTPURL(), f.p.AdminToken()
	closed := closedURL(t)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"nothing listens", []string{"device", "list", "--server", closed, "--token", tok},
			[]string{"cannot reach the platform at " + closed + " (from --server)", "connection refused", "Is outpost serve running?", "OUTPOST_SERVER", "--server"}},
		{"wrong token", []string{"device", "list", "--server", srv, "--token", "wrong"},
			[]string{"refused the API token (from --token)", "OUTPOST_TOKEN", "--token", "admin-token"}},
		{"device offline", []string{"rpc", offline.ID, "ping", "--server", srv, "--token", tok},
			[]string{"device_offline", "add --queue"}},
		{"unknown method", []string{"rpc", f.id, "reboot", "--server", srv, "--token", tok},
			[]string{"unknown_method", "rpc_list"}},
		{"no such device", []string{"telemetry", "nope", "--server", srv, "--token", tok},
			[]string{`no device with id or name "nope"`, "outpost device list"}},
		{"no such call", []string{"call", "show", "c-nope", "--server", srv, "--token", tok},
			[]string{"not_found"}},
	} {
		_, stderr, code, _ := runArgs(t, tc.args...)
		if code != 1 || strings.Count(stderr, "\n") != 1 || strings.Contains(stderr, "fleet:") {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 and one line without fleet: plumbing", tc.name, code, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: %q does not say %q", tc.name, stderr, w)
			}
		}
	}
	// A remote handler error has a newline in its text: still one line.
	f.c.Handle("fail", func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("valve\nstuck") })
	_, stderr, code, _ := runArgs(t, "rpc", f.id, "fail", "--server", srv, "--token", tok)
	if code != 1 || stderr != "outpost: fail on device "+f.id+" failed: valve stuck\n" {
		t.Errorf("handler error: exit %d, %q", code, stderr)
	}
}

// A fresh data directory, as the README's tour uses it: a first start on a
// busy port fails but creates the token; the next start prints it; the CLI
// run from the same directory finds the platform (on ports it did not
// choose) and its token; after a crash, it says where it looked.
func TestServeAndCLIShareTheDataDirectory(t *testing.T) {
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r := outpost(t, dir, nil, "serve", "--mqtt", "127.0.0.1:0", "--http", busy.Addr().String())
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "--http: ") || !strings.Contains(r.stderr, "--http 127.0.0.1:0") {
		t.Fatalf("serve on a busy --http: exit %d, stderr %q; want one line naming --http and a free choice", r.code, r.stderr)
	}
	token, err := os.ReadFile(filepath.Join(dir, "outpost-data", "admin-token"))
	if err != nil {
		t.Fatalf("the failed start left no token: %v", err)
	}

	s := startServe(t, dir, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0")
	if got := s.line("admin token"); got != strings.TrimSpace(string(token)) {
		t.Fatalf("second start printed admin token %q, want the token the failed start saved; output:\n%s", got, s.stdoutText())
	}
	// outpost env gives curl the same address and token.
	r = outpost(t, dir, nil, "env")
	if want := "export OUTPOST_SERVER='" + s.line("http") + "'\nexport OUTPOST_TOKEN='" + strings.TrimSpace(string(token)) + "'\n"; r.code != 0 || r.stdout != want {
		t.Errorf("outpost env: exit %d, %q, want %q", r.code, r.stdout, want)
	}
	r = outpost(t, dir, nil, "device", "create", "kitchen")
	if r.code != 0 {
		t.Fatalf("device create without --server or --token: exit %d, %s", r.code, r.stderr)
	}
	var d struct{ ID, URL string }
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatal(err)
	}
	mqtt := strings.TrimPrefix(s.line("mqtt"), "tcp://")
	if u, err := url.Parse(d.URL); err != nil || u.Host != mqtt {
		t.Errorf("device url %s does not point at serve's MQTT address %s", d.URL, mqtt)
	}
	if r = outpost(t, dir, nil, "device", "list"); r.code != 0 || !strings.Contains(r.stdout, d.ID) {
		t.Errorf("device list: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	// Another directory knows no platform: the CLI says where it looked.
	if r = outpost(t, t.TempDir(), []string{"OUTPOST_TOKEN=x"}, "device", "list"); r.code != 1 || !strings.Contains(r.stderr, "(from the default)") {
		t.Errorf("device list elsewhere: exit %d, %q", r.code, r.stderr)
	}
	s.stop(t)
	if _, err := os.Stat(filepath.Join(dir, "outpost-data", "running.json")); !os.IsNotExist(err) {
		t.Errorf("running.json after a clean stop: %v", err)
	}

	// Later starts say where the token is instead of printing it.
	s = startServe(t, dir, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0")
	if out := s.stdoutText(); strings.Contains(out, "admin token: ") || s.line("admin token file") != filepath.Join("outpost-data", "admin-token") {
		t.Errorf("third start printed:\n%s\nwant the token file, not the token", out)
	}
	// A second serve on the same directory is refused.
	r = outpost(t, dir, nil, "serve", "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0")
	if r.code != 1 || !strings.Contains(r.stderr, "in use by another outpost serve") {
		t.Errorf("second serve on the directory: exit %d, %q", r.code, r.stderr)
	}
	if r = outpost(t, t.TempDir(), nil, "env"); r.code != 1 || !strings.Contains(r.stderr, "no platform is running on outpost-data") {
		t.Errorf("outpost env without a platform: exit %d, %q", r.code, r.stderr)
	}
	s.kill() // SIGKILL: running.json stays behind
	r = outpost(t, dir, nil, "device", "list")
	for _, want := range []string{"cannot reach the platform at " + s.line("http"), "(from " + filepath.Join("outpost-data", "running.json") + ")", "Is outpost serve running?", "OUTPOST_SERVER"} {
		if r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("device list after serve was killed: exit %d, %q; want %q", r.code, r.stderr, want)
		}
	}
}

// The CLI never sends the local admin token to a platform elsewhere.
func TestLocalTokenStaysLocal(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "outpost-data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "outpost-data", "admin-token"), []byte("op_local\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := outpost(t, dir, nil, "device", "list", "--server", "http://platform.example:8080")
	if r.code != 1 || !strings.Contains(r.stderr, "no API token for http://platform.example:8080") {
		t.Errorf("remote server without a token: exit %d, %q", r.code, r.stderr)
	}
}

// With Mosquitto on 127.0.0.1:1883 (OUTPOST_TEST_MQTT, set by .ci/run),
// serve with default flags listens on another port, says so, prints it,
// and listens on loopback only.
func TestServeMovesOffTakenMQTTPort(t *testing.T) {
	addr := os.Getenv("OUTPOST_TEST_MQTT")
	if addr == "" {
		t.Skip("OUTPOST_TEST_MQTT is unset: set it to tcp://127.0.0.1:1883 with an MQTT broker (Mosquitto) listening there")
	}
	if u, err := url.Parse(addr); err != nil || u.Host != "127.0.0.1:1883" {
		t.Skipf("OUTPOST_TEST_MQTT=%s: only a broker on 127.0.0.1:1883, serve's default, exercises this", addr)
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:1883", time.Second); err != nil {
		t.Skipf("OUTPOST_TEST_MQTT=%s, but nothing answers there: %v", addr, err)
	} else {
		c.Close()
	}
	dir := t.TempDir()
	s := startServe(t, dir, "--http", "127.0.0.1:0")
	mqtt := s.line("mqtt")
	if !strings.HasPrefix(mqtt, "tcp://127.0.0.1:") || mqtt == "tcp://127.0.0.1:1883" {
		t.Fatalf("serve printed mqtt: %s, want another port on 127.0.0.1", mqtt)
	}
	outposttest.Eventually(t, 10*time.Second, "serve saying it moved", func() bool {
		return strings.Contains(s.stderrText(), "127.0.0.1:1883 is taken") && strings.Contains(s.stderrText(), "--mqtt ADDR")
	})
	// Loopback only: the port does not answer on the machine's other
	// addresses.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(mqtt, "tcp://"))
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(ipn.IP.String(), port), time.Second); err == nil {
			c.Close()
			t.Errorf("MQTT port %s answers on %s: not loopback only", port, ipn.IP)
		}
	}
	// A device connects with the URL device create prints.
	r := outpost(t, dir, nil, "device", "create", "moved")
	var d struct{ URL string }
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || !strings.Contains(d.URL, strings.TrimPrefix(mqtt, "tcp://")) {
		t.Fatalf("device create: %q %q", r.stdout, r.stderr)
	}
	c, err := device.New(d.URL, device.WithMemoryOutbox())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("device on the moved port: %v", err)
	}
}

// bench shows its progress on a terminal and keeps quiet when piped.
func TestBenchProgress(t *testing.T) {
	args := []string{"bench", "rpc", "--devices", "1", "--callers", "1", "--calls", "20"}
	r := outpost(t, t.TempDir(), nil, args...)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || !json.Valid([]byte(lines[len(lines)-1])) {
		t.Fatalf("bench piped: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if r.stderr != "" {
		t.Errorf("bench piped wrote progress to stderr: %q", r.stderr)
	}
	script, err := exec.LookPath("script")
	if err != nil {
		t.Skip("script (util-linux) not found: cannot give the command a terminal")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, "-qec", binary(t)+" "+strings.Join(args, " ")+" >/dev/null", "/dev/null")
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "bench: starting the platform") {
		t.Errorf("bench on a terminal: %v, want progress lines, got %q", err, out)
	}
}

// exitCode maps help to 0, usage errors to 2 and the rest to 1.
func TestExitCodes(t *testing.T) {
	var b bytes.Buffer
	for _, tc := range []struct {
		err  error
		want int
	}{{nil, 0}, {flag.ErrHelp, 0}, {usagef("x"), 2}, {errors.New("x"), 1}} {
		if got := exitCode(tc.err, &b); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
