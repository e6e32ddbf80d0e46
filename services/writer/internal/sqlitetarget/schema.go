package sqlitetarget

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// conv is how a value in the source's text form is bound.
type conv uint8

const (
	convText conv = iota // as given, as TEXT (the column's affinity may convert it)
	convInt              // parsed as int64
	convBool             // t/f (true/false, 1/0) as 1/0
)

// sqliteType maps a source (PostgreSQL, format_type) type name to the
// declared type of a column the target creates and to how its values are
// bound. Integer types are INTEGER and bound as int64; boolean is INTEGER
// 0/1; real and double precision are REAL (bound as text, so REAL affinity
// converts numbers and keeps NaN/Infinity as text rather than NULL);
// numeric/decimal stays TEXT, as given, because SQLite has no decimal type
// and NUMERIC/REAL affinity would round it to a double; timestamps, dates,
// json/jsonb, arrays and everything else are TEXT as the source printed
// them. The conversion follows the source type also for existing tables.
func sqliteType(pgType string) (string, conv) {
	s := strings.ToLower(strings.TrimSpace(pgType))
	if strings.HasSuffix(s, "]") {
		return "TEXT", convText // an array literal
	}
	if i := strings.IndexByte(s, '('); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	switch s {
	case "smallint", "integer", "bigint", "int", "int2", "int4", "int8",
		"smallserial", "serial", "bigserial", "serial2", "serial4", "serial8":
		return "INTEGER", convInt
	case "boolean", "bool":
		return "INTEGER", convBool
	case "real", "double precision", "float4", "float8", "float":
		return "REAL", convText
	}
	return "TEXT", convText // numeric/decimal (precision kept), text, timestamps, json, ...
}

// plan is the SQL for one column layout.
type plan struct {
	keyIdx []int
	convs  []conv // per batch column
	names  []string
	// SQL, each statement prepared once per transaction.
	readSQL   string // ledger row of a key: version, hash
	writeSQL  string // upsert the ledger row of a key, fenced by version
	upsertSQL string // write the owned columns of a row
	delSQL    string // delete or soft-delete a row; "" = delete none
	// selectSQL reads the owned columns of a row back (staged mode).
	selectSQL string
}

// stmts are a plan's statements prepared in one transaction.
type stmts struct {
	read, write, upsert, del, sel *sql.Stmt
}

func (p *plan) statements(ctx context.Context, tx *sql.Tx) (*stmts, error) {
	st := &stmts{}
	for _, s := range []struct {
		dst **sql.Stmt
		sql string
	}{{&st.read, p.readSQL}, {&st.write, p.writeSQL}, {&st.upsert, p.upsertSQL}, {&st.del, p.delSQL}, {&st.sel, p.selectSQL}} {
		if s.sql == "" {
			continue
		}
		var err error
		if *s.dst, err = tx.PrepareContext(ctx, s.sql); err != nil {
			st.close()
			return nil, fmt.Errorf("prepare %q: %w", s.sql, err)
		}
	}
	return st, nil
}

func (st *stmts) close() {
	for _, s := range []*sql.Stmt{st.read, st.write, st.upsert, st.del, st.sel} {
		if s != nil {
			s.Close()
		}
	}
}

// convert binds the values of the columns in idx (all if nil) as their
// types need. NULL stays NULL; text is bound as TEXT, never as a BLOB.
func (p *plan) convert(vals [][]byte, idx []int) ([]any, error) {
	if idx == nil {
		idx = make([]int, len(vals))
		for i := range idx {
			idx[i] = i
		}
	}
	args := make([]any, len(idx))
	for i, j := range idx {
		v := vals[j]
		if v == nil {
			continue
		}
		switch p.convs[j] {
		case convInt:
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("column %q: %q is not a 64-bit integer", p.names[j], v)
			}
			args[i] = n
		case convBool:
			switch strings.ToLower(string(v)) {
			case "t", "true", "1":
				args[i] = int64(1)
			case "f", "false", "0":
				args[i] = int64(0)
			default:
				return nil, fmt.Errorf("column %q: %q is not a boolean", p.names[j], v)
			}
		default:
			args[i] = string(v)
		}
	}
	return args, nil
}

