package ota_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/outpost-iot/outpost/device"
	"github.com/outpost-iot/outpost/internal/outposttest"
	"github.com/outpost-iot/outpost/internal/server"
	"github.com/outpost-iot/outpost/protocol"
)

// uploadRaw uploads body under the query q and returns the status and the
// error code.
func uploadRaw(t *testing.T, p *outposttest.Platform, q url.Values, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", p.HTTPURL()+"/api/v1/artifacts?"+q.Encode(), bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+p.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	raw, _ := io.ReadAll(resp.Body)
	_ = jsonUnmarshal(raw, &e)
	return resp.StatusCode, e.Error.Code
}

// Names that could leave a directory are refused everywhere: on upload,
// when a file is sent under another name, when a device's file is deleted.
func TestPathTraversalRefused(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "names")
	a := upload(t, p, "ok.bin", "", []byte("data"))
	bad := []string{"../x", "../../etc/passwd", "/etc/passwd", "a/b", `a\b`, "a\x00b", ".hidden", "..", ".", "", strings.Repeat("x", 256)}
	for _, name := range bad {
		t.Run(fmt.Sprintf("%q", name), func(t *testing.T) {
			if st, code := uploadRaw(t, p, url.Values{"name": {name}}, []byte("x")); st != http.StatusBadRequest || code != "invalid" {
				t.Errorf("upload: %d %s", st, code)
			}
			if name != "" { // "" sends under the artifact's name
				if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/files", map[string]any{"artifact": a.ID, "name": name}, nil); st != http.StatusBadRequest {
					t.Errorf("send as: %d", st)
				}
				if st := p.Do(t, "DELETE", "/api/v1/devices/"+d.ID+"/files/"+url.PathEscape(name), nil, nil); st != http.StatusBadRequest {
					t.Errorf("delete on device: %d", st)
				}
			}
		})
	}
	// The device is still there: no path led to DELETE /api/v1/devices/D.
	if st := p.Do(t, "GET", "/api/v1/devices/"+d.ID, nil, nil); st != http.StatusOK {
		t.Errorf("device: %d", st)
	}
	var as struct {
		Artifacts []apiArtifact `json:"artifacts"`
	}
	p.Do(t, "GET", "/api/v1/artifacts", nil, &as)
	if len(as.Artifacts) != 1 {
		t.Errorf("%d artifacts stored, want only the good one", len(as.Artifacts))
	}
}

// The SDK never writes outside its directory, whatever an offer or a
// delete command names: such messages are refused as a whole.
func TestDeviceRefusesBadNames(t *testing.T) {
	for _, name := range []string{"../escape", "/tmp/escape", "a\x00b"} {
		if _, err := protocol.DecodeFileOffer([]byte(fmt.Sprintf(`{"id":"t-1","name":%q,"size":1,"sha256":"%s","methods":["mqtt"]}`, name, strings.Repeat("0", 64)))); err == nil {
			t.Errorf("offer named %q decoded", name)
		}
		if _, err := protocol.DecodeFileDelete([]byte(fmt.Sprintf(`{"id":"c-1","names":["ok",%q]}`, name))); err == nil {
			t.Errorf("delete of %q decoded", name)
		}
	}
}

// An artifact over the size limit is refused from its Content-Length,
// before a byte of it is read.
func TestOversizeUploadRefused(t *testing.T) {
	p := outposttest.Start(t)
	addr := strings.TrimPrefix(p.HTTPURL(), "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitFor))
	fmt.Fprintf(conn, "POST /api/v1/artifacts?name=huge.bin HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\nonly a few bytes",
		addr, p.AdminToken(), int64(protocol.MaxFileSize)+1)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(raw), "larger than") {
		t.Errorf("upload over 4 GiB: %d %s", resp.StatusCode, raw)
	}
	if st, code := uploadRaw(t, p, url.Values{"name": {"empty.bin"}}, nil); st != http.StatusBadRequest || code != "invalid" {
		t.Errorf("empty upload: %d %s", st, code)
	}
}

// A device refuses a file larger than it takes (unsupported_file_size),
// and the platform's transfer ends in ERROR.
func TestDeviceRefusesOversizeFile(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "small")
	a := upload(t, p, "big.bin", "", randomBytes(10_000))
	ev := newEvents()
	startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler), device.FileMaxSize(5000)})
	tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID})
	if got := ev.wait(t, tr.ID, waitFor); got.Error != protocol.FileErrUnsupportedSize {
		t.Errorf("device: %+v", got)
	}
	if fin := waitTransfer(t, p, tr.ID, "ERROR"); fin.Error != protocol.FileErrUnsupportedSize {
		t.Errorf("platform: %+v", fin)
	}
}

// A device that accepts only MQTT refuses a URL-only offer
// (transfer_protocol_disabled).
func TestDeviceRefusesDisabledMethod(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "mqtt-only")
	a := upload(t, p, "x.bin", "", randomBytes(1000))
	ev := newEvents()
	startDevice(t, p, d, []device.FileOption{device.FileHandler(ev.handler), device.FileMethods("mqtt")})
	tr := sendFile(t, p, d.ID, map[string]any{"artifact": a.ID, "methods": []string{"url"}})
	if fin := waitTransfer(t, p, tr.ID, "ERROR"); fin.Error != protocol.FileErrProtocolDisabled {
		t.Errorf("platform: %+v", fin)
	}
}

