package mysqltarget

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// conv is how a value in the source's (PostgreSQL's) text form is bound.
type conv uint8

const (
	convText        conv = iota // as given (MySQL converts it to the column's type, strictly)
	convInt                     // parsed as int64
	convBool                    // t/f (true/false, 1/0) as 1/0
	convBytes                   // bytea hex (\x…) as bytes
	convTimestamptz             // a timestamp with offset, as UTC "YYYY-MM-DD hh:mm:ss.ffffff"
)

// textKeyLen is the length of a VARCHAR key column the target creates for
// a text key: MySQL cannot index TEXT without a prefix, and InnoDB keys are
// at most 3072 bytes (768 utf8mb4 characters). 255 leaves room for three
// text columns in a composite key; a longer key value is rejected (strict
// mode), never truncated.
const textKeyLen = 255

// maxVarchar is the longest character varying(n) created as VARCHAR(n);
// longer ones become LONGTEXT, so that many of them still fit MySQL's
// 65,535-byte row limit.
const maxVarchar = 1024

// mysqlType maps a source (PostgreSQL, format_type) type name to the column
// type of a table the target creates, and to how its values are bound:
//
//	smallint, integer, bigint (and serials)  SMALLINT, INT, BIGINT
//	boolean                                  BOOLEAN (TINYINT(1)), 1/0
//	real, double precision                   FLOAT, DOUBLE
//	numeric(p,s)                             DECIMAL(p,s); numeric without precision
//	                                         (or beyond MySQL's 65,30) DECIMAL(65,30)
//	character varying(n), character(n)       VARCHAR(n) up to 1024, CHAR(n) up to 255, else as text
//	text and every other type                LONGTEXT
//	date, time(p), timestamp(p)              DATE, TIME(p), DATETIME(p) (default precision 6)
//	timestamp with time zone                 DATETIME(p), in UTC
//	json, jsonb                              JSON
//	bytea                                    LONGBLOB
//	uuid                                     CHAR(36)
//
// Key columns must be indexable: text (and json, arrays, …) becomes
// VARCHAR(255), bytea VARBINARY(255), and a character varying longer than
// 768 VARCHAR(768). Text key columns get a binary, no-pad collation (the
// caller adds it), so that keys differing in case or trailing spaces stay
// distinct, as they are at the source.
func mysqlType(pgType string, key bool) (decl string, cv conv, textual bool) {
	s := strings.ToLower(strings.TrimSpace(pgType))
	var args string
	if i := strings.IndexByte(s, '('); i >= 0 {
		if j := strings.IndexByte(s[i:], ')'); j >= 0 {
			args = s[i+1 : i+j]
			s = strings.Join(strings.Fields(s[:i]+" "+s[i+j+1:]), " ")
		}
	}
	text := func() (string, conv, bool) {
		if key {
			return fmt.Sprintf("VARCHAR(%d)", textKeyLen), convText, true
		}
		return "LONGTEXT", convText, true
	}
	if strings.HasSuffix(s, "]") {
		return text() // an array literal
	}
	nums := func() []int {
		var out []int
		for _, a := range strings.Split(args, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(a))
			if err != nil || n < 0 {
				return nil
			}
			out = append(out, n)
		}
		return out
	}
	precision := func() int { // fractional seconds, 0..6
		if n := nums(); len(n) == 1 && n[0] <= 6 {
			return n[0]
		}
		return 6
	}
	switch s {
	case "smallint", "int2", "smallserial", "serial2":
		return "SMALLINT", convInt, false
	case "integer", "int", "int4", "serial", "serial4":
		return "INT", convInt, false
	case "bigint", "int8", "bigserial", "serial8":
		return "BIGINT", convInt, false
	case "boolean", "bool":
		return "BOOLEAN", convBool, false
	case "real", "float4":
		return "FLOAT", convText, false
	case "double precision", "float8", "float":
		return "DOUBLE", convText, false
	case "numeric", "decimal":
		switch n := nums(); {
		case len(n) == 2 && n[0] >= 1 && n[0] <= 65 && n[1] <= 30 && n[1] <= n[0]:
			return fmt.Sprintf("DECIMAL(%d,%d)", n[0], n[1]), convText, false
		case len(n) == 1 && n[0] >= 1 && n[0] <= 65:
			return fmt.Sprintf("DECIMAL(%d,0)", n[0]), convText, false
		}
		return "DECIMAL(65,30)", convText, false
	case "character varying", "varchar":
		n := nums()
		switch {
		case len(n) == 1 && key && n[0] >= 1:
			return fmt.Sprintf("VARCHAR(%d)", min(n[0], 768)), convText, true
		case len(n) == 1 && n[0] >= 1 && n[0] <= maxVarchar:
			return fmt.Sprintf("VARCHAR(%d)", n[0]), convText, true
		}
		return text()
	case "character", "char", "bpchar":
		n := nums()
		if len(n) == 0 && args == "" {
			n = []int{1}
		}
		switch {
		case len(n) == 1 && n[0] >= 1 && n[0] <= 255:
			return fmt.Sprintf("CHAR(%d)", n[0]), convText, true
		case len(n) == 1 && key && n[0] >= 1:
			return fmt.Sprintf("VARCHAR(%d)", min(n[0], 768)), convText, true
		case len(n) == 1 && n[0] >= 1 && n[0] <= maxVarchar:
			return fmt.Sprintf("VARCHAR(%d)", n[0]), convText, true
		}
		return text()
	case "date":
		return "DATE", convText, false
	case "timestamp", "timestamp without time zone":
		return fmt.Sprintf("DATETIME(%d)", precision()), convText, false
	case "timestamp with time zone", "timestamptz":
		return fmt.Sprintf("DATETIME(%d)", precision()), convTimestamptz, false
	case "time", "time without time zone":
		return fmt.Sprintf("TIME(%d)", precision()), convText, false
	case "json", "jsonb":
		if key {
			return text()
		}
		return "JSON", convText, false
	case "bytea":
		if key {
			return "VARBINARY(255)", convBytes, false
		}
		return "LONGBLOB", convBytes, false
	case "uuid":
		return "CHAR(36)", convText, true
	}
	return text() // text, citext, interval, inet, money, enums, …
}

