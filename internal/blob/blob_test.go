package blob_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/outpost-iot/outpost/internal/blob"
)

func TestFSPutOpenDelete(t *testing.T) {
	ctx := context.Background()
	s, err := blob.OpenFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	key, n, err := s.Put(ctx, bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("put: %d, %v", n, err)
	}
	o, err := s.Open(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if o.Size() != int64(len(data)) {
		t.Errorf("size %d, want %d", o.Size(), len(data))
	}
	part := make([]byte, 100)
	if _, err := o.ReadAt(part, 1<<20); err != nil || !bytes.Equal(part, data[1<<20:1<<20+100]) {
		t.Errorf("read at 1 MiB: %v", err)
	}
	all, err := io.ReadAll(o)
	if err != nil || !bytes.Equal(all, data) {
		t.Errorf("read all: %d bytes, %v", len(all), err)
	}
	o.Close()
	if err := s.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, key); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("open deleted: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, key); err != nil {
		t.Errorf("delete twice: %v", err)
	}
}

// A reader that fails halfway leaves nothing behind, not even a temporary
// file.
func TestFSFailedPutLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := blob.OpenFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	_, _, err = s.Put(context.Background(), io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), errReader{boom}))
	if !errors.Is(err, boom) {
		t.Fatalf("put: %v, want boom", err)
	}
	var files []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) != 0 {
		t.Errorf("files left: %v", files)
	}
}

func TestFSBadKeys(t *testing.T) {
	s, err := blob.OpenFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"", "../../etc/passwd", "ABCDEF0123", "0123456789abcdef/../x"} {
		if _, err := s.Open(context.Background(), k); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("open %q: %v, want ErrNotFound", k, err)
		}
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