func signature(b *onewayv1.Batch) string {
	var sig strings.Builder
	for _, c := range b.GetColumns() {
		fmt.Fprintf(&sig, "%s\x00%s\x00%v\x00", c.GetName(), c.GetType(), c.GetKey())
	}
	return sig.String()
}

func (t *Target) forget(b *onewayv1.Batch) {
	t.mu.Lock()
	delete(t.plans, signature(b))
	t.mu.Unlock()
}

// prepare checks (or creates) the target table and the ledger for the
// batch's columns and builds the statements. Cached per column layout. The
// checks and the DDL run in one BEGIN IMMEDIATE transaction, so writers
// starting at once (other processes too) do not race to create tables.
func (t *Target) prepare(ctx context.Context, b *onewayv1.Batch) (*plan, error) {
	sig := signature(b)
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.plans[sig]; ok {
		return p, nil
	}
	if err := t.checkLayout(b); err != nil {
		return nil, err
	}
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, classify(fmt.Errorf("prepare table %q: begin: %w", t.spec.Table, err))
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	soft, err := t.checkTable(ctx, tx, b)
	if err != nil {
		return nil, err
	}
	if err := t.ensureLedger(ctx, tx, b); err != nil {
		return nil, err
	}
	p := t.buildPlan(b, soft)
	// SQLite checks the ON CONFLICT target against the table's unique
	// indexes (collations included) when it compiles the statement.
	st, err := p.statements(ctx, tx)
	if err != nil {
		return nil, classify(fmt.Errorf("table %q: %w", t.spec.Table, err))
	}
	st.close()
	if err := tx.Commit(); err != nil {
		return nil, classify(fmt.Errorf("prepare table %q: commit: %w", t.spec.Table, err))
	}
	t.plans[sig] = p
	return p, nil
}

// checkLayout refuses column layouts the target cannot take.
func (t *Target) checkLayout(b *onewayv1.Batch) error {
	for _, c := range b.GetColumns() {
		if strings.IndexByte(c.GetName(), 0) >= 0 {
			return errs.Permanentf("table %q: column name %q contains NUL", t.spec.Table, c.GetName())
		}
		if c.GetKey() && hasPrefixFold(c.GetName(), "oneway_") {
			return errs.Permanentf("table %q: key column %q clashes with the ledger's own oneway_* columns", t.spec.Table, c.GetName())
		}
		if t.spec.Delete == DeleteSoft && foldEq(c.GetName(), t.spec.SoftDeleteColumn) {
			return errs.Permanentf("table %q: soft-delete column %q is a source column", t.spec.Table, c.GetName())
		}
	}
	return nil
}

// softMark is what the soft-delete column holds for a live and for a
// deleted row (SQL expressions).
type softMark struct{ live, dead string }

