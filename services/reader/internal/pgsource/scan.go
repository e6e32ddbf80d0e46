package pgsource

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/source"
)

// The synthetic and window patterns merge a scan of the table, in key
// order, with the previous cycle's (key, hash) list, in Go. Both sides must
// agree on that order exactly, whatever the database's collation. So the
// order is defined on bytes: each key column contributes
//
//   - for smallint, integer and bigint: 8 bytes, big-endian, sign bit
//     flipped (SQL orders the column natively, so an index can serve);
//   - for every other type: the bytes of column::text COLLATE "C" (which
//     PostgreSQL compares with memcmp) and a 0x00 terminator (text never
//     holds 0x00, so a shorter value sorts first, as in SQL).
//
// The order key (OrdKey) of a row is the concatenation, compared with
// bytes.Compare. The text of the "C" expression is selected with the row,
// so Go compares exactly what PostgreSQL sorted (char(n)'s padding, for
// example, is not in its ::text).

// ordSQL returns the ORDER BY expressions and the extra selected
// expressions of a scan.
func (s *Source) ordSQL() (orderBy, extra []string) {
	for i, j := range s.keyIdx {
		col := pgconn.Quote(s.cols[j].Name)
		if s.keyInt[i] {
			orderBy = append(orderBy, col)
			continue
		}
		e := fmt.Sprintf(`(%s::text COLLATE "C")`, col)
		orderBy = append(orderBy, e)
		extra = append(extra, e)
	}
	return orderBy, extra
}

// OrdKey appends the order key of a row read by Scan to dst.
func (s *Source) OrdKey(dst []byte, r Row) ([]byte, error) {
	x := s.ordIdx
	for i, j := range s.keyIdx {
		if s.keyInt[i] {
			v, err := strconv.ParseInt(string(r[j]), 10, 64)
			if err != nil {
				return nil, errs.Permanentf("source table %s: key column %q value %q is not an integer", s.table, s.cols[j].Name, r[j])
			}
			dst = binary.BigEndian.AppendUint64(dst, uint64(v)^(1<<63))
			continue
		}
		dst = append(dst, r[x]...)
		dst = append(dst, 0)
		x++
	}
	return dst, nil
}

// ScanOptions select the rows of a Scan (see source.ScanOptions); for
// PostgreSQL WindowFrom is a timestamp with time zone as text.
type ScanOptions = source.ScanOptions

// Scan streams the table's rows in order-key order (see ScanOptions).
// Rows whose key has a NULL are left out (they cannot identify a record).
// The read is one query, so it sees one snapshot of the table; it holds a
// connection until Close.
func (s *Source) Scan(ctx context.Context, o ScanOptions) (source.Scan, error) {
	orderBy, extra := s.ordSQL()
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s%s", s.colList, s.extraCols(false))
	for _, e := range extra {
		b.WriteString(", " + e)
	}
	var where []string
	args := []any{pgx.QueryResultFormats{pgx.TextFormatCode}}
	if o.WindowFrom != "" {
		if s.winCol == "" {
			return nil, errs.Permanentf("source table %s: a window scan needs a window column", s.table)
		}
		in := fmt.Sprintf("%s >= $1::text::timestamptz", pgconn.Quote(s.winCol))
		if o.Whole {
			fmt.Fprintf(&b, ", coalesce(%s, false)", in)
		} else {
			where = append(where, in)
		}
		args = append(args, o.WindowFrom)
	}
	fmt.Fprintf(&b, " FROM %s", s.table.Quoted())
	if s.keyNull {
		for _, j := range s.keyIdx {
			where = append(where, pgconn.Quote(s.cols[j].Name)+" IS NOT NULL")
		}
	}
	if len(where) > 0 {
		b.WriteString(" WHERE " + strings.Join(where, " AND "))
	}
	b.WriteString(" ORDER BY " + strings.Join(orderBy, ", "))
	rows, err := s.pool.Query(ctx, b.String(), args...)
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("scan %s: %w", s.table, err))
	}
	sc := &Scan{rows: rows, table: s.table, inWin: -1}
	if o.WindowFrom != "" && o.Whole {
		sc.inWin = s.ordIdx + len(extra)
	}
	return sc, nil
}

// Scan is an open scan. Not safe for concurrent use.
type Scan struct {
	rows  pgx.Rows
	table pgconn.Table
	err   error
	inWin int
}

// InWindow reports whether a row of a Whole scan lies in the window (true
// for every row of other scans).
func (sc *Scan) InWindow(r Row) bool {
	return sc.inWin < 0 || string(r[sc.inWin]) == "t"
}

// Next returns the next row, or false at the end or on an error (see Err).
func (sc *Scan) Next() (Row, bool) {
	if !sc.rows.Next() {
		if err := sc.rows.Err(); err != nil {
			sc.err = pgconn.Classify(fmt.Errorf("scan %s: %w", sc.table, err))
		}
		return nil, false
	}
	return copyRow(sc.rows.RawValues()), true
}

// Err is the error that ended the scan, if any.
func (sc *Scan) Err() error { return sc.err }

// Close ends the scan and releases its connection.
func (sc *Scan) Close() { sc.rows.Close() }

// WindowStart returns now() minus span as text: the start of a window.
func (s *Source) WindowStart(ctx context.Context, spanSeconds float64) (string, error) {
	var v string
	if err := s.pool.QueryRow(ctx, "SELECT (now() - make_interval(secs => $1))::text", spanSeconds).Scan(&v); err != nil {
		return "", pgconn.Classify(fmt.Errorf("compute window start on %s: %w", s.table, err))
	}
	return v, nil
}

// Lookup reads the rows with the given keys (each the key texts, in key
// order), in no particular order. Keys that do not exist are not returned.
func (s *Source) Lookup(ctx context.Context, keys [][]string) ([]Row, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	cols := make([][]string, len(s.keyIdx))
	for _, k := range keys {
		for i := range s.keyIdx {
			cols[i] = append(cols[i], k[i])
		}
	}
	var unnest, sel []string
	args := []any{}
	for i, j := range s.keyIdx {
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
		sel = append(sel, fmt.Sprintf("u.c%d::%s", i, s.cols[j].Type))
		args = append(args, cols[i])
	}
	names := make([]string, len(s.keyIdx))
	for i := range names {
		names[i] = fmt.Sprintf("c%d", i)
	}
	q := fmt.Sprintf("SELECT %s%s FROM %s WHERE (%s) IN (SELECT %s FROM unnest(%s) AS u(%s))",
		s.colList, s.extraCols(false), s.table.Quoted(), s.keyList, strings.Join(sel, ", "),
		strings.Join(unnest, ", "), strings.Join(names, ", "))
	return s.query(ctx, q, args)
}

// Lower returns mark minus seconds as a value of the watermark column's
// type (for a date: rounded down to its day), with the epochs (seconds
// since 1970) of that value and of mark.
func (s *Source) Lower(ctx context.Context, mark string, seconds float64) (lower string, lowerEpoch, markEpoch float64, err error) {
	q := fmt.Sprintf(`SELECT l::text, extract(epoch from l)::float8, extract(epoch from m)::float8
FROM (SELECT $1::text::%[1]s AS m) x, LATERAL (SELECT (x.m - make_interval(secs => $2))::%[1]s AS l) y`, s.wmType)
	if err := s.pool.QueryRow(ctx, q, mark, seconds).Scan(&lower, &lowerEpoch, &markEpoch); err != nil {
		return "", 0, 0, pgconn.Classify(fmt.Errorf("compute overlap start on %s: %w", s.table, err))
	}
	return lower, lowerEpoch, markEpoch, nil
}
