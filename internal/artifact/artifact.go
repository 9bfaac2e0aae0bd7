// Package artifact is the platform's artifact repository: files and
// firmware images kept for devices, their metadata (size, SHA-256, an
// optional version and target model) and the platform's Ed25519 signature
// of each.
//
// Content goes to a blob.Store as it is read, so an artifact of up to
// protocol.MaxFileSize is never held in memory; metadata goes to an
// outpost.ArtifactStore.
package artifact

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"time"

	"github.com/outpost-iot/outpost/internal/blob"
	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/protocol"
)

// Meta is what the uploader tells about an artifact.
type Meta = outpost.ArtifactMeta

// Options configure a Repository.
type Options struct {
	// MaxSize bounds an artifact (default protocol.MaxFileSize).
	MaxSize int64
	Logger  *slog.Logger
}

// Repository keeps artifacts. It is safe for concurrent use.
type Repository struct {
	store  outpost.ArtifactStore
	blobs  blob.Store
	signer *Signer
	max    int64
	log    *slog.Logger
}

// New returns a repository keeping metadata in store and content in
// blobs, signing with signer.
func New(store outpost.ArtifactStore, blobs blob.Store, signer *Signer, o Options) *Repository {
	if o.MaxSize <= 0 {
		o.MaxSize = protocol.MaxFileSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Repository{store: store, blobs: blobs, signer: signer, max: o.MaxSize, log: o.Logger}
}

// MaxSize returns the largest artifact the repository takes.
func (r *Repository) MaxSize() int64 { return r.max }

// CheckMeta validates what an uploader says about an artifact.
func CheckMeta(m Meta) error {
	if err := protocol.ValidFileName(m.Name); err != nil {
		return outpost.Errorf(outpost.EINVALID, "name: %v", err)
	}
	if m.Version != "" {
		if err := protocol.ValidVersion(m.Version); err != nil {
			return outpost.Errorf(outpost.EINVALID, "version: %v", err)
		}
	}
	if m.Model != "" {
		if err := protocol.ValidVersion(m.Model); err != nil {
			return outpost.Errorf(outpost.EINVALID, "model: %v", err)
		}
	}
	return nil
}

// ErrTooLarge is returned (as the cause of an EINVALID error) for content
// over the repository's maximum size.
var ErrTooLarge = errors.New("artifact too large")

// Upload stores body as a new artifact. body is read to its end as it
// arrives; its SHA-256 and size are computed on the way. Errors: EINVALID
// for bad metadata, an empty body or one larger than MaxSize (wrapping
// ErrTooLarge); an interrupted body leaves nothing behind.
func (r *Repository) Upload(ctx context.Context, m Meta, body io.Reader) (*outpost.Artifact, error) {
	if err := CheckMeta(m); err != nil {
		return nil, err
	}
	h := sha256.New()
	lr := &limitReader{r: io.TeeReader(body, h), left: r.max}
	key, n, err := r.blobs.Put(ctx, lr)
	if lr.over {
		return nil, &outpost.Error{Code: outpost.EINVALID, Message: fmt.Sprintf("artifact is larger than %d bytes", r.max)}
	}
	if err != nil {
		return nil, fmt.Errorf("upload artifact: %w", err)
	}
	if n == 0 {
		r.blobs.Delete(context.WithoutCancel(ctx), key)
		return nil, outpost.Errorf(outpost.EINVALID, "artifact is empty")
	}
	a := &outpost.Artifact{ID: newID("a-"), Name: m.Name, Size: n, SHA256: hexSum(h), Version: m.Version, Model: m.Model,
		BlobKey: key, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := r.store.CreateArtifact(ctx, a); err != nil {
		r.blobs.Delete(context.WithoutCancel(ctx), key)
		return nil, err
	}
	r.log.Info("artifact stored", "artifact_id", a.ID, "name", a.Name, "size", a.Size, "version", a.Version)
	return a, nil
}

// Artifact returns an artifact's metadata. ENOTFOUND.
func (r *Repository) Artifact(ctx context.Context, id string) (*outpost.Artifact, error) {
	return r.store.Artifact(ctx, id)
}

// Artifacts lists artifacts, newest first.
func (r *Repository) Artifacts(ctx context.Context, f outpost.ArtifactFilter) ([]*outpost.Artifact, error) {
	return r.store.Artifacts(ctx, f)
}

// Delete removes an artifact and its content. ENOTFOUND; ECONFLICT while
// it is being sent to a device.
func (r *Repository) Delete(ctx context.Context, id string) error {
	a, err := r.store.Artifact(ctx, id)
	if err != nil {
		return err
	}
	if err := r.store.DeleteArtifact(ctx, id); err != nil {
		return err
	}
	if err := r.blobs.Delete(ctx, a.BlobKey); err != nil {
		r.log.Warn("artifact content not deleted", "artifact_id", id, "error", err)
	}
	return nil
}

// Open returns an artifact with its content, open for reading. The caller
// closes the object. ENOTFOUND.
func (r *Repository) Open(ctx context.Context, id string) (*outpost.Artifact, blob.Object, error) {
	a, err := r.store.Artifact(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	o, err := r.blobs.Open(ctx, a.BlobKey)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, nil, outpost.Errorf(outpost.ENOTFOUND, "the content of artifact %s is missing", id)
	} else if err != nil {
		return nil, nil, err
	}
	return a, o, nil
}

// Content returns an artifact with its content, open for reading, for
// HTTP (Range) requests. The caller closes it. ENOTFOUND.
func (r *Repository) Content(ctx context.Context, id string) (*outpost.Artifact, io.ReadSeekCloser, error) {
	return r.Open(ctx, id)
}

// PublicKey returns the key that verifies the repository's signatures.
func (r *Repository) PublicKey() ed25519.PublicKey { return r.signer.PublicKey() }

// Signature returns the platform's signature of an artifact, base64
// (protocol.ArtifactStatement).
func (r *Repository) Signature(a *outpost.Artifact) string {
	return r.signer.Sign(protocol.ArtifactStatement(a.SHA256, a.Size, a.Version, a.Model))
}

// Signer returns the repository's signer.
func (r *Repository) Signer() *Signer { return r.signer }

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

func newID(prefix string) string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// limitReader reads at most left bytes and notes whether there was more.
type limitReader struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer
		// one.
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			l.over = true
			return 0, ErrTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// encodeSig is the signature's wire form.
func encodeSig(sig []byte) string { return base64.StdEncoding.EncodeToString(sig) }