// buildPlan renders the statements for the batch's layout.
func (t *Target) buildPlan(b *onewayv1.Batch, soft softMark) *plan {
	cols := b.GetColumns()
	p := &plan{keyIdx: event.KeyIndexes(b)}
	isKey := map[int]bool{}
	var keyQ, match []string
	for _, k := range p.keyIdx {
		isKey[k] = true
		q := quote(cols[k].GetName())
		keyQ = append(keyQ, q)
		match = append(match, q+" = ?")
	}
	var names, params, set []string
	for i, c := range cols {
		_, cv := sqliteType(c.GetType())
		p.convs = append(p.convs, cv)
		p.names = append(p.names, c.GetName())
		q := quote(c.GetName())
		names = append(names, q)
		params = append(params, "?")
		if !isKey[i] {
			set = append(set, q+" = excluded."+q)
		}
	}
	tbl, led := quote(t.spec.Table), quote(t.spec.LedgerTable)
	if t.spec.Delete == DeleteSoft {
		// An upsert revives a soft-deleted row.
		sc := quote(t.spec.SoftDeleteColumn)
		names = append(names, sc)
		params = append(params, soft.live)
		set = append(set, sc+" = excluded."+sc)
	}
	conflict := "DO NOTHING"
	if len(set) > 0 {
		conflict = "DO UPDATE SET " + strings.Join(set, ", ")
		if t.spec.Staged {
			// Staged: write only where the row differs (a hand edit),
			// so RowsAffected counts real writes.
			var cur, exc []string
			for _, n := range names {
				if !slices.Contains(keyQ, n) {
					cur = append(cur, n)
					exc = append(exc, "excluded."+n)
				}
			}
			conflict += " WHERE (" + strings.Join(cur, ", ") + ") IS NOT (" + strings.Join(exc, ", ") + ")"
		}
	}
	p.upsertSQL = "INSERT INTO " + tbl + " (" + strings.Join(names, ", ") + ") VALUES (" + strings.Join(params, ", ") +
		") ON CONFLICT (" + strings.Join(keyQ, ", ") + ") " + conflict
	switch t.spec.Delete {
	case DeleteHard:
		p.delSQL = "DELETE FROM " + tbl + " WHERE " + strings.Join(match, " AND ")
	case DeleteSoft:
		p.delSQL = "UPDATE " + tbl + " SET " + quote(t.spec.SoftDeleteColumn) + " = " + soft.dead + " WHERE " + strings.Join(match, " AND ")
		if t.spec.Staged {
			p.delSQL += " AND " + quote(t.spec.SoftDeleteColumn) + " IS " + soft.live
		}
	}
	p.readSQL = "SELECT oneway_version, oneway_hash FROM " + led + " WHERE " + strings.Join(match, " AND ")
	// Direct mode counts an apply when the hash changes; staged mode is
	// told (the last parameter, 0 or 1) whether the row was written.
	applies, addApplies := "1", "(oneway_hash IS NOT excluded.oneway_hash)"
	if t.spec.Staged {
		applies, addApplies = "?", "excluded.oneway_applies"
		var sel []string
		for _, c := range cols {
			sel = append(sel, quote(c.GetName()))
		}
		p.selectSQL = "SELECT " + strings.Join(sel, ", ") + " FROM " + tbl + " WHERE " + strings.Join(match, " AND ")
	}
	p.writeSQL = "INSERT INTO " + led + " (" + strings.Join(keyQ, ", ") + ", oneway_version, oneway_hash, oneway_applies, oneway_applied_at)\n" +
		"VALUES (" + strings.Repeat("?, ", len(keyQ)) + "?, ?, " + applies + ", " + nowSQL + ")\n" +
		"ON CONFLICT (" + strings.Join(keyQ, ", ") + ") DO UPDATE SET oneway_version = excluded.oneway_version,\n" +
		"  oneway_hash = excluded.oneway_hash, oneway_applies = oneway_applies + " + addApplies + ",\n" +
		"  oneway_applied_at = excluded.oneway_applied_at\n" +
		"WHERE oneway_version < excluded.oneway_version"
	return p
}

// nowSQL is the current UTC time as ISO 8601 text, to the millisecond.
const nowSQL = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

// column is one row of PRAGMA table_info.
type column struct {
	name, decl string
	pk         int
}

// tableColumns lists a table's columns; kind is "table", "view" or "" when
// no such table exists.
func tableColumns(ctx context.Context, tx *sql.Tx, name string) (cols []column, kind string, err error) {
	err = tx.QueryRowContext(ctx,
		"SELECT type FROM sqlite_schema WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE", name).Scan(&kind)
	if err == sql.ErrNoRows {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	rows, err := tx.QueryContext(ctx, "SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid", name)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.name, &c.decl, &c.pk); err != nil {
			return nil, "", err
		}
		cols = append(cols, c)
	}
	return cols, kind, rows.Err()
}