// sourceConv is how values of a source type are bound, whatever the
// target column.
func sourceConv(pgType string) conv {
	_, cv, _ := mysqlType(pgType, false)
	return cv
}

// column is a target column as information_schema describes it.
type column struct {
	name, dataType, colType string
	nullable                bool
	precision, scale        sql.NullInt64
	charset, collation      sql.NullString
}

// decl is the column's type as a ledger key column must repeat it.
func (c column) decl() string {
	d := c.colType
	if c.charset.Valid && c.collation.Valid {
		d += " CHARACTER SET " + c.charset.String + " COLLATE " + c.collation.String
	}
	return d
}

func isIntType(dataType string) bool {
	switch strings.ToLower(dataType) {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint":
		return true
	}
	return false
}

// softMark is what the soft-delete column holds for a live and for a
// deleted row (SQL expressions).
type softMark struct{ live, dead string }

// plan is the SQL for one column layout.
type plan struct {
	keyIdx      []int
	isKey       []bool
	names       []string // batch columns
	convs       []conv   // per batch column
	scales      []int    // decimal scale of the target column, -1 = not decimal
	otherUnique bool     // unique indexes besides the key's: upsert row by row
	soft        softMark
	delete      string // "DELETE FROM t" or "UPDATE t SET sd = …"; "" = leave rows

	tbl, led   string // quoted names
	keyCols    string // quoted key columns
	match      string // WHERE condition on one key, one ? per key column
	keyIn      string // the quoted key column, for a one-column key
	keyParam   string // its parameter ("?", or a CAST for a decimal)
	insertCols string // quoted columns of the row insert
	rowParams  string // "(?, …, ?[, live])"
	onDup      string // the row upsert's ON DUPLICATE KEY UPDATE list
	updateSQL  string // the row-by-row update by key
}

func repeatJoin(s string, n int, sep string) string {
	var b strings.Builder
	b.Grow(n * (len(s) + len(sep)))
	for i := range n {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(s)
	}
	return b.String()
}

