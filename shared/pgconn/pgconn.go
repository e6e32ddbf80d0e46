// Package pgconn holds what every service that talks to PostgreSQL needs:
// pools that name themselves, identifier quoting, catalog lookups, and the
// classification of PostgreSQL errors into oneway's error classes.
package pgconn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/errs"
)

// Open creates a pool named application (shown in pg_stat_activity) with at
// most maxConns connections. It does not wait for the server.
func Open(ctx context.Context, url, application string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's parse errors can echo the URL; never log a password.
		return nil, errs.Permanentf("parse PostgreSQL URL for %s: invalid connection string", application)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = application
	// Text output must not depend on the server's or the role's settings:
	// values travel as text and are compared as text.
	for k, v := range SessionParams {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open PostgreSQL pool for %s: %w", application, err)
	}
	return pool, nil
}

// SessionParams are set on every oneway connection so that the text form of
// a value is the same on every side.
var SessionParams = map[string]string{
	"DateStyle":          "ISO, MDY",
	"TimeZone":           "UTC",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "1",
	"bytea_output":       "hex",
}

// Table is a schema-qualified table name.
type Table struct{ Schema, Name string }

// String is the unquoted display name, schema.name.
func (t Table) String() string { return t.Schema + "." + t.Name }

// Quoted is the SQL-safe quoted name, "schema"."name".
func (t Table) Quoted() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// Quote quotes one identifier.
func Quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// Column is one column as the catalog describes it.
type Column struct {
	Name    string
	Type    string // format_type(), e.g. "numeric(12,2)"
	NotNull bool
	Primary bool // part of the primary key
}

// Querier is what catalog lookups need: a pool, a conn or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Columns returns the table's columns in order. found is false when the
// table does not exist.
func Columns(ctx context.Context, q Querier, t Table) (cols []Column, found bool, err error) {
	var oid *uint32
	if err := q.QueryRow(ctx, "SELECT to_regclass($1)::oid", t.Quoted()).Scan(&oid); err != nil {
		return nil, false, Classify(fmt.Errorf("look up table %s: %w", t, err))
	}
	if oid == nil {
		return nil, false, nil
	}
	rows, err := q.Query(ctx, `
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       coalesce(a.attnum = ANY(i.indkey), false)
FROM pg_attribute a
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum`, *oid)
	if err != nil {
		return nil, false, Classify(fmt.Errorf("read columns of %s: %w", t, err))
	}
	cols, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Column, error) {
		var c Column
		err := r.Scan(&c.Name, &c.Type, &c.NotNull, &c.Primary)
		return c, err
	})
	if err != nil {
		return nil, false, Classify(fmt.Errorf("read columns of %s: %w", t, err))
	}
	return cols, true, nil
}

// Pick returns the named columns from cols in the order of names, or an
// error naming the table and the first missing column.
func Pick(t Table, cols []Column, names []string) ([]Column, error) {
	byName := make(map[string]Column, len(cols))
	for _, c := range cols {
		byName[c.Name] = c
	}
	out := make([]Column, 0, len(names))
	for _, n := range names {
		c, ok := byName[n]
		if !ok {
			return nil, errs.Permanentf("table %s has no column %q", t, n)
		}
		out = append(out, c)
	}
	return out, nil
}

// QuoteList quotes and joins names with ", ", each optionally prefixed
// (alias "t." → t."a", t."b").
func QuoteList(prefix string, names []string) string {
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(prefix)
		b.WriteString(Quote(n))
	}
	return b.String()
}

// Classify marks a PostgreSQL error with its class: data and constraint
// problems (SQLSTATE classes 22, 23, 42 and 2B) are permanent; connection
// failures, admin shutdowns and "cannot connect now" are Unavailable;
// everything else (deadlocks, serialization failures, timeouts) stays
// transient. It returns err unchanged when it is already classified.
func Classify(err error) error {
	if err == nil || errs.IsPermanent(err) || errs.IsUnavailable(err) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "22"), strings.HasPrefix(pgErr.Code, "23"),
			strings.HasPrefix(pgErr.Code, "42"), strings.HasPrefix(pgErr.Code, "2B"):
			return errs.Permanent(err)
		case strings.HasPrefix(pgErr.Code, "08"), strings.HasPrefix(pgErr.Code, "57P"), pgErr.Code == "53300":
			return errs.Unavailable(err)
		}
		return err
	}
	var netErr net.Error
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err) ||
		errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "conn closed") ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "unexpected EOF") {
		return errs.Unavailable(err)
	}
	return err
}

// Code returns the SQLSTATE of a PostgreSQL error in err's chain, or "".
func Code(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