// checkTable creates the target table when missing (and allowed), then
// checks it has every owned column, the soft-delete column, and a primary
// key or unique index on exactly the key columns.
func (t *Target) checkTable(ctx context.Context, tx *sql.Tx, b *onewayv1.Batch) (softMark, error) {
	tbl := t.spec.Table
	cols, kind, err := tableColumns(ctx, tx, tbl)
	if err != nil {
		return softMark{}, classify(fmt.Errorf("inspect table %q: %w", tbl, err))
	}
	if kind == "" {
		if !t.spec.CreateTable {
			return softMark{}, errs.Permanentf("target table %q does not exist and create_table is false", tbl)
		}
		if err := t.createTable(ctx, tx, b); err != nil {
			return softMark{}, err
		}
		if cols, kind, err = tableColumns(ctx, tx, tbl); err != nil {
			return softMark{}, classify(fmt.Errorf("inspect table %q: %w", tbl, err))
		}
	}
	if kind != "table" {
		return softMark{}, errs.Permanentf("target %q is a %s, not a table", tbl, kind)
	}
	byName := map[string]column{}
	for _, c := range cols {
		byName[lowerASCII(c.name)] = c
	}
	for _, c := range b.GetColumns() {
		if _, ok := byName[lowerASCII(c.GetName())]; !ok {
			return softMark{}, errs.Permanentf("target table %q has no column %q (owned by the source); add it or map it", tbl, c.GetName())
		}
	}
	var soft softMark
	if t.spec.Delete == DeleteSoft {
		sc, ok := byName[lowerASCII(t.spec.SoftDeleteColumn)]
		if !ok {
			return softMark{}, errs.Permanentf("target table %q has no soft-delete column %q", tbl, t.spec.SoftDeleteColumn)
		}
		soft = softMark{live: "NULL", dead: nowSQL}
		if strings.Contains(strings.ToUpper(sc.decl), "BOOL") {
			soft = softMark{live: "0", dead: "1"}
		}
	}
	var keys []string
	for _, k := range event.KeyIndexes(b) {
		keys = append(keys, b.GetColumns()[k].GetName())
	}
	ok, err := hasUniqueKey(ctx, tx, tbl, cols, keys)
	if err != nil {
		return softMark{}, classify(fmt.Errorf("inspect the keys of table %q: %w", tbl, err))
	}
	if !ok {
		return softMark{}, errs.Permanentf("target table %q has no primary key or unique index on the key columns (%s)", tbl, strings.Join(keys, ", "))
	}
	return soft, nil
}

// createTable creates the target table from the batch's columns (types
// mapped by sqliteType), the key as its primary key, plus the soft-delete
// column (TEXT, NULL = live) when deletes are soft.
func (t *Target) createTable(ctx context.Context, tx *sql.Tx, b *onewayv1.Batch) error {
	var defs, keys []string
	for _, c := range b.GetColumns() {
		decl, _ := sqliteType(c.GetType())
		d := quote(c.GetName()) + " " + decl
		if c.GetKey() {
			d += " NOT NULL"
			keys = append(keys, quote(c.GetName()))
		}
		defs = append(defs, d)
	}
	if t.spec.Delete == DeleteSoft {
		defs = append(defs, quote(t.spec.SoftDeleteColumn)+" TEXT")
	}
	ddl := fmt.Sprintf("CREATE TABLE %s (%s, PRIMARY KEY (%s))", quote(t.spec.Table), strings.Join(defs, ", "), strings.Join(keys, ", "))
	if _, err := tx.ExecContext(ctx, ddl); err != nil {
		return classify(fmt.Errorf("create target table %q: %w", t.spec.Table, err))
	}
	t.log.Info("created target table", "table", t.spec.Table, "path", t.spec.Path)
	return nil
}

