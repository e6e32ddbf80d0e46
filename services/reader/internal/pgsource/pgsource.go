// Package pgsource reads a PostgreSQL table for the reader: key-ordered
// snapshot pages, then commit-safe watermark pages.
package pgsource

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// Row is one record's owned values as PostgreSQL text; nil is NULL.
type Row [][]byte

// Spec says what to read.
type Spec struct {
	Table           pgconn.Table
	Key             []string
	Columns         []string // owned columns; empty = all
	WatermarkColumn string
}

// Source reads one table. It is safe for concurrent use.
type Source struct {
	pool    *pgxpool.Pool
	table   pgconn.Table
	cols    []pgconn.Column // owned, in read order
	keyIdx  []int
	wmIdx   int
	wmType  string
	keyList string // quoted key columns, comma-separated
	colList string
	log     *slog.Logger

	warnOnce sync.Once
}

// Open checks the table against the catalog (it exists, the key, owned and
// watermark columns exist) and returns a Source. Errors name the table and
// column.
func Open(ctx context.Context, pool *pgxpool.Pool, spec Spec, log *slog.Logger) (*Source, error) {
	all, found, err := pgconn.Columns(ctx, pool, spec.Table)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, errs.Permanentf("source table %s does not exist (or the role cannot see it)", spec.Table)
	}
	names := spec.Columns
	if len(names) == 0 {
		for _, c := range all {
			names = append(names, c.Name)
		}
	}
	cols, err := pgconn.Pick(spec.Table, all, names)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	s := &Source{pool: pool, table: spec.Table, cols: cols, wmIdx: -1, log: log}
	idx := map[string]int{}
	for i, c := range cols {
		idx[c.Name] = i
	}
	for _, k := range spec.Key {
		i, ok := idx[k]
		if !ok {
			return nil, errs.Permanentf("source table %s: key column %q is not among the owned columns", spec.Table, k)
		}
		s.keyIdx = append(s.keyIdx, i)
	}
	if spec.WatermarkColumn != "" {
		i, ok := idx[spec.WatermarkColumn]
		if !ok {
			return nil, errs.Permanentf("source table %s: watermark column %q is not among the owned columns", spec.Table, spec.WatermarkColumn)
		}
		s.wmIdx, s.wmType = i, cols[i].Type
		switch s.wmType {
		case "timestamp with time zone":
		case "timestamp without time zone":
			log.Warn("watermark column has no time zone: the commit-safe bound is computed in UTC, so the applications must write it in UTC (or use timestamptz)",
				"table", spec.Table.String(), "column", spec.WatermarkColumn)
		default:
			return nil, errs.Permanentf("source table %s: watermark column %q has type %s; the watermark pattern needs a timestamp column (numeric watermarks are not supported yet)",
				spec.Table, spec.WatermarkColumn, s.wmType)
		}
		if !cols[i].NotNull {
			log.Warn("watermark column is nullable: rows where it is NULL are never read; declare it NOT NULL",
				"table", spec.Table.String(), "column", spec.WatermarkColumn)
		}
	}
	if s.wmIdx >= 0 {
		var indexed bool
		err := pool.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = to_regclass($1) AND a.attname = $2)`, spec.Table.Quoted(), spec.WatermarkColumn).Scan(&indexed)
		if err != nil {
			return nil, pgconn.Classify(fmt.Errorf("check indexes of %s: %w", spec.Table, err))
		}
		if !indexed {
			log.Warn("no index starts with the watermark column: every poll scans the whole table; create one",
				"table", spec.Table.String(), "sql", fmt.Sprintf("CREATE INDEX ON %s (%s, %s)", spec.Table.Quoted(),
					pgconn.Quote(spec.WatermarkColumn), pgconn.QuoteList("", spec.Key)))
		}
	}
	s.keyList = pgconn.QuoteList("", spec.Key)
	s.colList = pgconn.QuoteList("", names)
	return s, nil
}

// Columns describes the owned columns in the order of every Row.
func (s *Source) Columns() []*onewayv1.Column {
	out := make([]*onewayv1.Column, len(s.cols))
	key := map[int]bool{}
	for _, k := range s.keyIdx {
		key[k] = true
	}
	for i, c := range s.cols {
		out[i] = &onewayv1.Column{Name: c.Name, Type: c.Type, Key: key[i]}
	}
	return out
}

// KeyOf returns the key texts of a row.
func (s *Source) KeyOf(r Row) []string {
	k := make([]string, len(s.keyIdx))
	for i, j := range s.keyIdx {
		k[i] = string(r[j])
	}
	return k
}

// WatermarkOf returns the watermark text of a row.
func (s *Source) WatermarkOf(r Row) string { return string(r[s.wmIdx]) }

// SafeBound returns the commit-safe upper bound of the watermark as text:
// the earliest start of a transaction open in this database (or now() when
// none is). A transaction still open can only write watermark values at or
// after its start (when the column is set by the database, e.g. DEFAULT
// now() or a trigger), so every row below the bound is already committed
// and visible to a read that starts afterwards. Reading only below it means
// a late-committing transaction is never skipped (RELIABILITY row 17). The
// bound is computed in its own statement before the read, so a transaction
// that commits in between is visible to the read.
//
// When the role cannot see other sessions (it lacks pg_read_all_stats), the
// bound falls back to now() - lookback and a warning is logged once.
func (s *Source) SafeBound(ctx context.Context, lookbackSeconds float64) (string, error) {
	var bound string
	var hidden bool
	err := s.pool.QueryRow(ctx, `
