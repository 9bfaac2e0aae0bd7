// Package blob stores large opaque objects (artifacts: firmware images and
// files for devices) behind one small interface, so that another engine
// (an object store shared by several replicas) can replace the local file
// system later.
//
// FS keeps each blob as one file under a directory. A blob is written to
// a temporary file, synced and renamed into place, so a crash never leaves
// a partial blob under its key; nothing is ever held whole in memory.
package blob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotFound is returned for a key that holds no blob.
var ErrNotFound = errors.New("blob not found")

// Object is an open blob: readable at any offset and seekable, so that it
// can serve HTTP Range requests and chunks alike.
type Object interface {
	io.ReaderAt
	io.ReadSeeker
	io.Closer
	// Size is the blob's length in bytes.
	Size() int64
}

// Store keeps blobs.
type Store interface {
	// Put stores everything r yields under a new key and returns the key
	// and the number of bytes. It reads r to its end (or to its first
	// error, in which case nothing is stored) and never holds it whole.
	Put(ctx context.Context, r io.Reader) (key string, n int64, err error)
	// Open opens a blob for reading. ErrNotFound.
	Open(ctx context.Context, key string) (Object, error)
	// Delete removes a blob. Deleting a missing blob is not an error.
	Delete(ctx context.Context, key string) error
}

// FS is a Store on the local file system.
type FS struct {
	dir string
}

var _ Store = (*FS)(nil)

// OpenFS returns a store keeping its blobs under dir, which it creates.
// Temporary files left by a crash are removed.
func OpenFS(dir string) (*FS, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	left, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	for _, e := range left {
		os.Remove(filepath.Join(dir, "tmp", e.Name()))
	}
	return &FS{dir: dir}, nil
}

// path returns where key lives: keys are hex, fanned out over 256
// directories by their first two digits.
func (s *FS) path(key string) (string, error) {
	if len(key) < 8 || len(key) > 64 || strings.Trim(key, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%w: bad key %q", ErrNotFound, key)
	}
	return filepath.Join(s.dir, key[:2], key), nil
}

// Put implements Store.
func (s *FS) Put(ctx context.Context, r io.Reader) (string, int64, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", 0, fmt.Errorf("blob: %w", err)
	}
	key := hex.EncodeToString(b[:])
	final, _ := s.path(key)
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), key+"-*")
	if err != nil {
		return "", 0, fmt.Errorf("blob: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, ctxReader{ctx, r})
	if err != nil {
		return "", n, fmt.Errorf("blob: write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return "", n, fmt.Errorf("blob: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", n, fmt.Errorf("blob: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return "", n, fmt.Errorf("blob: %w", err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", n, fmt.Errorf("blob: %w", err)
	}
	ok = true
	if d, err := os.Open(filepath.Dir(final)); err == nil {
		d.Sync() // the rename itself survives a power cut
		d.Close()
	}
	return key, n, nil
}

// Open implements Store.
func (s *FS) Open(_ context.Context, key string) (Object, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	} else if err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blob: %w", err)
	}
	return &file{File: f, size: st.Size()}, nil
}

// Delete implements Store.
func (s *FS) Delete(_ context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("blob: %w", err)
	}
	return nil
}

type file struct {
	*os.File
	size int64
}

func (f *file) Size() int64 { return f.size }

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
