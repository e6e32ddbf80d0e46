package sqlsource

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
)

// Scan streams the rows in order-key order: integer key columns by value,
// the others by the bytes of their text (selected with the row, so that
// OrdKey compares what the database sorted). Rows whose key has a NULL are
// left out. The read is one query, so it sees one snapshot of the table
// (SQLite: a read transaction; InnoDB: a consistent read); it holds a
// connection until Close.
func (s *Source) Scan(ctx context.Context, o source.ScanOptions) (source.Scan, error) {
	var orderBy, extra []string
	for i, j := range s.keyIdx {
		col := s.d.quote(s.cols[j].Name)
		if s.keyInt[i] {
			orderBy = append(orderBy, col)
			continue
		}
		orderBy = append(orderBy, s.d.ordExpr(col))
		extra = append(extra, s.d.ordExpr(col))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s%s", s.colList, s.extraSQL)
	for _, e := range extra {
		b.WriteString(", " + e)
	}
	var where []string
	var args []any
	if o.WindowFrom != "" {
		if s.winCol == "" {
			return nil, errs.Permanentf("source %s: a window scan needs a window column", s.what)
		}
		in := s.winCol + " >= ?"
		if o.Whole {
			fmt.Fprintf(&b, ", CASE WHEN %s THEN 1 ELSE 0 END", in)
		} else {
			where = append(where, in)
		}
		args = append(args, o.WindowFrom)
	}
	fmt.Fprintf(&b, " FROM %s", s.from)
	if s.keyNull {
		for _, j := range s.keyIdx {
			where = append(where, s.d.quote(s.cols[j].Name)+" IS NOT NULL")
		}
	}
	if len(where) > 0 {
		b.WriteString(" WHERE " + strings.Join(where, " AND "))
	}
	b.WriteString(" ORDER BY " + strings.Join(orderBy, ", "))
	rows, err := s.db.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, classify(fmt.Errorf("scan %s: %w", s.what, err))
	}
	sc := &scan{src: s, rows: rows, inWin: -1}
	if o.WindowFrom != "" && o.Whole {
		sc.inWin = s.ordIdx + len(extra)
	}
	return sc, nil
}

// scan is an open Scan.
type scan struct {
	src   *Source
	rows  *sql.Rows
	dest  []any
	err   error
	inWin int
}

func (sc *scan) Next() (source.Row, bool) {
	if sc.err != nil || !sc.rows.Next() {
		if err := sc.rows.Err(); err != nil && sc.err == nil {
			sc.err = classify(fmt.Errorf("scan %s: %w", sc.src.what, err))
		}
		return nil, false
	}
	r, err := sc.src.scanRow(sc.rows, &sc.dest)
	if err != nil {
		sc.err = err
		return nil, false
	}
	if sc.inWin >= 0 {
		r[sc.inWin] = text(kBool, r[sc.inWin])
	}
	return r, true
}

func (sc *scan) Err() error { return sc.err }

func (sc *scan) InWindow(r source.Row) bool {
	return sc.inWin < 0 || string(r[sc.inWin]) == "t"
}

func (sc *scan) Close() { sc.rows.Close() }

// WindowStart returns now minus span in the stored form, to compare with
// the window column.
func (s *Source) WindowStart(ctx context.Context, spanSeconds float64) (string, error) {
	var now time.Time
	if s.d.name == KindMySQL {
		var err error
		if now, _, err = s.mysqlClock(ctx); err != nil {
			return "", classify(fmt.Errorf("compute window start on %s: %w", s.what, err))
		}
	} else {
		now = time.Now().UTC()
	}
	return now.Add(-seconds(spanSeconds)).Format("2006-01-02 15:04:05.999999"), nil
}

// lookupChunk bounds the keys of one Lookup query (SQLite allows 32766
// parameters, MySQL 65535).
const lookupChunk = 500

// Lookup reads the rows with the given keys, in no particular order.
func (s *Source) Lookup(ctx context.Context, keys [][]string) ([]source.Row, error) {
	var out []source.Row
	tuple := "(" + s.placeholders(len(s.keyIdx)) + ")"
	for len(keys) > 0 {
		n := min(len(keys), lookupChunk)
		var args []any
		tuples := make([]string, n)
		for i, k := range keys[:n] {
			tuples[i] = tuple
			args = s.keyArgs(args, k)
		}
		q := fmt.Sprintf("SELECT %s%s FROM %s WHERE (%s) IN (%s)", s.colList, s.extraSQL, s.from, s.keyList, strings.Join(tuples, ", "))
		rows, err := s.query(ctx, q, args)
		if err != nil {
			return nil, err
		}
		out = append(out, rows...)
		keys = keys[n:]
	}
	return out, nil
}
