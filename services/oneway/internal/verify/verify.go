// Package verify compares the System of Record with a PostgreSQL target by
// key over the owned columns, in key-ordered pages, so memory stays bounded
// by the page size whatever the table size.
package verify

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// Spec says what to compare.
type Spec struct {
	Source, Target pgconn.Table
	Key            []string
	Columns        []string // owned columns; must include Key
	PageSize       int
	Samples        int // keys to keep per kind of difference
	// SoftDeleteColumn, when set, is a source column marking deleted rows
	// (set: not NULL, and true for a boolean); those rows are expected to
	// be absent from the target and are left out of the source side.
	SoftDeleteColumn string
}

// Report is the outcome.
type Report struct {
	SourceRows, TargetRows                int64
	Missing, Different                    int64 // target lacks the key / owned values differ
	Extra                                 int64 // target keys the source lacks (orphans)
	MissingKeys, DifferentKeys, ExtraKeys []string
}

// Equal reports whether target matches source; extras count only when
// orphansCount is true (orphan policy "delete").
func (r Report) Equal(orphansCount bool) bool {
	return r.Missing == 0 && r.Different == 0 && (!orphansCount || r.Extra == 0)
}

type row struct {
	key  string
	hash string
}

// Run compares. progress, when set, is called after each page with the
// source rows compared so far.
func Run(ctx context.Context, src, dst *pgxpool.Pool, s Spec, progress func(done int64)) (Report, error) {
	if s.PageSize <= 0 {
		s.PageSize = 10000
	}
	if s.Samples <= 0 {
		s.Samples = 10
	}
	keyIdx := make([]int, len(s.Key))
	for i, k := range s.Key {
		keyIdx[i] = -1
		for j, c := range s.Columns {
			if c == k {
				keyIdx[i] = j
			}
		}
		if keyIdx[i] < 0 {
			return Report{}, fmt.Errorf("verify: key column %q is not an owned column", k)
		}
	}
	srcCols, found, err := pgconn.Columns(ctx, src, s.Source)
	if err != nil {
		return Report{}, fmt.Errorf("verify: %w", err)
	}
	if !found {
		return Report{}, fmt.Errorf("verify: source table %s does not exist", s.Source)
	}
	keyCols, err := pgconn.Pick(s.Source, srcCols, s.Key)
	if err != nil {
		return Report{}, fmt.Errorf("verify: %w", err)
	}
	keyTypes := make([]string, len(keyCols))
	for i, c := range keyCols {
		keyTypes[i] = c.Type
	}
	cols := pgconn.QuoteList("", s.Columns)
	keys := pgconn.QuoteList("", s.Key)
	srcWhere := ""
	if s.SoftDeleteColumn != "" {
		sd, err := pgconn.Pick(s.Source, srcCols, []string{s.SoftDeleteColumn})
		if err != nil {
			return Report{}, fmt.Errorf("verify: %w", err)
		}
		if sd[0].Type == "boolean" {
			srcWhere = fmt.Sprintf("NOT coalesce(%s, false)", pgconn.Quote(s.SoftDeleteColumn))
		} else {
			srcWhere = fmt.Sprintf("%s IS NULL", pgconn.Quote(s.SoftDeleteColumn))
		}
	}
	var rep Report
	var after []string
	for {
		srcRows, err := page(ctx, src, s.Source, cols, keys, keyTypes, keyIdx, srcWhere, after, nil, s.PageSize)
		if err != nil {
			return rep, fmt.Errorf("verify: read source %s: %w", s.Source, err)
		}
		var upTo []string
		if len(srcRows) == s.PageSize {
			upTo = srcRows[len(srcRows)-1].keyParts
		}
		// The target rows in the same key range: (after, upTo], or (after, ∞)
		// on the last page.
		dstRows, err := page(ctx, dst, s.Target, cols, keys, keyTypes, keyIdx, "", after, upTo, 0)
		if err != nil {
			return rep, fmt.Errorf("verify: read target %s: %w", s.Target, err)
		}
		rep.SourceRows += int64(len(srcRows))
		rep.TargetRows += int64(len(dstRows))
		inTarget := make(map[string]string, len(dstRows))
		for _, r := range dstRows {
			inTarget[r.key] = r.hash
		}
		for _, r := range srcRows {
			h, ok := inTarget[r.key]
			switch {
			case !ok:
				rep.Missing++
				rep.MissingKeys = sample(rep.MissingKeys, r.key, s.Samples)
			case h != r.hash:
				rep.Different++
				rep.DifferentKeys = sample(rep.DifferentKeys, r.key, s.Samples)
			}
			delete(inTarget, r.key)
		}
		for _, r := range dstRows {
			if _, extra := inTarget[r.key]; extra {
				rep.Extra++
				rep.ExtraKeys = sample(rep.ExtraKeys, r.key, s.Samples)
			}
		}
		if progress != nil {
			progress(rep.SourceRows)
		}
		if upTo == nil {
			return rep, nil
		}
		after = upTo
	}
}

func sample(list []string, key string, n int) []string {
	if len(list) < n {
		return append(list, key)
	}
	return list
}

type keyedRow struct {
	row
	keyParts []string
}

// page reads rows with key in (after, upTo] (and matching cond, when not
// empty) in key order; nil bounds are open; limit 0 means no limit. Key
// values travel as text and are cast to the key columns' types, so both
// sides order and compare alike.
func page(ctx context.Context, pool *pgxpool.Pool, t pgconn.Table, cols, keys string, keyTypes []string, keyIdx []int, cond string, after, upTo []string, limit int) ([]keyedRow, error) {
	var where []string
	if cond != "" {
		where = append(where, "("+cond+")")
	}
	args := []any{pgx.QueryResultFormats{pgx.TextFormatCode}}
	bound := func(op string, vals []string) {
		ph := make([]string, len(vals))
		for i, v := range vals {
			args = append(args, v)
			ph[i] = fmt.Sprintf("$%d::text::%s", len(args)-1, keyTypes[i])
		}
		where = append(where, fmt.Sprintf("(%s) %s (%s)", keys, op, strings.Join(ph, ", ")))
	}
	if after != nil {
		bound(">", after)
	}
	if upTo != nil {
		bound("<=", upTo)
	}
	sql := fmt.Sprintf("SELECT %s FROM %s", cols, t.Quoted())
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY " + keys
	if limit > 0 {
		sql += fmt.Sprintf(" LIMIT %d", limit)
	}
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []keyedRow
	for rows.Next() {
		raw := rows.RawValues()
		parts := make([]string, len(keyIdx))
		for i, k := range keyIdx {
			parts[i] = string(raw[k])
		}
		key := parts[0]
		if len(parts) > 1 {
			key = strings.Join(parts, "\x1f")
		}
		out = append(out, keyedRow{row: row{key: key, hash: string(event.RowHash(event.PackRow(raw)))}, keyParts: parts})
	}
	return out, rows.Err()
}
