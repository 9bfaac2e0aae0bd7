package artifact

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/outpost-iot/outpost/protocol"
)

// KeyFile is the name of the platform's signing key in the data
// directory.
const KeyFile = "signing-key.pem"

// Signer signs artifacts with the platform's Ed25519 key.
type Signer struct {
	priv ed25519.PrivateKey
}

// NewSigner returns a signer for priv.
func NewSigner(priv ed25519.PrivateKey) *Signer { return &Signer{priv: priv} }

// Sign signs msg and returns the signature in standard base64.
func (s *Signer) Sign(msg []byte) string { return encodeSig(ed25519.Sign(s.priv, msg)) }

// PublicKey returns the key devices verify signatures with.
func (s *Signer) PublicKey() ed25519.PublicKey { return s.priv.Public().(ed25519.PublicKey) }

// String returns the public key as `outpost keys` prints it.
func (s *Signer) String() string { return protocol.FormatPublicKey(s.PublicKey()) }

// LoadKey reads an Ed25519 private key from a PEM file holding a PKCS #8
// "PRIVATE KEY" block, as `openssl genpkey -algorithm ed25519` writes it.
func LoadKey(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s: want a PEM \"PRIVATE KEY\" block (PKCS #8, e.g. from openssl genpkey -algorithm ed25519)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: %T is not an Ed25519 key", path, k)
	}
	return &Signer{priv: priv}, nil
}

// LoadOrCreateKey reads the key in dir/KeyFile, creating it (mode 0600)
// on first use. It reports whether it created the key.
func LoadOrCreateKey(dir string) (*Signer, bool, error) {
	path := filepath.Join(dir, KeyFile)
	s, err := LoadKey(path)
	if err == nil {
		return s, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, false, fmt.Errorf("signing key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("signing key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		os.Remove(path)
		return nil, false, fmt.Errorf("signing key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("signing key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, false, fmt.Errorf("signing key: %w", err)
	}
	return &Signer{priv: priv}, true, nil
}

// PublicKeyPEM returns the public key as a PEM "PUBLIC KEY" block (PKIX).
func (s *Signer) PublicKeyPEM() string {
	der, _ := x509.MarshalPKIXPublicKey(s.PublicKey())
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}
