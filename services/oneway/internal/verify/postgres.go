package verify

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/pgconn"
)

// OpenPostgres reads a PostgreSQL table as a Side: one query, ordered in
// the canonical key order and streamed (pgx reads rows as they arrive, so
// memory stays bounded; the query's snapshot makes the read consistent).
// The table must have every owned column; its column types may differ
// from the source's (values are compared in canonical form). The pool's
// sessions must use pgconn.SessionParams, as pgconn.Open sets them, so
// that values print alike on both sides.
func OpenPostgres(ctx context.Context, pool *pgxpool.Pool, t pgconn.Table, l *Layout) (Side, error) {
	return OpenPostgresLive(ctx, pool, t, l, "")
}

// OpenPostgresLive is OpenPostgres leaving out the rows that
// softDeleteColumn marks deleted (true, or not NULL for other types): a
// source whose delete feed is that column has deleted those records.
func OpenPostgresLive(ctx context.Context, pool *pgxpool.Pool, t pgconn.Table, l *Layout, softDeleteColumn string) (Side, error) {
	cols, found, err := pgconn.Columns(ctx, pool, t)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("table %s does not exist", t)
	}
	names := make([]string, len(l.Columns))
	for i, c := range l.Columns {
		names[i] = c.Name
	}
	own, err := pgconn.Pick(t, cols, names)
	if err != nil {
		return nil, err
	}
	order := make([]string, len(l.Key))
	for i, k := range l.Key {
		order[i] = orderBy(l.classes[k], pgconn.Quote(own[k].Name), own[k].Type)
	}
	where := ""
	if softDeleteColumn != "" {
		sd, err := pgconn.Pick(t, cols, []string{softDeleteColumn})
		if err != nil {
			return nil, err
		}
		if sd[0].Type == "boolean" {
			where = fmt.Sprintf(" WHERE NOT coalesce(%s, false)", pgconn.Quote(softDeleteColumn))
		} else {
			where = fmt.Sprintf(" WHERE %s IS NULL", pgconn.Quote(softDeleteColumn))
		}
	}
	sql := fmt.Sprintf("SELECT %s FROM %s%s ORDER BY %s", pgconn.QuoteList("", names), t.Quoted(), where, strings.Join(order, ", "))
	rows, err := pool.Query(ctx, sql, pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read %s: %w", t, err))
	}
	return &pgSide{rows: rows, l: l, table: t}, nil
}

// orderBy is the ORDER BY expression of a key column in the canonical key
// order: keys ordered by value keep their native order (cast to numeric
// when this table's column is not a number), the others are ordered by
// their text in the "C" collation, that is by bytes, whatever the
// column's collation (format('%s', x) is the type's output text).
func orderBy(c class, col, typ string) string {
	if c.numericOrder() {
		if classOf(typ).numericOrder() {
			return col
		}
		return col + "::numeric"
	}
	t := strings.ToLower(typ)
	if i := strings.IndexByte(t, '('); i >= 0 {
		t = t[:i]
	}
	switch strings.TrimSpace(t) {
	case "text", "character varying", "varchar":
		return col + ` COLLATE "C"`
	}
	return "format('%s', " + col + `) COLLATE "C"`
}

type pgSide struct {
	rows  pgx.Rows
	l     *Layout
	table pgconn.Table
	done  bool
}

func (s *pgSide) Next(ctx context.Context) (Record, error) {
	if s.done {
		return Record{}, io.EOF
	}
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	if !s.rows.Next() {
		s.done = true
		s.rows.Close()
		if err := s.rows.Err(); err != nil {
			return Record{}, pgconn.Classify(fmt.Errorf("read %s: %w", s.table, err))
		}
		return Record{}, io.EOF
	}
	raw := s.rows.RawValues()
	key, err := s.l.KeyOf(raw)
	if err != nil {
		return Record{}, fmt.Errorf("read %s: %w", s.table, err)
	}
	return Record{Key: key, Name: s.l.NameOf(raw), Values: s.l.Values(raw)}, nil
}

func (s *pgSide) Close() error {
	s.rows.Close()
	if s.done {
		return nil
	}
	return s.rows.Err()
}
