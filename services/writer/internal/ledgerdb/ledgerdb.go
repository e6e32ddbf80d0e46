// Package ledgerdb is what every oneway ledger kept in PostgreSQL shares:
// the lock that serialises its DDL across writers, the catalog of ledger
// scopes, and literal quoting for table comments.
package ledgerdb

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/pgconn"
)

// WithDDLLock runs f in a transaction that holds oneway's DDL lock. Writers
// of several targets may start at once, and CREATE … IF NOT EXISTS races
// otherwise (a duplicate key in pg_type, a permanent 23505).
func WithDDLLock(ctx context.Context, pool *pgxpool.Pool, f func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('oneway.ledger.ddl'))"); err != nil {
			return err
		}
		return f(tx)
	})
}

// RegisterScope creates schema and its catalog <schema>.ledger_scopes when
// missing and returns the id of (pipeline, target, name), registering it
// the first time. Call it inside WithDDLLock.
func RegisterScope(ctx context.Context, tx pgx.Tx, schema, pipeline, target, name string) (int32, error) {
	ls := pgconn.Quote(schema)
	for _, s := range []string{
		"CREATE SCHEMA IF NOT EXISTS " + ls,
		`CREATE TABLE IF NOT EXISTS ` + ls + `.ledger_scopes (
  id serial PRIMARY KEY, pipeline text NOT NULL, target text NOT NULL, table_name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (pipeline, target, table_name))`,
		"COMMENT ON TABLE " + ls + `.ledger_scopes IS 'oneway: one row per (pipeline, target, table); its ledger is ledger_<id>'`,
	} {
		if _, err := tx.Exec(ctx, s); err != nil {
			return 0, err
		}
	}
	var scope int32
	err := tx.QueryRow(ctx, `
INSERT INTO `+ls+`.ledger_scopes (pipeline, target, table_name) VALUES ($1, $2, $3)
ON CONFLICT (pipeline, target, table_name) DO UPDATE SET pipeline = excluded.pipeline
RETURNING id`, pipeline, target, name).Scan(&scope)
	return scope, err
}

// QuoteLiteral quotes s as an SQL string literal.
func QuoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