// lockSQL creates missing ledger rows of n keys as placeholders (version
// 0) and takes an exclusive lock on every one, in the order given. It
// stamps each row with the key's position in the statement (oneway_ord),
// so that readSQL can tell which row is whose without comparing key
// values in Go (MySQL's types and collations decide which keys are equal).
func (p *plan) lockSQL(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO " + p.led + " (" + p.keyCols + ", oneway_version, oneway_hash, oneway_applies, oneway_applied_at, oneway_ord) VALUES ")
	keys := strings.Repeat("?, ", len(p.keyIdx))
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "(%s0, '', 0, UTC_TIMESTAMP(6), %d)", keys, i)
	}
	b.WriteString(" ON DUPLICATE KEY UPDATE oneway_ord = VALUES(oneway_ord)")
	return b.String()
}

// readSQL reads the ledger rows of n keys (locked by lockSQL in this
// transaction) with their positions.
func (p *plan) readSQL(n int) string {
	return "SELECT oneway_ord, oneway_version, oneway_hash, oneway_applies FROM " + p.led + " WHERE " + p.keysWhere(n)
}

// keysWhere matches n keys: k IN (…) for a one-column key, else an OR of
// per-key conditions.
func (p *plan) keysWhere(n int) string {
	if len(p.keyIdx) == 1 {
		return p.keyIn + " IN (" + repeatJoin(p.keyParam, n, ", ") + ")"
	}
	return repeatJoin("("+p.match+")", n, " OR ")
}

func (p *plan) insertSQL(n int) string {
	return "INSERT INTO " + p.tbl + " (" + p.insertCols + ") VALUES " + repeatJoin(p.rowParams, n, ", ")
}

func (p *plan) upsertSQL(n int) string {
	return p.insertSQL(n) + " ON DUPLICATE KEY UPDATE " + p.onDup
}

func (p *plan) deleteSQL(n int) string {
	return p.delete + " WHERE " + p.keysWhere(n)
}

// advanceSQL writes the new version, hash and applies count of n keys
// (whose rows exist and are locked).
func (p *plan) advanceSQL(n int) string {
	row := "(" + strings.Repeat("?, ", len(p.keyIdx)) + "?, ?, ?, UTC_TIMESTAMP(6))"
	return "INSERT INTO " + p.led + " (" + p.keyCols + ", oneway_version, oneway_hash, oneway_applies, oneway_applied_at) VALUES " +
		repeatJoin(row, n, ", ") + " ON DUPLICATE KEY UPDATE oneway_version = VALUES(oneway_version), oneway_hash = VALUES(oneway_hash)," +
		" oneway_applies = VALUES(oneway_applies), oneway_applied_at = VALUES(oneway_applied_at)"
}

// bind converts a ref's values for binding. raw is scratch space.
func (p *plan) bind(r target.Ref, raw *[][]byte) (change, error) {
	c := change{ref: r, del: isDelete(r.Change), hash: hashOf(r.Change)}
	vals, err := event.Row(r.Change.GetRow(), *raw)
	*raw = vals
	if err == nil && len(vals) != len(p.names) {
		err = fmt.Errorf("%d values for %d columns", len(vals), len(p.names))
	}
	if err != nil { // Decode validates batches; this one was not
		return c, err
	}
	c.vals = make([]any, len(vals))
	for j, v := range vals {
		if c.del && !p.isKey[j] {
			continue // a delete needs its key only
		}
		if c.vals[j], err = p.value(j, v); err != nil {
			return c, err
		}
		c.size += len(v) + 8
	}
	c.key = make([]any, len(p.keyIdx))
	for i, k := range p.keyIdx {
		if c.vals[k] == nil {
			return c, fmt.Errorf("key column %q is NULL", p.names[k])
		}
		c.key[i] = c.vals[k]
	}
	return c, nil
}

