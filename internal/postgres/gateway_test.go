package postgres_test

import (
	"testing"

	"github.com/outpost-iot/outpost/internal/outpost/storetest"
	"github.com/outpost-iot/outpost/internal/postgres"
	"github.com/outpost-iot/outpost/internal/postgres/pgtest"
)

func TestGatewayStore(t *testing.T) {
	storetest.RunGateway(t, func(t *testing.T) storetest.GatewayStore {
		u, _ := pgtest.MustSchema(t)
		return MustOpen(t, u, postgres.Options{MaxConns: 4})
	})
}
