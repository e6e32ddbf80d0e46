// Package sqlsource reads a SQLite or MySQL/MariaDB table as a System of
// Record: the reader's watermark, watermark_cdc, synthetic and window
// patterns (it implements the reader's capture.Source) and `oneway
// verify`'s read of the source.
//
// Values are reported as the PostgreSQL source reports them: each column
// gets the PostgreSQL type its values fit (Columns; see sqliteType and
// mysqlType) and every value the text PostgreSQL prints for that type, so
// that events, hashes, targets and verify agree whatever the source.
//
// The commit-safe bound (Bound, SafeBound) is what keeps a watermark from
// skipping rows committed late:
//
//   - SQLite has one writer at a time. The bound is taken while holding the
//     write lock (BEGIN IMMEDIATE, released at once): no write transaction
//     is open then, so every row written so far is committed, and every
//     later write happens after the bound. A time bound is the current
//     time rounded down to the second (CURRENT_TIMESTAMP has whole
//     seconds); a numeric watermark's bound is max(column), inclusive.
//     Reading in a read transaction alone would not do: a writer that
//     began before the read and commits after it would have written below
//     a bound of "now". The reader needs write access to the file for the
//     lock, and watermark values must be set by the database
//     (CURRENT_TIMESTAMP, strftime('%Y-%m-%d %H:%M:%f','now'), a trigger)
//     in UTC, in ISO form, so that they compare as text.
//   - MySQL/MariaDB: the earliest start of an open InnoDB transaction
//     (information_schema.innodb_trx) or now, whichever is earlier, minus
//     the lookback and at least one second (a statement takes NOW() when it
//     starts, a moment before InnoDB lists its transaction), rounded down
//     to the second. The session time zone is UTC. A numeric watermark is
//     not supported on MySQL (no sample bookkeeping yet): use a timestamp.
package sqlsource

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
)

// Kinds of source.
const (
	KindSQLite = "sqlite"
	KindMySQL  = "mysql"
)

// Spec says what to read.
type Spec struct {
	// Kind is KindSQLite or KindMySQL.
	Kind string
	// URL is the SQLite database file's path, or a go-sql-driver DSN.
	URL string
	// Database is the MySQL database of Table ("" = the DSN's); unused for
	// SQLite.
	Database string
	Table    string
	Key      []string
	Columns  []string // owned columns; empty = all
	// WatermarkColumn is the watermark patterns' column: a timestamp (or
	// date, with Coarse), or (SQLite) an integer.
	WatermarkColumn string
	// Coarse accepts dates and reads each row's epoch (watermark_cdc).
	Coarse bool
	// SoftDeleteColumn marks deleted rows: set (not NULL; non-zero for a
	// boolean) means deleted.
	SoftDeleteColumn string
	// WindowColumn is the date or timestamp column of the window pattern.
	WindowColumn string
}

// Column is one column of the table.
type Column struct {
	Name string
	// Native is the type as the source's catalog spells it; Type the
	// PostgreSQL type reported for it.
	Native, Type string
	NotNull      bool
	kind         kind
}

// dialect is what differs between SQLite and MySQL.
type dialect struct {
	name  string
	quote func(string) string
	// ordExpr is the expression ordering a non-integer key column by the
	// bytes of its text.
	ordExpr func(col string) string
	// deleted is the SQL of "the soft-delete column is set".
	boolSet func(col string) string
}