// value binds value v of column j. NULL stays NULL.
func (p *plan) value(j int, v []byte) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch p.convs[j] {
	case convInt:
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("column %q: %q is not a 64-bit integer", p.names[j], v)
		}
		return n, nil
	case convBool:
		switch strings.ToLower(string(v)) {
		case "t", "true", "1":
			return int64(1), nil
		case "f", "false", "0":
			return int64(0), nil
		}
		return nil, fmt.Errorf("column %q: %q is not a boolean", p.names[j], v)
	case convBytes:
		if len(v) < 2 || v[0] != '\\' || v[1] != 'x' {
			return nil, fmt.Errorf("column %q: bytea value is not in hex format (\\x…)", p.names[j])
		}
		b := make([]byte, hex.DecodedLen(len(v)-2))
		if _, err := hex.Decode(b, v[2:]); err != nil {
			return nil, fmt.Errorf("column %q: bad bytea hex: %w", p.names[j], err)
		}
		return b, nil
	case convTimestamptz:
		s, err := utcTimestamp(string(v))
		if err != nil {
			return nil, fmt.Errorf("column %q: %w", p.names[j], err)
		}
		return s, nil
	}
	s := string(v)
	if sc := p.scales[j]; sc >= 0 {
		if err := checkScale(s, sc); err != nil {
			return nil, fmt.Errorf("column %q: %w", p.names[j], err)
		}
	}
	return s, nil
}

// checkScale refuses a decimal with more significant fractional digits
// than scale: MySQL would round it, with a mere note.
func checkScale(s string, scale int) error {
	i := strings.IndexByte(s, '.')
	if i < 0 || strings.ContainsAny(s, "eE") {
		return nil
	}
	frac := strings.TrimRight(s[i+1:], "0")
	if len(frac) > scale {
		return fmt.Errorf("%q has %d fractional digits, the column keeps %d: it would be rounded", s, len(frac), scale)
	}
	return nil
}

// utcTimestamp turns a PostgreSQL timestamptz in text form
// ("2024-05-01 10:00:00.5+02") into UTC without offset, as DATETIME takes
// it. Infinity and BC dates have no MySQL form: an error.
func utcTimestamp(s string) (string, error) {
	in := s
	if len(s) > 10 && s[10] == 'T' {
		s = s[:10] + " " + s[11:]
	}
	for _, layout := range []string{"2006-01-02 15:04:05-07", "2006-01-02 15:04:05-07:00", "2006-01-02 15:04:05-07:00:00", "2006-01-02 15:04:05Z"} {
		if ts, err := time.Parse(layout, s); err == nil {
			return ts.UTC().Format("2006-01-02 15:04:05.999999"), nil
		}
	}
	return "", fmt.Errorf("%q is not a timestamp with time zone that MySQL can store", in)
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
// checks and the DDL run under oneway's DDL lock, so writers starting at
// once (other processes too) do not race to create tables.
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
	conn, err := t.db.Conn(ctx)
	if err != nil {
		return nil, classify(fmt.Errorf("prepare table %s: connect: %w", t.name(t.spec.Table), err))
	}
	defer conn.Close()
	var p *plan
	err = withDDLLock(ctx, conn, func() error {
		var err error
		p, err = t.prepareLocked(ctx, conn, b)
		return err
	})
	if err != nil {
		return nil, classify(err)
	}
	t.plans[sig] = p
	return p, nil
}

