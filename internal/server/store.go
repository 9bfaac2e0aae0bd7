package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/outpost-iot/outpost/internal/outpost"
	"github.com/outpost-iot/outpost/internal/postgres"
	"github.com/outpost-iot/outpost/internal/sqlite"
	"github.com/prometheus/client_golang/prometheus"
)

// DBFile is the SQLite database's file in the data directory, used unless
// Config.DB names another store.
const DBFile = "outpost.db"

// Engines Config.DB can name.
const (
	EngineSQLite   = "sqlite"
	EnginePostgres = "postgres"
)

// StoreSpec is a parsed Config.DB: which engine, and where.
type StoreSpec struct {
	// Engine is EngineSQLite or EnginePostgres.
	Engine string
	// Path is the SQLite database file; URL the PostgreSQL connection URL.
	Path, URL string
}

var uriScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// ParseDB reads a --db value: empty for the SQLite database in dataDir,
// sqlite:PATH or a plain file path for another SQLite file,
// postgres://… or postgresql://… for PostgreSQL. Anything else is an error
// that says what is accepted.
func ParseDB(db, dataDir string) (StoreSpec, error) {
	switch {
	case db == "":
		return StoreSpec{Engine: EngineSQLite, Path: filepath.Join(dataDir, DBFile)}, nil
	case strings.HasPrefix(db, "postgres://"), strings.HasPrefix(db, "postgresql://"):
		return StoreSpec{Engine: EnginePostgres, URL: db}, nil
	case strings.HasPrefix(db, "sqlite:"):
		p := strings.TrimPrefix(db, "sqlite:")
		if strings.HasPrefix(p, "//") { // sqlite:///abs/path, URL style
			p = strings.TrimPrefix(p, "//")
		}
		if p == "" {
			return StoreSpec{}, errors.New("--db sqlite:PATH needs the database file's path")
		}
		return StoreSpec{Engine: EngineSQLite, Path: p}, nil
	case uriScheme.MatchString(db) && !filepath.IsAbs(db):
		scheme, _, _ := strings.Cut(db, ":")
		return StoreSpec{}, fmt.Errorf("--db: unknown database %q: use sqlite:PATH (or a file path) for SQLite, postgres://USER@HOST:PORT/DB for PostgreSQL (a file whose name has a colon: sqlite:%s)", scheme+":…", db)
	default:
		return StoreSpec{Engine: EngineSQLite, Path: db}, nil
	}
}

// openedStore is the engine cfg.DB names, with what only that engine has.
type openedStore struct {
	outpost.Store
	// ota is the store of artifacts and transfers; nil for an engine
	// that has none yet (files and firmware are then off).
	ota outpost.OTAStore
	// metrics are the engine's own collectors.
	metrics []prometheus.Collector
	// writers is how many group commits the engine runs in parallel
	// (ingest.Options.Writers): SQLite has one writer at a time.
	writers int
}

// openStore opens the engine cfg.DB names.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (*openedStore, StoreSpec, error) {
	spec, err := ParseDB(cfg.DB, cfg.DataDir)
	if err != nil {
		return nil, spec, err
	}
	if spec.Engine == EngineSQLite && cfg.Replica != "" {
		return nil, spec, errors.New("a replica name is for a PostgreSQL store that several platforms share; an SQLite store has one platform")
	}
	switch spec.Engine {
	case EnginePostgres:
		db, err := postgres.Open(ctx, spec.URL, postgres.Options{Replica: cfg.Replica, Logger: log})
		if err != nil {
			return nil, spec, err
		}
		return &openedStore{Store: db, writers: PostgresIngestWriters}, spec, nil
	default:
		so := cfg.Store
		so.Synchronous, so.IntegrityCheck, so.Logger = strings.ToUpper(cfg.Sync), cfg.IntegrityCheck, log
		db, err := sqlite.Open(ctx, spec.Path, so)
		if err != nil {
			if errors.Is(err, sqlite.ErrCorrupt) {
				err = fmt.Errorf("%w\nrestore the database from a backup (docs/architecture.md, \"Backup and restore\"), or start with --integrity-check=-1 to skip the check at your own risk", err)
			}
			return nil, spec, err
		}
		return &openedStore{Store: db, ota: db, metrics: []prometheus.Collector{db.Collector()}, writers: 1}, spec, nil
	}
}

// PostgresIngestWriters is how many group commits run at once on
// PostgreSQL unless Config.Ingest.Writers says otherwise: one commit's
// round trips and fsync overlap the next group's work (batch 50, one
// replica on Mosquitto, 2 cores: 280k readings/s with 1, 314–345k with 3;
// docs/benchmarks.md).
const PostgresIngestWriters = 3
