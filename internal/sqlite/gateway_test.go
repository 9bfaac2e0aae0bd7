package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost/storetest"
)

func TestGatewayStore(t *testing.T) {
	storetest.RunGateway(t, func(t *testing.T) storetest.GatewayStore {
		return MustOpen(t, filepath.Join(t.TempDir(), "outpost.db"))
	})
}