func (t *Target) prepareLocked(ctx context.Context, conn *sql.Conn, b *onewayv1.Batch) (*plan, error) {
	tbl := t.name(t.spec.Table)
	kind, engine, cols, err := t.tableInfo(ctx, conn, t.spec.Table)
	if err != nil {
		return nil, classify(fmt.Errorf("inspect table %s: %w", tbl, err))
	}
	if kind == "" {
		if !t.spec.CreateTable {
			return nil, errs.Permanentf("target table %s does not exist and create_table is false", tbl)
		}
		if err := t.createTable(ctx, conn, b); err != nil {
			return nil, err
		}
		if kind, engine, cols, err = t.tableInfo(ctx, conn, t.spec.Table); err != nil {
			return nil, classify(fmt.Errorf("inspect table %s: %w", tbl, err))
		}
	}
	if kind != "BASE TABLE" {
		return nil, errs.Permanentf("target %s is a %s, not a table", tbl, strings.ToLower(kind))
	}
	if !strings.EqualFold(engine, "InnoDB") {
		return nil, errs.Permanentf("target table %s uses engine %s: oneway needs a transactional engine (InnoDB) to write rows and ledger atomically", tbl, engine)
	}
	byName := map[string]column{}
	for _, c := range cols {
		byName[strings.ToLower(c.name)] = c
	}
	var owned []column
	for _, c := range b.GetColumns() {
		tc, ok := byName[strings.ToLower(c.GetName())]
		if !ok {
			return nil, errs.Permanentf("target table %s has no column %q (owned by the source); add it or map it", tbl, c.GetName())
		}
		owned = append(owned, tc)
	}
	var soft softMark
	if t.spec.Delete == DeleteSoft {
		sc, ok := byName[strings.ToLower(t.spec.SoftDeleteColumn)]
		if !ok {
			return nil, errs.Permanentf("target table %s has no soft-delete column %q", tbl, t.spec.SoftDeleteColumn)
		}
		soft = softMark{live: "NULL", dead: "UTC_TIMESTAMP(6)"}
		switch strings.ToLower(sc.dataType) {
		case "tinyint", "bit", "bool", "boolean":
			soft = softMark{live: "0", dead: "1"}
		}
	}
	keyIdx := event.KeyIndexes(b)
	var keys []string
	for _, k := range keyIdx {
		keys = append(keys, owned[k].name)
	}
	hasKey, other, err := t.uniqueIndexes(ctx, conn, keys)
	if err != nil {
		return nil, classify(fmt.Errorf("inspect the keys of table %s: %w", tbl, err))
	}
	if !hasKey {
		return nil, errs.Permanentf("target table %s has no primary key or unique index on exactly the key columns (%s)", tbl, strings.Join(keys, ", "))
	}
	for _, k := range keyIdx {
		if c := owned[k]; c.collation.Valid && strings.HasSuffix(strings.ToLower(c.collation.String), "_ci") {
			t.log.Warn("key column has a case-insensitive collation: source keys that differ only in case share one target row",
				"table", t.spec.Table, "column", c.name, "collation", c.collation.String)
		}
	}
	if err := t.ensureLedger(ctx, conn, keyIdx, owned); err != nil {
		return nil, err
	}
	return t.buildPlan(b, owned, keyIdx, other, soft), nil
}

// checkLayout refuses column layouts the target cannot take.
func (t *Target) checkLayout(b *onewayv1.Batch) error {
	for _, c := range b.GetColumns() {
		if err := validName(c.GetName()); err != nil {
			return errs.Permanentf("table %s: column: %w", t.name(t.spec.Table), err)
		}
		if c.GetKey() && strings.HasPrefix(strings.ToLower(c.GetName()), "oneway_") {
			return errs.Permanentf("table %s: key column %q clashes with the ledger's own oneway_* columns", t.name(t.spec.Table), c.GetName())
		}
		if t.spec.Delete == DeleteSoft && strings.EqualFold(c.GetName(), t.spec.SoftDeleteColumn) {
			return errs.Permanentf("table %s: soft-delete column %q is a source column", t.name(t.spec.Table), c.GetName())
		}
	}
	if len(event.KeyIndexes(b)) == 0 {
		return errs.Permanentf("table %s: the batch has no key column", t.name(t.spec.Table))
	}
	return nil
}

