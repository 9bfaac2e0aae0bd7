package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost/storetest"
)

func TestOTAStore(t *testing.T) {
	storetest.RunOTA(t, func(t *testing.T) storetest.OTAStore {
		return MustOpen(t, filepath.Join(t.TempDir(), "outpost.db"))
	})
}
