// Package stagedb opens the stage store a pipeline's config names: the
// PostgreSQL store (pgstage) when stage.url is set, else the embedded
// SQLite store (sqlitestage) under a data directory.
package stagedb

import (
	"context"
	"errors"
	"path/filepath"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/pgstage"
	"github.com/oneway-sync/oneway/shared/stage/sqlitestage"
)

// ErrEmbedded is returned by Open for a pipeline with an embedded stage
// when no data directory is given: only `oneway up` (and the tools that
// take its --data-dir) can open it.
var ErrEmbedded = errors.New("stage.url is empty (the embedded stage), and only `oneway up` and the tools given its --data-dir can open that")

// Open opens cfg's stage store. dataDir is `oneway up`'s data directory;
// the embedded store is <dataDir>/stage/stage.db. maxConns bounds a
// PostgreSQL store's pool (0: its default).
func Open(ctx context.Context, cfg *config.Pipeline, dataDir string, maxConns int32) (stage.Store, error) {
	if url := cfg.Stage.URL.Value(); url != "" {
		return pgstage.Open(ctx, pgstage.Config{URL: url, Schema: cfg.Stage.Schema, Pipeline: cfg.Pipeline, MaxConns: maxConns})
	}
	if dataDir == "" {
		return nil, ErrEmbedded
	}
	return sqlitestage.Open(ctx, sqlitestage.Config{Dir: Dir(dataDir), Pipeline: cfg.Pipeline})
}

// Dir is the directory of the embedded stage under a data directory.
func Dir(dataDir string) string { return filepath.Join(dataDir, "stage") }