// buildPlan renders the statements for the batch's layout.
func (t *Target) buildPlan(b *onewayv1.Batch, owned []column, keyIdx []int, otherUnique bool, soft softMark) *plan {
	cols := b.GetColumns()
	p := &plan{keyIdx: keyIdx, isKey: make([]bool, len(cols)), otherUnique: otherUnique, soft: soft,
		tbl: t.name(t.spec.Table), led: t.name(t.ledger)}
	for _, k := range keyIdx {
		p.isKey[k] = true
	}
	var keyQ, match, names, params, set []string
	for i, c := range cols {
		tc := owned[i]
		cv := sourceConv(c.GetType())
		if cv == convText && p.isKey[i] && isIntType(tc.dataType) {
			cv = convInt // compare keys as integers, not as doubles
		}
		scale := -1
		if cv == convText && strings.EqualFold(tc.dataType, "decimal") && tc.scale.Valid {
			scale = int(tc.scale.Int64)
		}
		p.convs = append(p.convs, cv)
		p.scales = append(p.scales, scale)
		p.names = append(p.names, c.GetName())
		q := quote(tc.name)
		names = append(names, q)
		params = append(params, "?")
		if p.isKey[i] {
			continue
		}
		set = append(set, q+" = VALUES("+q+")")
	}
	for _, k := range keyIdx {
		tc := owned[k]
		q := quote(tc.name)
		keyQ = append(keyQ, q)
		// A string compared with a DECIMAL column is compared as a double.
		param := "?"
		if strings.EqualFold(tc.dataType, "decimal") && tc.precision.Valid && tc.scale.Valid {
			param = fmt.Sprintf("CAST(? AS DECIMAL(%d,%d))", tc.precision.Int64, tc.scale.Int64)
		}
		match = append(match, q+" = "+param)
		p.keyIn, p.keyParam = q, param
	}
	if t.spec.Delete == DeleteSoft {
		// An upsert revives a soft-deleted row.
		sc := quote(t.spec.SoftDeleteColumn)
		names = append(names, sc)
		params = append(params, soft.live)
		set = append(set, sc+" = VALUES("+sc+")")
	}
	p.keyCols = strings.Join(keyQ, ", ")
	p.match = strings.Join(match, " AND ")
	p.insertCols = strings.Join(names, ", ")
	p.rowParams = "(" + strings.Join(params, ", ") + ")"
	if len(set) == 0 {
		set = []string{keyQ[0] + " = " + keyQ[0]} // every column is a key column
	}
	p.onDup = strings.Join(set, ", ")
	p.updateSQL = t.updateSQL(cols, owned, soft) + " WHERE " + p.match
	switch t.spec.Delete {
	case DeleteHard:
		p.delete = "DELETE FROM " + p.tbl
	case DeleteSoft:
		p.delete = "UPDATE " + p.tbl + " SET " + quote(t.spec.SoftDeleteColumn) + " = " + soft.dead
	}
	return p
}

// updateSQL is the row-by-row update of the owned non-key columns (and the
// soft-delete mark), without its WHERE; it binds the non-key values in
// column order.
func (t *Target) updateSQL(cols []*onewayv1.Column, owned []column, soft softMark) string {
	var set []string
	var firstKey string
	for i, c := range cols {
		q := quote(owned[i].name)
		if c.GetKey() {
			if firstKey == "" {
				firstKey = q
			}
			continue
		}
		set = append(set, q+" = ?")
	}
	if t.spec.Delete == DeleteSoft {
		set = append(set, quote(t.spec.SoftDeleteColumn)+" = "+soft.live)
	}
	if len(set) == 0 {
		set = []string{firstKey + " = " + firstKey}
	}
	return "UPDATE " + t.name(t.spec.Table) + " SET " + strings.Join(set, ", ")
}

