package server_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-iot/outpost/internal/server"
)

func TestParseDB(t *testing.T) {
	data := filepath.Join("srv", "data")
	for _, tt := range []struct {
		db     string
		want   server.StoreSpec
		errHas string
	}{
		{"", server.StoreSpec{Engine: server.EngineSQLite, Path: filepath.Join(data, server.DBFile)}, ""},
		{"sqlite:/var/lib/outpost/fleet.db", server.StoreSpec{Engine: server.EngineSQLite, Path: "/var/lib/outpost/fleet.db"}, ""},
		{"sqlite:///var/lib/outpost/fleet.db", server.StoreSpec{Engine: server.EngineSQLite, Path: "/var/lib/outpost/fleet.db"}, ""},
		{"sqlite:fleet.db", server.StoreSpec{Engine: server.EngineSQLite, Path: "fleet.db"}, ""},
		{"sqlite:odd:name.db", server.StoreSpec{Engine: server.EngineSQLite, Path: "odd:name.db"}, ""},
		{"/var/lib/outpost/fleet.db", server.StoreSpec{Engine: server.EngineSQLite, Path: "/var/lib/outpost/fleet.db"}, ""},
		{"fleet.db", server.StoreSpec{Engine: server.EngineSQLite, Path: "fleet.db"}, ""},
		{"postgres://outpost@db:5432/fleet?sslmode=require", server.StoreSpec{Engine: server.EnginePostgres, URL: "postgres://outpost@db:5432/fleet?sslmode=require"}, ""},
		{"postgresql://outpost@db/fleet", server.StoreSpec{Engine: server.EnginePostgres, URL: "postgresql://outpost@db/fleet"}, ""},
		{"sqlite:", server.StoreSpec{}, "needs the database file"},
		{"mysql://root@db/fleet", server.StoreSpec{}, "unknown database"},
		{"odd:name.db", server.StoreSpec{}, "sqlite:odd:name.db"},
	} {
		got, err := server.ParseDB(tt.db, data)
		switch {
		case tt.errHas != "" && (err == nil || !strings.Contains(err.Error(), tt.errHas)):
			t.Errorf("%q: %+v, %v; want an error with %q", tt.db, got, err, tt.errHas)
		case tt.errHas == "" && (err != nil || got != tt.want):
			t.Errorf("%q: %+v, %v; want %+v", tt.db, got, err, tt.want)
		}
	}
}