var (
	sqliteDialect = dialect{
		name:    KindSQLite,
		quote:   func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` },
		ordExpr: func(c string) string { return "CAST(" + c + " AS TEXT) COLLATE BINARY" },
		boolSet: func(c string) string { return "coalesce(" + c + ", 0) <> 0" },
	}
	mysqlDialect = dialect{
		name:    KindMySQL,
		quote:   func(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" },
		ordExpr: func(c string) string { return "CAST(" + c + " AS BINARY)" },
		boolSet: func(c string) string { return "coalesce(" + c + ", 0) <> 0" },
	}
)

// Source reads one table. It is safe for concurrent use.
type Source struct {
	db      *sql.DB
	d       dialect
	what    string // the table, for errors
	from    string // the quoted table
	cols    []Column
	colSQL  []string // select expression of each owned column
	keyIdx  []int
	keyInt  []bool
	keyList string
	colList string
	keyNull bool
	log     *slog.Logger

	wmIdx    int
	wmKind   kind
	wmNum    bool
	coarse   bool
	softDel  string
	winCol   string
	delIdx   int // "t" when deleted
	markIdx  int // the raw watermark
	ordIdx   int // first order expression of a scan
	nOrd     int
	extraSQL string
}

// Open connects to the source, checks the table against its catalog (it
// exists; the key, owned, watermark, soft-delete and window columns exist
// and have usable types) and returns a Source. Errors name the table and
// column; a permanent one (errs.Permanent) means the configuration does
// not fit the table.
func Open(ctx context.Context, spec Spec, log *slog.Logger) (*Source, error) {
	db, d, database, err := connect(spec)
	if err != nil {
		return nil, err
	}
	s, err := open(ctx, db, d, database, spec, log)
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the source's connections.
func (s *Source) Close() error { return s.db.Close() }

func connect(spec Spec) (*sql.DB, dialect, string, error) {
	switch spec.Kind {
	case KindSQLite:
		if spec.URL == "" {
			return nil, dialect{}, "", errs.Permanentf("sqlite source: the database file's path is required")
		}
		if _, err := os.Stat(spec.URL); err != nil {
			return nil, dialect{}, "", errs.Permanent(fmt.Errorf("sqlite source: %w", err))
		}
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
		db, err := sql.Open("sqlite", "file:"+r.Replace(filepath.ToSlash(spec.URL))+"?mode=rw&"+q.Encode())
		if err != nil {
			return nil, dialect{}, "", errs.Permanent(fmt.Errorf("open sqlite source %s: %w", spec.URL, err))
		}
		db.SetMaxOpenConns(4)
		return db, sqliteDialect, "", nil
	case KindMySQL:
		cfg, err := mysql.ParseDSN(spec.URL)
		if err != nil {
			return nil, dialect{}, "", errs.Permanent(fmt.Errorf("mysql source: url: not a MySQL DSN: %w", err))
		}
		if cfg.Params == nil {
			cfg.Params = map[string]string{}
		}
		cfg.Params["time_zone"] = "'+00:00'"
		cfg.ParseTime = false
		cfg.InterpolateParams = true // text protocol: every value arrives as text
		database := spec.Database
		if database == "" {
			database = cfg.DBName
		}
		if database == "" {
			return nil, dialect{}, "", errs.Permanentf("mysql source: no database: name it in the table (db.table) or in the DSN")
		}
		conn, err := mysql.NewConnector(cfg)
		if err != nil {
			return nil, dialect{}, "", errs.Permanent(fmt.Errorf("mysql source: url: %w", err))
		}
		db := sql.OpenDB(conn)
		db.SetMaxOpenConns(4)
		return db, mysqlDialect, database, nil
	}
	return nil, dialect{}, "", errs.Permanentf("source kind %q is not a SQL source (sqlite, mysql)", spec.Kind)
}

// Catalog returns the table's columns in table order; found is false when
// the table does not exist.
func (s *Source) catalog(ctx context.Context, database, table string) ([]Column, bool, error) {
	var rows *sql.Rows
	var err error
	if s.d.name == KindSQLite {
		rows, err = s.db.QueryContext(ctx, `SELECT name, type, "notnull" OR pk > 0 AND lower(type) = 'integer' FROM pragma_table_info(?) ORDER BY cid`, table)
	} else {
		rows, err = s.db.QueryContext(ctx, `SELECT column_name, data_type, column_type, is_nullable = 'NO'
FROM information_schema.columns WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position`, database, table)
	}
	if err != nil {
		return nil, false, classify(fmt.Errorf("read the catalog of %s: %w", s.what, err))
	}
	defer rows.Close()
	var out []Column
	for rows.Next() {
		var c Column
		if s.d.name == KindSQLite {
			if err := rows.Scan(&c.Name, &c.Native, &c.NotNull); err != nil {
				return nil, false, classify(fmt.Errorf("read the catalog of %s: %w", s.what, err))
			}
			c.Type, c.kind = sqliteType(c.Native)
		} else {
			var dataType string
			if err := rows.Scan(&c.Name, &dataType, &c.Native, &c.NotNull); err != nil {
				return nil, false, classify(fmt.Errorf("read the catalog of %s: %w", s.what, err))
			}
			c.Type, c.kind = mysqlType(dataType, c.Native)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, false, classify(fmt.Errorf("read the catalog of %s: %w", s.what, err))
	}
	return out, len(out) > 0, nil
}

func open(ctx context.Context, db *sql.DB, d dialect, database string, spec Spec, log *slog.Logger) (*Source, error) {
	s := &Source{db: db, d: d, log: log, wmIdx: -1, delIdx: -1, markIdx: -1}
	if d.name == KindSQLite {
		s.what = fmt.Sprintf("sqlite table %q in %s", spec.Table, spec.URL)
		s.from = d.quote(spec.Table)
	} else {
		s.what = "mysql table `" + database + "`.`" + spec.Table + "`"
		s.from = d.quote(database) + "." + d.quote(spec.Table)
	}
	all, found, err := s.catalog(ctx, database, spec.Table)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, errs.Permanentf("source %s does not exist (or the user cannot see it)", s.what)
	}
	byName := map[string]Column{}
	for _, c := range all {
		byName[c.Name] = c
	}
	names := spec.Columns
	if len(names) == 0 {
		for _, c := range all {
			names = append(names, c.Name)
		}
	}
	idx := map[string]int{}
	for _, n := range names {
		c, ok := byName[n]
		if !ok {
			return nil, errs.Permanentf("source %s has no column %q", s.what, n)
		}
		idx[n] = len(s.cols)
		s.cols = append(s.cols, c)
		s.colSQL = append(s.colSQL, s.selectExpr(c))
	}
	for _, k := range spec.Key {
		i, ok := idx[k]
		if !ok {
			return nil, errs.Permanentf("source %s: key column %q is not among the owned columns", s.what, k)
		}
		c := s.cols[i]
		switch c.kind {
		case kInt, kText, kNumeric:
		default:
			return nil, errs.Permanentf("source %s: key column %q has type %s; a key column must be an integer, text or decimal", s.what, k, c.Native)
		}
		s.keyIdx = append(s.keyIdx, i)
		s.keyInt = append(s.keyInt, c.kind == kInt)
		if !c.NotNull {
			s.keyNull = true
		}
	}
	if len(s.keyIdx) == 0 {
		return nil, errs.Permanentf("source %s: no key columns", s.what)
	}
	if spec.WatermarkColumn != "" {
		i, ok := idx[spec.WatermarkColumn]
		if !ok {
			return nil, errs.Permanentf("source %s: watermark column %q is not among the owned columns", s.what, spec.WatermarkColumn)
		}
		c := s.cols[i]
		s.wmIdx, s.wmKind, s.coarse = i, c.kind, spec.Coarse
		switch {
		case c.kind == kTimestamp || c.kind == kTimestampTZ:
		case c.kind == kDate && spec.Coarse:
		case c.kind == kDate:
			return nil, errs.Permanentf("source %s: watermark column %q is a date: many rows share a value and late ones would be skipped; use the watermark_cdc pattern", s.what, c.Name)
		case c.kind == kInt && !spec.Coarse && d.name == KindSQLite:
			s.wmNum = true
		case c.kind == kInt && !spec.Coarse:
			return nil, errs.Permanentf("source %s: watermark column %q is a number; a mysql source needs a timestamp watermark (DATETIME or TIMESTAMP set by the database)", s.what, c.Name)
		default:
			return nil, errs.Permanentf("source %s: watermark column %q has type %s; the pattern needs a timestamp column (or a date for watermark_cdc)", s.what, c.Name, c.Native)
		}
		if !c.NotNull {
			log.Warn("watermark column is nullable: rows where it is NULL are never read; declare it NOT NULL",
				"table", s.what, "column", c.Name)
		}
	}
	if spec.SoftDeleteColumn != "" {
		c, ok := byName[spec.SoftDeleteColumn]
		if !ok {
			return nil, errs.Permanentf("source %s: soft-delete column %q does not exist", s.what, spec.SoftDeleteColumn)
		}
		if c.kind == kBool {
			s.softDel = d.boolSet(d.quote(c.Name))
		} else {
			s.softDel = d.quote(c.Name) + " IS NOT NULL"
		}
	}
	if spec.WindowColumn != "" {
		c, ok := byName[spec.WindowColumn]
		if !ok {
			return nil, errs.Permanentf("source %s: window column %q does not exist", s.what, spec.WindowColumn)
		}
		switch c.kind {
		case kDate, kTimestamp, kTimestampTZ:
		default:
			return nil, errs.Permanentf("source %s: window column %q has type %s; the window pattern needs a date or timestamp column", s.what, c.Name, c.Native)
		}
		s.winCol = d.quote(c.Name)
	}
	// The extras after the owned values: deleted flag, raw watermark, then
	// (scans) the order expressions.
	var extra []string
	n := len(s.cols)
	if s.softDel != "" {
		s.delIdx, n = n, n+1
		extra = append(extra, "CASE WHEN "+s.softDel+" THEN 1 ELSE 0 END")
	}
	if s.wmIdx >= 0 {
		s.markIdx, n = n, n+1
		extra = append(extra, s.rawExpr(s.cols[s.wmIdx]))
	}
	s.ordIdx = n
	for _, k := range s.keyInt {
		if !k {
			s.nOrd++
		}
	}
	if len(extra) > 0 {
		s.extraSQL = ", " + strings.Join(extra, ", ")
	}
	keys := make([]string, len(s.keyIdx))
	for i, j := range s.keyIdx {
		keys[i] = d.quote(s.cols[j].Name)
	}
	s.keyList = strings.Join(keys, ", ")
	s.colList = strings.Join(s.colSQL, ", ")
	return s, nil
}

// selectExpr is the select expression of an owned column. SQLite's is
// +"col": the unary plus keeps the stored value but drops the declared
// type, so the driver returns a DATETIME's text as stored instead of
// parsing it.
func (s *Source) selectExpr(c Column) string {
	if s.d.name == KindSQLite {
		return "+" + s.d.quote(c.Name)
	}
	return s.d.quote(c.Name)
}

// rawExpr is the watermark as the source compares it.
func (s *Source) rawExpr(c Column) string { return s.selectExpr(c) }

// Columns describes the owned columns in the order of every Row, with
// their PostgreSQL types.
func (s *Source) Columns() []*onewayv1.Column {
	key := map[int]bool{}
	for _, k := range s.keyIdx {
		key[k] = true
	}
	out := make([]*onewayv1.Column, len(s.cols))
	for i, c := range s.cols {
		out[i] = &onewayv1.Column{Name: c.Name, Type: c.Type, Key: key[i]}
	}
	return out
}

// KeyIndexes returns the positions of the key columns in a Row.
func (s *Source) KeyIndexes() []int { return s.keyIdx }

// HasWatermark reports whether the source has a watermark column and
// whether it is a number.
func (s *Source) HasWatermark() (has, numeric bool) { return s.wmIdx >= 0, s.wmNum }

// KeyOf returns the key texts of a row.
func (s *Source) KeyOf(r source.Row) []string {
	return source.KeyTexts(r, s.keyIdx)
}

// Owned returns the owned values of a row.
func (s *Source) Owned(r source.Row) source.Row { return r[:len(s.cols)] }

// IsDeleted reports whether the row's soft-delete column is set.
func (s *Source) IsDeleted(r source.Row) bool {
	return s.delIdx >= 0 && len(r) > s.delIdx && string(r[s.delIdx]) == "t"
}

// FromDeleteFeed is always false: these sources have no delete feed
// table.
func (s *Source) FromDeleteFeed(source.Row) bool { return false }

// WatermarkOf returns the row's watermark as the source stores it.
func (s *Source) WatermarkOf(r source.Row) string {
	if s.markIdx >= 0 && len(r) > s.markIdx {
		return string(r[s.markIdx])
	}
	return ""
}

// Epoch returns the row's watermark in seconds since 1970 (for
// watermark_cdc; 0 when it does not parse).
func (s *Source) Epoch(r source.Row) float64 {
	if !s.coarse {
		return 0
	}
	t, ok := parseTime(s.WatermarkOf(r))
	if !ok {
		return 0
	}
	return float64(t.UnixMicro()) / 1e6
}

// CursorOf returns the cursor of a watermark row.
func (s *Source) CursorOf(r source.Row) source.Cursor {
	return source.Cursor{Mark: s.WatermarkOf(r), Key: s.KeyOf(r)}
}

// OrdKey appends the order key of a scanned row: integer key columns as 8
// bytes big-endian with the sign bit flipped, others as the bytes of
// their text and a 0x00 terminator (as pgsource).
func (s *Source) OrdKey(dst []byte, r source.Row) ([]byte, error) {
	x := s.ordIdx
	for i, j := range s.keyIdx {
		if s.keyInt[i] {
			v, err := strconv.ParseInt(string(r[j]), 10, 64)
			if err != nil {
				return nil, errs.Permanentf("source %s: key column %q value %q is not an integer", s.what, s.cols[j].Name, r[j])
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

// keyArgs converts key texts to query arguments.
func (s *Source) keyArgs(args []any, key []string) []any {
	for i, k := range key {
		if s.keyInt[i] {
			if v, err := strconv.ParseInt(k, 10, 64); err == nil {
				args = append(args, v)
				continue
			}
		}
		args = append(args, k)
	}
	return args
}

func (s *Source) placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// SnapshotPage returns up to limit rows with key greater than after (nil =
// from the start), in key order.
func (s *Source) SnapshotPage(ctx context.Context, after []string, limit int) ([]source.Row, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s%s FROM %s", s.colList, s.extraSQL, s.from)
	var args []any
	if after != nil {
		fmt.Fprintf(&b, " WHERE (%s) > (%s)", s.keyList, s.placeholders(len(after)))
		args = s.keyArgs(args, after)
	}
	fmt.Fprintf(&b, " ORDER BY %s LIMIT %d", s.keyList, limit)
	return s.query(ctx, b.String(), args)
}

// WatermarkRows returns up to limit rows after c and below bound (at or
// below an Inclusive one), in (watermark, key) order.
func (s *Source) WatermarkRows(ctx context.Context, c source.Cursor, bound source.Bound, limit int) ([]source.Row, error) {
	wm := s.d.quote(s.cols[s.wmIdx].Name)
	lt := "<"
	if bound.Inclusive {
		lt = "<="
	}
	args := []any{s.markArg(bound.Value), s.markArg(c.Mark)}
	after := wm + " >= ?"
	if c.Key != nil {
		after = fmt.Sprintf("(%s, %s) > (?, %s)", wm, s.keyList, s.placeholders(len(c.Key)))
		args = s.keyArgs(args, c.Key)
	}
	q := fmt.Sprintf("SELECT %s%s FROM %s WHERE %s %s ? AND %s ORDER BY %s, %s LIMIT %d",
		s.colList, s.extraSQL, s.from, wm, lt, after, wm, s.keyList, limit)
	return s.query(ctx, q, args)
}

// markArg is a watermark text as a query argument.
func (s *Source) markArg(v string) any {
	if s.wmNum {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return n
		}
	}
	return v
}

// Lower returns mark minus seconds in the stored form (a date: rounded
// down to its day), with the epochs of that value and of mark.
func (s *Source) Lower(_ context.Context, mark string, seconds float64) (string, float64, float64, error) {
	t, ok := parseTime(mark)
	if !ok {
		return "", 0, 0, errs.Permanentf("source %s: watermark %q is not a date or time", s.what, mark)
	}
	l := t.Add(-time.Duration(seconds * float64(time.Second)))
	lower := l.Format("2006-01-02 15:04:05.999999")
	if s.wmKind == kDate {
		l = time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, time.UTC)
		lower = l.Format("2006-01-02")
	}
	return lower, float64(l.UnixMicro()) / 1e6, float64(t.UnixMicro()) / 1e6, nil
}

// query runs a read and converts its rows: the owned values to their
// PostgreSQL text, the deleted flag to t/f, the rest as they are.
func (s *Source) query(ctx context.Context, q string, args []any) ([]source.Row, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, classify(fmt.Errorf("read %s: %w", s.what, err))
	}
	defer rows.Close()
	var out []source.Row
	var dest []any
	for rows.Next() {
		r, err := s.scanRow(rows, &dest)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(fmt.Errorf("read %s: %w", s.what, err))
	}
	return out, nil
}

func (s *Source) scanRow(rows *sql.Rows, dest *[]any) (source.Row, error) {
	if *dest == nil {
		cols, err := rows.Columns()
		if err != nil {
			return nil, classify(fmt.Errorf("read %s: %w", s.what, err))
		}
		*dest = make([]any, len(cols))
		for i := range *dest {
			(*dest)[i] = new(any)
		}
	}
	if err := rows.Scan(*dest...); err != nil {
		return nil, classify(fmt.Errorf("read %s: %w", s.what, err))
	}
	r := make(source.Row, len(*dest))
	for i, d := range *dest {
		v := *d.(*any)
		switch {
		case i < len(s.cols):
			r[i] = text(s.cols[i].kind, v)
		case i == s.delIdx:
			r[i] = text(kBool, v)
		default:
			r[i] = text(kText, v)
		}
	}
	return r, nil
}

// classify marks the errors that retrying cannot cure as permanent: SQL
// that the source rejects (a missing table or column, a privilege).
func classify(err error) error {
	if err == nil {
		return nil
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1044, 1045, 1049, 1054, 1064, 1142, 1143, 1146:
			return errs.Permanent(err)
		}
		return err
	}
	msg := err.Error()
	if strings.Contains(msg, "no such table") || strings.Contains(msg, "no such column") || strings.Contains(msg, "syntax error") {
		return errs.Permanent(err)
	}
	return err
}
