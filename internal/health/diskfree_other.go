//go:build !(linux || darwin || freebsd)

package health

// DiskSpace is not implemented on this system.
func DiskSpace(string) (free, total uint64, ok bool) { return 0, 0, false }
