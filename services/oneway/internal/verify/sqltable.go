package verify

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ScanSQL is a Scan of a SQL table through database/sql: query must return
// the owned columns in Layout.Columns order, one row per key; each row is
// an upsert of version 0. Driver values become text: integers in decimal,
// floats in their shortest form, strings and bytes as they are, booleans
// as t/f, times in PostgreSQL's ISO form. A new SQL target kind needs only
// its connection and its SELECT (quoting its identifiers):
//
//	Fold(ctx, l, tmp, ScanSQL(db, "SELECT `id`, `name` FROM `t`", what), nil)
//
// what names the table in errors.
func ScanSQL(db *sql.DB, query, what string) Scan {
	return func(ctx context.Context, emit func(Change) error) error {
		rows, err := db.QueryContext(ctx, query)
		if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		dest := make([]any, len(cols))
		for i := range dest {
			dest[i] = new(any)
		}
		for rows.Next() {
			if err := rows.Scan(dest...); err != nil {
				return fmt.Errorf("read %s: %w", what, err)
			}
			row := make([][]byte, len(cols))
			for i, d := range dest {
				row[i] = driverText(*d.(*any))
			}
			if err := emit(Change{Row: row}); err != nil {
				return err
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		return nil
	}
}

// driverText prints a database/sql driver value as text; nil stays nil.
func driverText(v any) []byte {
	switch x := v.(type) {
	case nil:
		return nil
	case int64:
		return strconv.AppendInt(nil, x, 10)
	case float64:
		return strconv.AppendFloat(nil, x, 'g', -1, 64)
	case bool:
		if x {
			return []byte("t")
		}
		return []byte("f")
	case []byte:
		return append([]byte{}, x...)
	case string:
		return []byte(x)
	case time.Time:
		return []byte(x.Format("2006-01-02 15:04:05.999999999Z07:00"))
	}
	return fmt.Appendf(nil, "%v", v)
}

// ScanSQLite is a Scan of a table of a SQLite database file, opened
// read-only (a missing file is an error, not a new database). Each column
// is selected as +"col": the unary plus keeps the value and its storage
// class but drops the declared type, so the driver returns a DATETIME
// column's text as it is stored instead of parsing it.
func ScanSQLite(path, table string, l *Layout) Scan {
	return func(ctx context.Context, emit func(Change) error) error {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("sqlite database: %w", err)
		}
		db, err := sql.Open("sqlite", "file:"+sqlitePath(path)+"?mode=ro&_pragma=busy_timeout(10000)")
		if err != nil {
			return fmt.Errorf("open sqlite database %s: %w", path, err)
		}
		defer db.Close()
		sel := make([]string, len(l.Columns))
		for i, c := range l.Columns {
			sel[i] = "+" + sqliteQuote(c.Name)
		}
		what := fmt.Sprintf("sqlite table %q in %s", table, path)
		return ScanSQL(db, "SELECT "+strings.Join(sel, ", ")+" FROM "+sqliteQuote(table), what)(ctx, emit)
	}
}

// sqliteQuote quotes an SQLite identifier.
func sqliteQuote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
