package artifact_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/internal/artifact"
	"github.com/outpost-iot/outpost/internal/blob"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/sqlite"
	"github.com/outpost-iot/outpost/protocol"
)

func mustRepo(t *testing.T, max int64) (*artifact.Repository, string) {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(context.Background(), filepath.Join(dir, "db"), sqlite.Options{CacheMiB: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	blobs, err := blob.OpenFS(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	signer, _, err := artifact.LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	return artifact.New(db, blobs, signer, artifact.Options{MaxSize: max}), filepath.Join(dir, "blobs")
}

func blobFiles(t *testing.T, dir string) int {
	n := 0
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n++
		}
		return nil
	})
	return n
}

func TestUploadOpenDelete(t *testing.T) {
	ctx := context.Background()
	r, dir := mustRepo(t, 0)
	data := bytes.Repeat([]byte("firmware "), 100_000)
	a, err := r.Upload(ctx, artifact.Meta{Name: "fw.bin", Version: "2.0.1", Model: "TH-100"}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if a.Size != int64(len(data)) || a.SHA256 != hex.EncodeToString(sum[:]) || a.Version != "2.0.1" || a.Model != "TH-100" {
		t.Errorf("artifact %+v", a)
	}
	got, o, err := r.Open(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	back, _ := io.ReadAll(o)
	o.Close()
	if got.ID != a.ID || !bytes.Equal(back, data) {
		t.Errorf("content differs (%d bytes)", len(back))
	}
	offer := protocol.FileOffer{SHA256: a.SHA256, Size: a.Size, Version: a.Version, Model: a.Model, Signature: r.Signature(a)}
	if err := protocol.VerifyOffer(r.Signer().PublicKey(), offer); err != nil {
		t.Errorf("signature: %v", err)
	}
	offer.Version = "2.0.2"
	if err := protocol.VerifyOffer(r.Signer().PublicKey(), offer); err == nil {
		t.Error("signature verifies for another version")
	}
	if err := r.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Open(ctx, a.ID); outpost.ErrorCode(err) != outpost.ENOTFOUND {
		t.Errorf("open deleted: %v", err)
	}
	if n := blobFiles(t, dir); n != 0 {
		t.Errorf("%d blob files left after delete", n)
	}
}

func TestUploadRefused(t *testing.T) {
	ctx := context.Background()
	r, dir := mustRepo(t, 1000)
	tests := []struct {
		name string
		meta artifact.Meta
		body []byte
	}{
		{"over the size limit", artifact.Meta{Name: "big.bin"}, make([]byte, 1001)},
		{"empty", artifact.Meta{Name: "empty.bin"}, nil},
		{"path in name", artifact.Meta{Name: "../x"}, []byte("x")},
		{"absolute name", artifact.Meta{Name: "/etc/passwd"}, []byte("x")},
		{"NUL in name", artifact.Meta{Name: "a\x00b"}, []byte("x")},
		{"line break in version", artifact.Meta{Name: "fw.bin", Version: "1\n2"}, []byte("x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Upload(ctx, tt.meta, bytes.NewReader(tt.body))
			if outpost.ErrorCode(err) != outpost.EINVALID {
				t.Errorf("upload: %v, want EINVALID", err)
			}
		})
	}
	if _, err := r.Upload(ctx, artifact.Meta{Name: "exact.bin"}, bytes.NewReader(make([]byte, 1000))); err != nil {
		t.Errorf("exactly the limit: %v", err)
	}
	if n := blobFiles(t, dir); n != 1 {
		t.Errorf("%d blob files, want only the accepted one", n)
	}
	if l, _ := r.Artifacts(ctx, outpost.ArtifactFilter{}); len(l) != 1 {
		t.Errorf("%d artifacts, want 1", len(l))
	}
}

func TestKeyPersists(t *testing.T) {
	dir := t.TempDir()
	s1, created, err := artifact.LoadOrCreateKey(dir)
	if err != nil || !created {
		t.Fatalf("first: %v, created %v", err, created)
	}
	s2, created, err := artifact.LoadOrCreateKey(dir)
	if err != nil || created {
		t.Fatalf("second: %v, created %v", err, created)
	}
	if s1.String() != s2.String() {
		t.Error("the key changed between starts")
	}
	if st, _ := os.Stat(filepath.Join(dir, artifact.KeyFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", st.Mode().Perm())
	}
	pub, err := protocol.ParsePublicKey(s1.String())
	if err != nil || !bytes.Equal(pub, s1.PublicKey()) {
		t.Errorf("printed key does not parse back: %v", err)
	}
	if !strings.Contains(s1.PublicKeyPEM(), "BEGIN PUBLIC KEY") {
		t.Error("no PEM public key")
	}
}

// An operator's own key, made by openssl, is accepted.
func TestOperatorKey(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	path := filepath.Join(t.TempDir(), "k.pem")
	if out, err := exec.Command("openssl", "genpkey", "-algorithm", "ed25519", "-out", path).CombinedOutput(); err != nil {
		t.Skipf("openssl genpkey: %v: %s", err, out)
	}
	s, err := artifact.LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "pkey", "-in", path, "-pubout").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != strings.TrimSpace(s.PublicKeyPEM()) {
		t.Errorf("public key %s, openssl says %s", s.PublicKeyPEM(), out)
	}
	os.WriteFile(path, []byte("not a key"), 0o600)
	if _, err := artifact.LoadKey(path); err == nil {
		t.Error("garbage accepted as a key")
	}
}