// Unknown artifacts, jobs, transfers and devices are 404; bad requests
// 400.
func TestAPIBadRequests(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "api")
	a := upload(t, p, "plain.bin", "", []byte("no version"))
	tests := []struct {
		method, path string
		body         any
		status       int
	}{
		{"POST", "/api/v1/devices/" + d.ID + "/files", map[string]any{"artifact": "a-nope"}, http.StatusNotFound},
		{"POST", "/api/v1/devices/d-nope/files", map[string]any{"artifact": a.ID}, http.StatusNotFound},
		{"POST", "/api/v1/devices/" + d.ID + "/firmware", map[string]any{"artifact": "a-nope"}, http.StatusNotFound},
		{"POST", "/api/v1/devices/" + d.ID + "/firmware", map[string]any{"artifact": a.ID}, http.StatusBadRequest},
		{"POST", "/api/v1/devices/" + d.ID + "/files", map[string]any{}, http.StatusBadRequest},
		{"POST", "/api/v1/devices/" + d.ID + "/files", map[string]any{"artifact": a.ID, "url": "https://example.com/x"}, http.StatusBadRequest},
		{"POST", "/api/v1/devices/" + d.ID + "/files", map[string]any{"url": "ftp://example.com/x", "name": "x"}, http.StatusBadRequest},
		{"POST", "/api/v1/devices/" + d.ID + "/files", map[string]any{"artifact": a.ID, "methods": []string{"carrier-pigeon"}}, http.StatusBadRequest},
		{"POST", "/api/v1/devices/" + d.ID + "/files", map[string]any{"artifact": a.ID, "ttl": "-1h"}, http.StatusBadRequest},
		{"POST", "/api/v1/devices/" + d.ID + "/files", map[string]any{"artifact": a.ID, "ttl": "1000h"}, http.StatusBadRequest},
		{"GET", "/api/v1/artifacts/a-nope", nil, http.StatusNotFound},
		{"DELETE", "/api/v1/artifacts/a-nope", nil, http.StatusNotFound},
		{"GET", "/api/v1/transfers/t-nope", nil, http.StatusNotFound},
		{"POST", "/api/v1/transfers/t-nope/abort", nil, http.StatusNotFound},
		{"GET", "/api/v1/firmware/jobs/j-nope", nil, http.StatusNotFound},
		{"POST", "/api/v1/firmware/jobs/j-nope/abort", nil, http.StatusNotFound},
		{"GET", "/api/v1/devices/d-nope/files", nil, http.StatusNotFound},
		{"GET", "/api/v1/devices/d-nope/transfers", nil, http.StatusNotFound},
		{"GET", "/api/v1/devices/d-nope/firmware", nil, http.StatusNotFound},
		{"POST", "/api/v1/devices/d-nope/files/purge", nil, http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			if st := p.Do(t, tt.method, tt.path, tt.body, nil); st != tt.status {
				t.Errorf("status %d, want %d", st, tt.status)
			}
		})
	}
	// Without the API token nothing is served, download URLs aside.
	req, _ := http.NewRequest("GET", p.HTTPURL()+"/api/v1/artifacts", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no token: %d", resp.StatusCode)
	}
}

// A download URL's token serves its own transfer only, and only until it
// expires.
func TestDownloadTokens(t *testing.T) {
	p := outposttest.Start(t, func(c *server.Config) { c.DownloadTTL = time.Second })
	d1 := p.CreateDevice(t, "one")
	d2 := p.CreateDevice(t, "two")
	a := upload(t, p, "x.bin", "", randomBytes(5000))
	c1, c2 := dialBare(t, p, d1), dialBare(t, p, d2)
	tr1 := sendFile(t, p, d1.ID, map[string]any{"artifact": a.ID})
	tr2 := sendFile(t, p, d2.ID, map[string]any{"artifact": a.ID})
	grant := func(c *bareDevice, id string) wireGrant {
		c.pub("files/url", map[string]string{"transfer": id})
		var g wireGrant
		c.expect("files/url", &g)
		return g
	}
	g1, g2 := grant(c1, tr1.ID), grant(c2, tr2.ID)
	get := func(u string) int {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := get(g1.URL); st != http.StatusOK {
		t.Fatalf("own URL: %d", st)
	}
	u1, _ := url.Parse(g1.URL)
	u2, _ := url.Parse(g2.URL)
	swapped := *u2
	swapped.RawQuery = u1.RawQuery // device one's token on device two's transfer
	if st := get(swapped.String()); st != http.StatusUnauthorized {
		t.Errorf("another device's token: %d, want 401", st)
	}
	noToken := *u1
	noToken.RawQuery = ""
	if st := get(noToken.String()); st != http.StatusUnauthorized {
		t.Errorf("no token: %d, want 401", st)
	}
	unknown := *u1
	unknown.Path = "/dl/t-nope"
	if st := get(unknown.String()); st != http.StatusNotFound {
		t.Errorf("unknown transfer: %d, want 404", st)
	}
	outposttest.Eventually(t, waitFor, "token expired", func() bool { return get(g1.URL) == http.StatusUnauthorized })
	// A new grant works again, and the old token stays dead.
	g1b := grant(c1, tr1.ID)
	if st := get(g1b.URL); st != http.StatusOK {
		t.Errorf("new URL: %d", st)
	}
	if g1b.URL == g1.URL {
		t.Error("the new URL reuses the old token")
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
