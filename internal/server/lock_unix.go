//go:build unix

package server

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDataDir takes an exclusive lock on the data directory, so that two
// platforms never share one database. The kernel releases it when the
// process ends, even by SIGKILL.
func lockDataDir(dir string) (release func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			other := ""
			if r, rerr := ReadRunning(dir); rerr == nil {
				other = fmt.Sprintf(" (pid %d, %s)", r.PID, r.HTTP)
			}
			return nil, fmt.Errorf("data directory %s is in use by another outpost serve%s; stop it, or pass --data with another directory", dir, other)
		}
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	return func() { f.Close() }, nil
}
