package protocol_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/protocol"
)

func TestValidFileName(t *testing.T) {
	good := []string{"a", "firmware-1.2.bin", "ünïcode.txt", "a b", "a..b", strings.Repeat("x", 255)}
	bad := []string{"", ".", "..", "../x", "x/..", "/etc/passwd", "a/b", `a\b`, `..\x`, "a\x00b", "a\nb", ".hidden", strings.Repeat("x", 256), "\xff"}
	for _, n := range good {
		if err := protocol.ValidFileName(n); err != nil {
			t.Errorf("%q: %v", n, err)
		}
	}
	for _, n := range bad {
		if protocol.ValidFileName(n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
}

func TestChunkChain(t *testing.T) {
	var zero [sha256.Size]byte
	p1, h1 := protocol.EncodeChunk(zero, []byte("first"))
	p2, h2 := protocol.EncodeChunk(h1, []byte("second"))
	if len(p1) != protocol.ChunkHeaderLen+5 || !bytes.Equal(p1[:32], zero[:]) || !bytes.Equal(p1[32:64], h1[:]) {
		t.Fatalf("layout of %x", p1)
	}
	d, s, err := protocol.DecodeChunk(zero, p1)
	if err != nil || string(d) != "first" || s != h1 {
		t.Fatalf("decode first: %q %v", d, err)
	}
	if _, _, err := protocol.DecodeChunk(h1, p2); err != nil {
		t.Fatalf("decode second: %v", err)
	}
	if _, _, err := protocol.DecodeChunk(zero, p2); !errors.Is(err, protocol.ErrBadChunk) {
		t.Errorf("second chunk out of order: %v", err)
	}
	bad := bytes.Clone(p2)
	bad[len(bad)-1] ^= 1
	if _, _, err := protocol.DecodeChunk(h1, bad); !errors.Is(err, protocol.ErrBadChunk) {
		t.Errorf("flipped byte: %v", err)
	}
	if _, _, err := protocol.DecodeChunk(zero, p1[:64]); !errors.Is(err, protocol.ErrBadChunk) {
		t.Errorf("no data: %v", err)
	}
	_ = h2
}

func TestChunkKind(t *testing.T) {
	k := protocol.ChunkKind("t-abc", 42)
	if k != "files/chunk/t-abc/42" {
		t.Fatal(k)
	}
	if id, i, ok := protocol.ParseChunkKind(k); !ok || id != "t-abc" || i != 42 {
		t.Errorf("parse %q: %s %d %v", k, id, i, ok)
	}
	for _, k := range []string{"files/chunk/t-abc", "files/chunk/t-abc/-1", "files/chunk/t-abc/01", "files/chunk/t a/1", "files/chunk//1", "files/chunk/t-abc/1/2", "files/list"} {
		if _, _, ok := protocol.ParseChunkKind(k); ok {
			t.Errorf("%q parsed", k)
		}
	}
}

func TestChunkRequestBounds(t *testing.T) {
	tests := []struct {
		req  string
		code string
	}{
		{`{"transfer":"t-1","index":0,"count":1,"size":256}`, ""},
		{`{"transfer":"t-1","index":0,"count":4,"size":1048576}`, ""},
		{`{"transfer":"t-1","index":0,"count":1,"size":255}`, protocol.CodeInvalid},
		{`{"transfer":"t-1","index":0,"count":1,"size":1048577}`, protocol.CodeInvalid},
		{`{"transfer":"t-1","index":0,"count":0,"size":4096}`, protocol.CodeInvalid},
		{`{"transfer":"t-1","index":0,"count":65,"size":256}`, protocol.CodeTooLarge},
		{`{"transfer":"t-1","index":0,"count":5,"size":1048576}`, protocol.CodeTooLarge},
		{`{"transfer":"t-1","index":-1,"count":1,"size":4096}`, protocol.CodeInvalid},
		{`{"transfer":"../x","index":0,"count":1,"size":4096}`, protocol.CodeInvalid},
		{`{"transfer":"t-1","index":0,"count":1,"size":4096,"rate":-1}`, protocol.CodeInvalid},
		{`[]`, protocol.CodeInvalid},
	}
	for _, tt := range tests {
		_, err := protocol.DecodeChunkRequest([]byte(tt.req))
		got := ""
		var pe *protocol.Error
		if errors.As(err, &pe) {
			got = pe.Code
		} else if err != nil {
			t.Errorf("%s: %v is not a *protocol.Error", tt.req, err)
		}
		if got != tt.code {
			t.Errorf("%s: code %q, want %q", tt.req, got, tt.code)
		}
	}
	r := protocol.ChunkRequest{Index: 2, Count: 5, Size: 1000}
	if n, err := protocol.CheckChunkRequest(r, 2500); err != nil || n != 1 {
		t.Errorf("request past the end: %d %v", n, err)
	}
	r.Index = 3
	if _, err := protocol.CheckChunkRequest(r, 2500); err == nil {
		t.Error("chunk beyond the file accepted")
	}
}

func TestVerifyOffer(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	o := protocol.FileOffer{SHA256: strings.Repeat("ab", 32), Size: 123, Version: "2.0", Model: "TH"}
	o.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, protocol.ArtifactStatement(o.SHA256, o.Size, o.Version, o.Model)))
	if err := protocol.VerifyOffer(pub, o); err != nil {
		t.Fatal(err)
	}
	want := "outpost-artifact-v1\n" + strings.Repeat("ab", 32) + "\n123\n2.0\nTH\n"
	if got := string(protocol.ArtifactStatement(o.SHA256, o.Size, o.Version, o.Model)); got != want {
		t.Errorf("statement %q, want %q", got, want)
	}
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	for name, mod := range map[string]func(*protocol.FileOffer, *ed25519.PublicKey){
		"other key":     func(_ *protocol.FileOffer, k *ed25519.PublicKey) { *k = other },
		"no key":        func(_ *protocol.FileOffer, k *ed25519.PublicKey) { *k = nil },
		"unsigned":      func(o *protocol.FileOffer, _ *ed25519.PublicKey) { o.Signature = "" },
		"other size":    func(o *protocol.FileOffer, _ *ed25519.PublicKey) { o.Size++ },
		"other hash":    func(o *protocol.FileOffer, _ *ed25519.PublicKey) { o.SHA256 = strings.Repeat("cd", 32) },
		"other version": func(o *protocol.FileOffer, _ *ed25519.PublicKey) { o.Version = "2.1" },
		"garbage":       func(o *protocol.FileOffer, _ *ed25519.PublicKey) { o.Signature = "!!" },
	} {
		oo, k := o, pub
		mod(&oo, &k)
		if err := protocol.VerifyOffer(k, oo); !errors.Is(err, protocol.ErrBadSignature) {
			t.Errorf("%s: %v", name, err)
		}
	}
	s := protocol.FormatPublicKey(pub)
	if back, err := protocol.ParsePublicKey(s); err != nil || !bytes.Equal(back, pub) {
		t.Errorf("key round trip %q: %v", s, err)
	}
}