// tableInfo describes a table: kind is its TABLE_TYPE ("BASE TABLE",
// "VIEW", …) or "" when it does not exist.
func (t *Target) tableInfo(ctx context.Context, conn *sql.Conn, table string) (kind, engine string, cols []column, err error) {
	rows, err := conn.QueryContext(ctx, `SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE, COALESCE(ENGINE, '') FROM information_schema.TABLES
WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?`, t.database, table)
	if err != nil {
		return "", "", nil, err
	}
	for rows.Next() {
		var schema, name, k, e string
		if err := rows.Scan(&schema, &name, &k, &e); err != nil {
			rows.Close()
			return "", "", nil, err
		}
		if t.sameName(schema, t.database) && t.sameName(name, table) {
			kind, engine = k, e
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil || kind == "" {
		return "", "", nil, err
	}
	rows, err = conn.QueryContext(ctx, `SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE,
  NUMERIC_PRECISION, NUMERIC_SCALE, CHARACTER_SET_NAME, COLLATION_NAME
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, t.database, table)
	if err != nil {
		return "", "", nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var schema, name, nullable string
		var c column
		if err := rows.Scan(&schema, &name, &c.name, &c.dataType, &c.colType, &nullable, &c.precision, &c.scale, &c.charset, &c.collation); err != nil {
			return "", "", nil, err
		}
		if t.sameName(schema, t.database) && t.sameName(name, table) {
			c.nullable = nullable == "YES"
			cols = append(cols, c)
		}
	}
	return kind, engine, cols, rows.Err()
}

// sameName compares database or table names as the server does.
func (t *Target) sameName(a, b string) bool {
	if t.foldName {
		return strings.EqualFold(a, b)
	}
	return a == b
}

// uniqueIndexes reports whether the table has a primary key or unique index
// on exactly the key columns (whole columns, any order), and whether it
// has any other unique index.
func (t *Target) uniqueIndexes(ctx context.Context, conn *sql.Conn, keys []string) (hasKey, other bool, err error) {
	rows, err := conn.QueryContext(ctx, `SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX`, t.database, t.spec.Table)
	if err != nil {
		return false, false, err
	}
	defer rows.Close()
	type index struct {
		cols  []string
		exact bool // whole columns, no expressions
	}
	indexes := map[string]*index{}
	var order []string
	for rows.Next() {
		var schema, table, name string
		var col sql.NullString
		var sub sql.NullInt64
		if err := rows.Scan(&schema, &table, &name, &col, &sub); err != nil {
			return false, false, err
		}
		if !t.sameName(schema, t.database) || !t.sameName(table, t.spec.Table) {
			continue
		}
		ix := indexes[name]
		if ix == nil {
			ix = &index{exact: true}
			indexes[name] = ix
			order = append(order, name)
		}
		ix.cols = append(ix.cols, col.String)
		ix.exact = ix.exact && col.Valid && !sub.Valid
	}
	if err := rows.Err(); err != nil {
		return false, false, err
	}
	want := foldSet(keys)
	for _, name := range order {
		ix := indexes[name]
		if !hasKey && ix.exact && foldSet(ix.cols) == want {
			hasKey = true
			continue
		}
		other = true
	}
	return hasKey, other, nil
}

// createTable creates the target table from the batch's columns (types
// mapped by mysqlType), the key as its primary key, plus the soft-delete
// column (DATETIME(6), NULL = live) when deletes are soft.
func (t *Target) createTable(ctx context.Context, conn *sql.Conn, b *onewayv1.Batch) error {
	var defs, keys []string
	for _, c := range b.GetColumns() {
		decl, _, textual := mysqlType(c.GetType(), c.GetKey())
		d := quote(c.GetName()) + " " + decl
		if c.GetKey() {
			if textual {
				d += " CHARACTER SET utf8mb4 COLLATE " + t.binColl
			}
			d += " NOT NULL"
			keys = append(keys, quote(c.GetName()))
		}
		defs = append(defs, d)
	}
	if t.spec.Delete == DeleteSoft {
		defs = append(defs, quote(t.spec.SoftDeleteColumn)+" DATETIME(6) NULL")
	}
	ddl := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (\n  %s,\n  PRIMARY KEY (%s)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
		t.name(t.spec.Table), strings.Join(defs, ",\n  "), strings.Join(keys, ", "))
	if _, err := conn.ExecContext(ctx, ddl); err != nil {
		return classify(fmt.Errorf("create target table %s: %w", t.name(t.spec.Table), err))
	}
	t.log.Info("created target table", "database", t.database, "table", t.spec.Table)
	return nil
}

// ensureLedger creates the ledger table, or checks that an existing one has
// exactly the key columns (with the target's types) and the oneway_*
// columns, keyed by the key:
//
//	oneway_ledger_<scope> (<key columns, typed as in the target>,
//	  oneway_version BIGINT, oneway_hash VARBINARY(32), oneway_applies INT,
//	  oneway_applied_at DATETIME(6), oneway_ord INT,
//	  PRIMARY KEY (<key columns>)) ENGINE=InnoDB
//
// oneway_version is the stream version last applied (0: a placeholder of a
// transaction that has not decided yet), oneway_hash its content hash
// (empty for a delete), oneway_applies how many times the row was really
// written, oneway_applied_at when the version last advanced (UTC),
// oneway_ord scratch space of the transaction that locked the row last.
func (t *Target) ensureLedger(ctx context.Context, conn *sql.Conn, keyIdx []int, owned []column) error {
	led := t.name(t.ledger)
	kind, _, cols, err := t.tableInfo(ctx, conn, t.ledger)
	if err != nil {
		return classify(fmt.Errorf("inspect ledger %s: %w", led, err))
	}
	own := []string{"oneway_version", "oneway_hash", "oneway_applies", "oneway_applied_at", "oneway_ord"}
	if kind != "" {
		have := map[string]column{}
		var names []string
		for _, c := range cols {
			have[strings.ToLower(c.name)] = c
			names = append(names, c.name)
		}
		want := append([]string{}, own...)
		for _, k := range keyIdx {
			want = append(want, owned[k].name)
			lc, ok := have[strings.ToLower(owned[k].name)]
			if ok && !strings.EqualFold(lc.decl(), owned[k].decl()) {
				return errs.Permanentf("ledger %s does not match target table %s: key column %q is %s there, %s in the table; drop the ledger to rebuild it",
					led, t.name(t.spec.Table), owned[k].name, lc.decl(), owned[k].decl())
			}
		}
		if foldSet(names) != foldSet(want) {
			return errs.Permanentf("ledger %s does not match target table %s: it has columns (%s), it needs (%s); drop the ledger to rebuild it",
				led, t.name(t.spec.Table), strings.Join(names, ", "), strings.Join(want, ", "))
		}
		return nil
	}
	var defs, keyQ []string
	for _, k := range keyIdx {
		defs = append(defs, quote(owned[k].name)+" "+owned[k].decl()+" NOT NULL")
		keyQ = append(keyQ, quote(owned[k].name))
	}
	note := fmt.Sprintf("oneway effect-once ledger of pipeline %s, target %s, table %s", t.spec.Pipeline, t.spec.Target, t.spec.Table)
	ddl := fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
  %s,
  oneway_version BIGINT NOT NULL, oneway_hash VARBINARY(32) NOT NULL,
  oneway_applies INT NOT NULL DEFAULT 1, oneway_applied_at DATETIME(6) NOT NULL,
  oneway_ord INT NOT NULL DEFAULT 0,
  PRIMARY KEY (%s)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT=%s`, led, strings.Join(defs, ",\n  "), strings.Join(keyQ, ", "), quoteLiteral(note))
	if _, err := conn.ExecContext(ctx, ddl); err != nil {
		return classify(fmt.Errorf("create ledger %s: %w", led, err))
	}
	return nil
}

// validName checks a MySQL identifier: 1 to 64 characters of the Basic
// Multilingual Plane, no NUL, no trailing space.
func validName(s string) error {
	if s == "" {
		return fmt.Errorf("empty identifier")
	}
	if !utf8.ValidString(s) || utf8.RuneCountInString(s) > 64 || strings.HasSuffix(s, " ") {
		return fmt.Errorf("identifier %q: MySQL names are 1 to 64 characters, without trailing spaces", s)
	}
	for _, r := range s {
		if r == 0 || r > 0xFFFF {
			return fmt.Errorf("identifier %q: MySQL names cannot hold NUL or characters beyond U+FFFF", s)
		}
	}
	return nil
}

// quote quotes a MySQL identifier.
func quote(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// quoteLiteral quotes s as a MySQL string literal (backslashes escaped:
// the session does not set NO_BACKSLASH_ESCAPES).
func quoteLiteral(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", "''", "\x00", `\0`).Replace(s) + "'"
}

// foldSet renders a set of identifiers canonically (folded, sorted,
// NUL-separated) for comparison; MySQL column names ignore case.
func foldSet(names []string) string {
	f := make([]string, len(names))
	for i, n := range names {
		f[i] = strings.ToLower(n)
	}
	sort.Strings(f)
	return strings.Join(f, "\x00")
}