SELECT least(now(), (SELECT min(xact_start) FROM pg_stat_activity
                      WHERE datname = current_database() AND pid <> pg_backend_pid()
                        AND xact_start IS NOT NULL))::text,
       EXISTS (SELECT 1 FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                  AND backend_type = 'client backend' AND query = '<insufficient privilege>')`).Scan(&bound, &hidden)
	if err != nil {
		return "", pgconn.Classify(fmt.Errorf("compute watermark bound on %s: %w", s.table, err))
	}
	if hidden {
		s.warnOnce.Do(func() {
			s.log.Warn("cannot see other sessions' transactions; the watermark bound uses now() minus lookback; grant pg_read_all_stats for a commit-safe bound",
				"table", s.table.String(), "lookback_seconds", lookbackSeconds)
		})
		err := s.pool.QueryRow(ctx, "SELECT (now() - make_interval(secs => $1))::text", lookbackSeconds).Scan(&bound)
		if err != nil {
			return "", pgconn.Classify(fmt.Errorf("compute watermark bound on %s: %w", s.table, err))
		}
	}
	return bound, nil
}

// SnapshotPage returns up to limit rows with key greater than after (nil =
// from the start), in key order.
func (s *Source) SnapshotPage(ctx context.Context, after []string, limit int) ([]Row, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s FROM %s", s.colList, s.table.Quoted())
	args := []any{}
	if after != nil {
		fmt.Fprintf(&b, " WHERE (%s) > (%s)", s.keyList, s.params(1, s.keyIdx))
		for _, k := range after {
			args = append(args, k)
		}
	}
	fmt.Fprintf(&b, " ORDER BY %s LIMIT %d", s.keyList, limit)
	return s.query(ctx, b.String(), args)
}

// WatermarkPage returns up to limit rows ordered by (watermark, key) after
// position (wm, key) and strictly below bound. key nil means "watermark >=
// wm" (the first page after a snapshot).
func (s *Source) WatermarkPage(ctx context.Context, wm string, key []string, bound string, limit int) ([]Row, error) {
	wmCol := pgconn.Quote(s.cols[s.wmIdx].Name)
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s FROM %s WHERE %s < $1::text::%s", s.colList, s.table.Quoted(), wmCol, s.wmType)
	args := []any{bound, wm}
	if key == nil {
		fmt.Fprintf(&b, " AND %s >= $2::text::%s", wmCol, s.wmType)
	} else {
		fmt.Fprintf(&b, " AND (%s, %s) > ($2::text::%s, %s)", wmCol, s.keyList, s.wmType, s.params(3, s.keyIdx))
		for _, k := range key {
			args = append(args, k)
		}
	}
	fmt.Fprintf(&b, " ORDER BY %s, %s LIMIT %d", wmCol, s.keyList, limit)
	return s.query(ctx, b.String(), args)
}

func (s *Source) params(first int, idx []int) string {
	parts := make([]string, len(idx))
	for i, j := range idx {
		parts[i] = fmt.Sprintf("$%d::text::%s", first+i, s.cols[j].Type)
	}
	return strings.Join(parts, ", ")
}

func (s *Source) query(ctx context.Context, sql string, args []any) ([]Row, error) {
	qargs := append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)
	rows, err := s.pool.Query(ctx, sql, qargs...)
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read %s: %w", s.table, err))
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		raw := rows.RawValues()
		// One allocation per row: RawValues is only valid until Next.
		size := 0
		for _, v := range raw {
			size += len(v)
		}
		buf := make([]byte, 0, size)
		r := make(Row, len(raw))
		for i, v := range raw {
			if v == nil {
				continue
			}
			start := len(buf)
			buf = append(buf, v...)
			r[i] = buf[start:len(buf):len(buf)]
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read %s: %w", s.table, err))
	}
	return out, nil
}
