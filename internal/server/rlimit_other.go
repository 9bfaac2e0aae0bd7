//go:build !unix

package server

// RaiseFileLimit does nothing on this system.
func RaiseFileLimit() (uint64, error) { return 0, nil }

func fileLimit() uint64 { return 0 }
