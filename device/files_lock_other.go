//go:build !unix

package device

// lockDir does not lock on systems without flock.
func lockDir(string) (func(), error) { return func() {}, nil }
