package ota_test

// The tests in this file prove docs/protocol.md §22–§25: a device built
// from a general-purpose MQTT 3.1.1 client (paho.mqtt.golang), net/http
// and crypto/ed25519 and the document alone — no Outpost SDK, no protocol
// package — lists its files, takes a file in chunks over MQTT with the
// hash chain, downloads one by URL with a Range request, and updates its
// firmware, which the platform judges only after the device came back.
// Every message is written and read as plain JSON or bytes here, in the
// shapes the document gives.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

const waitFor = 20 * time.Second

// Wire shapes, as docs/protocol.md gives them.
type (
	wireOffer struct {
		ID        string   `json:"id"`
		Name      string   `json:"name"`
		Size      int64    `json:"size"`
		SHA256    string   `json:"sha256"`
		Methods   []string `json:"methods"`
		URL       string   `json:"url"`
		Version   string   `json:"version"`
		Model     string   `json:"model"`
		Signature string   `json:"signature"`
		Job       string   `json:"job"`
	}
	wireInstall struct {
		ID      string    `json:"id"`
		Version string    `json:"version"`
		File    wireOffer `json:"file"`
	}
	wireGrant struct {
		Transfer string `json:"transfer"`
		URL      string `json:"url"`
		Expires  int64  `json:"expires"`
	}
	wireErrorReply struct {
		Kind    string `json:"kind"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	apiTransfer struct {
		ID        string  `json:"id"`
		DeviceID  string  `json:"device_id"`
		State     string  `json:"state"`
		Method    string  `json:"method"`
		ChunkSize int     `json:"chunk_size"`
		Bytes     int64   `json:"bytes"`
		Percent   float64 `json:"percent"`
		Error     string  `json:"error"`
		Message   string  `json:"message"`
	}
	apiJob struct {
		ID              string `json:"id"`
		State           string `json:"state"`
		Phase           string `json:"phase"`
		Error           string `json:"error"`
		Message         string `json:"message"`
		ReportedVersion string `json:"reported_version"`
	}
	apiArtifact struct {
		ID      string `json:"id"`
		Size    int64  `json:"size"`
		SHA256  string `json:"sha256"`
		Version string `json:"version"`
	}
)

func topicOf(id, dir, kind string) string { return "outpost/v1/" + id + "/" + dir + "/" + kind }

// bareDevice is an MQTT 3.1.1 client with every message the broker
// delivers collected in arrival order.
type bareDevice struct {
	mqtt.Client
	t  *testing.T
	id string

	mu      sync.Mutex
	msgs    []mqtt.Message
	arrived chan struct{}
}

func dialBare(t *testing.T, p *outposttest.Platform, d outposttest.Device) *bareDevice {
	t.Helper()
	c := &bareDevice{t: t, id: d.ID, arrived: make(chan struct{}, 1)}
	o := mqtt.NewClientOptions().AddBroker("tcp://" + p.MQTTAddr()).SetProtocolVersion(4).
		SetClientID(d.ID).SetUsername(d.ID).SetPassword(d.Password).SetCleanSession(true).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(5 * time.Second).SetAutoReconnect(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
			select {
			case c.arrived <- struct{}{}:
			default:
			}
		})
	c.Client = mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	if tok := c.Subscribe(topicOf(d.ID, "down", "#"), 1, nil); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return c
}

func (c *bareDevice) pub(kind string, v any) {
	c.t.Helper()
	var b []byte
	switch x := v.(type) {
	case string:
		b = []byte(x)
	default:
		b, _ = json.Marshal(v)
	}
	if tok := c.Publish(topicOf(c.id, "up", kind), 1, false, b); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		c.t.Fatalf("publish %s: %v", kind, tok.Error())
	}
}

// next returns the first message whose kind (the topic after down/)
// matches, removing it and everything before it.
func (c *bareDevice) next(match func(kind string) bool) (string, []byte) {
	c.t.Helper()
	deadline := time.After(waitFor)
	for {
		c.mu.Lock()
		for i, m := range c.msgs {
			kind := strings.TrimPrefix(m.Topic(), topicOf(c.id, "down", ""))
			if match(kind) {
				c.msgs = c.msgs[i+1:]
				c.mu.Unlock()
				return kind, m.Payload()
			}
		}
		c.mu.Unlock()
		select {
		case <-c.arrived:
		case <-deadline:
			c.t.Fatalf("no matching message within %s", waitFor)
		}
	}
}

func (c *bareDevice) expect(kind string, v any) {
	c.t.Helper()
	_, b := c.next(func(k string) bool { return k == kind })
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			c.t.Fatalf("%s: %v: %s", kind, err, b)
		}
	}
}

func upload(t *testing.T, p *outposttest.Platform, name, version string, data []byte) apiArtifact {
	t.Helper()
	req, _ := http.NewRequest("POST", p.HTTPURL()+"/api/v1/artifacts?name="+name+"&version="+version, bytes.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+p.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a apiArtifact
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(raw, &a) != nil {
		t.Fatalf("upload: %d %s", resp.StatusCode, raw)
	}
	return a
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fetchChunks takes a file over MQTT as §23.2 describes: a window of
// chunks at a time, each checked against the hash chain.
func fetchChunks(t *testing.T, c *bareDevice, o wireOffer, size, window int) []byte {
	t.Helper()
	var file []byte
	prev := make([]byte, 32)
	n := (o.Size + int64(size) - 1) / int64(size)
	for idx := int64(0); idx < n; {
		count := int(min(int64(window), n-idx))
		c.pub("files/request", map[string]any{"transfer": o.ID, "index": idx, "count": count, "size": size})
		for k := 0; k < count; k++ {
			kind, payload := c.next(func(k string) bool { return strings.HasPrefix(k, "files/chunk/") })
			parts := strings.Split(kind, "/")
			if len(parts) != 4 || parts[2] != o.ID || parts[3] != strconv.FormatInt(idx, 10) {
				t.Fatalf("chunk topic %q, want files/chunk/%s/%d", kind, o.ID, idx)
			}
			if !bytes.Equal(payload[:32], prev) {
				t.Fatalf("chunk %d: previous hash %x, want %x", idx, payload[:32], prev)
			}
			data := payload[64:]
			sum := sha256.Sum256(data)
			if !bytes.Equal(sum[:], payload[32:64]) {
				t.Fatalf("chunk %d: hash mismatch", idx)
			}
			file = append(file, data...)
			prev = sum[:]
			idx++
		}
	}
	return file
}

func TestConformanceFileOverMQTT(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "bare-files")
	c := dialBare(t, p, d)
	c.pub("files/list", `{"files":[],"accept":{"methods":["mqtt","url"],"chunk_size":4096}}`)

	data := randomBytes(100_000)
	a := upload(t, p, "config.bin", "", data)
	var tr apiTransfer
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/files", map[string]any{"artifact": a.ID}, &tr); st != http.StatusAccepted {
		t.Fatalf("send file: %d", st)
	}
	var o wireOffer
	c.expect("files/offer", &o)
	if o.ID != tr.ID || o.Name != "config.bin" || o.Size != int64(len(data)) || o.SHA256 != hexSHA(data) {
		t.Fatalf("offer %+v", o)
	}
	c.pub("files/status", map[string]any{"transfer": o.ID, "state": "FILE_TRANSFER", "method": "mqtt", "chunk_size": 4096})
	file := fetchChunks(t, c, o, 4096, 8)
	if hexSHA(file) != o.SHA256 {
		t.Fatal("whole-file hash mismatch")
	}
	c.pub("files/status", map[string]any{"transfer": o.ID, "state": "FILE_READY", "bytes": len(file)})
	c.pub("files/list", map[string]any{"files": []map[string]any{{"name": o.Name, "size": len(file), "sha256": hexSHA(file)}}})
	outposttest.Eventually(t, waitFor, "transfer FILE_READY", func() bool {
		p.Do(t, "GET", "/api/v1/transfers/"+o.ID, nil, &tr)
		return tr.State == "FILE_READY" && tr.Percent == 100 && tr.Method == "mqtt" && tr.ChunkSize == 4096
	})
	var files struct {
		Files []struct {
			Name   string `json:"name"`
			SHA256 string `json:"sha256"`
		} `json:"files"`
	}
	p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/files", nil, &files)
	if len(files.Files) != 1 || files.Files[0].Name != "config.bin" || files.Files[0].SHA256 != o.SHA256 {
		t.Errorf("device files %+v", files)
	}

	// A request for a finished transfer is answered with an abort.
	c.pub("files/request", map[string]any{"transfer": o.ID, "index": 0, "count": 1, "size": 4096})
	var ab struct{ Transfer, Reason string }
	c.expect("files/abort", &ab)
	if ab.Transfer != o.ID {
		t.Errorf("abort %+v", ab)
	}
}

func TestConformanceFileOverURL(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "bare-url")
	c := dialBare(t, p, d)
	data := randomBytes(300_000)
	a := upload(t, p, "map.bin", "", data)
	var tr apiTransfer
	p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/files", map[string]any{"artifact": a.ID, "methods": []string{"url"}}, &tr)
	var o wireOffer
	c.expect("files/offer", &o)
	if len(o.Methods) != 1 || o.Methods[0] != "url" {
		t.Fatalf("methods %v", o.Methods)
	}
	c.pub("files/url", map[string]string{"transfer": o.ID})
	var g wireGrant
	c.expect("files/url", &g)
	if g.Transfer != o.ID || g.Expires < time.Now().UnixMilli() {
		t.Fatalf("grant %+v", g)
	}
	// The first part, then the rest with a Range request, as a device
	// resuming after a restart does.
	get := func(rng string) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", g.URL, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, first := get("bytes=0-99999")
	if resp.StatusCode != http.StatusPartialContent || len(first) != 100_000 {
		t.Fatalf("first part: %d, %d bytes", resp.StatusCode, len(first))
	}
	resp, rest := get("bytes=100000-")
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100000-%d/%d", len(data)-1, len(data)) {
		t.Fatalf("rest: %d %q", resp.StatusCode, resp.Header.Get("Content-Range"))
	}
	if file := append(first, rest...); hexSHA(file) != o.SHA256 {
		t.Fatal("whole-file hash mismatch")
	}
	c.pub("files/status", map[string]any{"transfer": o.ID, "state": "FILE_READY"})
	outposttest.Eventually(t, waitFor, "transfer FILE_READY", func() bool {
		p.Do(t, "GET", "/api/v1/transfers/"+o.ID, nil, &tr)
		return tr.State == "FILE_READY" && tr.Method == "url"
	})
	// Once the transfer is over, its URL serves nothing.
	if resp, _ := get(""); resp.StatusCode != http.StatusConflict {
		t.Errorf("URL of a finished transfer: %d, want 409", resp.StatusCode)
	}
}

func TestConformanceFirmware(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "bare-fw")
	var key struct {
		PublicKey string `json:"public_key"`
	}
	p.Do(t, "GET", "/api/v1/signing-key", nil, &key)
	pub, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(key.PublicKey, "ed25519:"))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		t.Fatalf("signing key %q", key.PublicKey)
	}
	c := dialBare(t, p, d)
	c.pub("firmware/version", map[string]string{"version": "1.0.0"})

	image := randomBytes(50_000)
	a := upload(t, p, "fw.bin", "1.1.0", image)
	var job apiJob
	outposttest.Eventually(t, waitFor, "version recorded", func() bool {
		var st struct{ Version string }
		p.Do(t, "GET", "/api/v1/devices/"+d.ID+"/firmware", nil, &st)
		return st.Version == "1.0.0"
	})
	if st := p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/firmware", map[string]any{"artifact": a.ID, "timeout": "1m"}, &job); st != http.StatusAccepted {
		t.Fatalf("order: %d", st)
	}
	var in wireInstall
	c.expect("firmware/install", &in)
	if in.ID != job.ID || in.Version != "1.1.0" || in.File.Job != job.ID {
		t.Fatalf("install order %+v", in)
	}
	// The signature covers the statement of §24.1, byte for byte.
	stmt := fmt.Sprintf("outpost-artifact-v1\n%s\n%d\n%s\n%s\n", in.File.SHA256, in.File.Size, in.File.Version, in.File.Model)
	sig, _ := base64.StdEncoding.DecodeString(in.File.Signature)
	if !ed25519.Verify(pub, []byte(stmt), sig) {
		t.Fatal("the install order's signature does not verify")
	}
	file := fetchChunks(t, c, in.File, 1024, 16)
	if hexSHA(file) != in.File.SHA256 {
		t.Fatal("image hash mismatch")
	}
	c.pub("files/status", map[string]any{"transfer": in.File.ID, "state": "FILE_READY"})
	c.pub("firmware/status", map[string]string{"job": in.ID, "state": "INSTALLING", "phase": "installing"})
	c.pub("firmware/status", map[string]string{"job": in.ID, "state": "INSTALLING", "phase": "restarting"})
	outposttest.Eventually(t, waitFor, "phase restarting", func() bool {
		p.Do(t, "GET", "/api/v1/firmware/jobs/"+job.ID, nil, &job)
		return job.Phase == "restarting" && job.State == "INSTALLING"
	})
	// "Restart": a new connection that reports the new version.
	c.Disconnect(100)
	c2 := dialBare(t, p, d)
	c2.pub("firmware/version", map[string]string{"version": "1.1.0", "job": in.ID})
	outposttest.Eventually(t, waitFor, "job SUCCESS", func() bool {
		p.Do(t, "GET", "/api/v1/firmware/jobs/"+job.ID, nil, &job)
		return job.State == "SUCCESS"
	})
	if job.ReportedVersion != "1.1.0" {
		t.Errorf("job %+v", job)
	}
	// SUCCESS is not the device's to report.
	c2.pub("firmware/status", map[string]string{"job": in.ID, "state": "SUCCESS"})
	var e wireErrorReply
	c2.expect("error", &e)
	if e.Kind != "firmware/status" || e.Code != "invalid" {
		t.Errorf("error reply %+v", e)
	}
}

// Bad input from a device gets an error reply on down/error and changes
// nothing.
func TestConformanceBadRequests(t *testing.T) {
	p := outposttest.Start(t)
	d := p.CreateDevice(t, "bare-bad")
	other := p.CreateDevice(t, "bare-other")
	c := dialBare(t, p, d)
	a := upload(t, p, "x.bin", "", randomBytes(10_000))
	var tr, otherTr apiTransfer
	p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/files", map[string]any{"artifact": a.ID}, &tr)
	p.Do(t, "POST", "/api/v1/devices/"+other.ID+"/files", map[string]any{"artifact": a.ID}, &otherTr)
	c.expect("files/offer", nil)
	var urlTr apiTransfer
	p.Do(t, "POST", "/api/v1/devices/"+d.ID+"/files", map[string]any{"artifact": a.ID, "methods": []string{"url"}}, &urlTr)
	c.expect("files/offer", nil)
	tests := []struct {
		name, kind, payload, code string
	}{
		{"chunk out of range", "files/request", `{"transfer":"` + tr.ID + `","index":3,"count":1,"size":4096}`, "invalid"},
		{"chunk size too small", "files/request", `{"transfer":"` + tr.ID + `","index":0,"count":1,"size":255}`, "invalid"},
		{"chunk size too large", "files/request", `{"transfer":"` + tr.ID + `","index":0,"count":1,"size":1048577}`, "invalid"},
		{"too many chunks", "files/request", `{"transfer":"` + tr.ID + `","index":0,"count":65,"size":256}`, "too_large"},
		{"too many bytes", "files/request", `{"transfer":"` + tr.ID + `","index":0,"count":8,"size":1048576}`, "too_large"},
		{"negative index", "files/request", `{"transfer":"` + tr.ID + `","index":-1,"count":1,"size":4096}`, "invalid"},
		{"another device's transfer", "files/request", `{"transfer":"` + otherTr.ID + `","index":0,"count":1,"size":4096}`, "unknown_transfer"},
		{"unknown transfer", "files/request", `{"transfer":"t-nope","index":0,"count":1,"size":4096}`, "unknown_transfer"},
		{"traversal in a listed name", "files/list", `{"files":[{"name":"../x","size":1,"sha256":""}]}`, "invalid"},
		{"absolute listed name", "files/list", `{"files":[{"name":"/etc/passwd","size":1}]}`, "invalid"},
		{"NUL in a listed name", "files/list", `{"files":[{"name":"a\u0000b","size":1}]}`, "invalid"},
		{"another device's URL", "files/url", `{"transfer":"` + otherTr.ID + `"}`, "unknown_transfer"},
		{"chunks of a URL-only transfer", "files/request", `{"transfer":"` + urlTr.ID + `","index":0,"count":1,"size":4096}`, "invalid"},
		{"unknown job", "firmware/status", `{"job":"j-nope","state":"ERROR"}`, "unknown_transfer"},
		{"unknown kind", "files/bogus", `{}`, "unknown_kind"},
		{"not JSON", "files/status", `{"transfer":`, "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.t = t
			c.pub(tt.kind, tt.payload)
			var e wireErrorReply
			c.expect("error", &e)
			if e.Kind != tt.kind || e.Code != tt.code {
				t.Errorf("error reply %+v, want kind %s code %s", e, tt.kind, tt.code)
			}
		})
	}
	var got apiTransfer
	p.Do(t, "GET", "/api/v1/transfers/"+otherTr.ID, nil, &got)
	if got.State != "OFFERED" {
		t.Errorf("the other device's transfer changed: %+v", got)
	}
	_ = context.Background
}
