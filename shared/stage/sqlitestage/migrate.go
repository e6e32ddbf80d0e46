package sqlitestage

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/oneway-sync/oneway/shared/errs"
)

// migration is one step of the stage schema. Steps are append-only: a
// released step is never edited, a change is a new step.
type migration struct {
	description string
	statements  []string
}

// migrations[i] brings the file from version i to i+1. Keys are TEXT with
// the default BINARY collation (bytewise: the order every stage
// implementation pages in); times are unix nanoseconds.
var migrations = []migration{
	{
		description: "scopes and records",
		statements: []string{
			`CREATE TABLE scopes (
  id INTEGER PRIMARY KEY,
  pipeline TEXT NOT NULL,
  side TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  UNIQUE (pipeline, side))`,
			`CREATE TABLE records (
  scope INTEGER NOT NULL,
  key TEXT NOT NULL,
  parts BLOB NOT NULL,
  version INTEGER NOT NULL,
  hash BLOB NOT NULL,
  packed_row BLOB,
  deleted INTEGER NOT NULL,
  changed_version INTEGER NOT NULL,
  staged_at INTEGER NOT NULL,
  PRIMARY KEY (scope, key)) WITHOUT ROWID`,
		},
	},
	{
		description: "push log and held diffs",
		statements: []string{
			`CREATE TABLE pushes (
  scope INTEGER NOT NULL,
  key TEXT NOT NULL,
  version INTEGER NOT NULL,
  push_count INTEGER NOT NULL,
  first_at INTEGER NOT NULL,
  last_at INTEGER NOT NULL,
  PRIMARY KEY (scope, key)) WITHOUT ROWID`,
			`CREATE TABLE holds (
  scope INTEGER PRIMARY KEY,
  state TEXT NOT NULL CHECK (state IN ('held', 'approved')),
  deletes INTEGER NOT NULL,
  total INTEGER NOT NULL,
  held_at INTEGER NOT NULL,
  approved_by TEXT,
  approved_at INTEGER)`,
		},
	},
	{
		description: "push positions",
		statements: []string{
			// The stream position of the last push of the key (seq<<20 |
			// index), which its writer reports it applied at; 0: unknown.
			`ALTER TABLE pushes ADD COLUMN position INTEGER NOT NULL DEFAULT 0`,
		},
	},
	{
		description: "reported push positions",
		statements: []string{
			// The highest stream position whose applied report was staged
			// for the key (the last push is confirmed when reported >=
			// position); 0: none was.
			`ALTER TABLE pushes ADD COLUMN reported INTEGER NOT NULL DEFAULT 0`,
		},
	},
}

// migrate brings the file up to version upTo in one write transaction
// (BEGIN IMMEDIATE), so processes opening the file at once serialise. It
// fails for good when the file is newer than this build.
func migrate(ctx context.Context, db *sql.DB, path string, upTo int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
  version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var cur int
	if err := tx.QueryRowContext(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&cur); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if cur > len(migrations) {
		return errs.Permanentf("%s is at version %d, newer than this build knows (%d): upgrade oneway", path, cur, len(migrations))
	}
	for v := cur; v < upTo; v++ {
		m := migrations[v]
		for _, stmt := range m.statements {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migrate to version %d (%s): %w", v+1, m.description, err)
			}
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
			v+1, m.description, time.Now().UnixNano()); err != nil {
			return fmt.Errorf("record version %d: %w", v+1, err)
		}
	}
	return tx.Commit()
}
