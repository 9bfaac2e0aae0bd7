//go:build unix

package device

import (
	"os"
	"syscall"
)

// lockDir takes an exclusive lock (flock) on the file at path, so that
// two clients never share one file directory. The lock goes with the
// process, and with exec (the descriptor is close-on-exec).
func lockDir(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}
