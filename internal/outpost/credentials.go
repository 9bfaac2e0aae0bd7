package outpost

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"strings"
)

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewDeviceID returns a fresh device identifier such as "d-4gq2mbx7k3a9vq5e".
// It is safe in topics, URLs and file names.
func NewDeviceID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "d-" + idEncoding.EncodeToString(b[:])
}

// NewSecret returns a device secret with 192 bits of entropy. Secrets are
// shown once, at creation, and stored only as a hash.
func NewSecret() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// NewToken returns a random API token.
func NewToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return "op_" + strings.ToLower(idEncoding.EncodeToString(b[:]))
}

// HashSecret hashes a device secret for storage. A single SHA-256 is enough
// for a 192-bit random secret (no dictionary to attack) and keeps a
// reconnect storm of thousands of devices cheap.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// CheckSecret compares a presented secret with a stored hash in constant
// time.
func CheckSecret(hash []byte, secret string) bool {
	h := sha256.Sum256([]byte(secret))
	return len(hash) == len(h) && subtle.ConstantTimeCompare(hash, h[:]) == 1
}

// NewMessageID returns a new random id for a message to a device (a
// queued message, a call, a feed command): 24 hex digits.
func NewMessageID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Shard maps a device id to one of n shards (n > 0), the same one every
// time: the parts that spread devices over workers or locks keep one
// device on one of them, so its work stays in order. FNV-1a, without
// allocating.
func Shard(deviceID string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(deviceID); i++ {
		h ^= uint32(deviceID[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}