func TestFirmwareStatusSuccessIsThePlatforms(t *testing.T) {
	if _, err := protocol.DecodeFirmwareStatus([]byte(`{"job":"j-1","state":"SUCCESS"}`)); err == nil {
		t.Error("a device reported SUCCESS")
	}
	s, err := protocol.DecodeFirmwareStatus([]byte(`{"job":"j-1","state":"ERROR"}`))
	if err != nil || s.Error != protocol.FirmwareErrUnspecified {
		t.Errorf("ERROR without a kind: %+v %v", s, err)
	}
}

// FuzzDecodeFiles feeds every decoder of file management the same input:
// none panics, each fails with a coded error, and what one accepts
// survives a round trip.
func FuzzDecodeFiles(f *testing.F) {
	for _, s := range []string{
		`{"files":[{"name":"a","size":1,"sha256":""}],"accept":{"methods":["mqtt"],"chunk_size":4096}}`,
		`{"id":"t-1","name":"fw.bin","size":10,"sha256":"` + strings.Repeat("0", 64) + `","methods":["mqtt","url"]}`,
		`{"transfer":"t-1","state":"FILE_TRANSFER","method":"mqtt","chunk_size":4096,"bytes":10}`,
		`{"transfer":"t-1","index":0,"count":4,"size":65536}`,
		`{"id":"j-1","version":"2","file":{"id":"t-1","name":"x","size":1,"sha256":"` + strings.Repeat("0", 64) + `","methods":["url"]}}`,
		`{"job":"j-1","state":"INSTALLING","phase":"restarting"}`,
		`{"version":"1.0","job":"j-1"}`,
		`{"id":"c-1","names":["a","../b"]}`,
	} {
		f.Add([]byte(s))
	}
	type dec struct {
		name string
		fn   func([]byte) (any, error)
	}
	decs := []dec{
		{"list", func(b []byte) (any, error) { return protocol.DecodeFileList(b) }},
		{"offer", func(b []byte) (any, error) { return protocol.DecodeFileOffer(b) }},
		{"status", func(b []byte) (any, error) { return protocol.DecodeFileStatus(b) }},
		{"request", func(b []byte) (any, error) { return protocol.DecodeChunkRequest(b) }},
		{"url", func(b []byte) (any, error) { return protocol.DecodeURLRequest(b) }},
		{"grant", func(b []byte) (any, error) { return protocol.DecodeURLGrant(b) }},
		{"abort", func(b []byte) (any, error) { return protocol.DecodeFileAbort(b) }},
		{"delete", func(b []byte) (any, error) { return protocol.DecodeFileDelete(b) }},
		{"purge", func(b []byte) (any, error) { return protocol.DecodeFilePurge(b) }},
		{"version", func(b []byte) (any, error) { return protocol.DecodeFirmwareVersion(b) }},
		{"install", func(b []byte) (any, error) { return protocol.DecodeFirmwareInstall(b) }},
		{"fwstatus", func(b []byte) (any, error) { return protocol.DecodeFirmwareStatus(b) }},
		{"fwabort", func(b []byte) (any, error) { return protocol.DecodeFirmwareAbort(b) }},
		{"check", func(b []byte) (any, error) { return protocol.DecodeFirmwareCheck(b) }},
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, d := range decs {
			v, err := d.fn(b)
			if err != nil {
				codeOf(t, err)
				continue
			}
			again, _ := json.Marshal(v)
			v2, err := d.fn(again)
			if err != nil {
				t.Fatalf("%s: accepted %q, refused its re-encoding %q: %v", d.name, b, again, err)
			}
			if third, _ := json.Marshal(v2); !bytes.Equal(third, again) {
				t.Fatalf("%s: round trip changed %q to %q", d.name, again, third)
			}
		}
		if l, err := protocol.DecodeFileList(b); err == nil {
			for _, f := range l.Files {
				if protocol.ValidFileName(f.Name) != nil {
					t.Fatalf("list accepted name %q", f.Name)
				}
			}
		}
		if d, err := protocol.DecodeFileDelete(b); err == nil {
			for _, n := range d.Names {
				if strings.ContainsAny(n, "/\\\x00") || n == ".." || n == "." {
					t.Fatalf("delete accepted name %q", n)
				}
			}
		}
	})
}
