//go:build !unix

package outbox

import "os"

// lockDir does nothing where flock is not available: keep to one
// FileStore per directory by other means.
func lockDir(string) (*os.File, error) { return nil, nil }