// hasUniqueKey reports whether the table's primary key, or one of its
// unique, non-partial indexes on plain columns, is exactly the key columns
// (in any order). A rowid table's INTEGER PRIMARY KEY has no index: it shows
// in table_info only.
func hasUniqueKey(ctx context.Context, tx *sql.Tx, tbl string, cols []column, keys []string) (bool, error) {
	want := foldSet(keys)
	var pk []string
	for _, c := range cols {
		if c.pk > 0 {
			pk = append(pk, c.name)
		}
	}
	if foldSet(pk) == want {
		return true, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT name FROM pragma_index_list(?) WHERE "unique" AND NOT partial`, tbl)
	if err != nil {
		return false, err
	}
	var indexes []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return false, err
		}
		indexes = append(indexes, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, err
	}
	for _, ix := range indexes {
		// name is NULL for an expression (or rowid) column of the index.
		rows, err := tx.QueryContext(ctx, "SELECT coalesce(name, '') FROM pragma_index_info(?)", ix)
		if err != nil {
			return false, err
		}
		var names []string
		expr := false
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				rows.Close()
				return false, err
			}
			expr = expr || n == ""
			names = append(names, n)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return false, err
		}
		if !expr && foldSet(names) == want {
			return true, nil
		}
	}
	return false, nil
}

// ensureLedger creates the ledger table, or checks that an existing one has
// exactly the key columns and the oneway_* columns, keyed by the key:
//
//	<ledger> (<key columns> TEXT, oneway_version INTEGER, oneway_hash BLOB,
//	  oneway_applies INTEGER, oneway_applied_at TEXT,
//	  PRIMARY KEY (<key columns>)) WITHOUT ROWID
//
// The key columns hold the key values as the source sent them (text).
// oneway_version is the stream version last applied, oneway_hash its
// content hash (empty for a delete), oneway_applies how many times the row
// was really written, oneway_applied_at when the version last advanced (UTC).
func (t *Target) ensureLedger(ctx context.Context, tx *sql.Tx, b *onewayv1.Batch) error {
	led := t.spec.LedgerTable
	var keys []string
	for _, k := range event.KeyIndexes(b) {
		keys = append(keys, b.GetColumns()[k].GetName())
	}
	own := []string{"oneway_version", "oneway_hash", "oneway_applies", "oneway_applied_at"}
	cols, kind, err := tableColumns(ctx, tx, led)
	if err != nil {
		return classify(fmt.Errorf("inspect ledger %q: %w", led, err))
	}
	if kind != "" {
		var names, pk []string
		for _, c := range cols {
			names = append(names, c.name)
			if c.pk > 0 {
				pk = append(pk, c.name)
			}
		}
		if kind != "table" || foldSet(names) != foldSet(append(append([]string{}, keys...), own...)) || foldSet(pk) != foldSet(keys) {
			return errs.Permanentf("ledger %q does not match target table %q: it has columns (%s) keyed by (%s), the key is (%s); drop the ledger to rebuild it",
				led, t.spec.Table, strings.Join(names, ", "), strings.Join(pk, ", "), strings.Join(keys, ", "))
		}
		return nil
	}
	var defs, keyQ []string
	for _, k := range keys {
		defs = append(defs, quote(k)+" TEXT NOT NULL")
		keyQ = append(keyQ, quote(k))
	}
	note := strings.NewReplacer("*/", "* /", "\n", " ", "\r", " ").Replace(
		fmt.Sprintf("oneway effect-once ledger of pipeline %q, target %q, table %q", t.spec.Pipeline, t.spec.Target, t.spec.Table))
	ddl := fmt.Sprintf(`CREATE TABLE %s ( /* %s */
  %s,
  oneway_version INTEGER NOT NULL, oneway_hash BLOB NOT NULL,
  oneway_applies INTEGER NOT NULL DEFAULT 1, oneway_applied_at TEXT NOT NULL,
  PRIMARY KEY (%s)) WITHOUT ROWID`, quote(led), note, strings.Join(defs, ", "), strings.Join(keyQ, ", "))
	if _, err := tx.ExecContext(ctx, ddl); err != nil {
		return classify(fmt.Errorf("create ledger %q: %w", led, err))
	}
	return nil
}

// quote quotes an SQLite identifier.
func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// lowerASCII folds case as SQLite does for identifiers (ASCII only).
func lowerASCII(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}

func foldEq(a, b string) bool { return lowerASCII(a) == lowerASCII(b) }

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && foldEq(s[:len(prefix)], prefix)
}

// foldSet renders a set of identifiers canonically (folded, sorted,
// NUL-separated) for comparison.
func foldSet(names []string) string {
	f := make([]string, len(names))
	for i, n := range names {
		f[i] = lowerASCII(n)
	}
	sort.Strings(f)
	return strings.Join(f, "\x00")
}
