//go:build !(linux || darwin || freebsd)

package server

// diskSpace is not implemented on this system.
func diskSpace(string) (free, total uint64, ok bool) { return 0, 0, false }
