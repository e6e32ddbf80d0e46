package pgstage

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// migration is one step of the stage schema. Steps are append-only: a
// released step is never edited, a change is a new step.
type migration struct {
	description string
	statements  []string // "{s}" is the quoted schema
}

// migrations[i] brings the schema from version i to i+1.
var migrations = []migration{
	{
		description: "scopes and records",
		statements: []string{
			`CREATE TABLE {s}.scopes (
  id serial PRIMARY KEY,
  pipeline text NOT NULL,
  side text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (pipeline, side))`,
			`COMMENT ON TABLE {s}.scopes IS 'oneway stage: one row per (pipeline, side); side is "source" or "target.<name>"'`,
			// key is compared bytewise (COLLATE "C"): the order every stage
			// implementation pages in. packed_row is NULL for a tombstone.
			`CREATE TABLE {s}.records (
  scope int NOT NULL,
  key text COLLATE "C" NOT NULL,
  parts bytea NOT NULL,
  version bigint NOT NULL,
  hash bytea NOT NULL,
  packed_row bytea,
  deleted boolean NOT NULL,
  changed_version bigint NOT NULL,
  staged_at timestamptz NOT NULL,
  PRIMARY KEY (scope, key))`,
			`COMMENT ON TABLE {s}.records IS 'oneway stage: the last known state of each key of each scope, fenced by version; changed_version is the version at which the content last changed'`,
		},
	},
	{
		description: "push log and held diffs",
		statements: []string{
			`CREATE TABLE {s}.pushes (
  scope int NOT NULL,
  key text COLLATE "C" NOT NULL,
  version bigint NOT NULL,
  push_count int NOT NULL,
  first_at timestamptz NOT NULL,
  last_at timestamptz NOT NULL,
  PRIMARY KEY (scope, key))`,
			`COMMENT ON TABLE {s}.pushes IS 'oneway stage: how many times the differ pushed the current source version of a key to a target'`,
			`CREATE TABLE {s}.holds (
  scope int PRIMARY KEY,
  state text NOT NULL CHECK (state IN ('held', 'approved')),
  deletes bigint NOT NULL,
  total bigint NOT NULL,
  held_at timestamptz NOT NULL,
  approved_by text,
  approved_at timestamptz)`,
			`COMMENT ON TABLE {s}.holds IS 'oneway stage: diffs held by the mass-delete breaker until approved (oneway approve)'`,
		},
	},
	{
		description: "push positions",
		statements: []string{
			`ALTER TABLE {s}.pushes ADD COLUMN position bigint NOT NULL DEFAULT 0`,
			`COMMENT ON COLUMN {s}.pushes.position IS 'oneway stage: stream position (seq<<20 | index) of the last push of the key, the version its writer reports it applied at; 0 when unknown'`,
		},
	},
	{
		description: "reported push positions",
		statements: []string{
			`ALTER TABLE {s}.pushes ADD COLUMN reported bigint NOT NULL DEFAULT 0`,
			`COMMENT ON COLUMN {s}.pushes.reported IS 'oneway stage: highest stream position whose applied report was staged for the key (the last push is confirmed when reported >= position); 0 when none was'`,
		},
	},
}

// migrate brings schema up to version upTo (creating it when missing) in
// one transaction under an advisory lock, so several processes may open
// the store at once. It fails for good when the schema is newer than this
// build.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string, upTo int) error {
	q := pgconn.Quote(schema)
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('oneway.stage.ddl'), hashtext($1))", schema); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		// Create only what is missing, so a role without CREATE on the
		// database can use a schema made for it.
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
			return fmt.Errorf("look up schema: %w", err)
		}
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA "+q); err != nil {
				return fmt.Errorf("create schema: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+q+`.schema_migrations (
  version int PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		var cur int
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+q+".schema_migrations").Scan(&cur); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		if cur > len(migrations) {
			return errs.Permanentf("schema %s is at version %d, newer than this build knows (%d): upgrade oneway", schema, cur, len(migrations))
		}
		for v := cur; v < upTo; v++ {
			m := migrations[v]
			for _, stmt := range m.statements {
				if _, err := tx.Exec(ctx, strings.ReplaceAll(stmt, "{s}", q)); err != nil {
					return fmt.Errorf("migrate to version %d (%s): %w", v+1, m.description, err)
				}
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+q+".schema_migrations (version, description) VALUES ($1, $2)", v+1, m.description); err != nil {
				return fmt.Errorf("record version %d: %w", v+1, err)
			}
		}
		return nil
	})
}
