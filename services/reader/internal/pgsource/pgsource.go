// Package pgsource reads a PostgreSQL table for the reader: key-ordered
// snapshot pages, commit-safe watermark pages (with an optional delete
// feed), and full or windowed scans in a byte order that Go can compare
// (for the synthetic and window patterns).
package pgsource

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/source"
)

// Row is one record's owned values as PostgreSQL text; nil is NULL. Rows
// read by a Source whose Spec asks for more than the owned values carry
// extra values after them (see the accessors: IsDeleted, Epoch, …); Owned
// returns the owned part.
type Row = source.Row

// Cursor is a position in watermark order (see source.Cursor).
type Cursor = source.Cursor

// Bound is a commit-safe upper bound of the watermark (see source.Bound).
type Bound = source.Bound

// Spec says what to read.
type Spec struct {
	Table           pgconn.Table
	Key             []string
	Columns         []string // owned columns; empty = all
	WatermarkColumn string
	// Marks says which kinds of watermark column are accepted:
	// MarksPrecise (the default: a timestamp set by the database, or a
	// number set from a sequence) or MarksCoarse (timestamps and dates,
	// read with an overlap by watermark_cdc).
	Marks Marks
	// Epoch adds each row's watermark as seconds since 1970 (Epoch), for
	// watermark_cdc's overlap bookkeeping.
	Epoch bool
	// SoftDeleteColumn marks deleted rows: set (not NULL; true for a
	// boolean) means deleted. It need not be owned.
	SoftDeleteColumn string
	// DeleteTable, when set, holds one row per deleted record: the key
	// columns (same names and types as the source's) and DeletePointer (the
	// same type as the watermark column). Watermark pages then merge it in,
	// in (watermark, key) order, deletes first on ties.
	DeleteTable   pgconn.Table
	DeletePointer string
	// WindowColumn is the date or timestamp column of the window pattern.
	WindowColumn string
}

// Marks is the kind of watermark column a pattern accepts.
type Marks int

const (
	// MarksPrecise accepts timestamps (set by the database) and integer or
	// numeric columns (set from a sequence).
	MarksPrecise Marks = iota
	// MarksCoarse accepts timestamps and dates.
	MarksCoarse
)

// markKind is how a watermark column is bounded.
type markKind int

const (
	markNone    markKind = iota
	markTime             // timestamp with or without time zone
	markDate             // date (coarse)
	markNumeric          // smallint, integer, bigint, numeric
)

// Source reads one table. It is safe for concurrent use.
type Source struct {
	pool    *pgxpool.Pool
	table   pgconn.Table
	cols    []pgconn.Column // owned, in read order
	keyIdx  []int
	keyInt  []bool // key column i orders natively as an integer
	wmIdx   int
	wmType  string
	wmKind  markKind
	keyList string // quoted key columns, comma-separated
	colList string
	keyNull bool // a key column is nullable
	log     *slog.Logger

	// Extra values after the owned ones, -1 when absent.
	delIdx   int // "t" when the row is deleted (soft delete, delete feed)
	epochIdx int
	markIdx  int // the watermark of a merged row (delete rows carry the pointer)
	kindIdx  int // "0" for a delete-feed row, "1" for a table row
	ordIdx   int // first order column of a Scan row
	extras   int

	softDel string // SQL of the deleted flag for a table row
	delTab  pgconn.Table
	delPtr  string
	winCol  string

	warnOnce sync.Once
	samples  samples
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
	s := &Source{pool: pool, table: spec.Table, cols: cols, wmIdx: -1, log: log,
		delIdx: -1, epochIdx: -1, markIdx: -1, kindIdx: -1, ordIdx: -1}
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
		s.keyInt = append(s.keyInt, isInteger(cols[i].Type))
		if !cols[i].NotNull {
			s.keyNull = true
		}
	}
	if spec.WatermarkColumn != "" {
		if err := s.openWatermark(ctx, spec, idx); err != nil {
			return nil, err
		}
	}
	byName := map[string]pgconn.Column{}
	for _, c := range all {
		byName[c.Name] = c
	}
	if spec.SoftDeleteColumn != "" {
		c, ok := byName[spec.SoftDeleteColumn]
		if !ok {
			return nil, errs.Permanentf("source table %s: soft-delete column %q does not exist", spec.Table, spec.SoftDeleteColumn)
		}
		if c.Type == "boolean" {
			s.softDel = fmt.Sprintf("coalesce(%s, false)", pgconn.Quote(c.Name))
		} else {
			s.softDel = fmt.Sprintf("(%s IS NOT NULL)", pgconn.Quote(c.Name))
		}
	}
	if spec.DeleteTable != (pgconn.Table{}) {
		if s.wmIdx < 0 {
			return nil, errs.Permanentf("source table %s: a delete feed table needs a watermark column", spec.Table)
		}
		if err := s.openDeleteTable(ctx, spec); err != nil {
			return nil, err
		}
	}
	if spec.WindowColumn != "" {
		c, ok := byName[spec.WindowColumn]
		if !ok {
			return nil, errs.Permanentf("source table %s: window column %q does not exist", spec.Table, spec.WindowColumn)
		}
		switch kindOf(c.Type) {
		case markDate, markTime:
		default:
			return nil, errs.Permanentf("source table %s: window column %q has type %s; the window pattern needs a date or timestamp column",
				spec.Table, spec.WindowColumn, c.Type)
		}
		s.winCol = c.Name
	}
	n := len(cols)
	if s.softDel != "" || s.delTab != (pgconn.Table{}) {
		s.delIdx, n = n, n+1
	}
	if spec.Epoch {
		if s.wmKind != markTime && s.wmKind != markDate {
			return nil, errs.Permanentf("source table %s: the watermark column %q must be a date or timestamp to read it with an overlap", spec.Table, spec.WatermarkColumn)
		}
		s.epochIdx, n = n, n+1
	}
	if s.delTab != (pgconn.Table{}) {
		s.markIdx, s.kindIdx, n = n, n+1, n+2
	}
	s.ordIdx = n
	s.extras = n - len(cols)
	s.keyList = pgconn.QuoteList("", spec.Key)
	s.colList = pgconn.QuoteList("", names)
	return s, nil
}

func (s *Source) openWatermark(ctx context.Context, spec Spec, idx map[string]int) error {
	i, ok := idx[spec.WatermarkColumn]
	if !ok {
		return errs.Permanentf("source table %s: watermark column %q is not among the owned columns", spec.Table, spec.WatermarkColumn)
	}
	s.wmIdx, s.wmType = i, s.cols[i].Type
	s.wmKind = kindOf(s.wmType)
	switch {
	case s.wmKind == markTime && strings.HasSuffix(s.wmType, "without time zone"):
		s.log.Warn("watermark column has no time zone: the commit-safe bound is computed in UTC, so the applications must write it in UTC (or use timestamptz)",
			"table", spec.Table.String(), "column", spec.WatermarkColumn)
	case s.wmKind == markTime:
	case s.wmKind == markDate && spec.Marks == MarksCoarse:
	case s.wmKind == markDate:
		return errs.Permanentf("source table %s: watermark column %q is a date: many rows share a value and late ones would be skipped; use the watermark_cdc pattern (it reads again with an overlap and filters by hash)",
			spec.Table, spec.WatermarkColumn)
	case s.wmKind == markNumeric && spec.Marks == MarksPrecise:
	case s.wmKind == markNumeric:
		return errs.Permanentf("source table %s: watermark column %q has type %s; the watermark_cdc pattern needs a date or timestamp column (use the watermark pattern for a number set from a sequence)",
			spec.Table, spec.WatermarkColumn, s.wmType)
	default:
		return errs.Permanentf("source table %s: watermark column %q has type %s; a watermark needs a timestamp column, or a number set from a sequence",
			spec.Table, spec.WatermarkColumn, s.wmType)
	}
	if !s.cols[i].NotNull {
		s.log.Warn("watermark column is nullable: rows where it is NULL are never read; declare it NOT NULL",
			"table", spec.Table.String(), "column", spec.WatermarkColumn)
	}
	indexed, err := leadingIndex(ctx, s.pool, spec.Table, spec.WatermarkColumn)
	if err != nil {
		return err
	}
	if !indexed {
		s.log.Warn("no index starts with the watermark column: every poll scans the whole table; create one",
			"table", spec.Table.String(), "sql", fmt.Sprintf("CREATE INDEX ON %s (%s, %s)", spec.Table.Quoted(),
				pgconn.Quote(spec.WatermarkColumn), pgconn.QuoteList("", spec.Key)))
	}
	return nil
}

// openDeleteTable checks the deleted-records table: the key columns and the
// pointer exist with the source's types.
func (s *Source) openDeleteTable(ctx context.Context, spec Spec) error {
	dt := spec.DeleteTable
	all, found, err := pgconn.Columns(ctx, s.pool, dt)
	if err != nil {
		return err
	}
	if !found {
		return errs.Permanentf("delete feed table %s does not exist (or the role cannot see it)", dt)
	}
	byName := map[string]pgconn.Column{}
	for _, c := range all {
		byName[c.Name] = c
	}
	for _, j := range s.keyIdx {
		k := s.cols[j]
		c, ok := byName[k.Name]
		switch {
		case !ok:
			return errs.Permanentf("delete feed table %s has no key column %q", dt, k.Name)
		case c.Type != k.Type:
			return errs.Permanentf("delete feed table %s: key column %q has type %s, the source's has %s", dt, k.Name, c.Type, k.Type)
		}
	}
	c, ok := byName[spec.DeletePointer]
	switch {
	case !ok:
		return errs.Permanentf("delete feed table %s has no pointer column %q", dt, spec.DeletePointer)
	case c.Type != s.wmType:
		return errs.Permanentf("delete feed table %s: pointer column %q has type %s; it must have the watermark column's type (%s) to be read in the same order",
			dt, spec.DeletePointer, c.Type, s.wmType)
	}
	indexed, err := leadingIndex(ctx, s.pool, dt, spec.DeletePointer)
	if err != nil {
		return err
	}
	if !indexed {
		s.log.Warn("no index starts with the delete feed's pointer column: every poll scans the whole table; create one",
			"table", dt.String(), "sql", fmt.Sprintf("CREATE INDEX ON %s (%s, %s)", dt.Quoted(),
				pgconn.Quote(spec.DeletePointer), pgconn.QuoteList("", spec.Key)))
	}
	s.delTab, s.delPtr = dt, spec.DeletePointer
	return nil
}

func leadingIndex(ctx context.Context, pool *pgxpool.Pool, t pgconn.Table, col string) (bool, error) {
	var indexed bool
	err := pool.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = to_regclass($1) AND a.attname = $2)`, t.Quoted(), col).Scan(&indexed)
	if err != nil {
		return false, pgconn.Classify(fmt.Errorf("check indexes of %s: %w", t, err))
	}
	return indexed, nil
}

func kindOf(typ string) markKind {
	switch {
	case strings.HasPrefix(typ, "timestamp") && (strings.HasSuffix(typ, " with time zone") || strings.HasSuffix(typ, " without time zone")):
		return markTime // also timestamp(n)
	case typ == "date":
		return markDate
	case isInteger(typ), typ == "numeric", strings.HasPrefix(typ, "numeric("):
		return markNumeric
	}
	return markNone
}

func isInteger(typ string) bool {
	return typ == "smallint" || typ == "integer" || typ == "bigint"
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

// KeyIndexes returns the positions of the key columns in a Row, in key
// order.
func (s *Source) KeyIndexes() []int { return s.keyIdx }

// KeyOf returns the key texts of a row.
func (s *Source) KeyOf(r Row) []string {
	return source.KeyTexts(r, s.keyIdx)
}

// WatermarkOf returns the watermark text of a row (for a delete-feed row,
// its pointer).
func (s *Source) WatermarkOf(r Row) string {
	if s.markIdx >= 0 && s.markIdx < len(r) && r[s.markIdx] != nil {
		return string(r[s.markIdx])
	}
	return string(r[s.wmIdx])
}

// Owned returns the owned values of a row, without the extras.
func (s *Source) Owned(r Row) Row { return r[:len(s.cols)] }

// IsDeleted reports whether a row stands for a deleted record: its
// soft-delete column is set, or it came from the delete feed.
func (s *Source) IsDeleted(r Row) bool {
	return s.delIdx >= 0 && len(r) > s.delIdx && string(r[s.delIdx]) == "t"
}

// FromDeleteFeed reports whether a watermark row came from the delete
// feed table (it then sorts before a table row of the same watermark and
// key).
func (s *Source) FromDeleteFeed(r Row) bool {
	return s.kindIdx >= 0 && len(r) > s.kindIdx && string(r[s.kindIdx]) == "0"
}

// Epoch returns a watermark row's watermark in seconds since 1970 (only
// when the Spec asked for Epoch; 0 otherwise).
func (s *Source) Epoch(r Row) float64 {
	if s.epochIdx < 0 || len(r) <= s.epochIdx || r[s.epochIdx] == nil {
		return 0
	}
	return parseFloat(r[s.epochIdx])
}

// HasWatermark reports whether the source has a watermark column, and
// whether it is a number (bounded by samples rather than by time).
func (s *Source) HasWatermark() (has, numeric bool) {
	return s.wmIdx >= 0, s.wmKind == markNumeric
}

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
		s.warnHidden(lookbackSeconds)
		err := s.pool.QueryRow(ctx, "SELECT (now() - make_interval(secs => $1))::text", lookbackSeconds).Scan(&bound)
		if err != nil {
			return "", pgconn.Classify(fmt.Errorf("compute watermark bound on %s: %w", s.table, err))
		}
	}
	return bound, nil
}

func (s *Source) warnHidden(lookbackSeconds float64) {
	s.warnOnce.Do(func() {
		s.log.Warn("cannot see other sessions' transactions; the watermark bound uses now() minus lookback; grant pg_read_all_stats for a commit-safe bound",
			"table", s.table.String(), "lookback_seconds", lookbackSeconds)
	})
}

// Bound returns the commit-safe bound of the watermark column. For
// timestamps it is SafeBound. A numeric watermark (a number a sequence
// sets) is bounded by samples of max(column): each call records
// (clock_timestamp(), max) and returns the newest sample taken before every
// transaction still open began. A sequence hands out increasing numbers, so
// every number at or below that sample was taken by a transaction that has
// ended: rows at or below it are final. Until such a sample exists the
// bound is not Ready.
func (s *Source) Bound(ctx context.Context, lookbackSeconds float64) (Bound, error) {
	if s.wmKind != markNumeric {
		b, err := s.SafeBound(ctx, lookbackSeconds)
		return Bound{Value: b}, err
	}
	var at, oldest time.Time
	var maxv *string
	var hidden bool
	err := s.pool.QueryRow(ctx, fmt.Sprintf(`
SELECT clock_timestamp(), (SELECT max(%s) FROM %s)::text,
       least(now(), (SELECT min(xact_start) FROM pg_stat_activity
                      WHERE datname = current_database() AND pid <> pg_backend_pid()
                        AND xact_start IS NOT NULL)),
       EXISTS (SELECT 1 FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                  AND backend_type = 'client backend' AND query = '<insufficient privilege>')`,
		pgconn.Quote(s.cols[s.wmIdx].Name), s.table.Quoted())).Scan(&at, &maxv, &oldest, &hidden)
	if err != nil {
		return Bound{}, pgconn.Classify(fmt.Errorf("compute watermark bound on %s: %w", s.table, err))
	}
	if hidden {
		s.warnHidden(lookbackSeconds)
		oldest = at.Add(-time.Duration(lookbackSeconds * float64(time.Second)))
	}
	v := ""
	if maxv != nil {
		v = *maxv
	}
	return Bound{Value: s.samples.bound(at, v, oldest), Inclusive: true}, nil
}

// samples keeps the recent (time, max) samples of a numeric watermark.
type samples struct {
	mu   sync.Mutex
	list []sample
}

type sample struct {
	at  time.Time
	max string // "" for an empty table
}

// maxSamples bounds the history while a transaction stays open for long.
const maxSamples = 100_000

// bound records a sample and returns the max of the newest sample taken at
// or before oldest, dropping the samples before it.
func (sm *samples) bound(at time.Time, max string, oldest time.Time) string {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	if len(sm.list) < maxSamples {
		sm.list = append(sm.list, sample{at, max})
	} else {
		sm.list[len(sm.list)-1] = sample{at, max}
	}
	best := -1
	for i, x := range sm.list {
		if x.at.After(oldest) {
			break
		}
		best = i
	}
	if best < 0 {
		return ""
	}
	sm.list = sm.list[best:]
	return sm.list[0].max
}

// SnapshotPage returns up to limit rows with key greater than after (nil =
// from the start), in key order.
func (s *Source) SnapshotPage(ctx context.Context, after []string, limit int) ([]Row, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s%s FROM %s", s.colList, s.extraCols(false), s.table.Quoted())
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

// extraCols is the SQL of the extra values of a table row, each named
// after its position (a UNION takes its names from the first branch): the
// deleted flag, the epoch (watermark rows only; NULL otherwise) and the
// mark and kind of a merged watermark read.
func (s *Source) extraCols(watermark bool) string {
	var b strings.Builder
	add := func(i int, sql string) { fmt.Fprintf(&b, ", %s AS %s", sql, colName(i)) }
	if s.delIdx >= 0 {
		if s.softDel != "" {
			add(s.delIdx, s.softDel)
		} else {
			add(s.delIdx, "false")
		}
	}
	if s.epochIdx >= 0 {
		// Every table row carries its watermark's epoch, snapshot rows too:
		// watermark_cdc remembers what its snapshot emitted in the overlap
		// zone, so the first poll does not emit it again.
		add(s.epochIdx, fmt.Sprintf("extract(epoch from %s)::float8", pgconn.Quote(s.cols[s.wmIdx].Name)))
	}
	if s.markIdx >= 0 {
		if watermark {
			add(s.markIdx, pgconn.Quote(s.cols[s.wmIdx].Name)+"::text")
			add(s.kindIdx, "1")
		} else {
			add(s.markIdx, "NULL::text")
			add(s.kindIdx, "NULL::integer")
		}
	}
	return b.String()
}

// WatermarkPage returns up to limit rows ordered by (watermark, key) after
// position (wm, key) and strictly below bound. key nil means "watermark >=
// wm" (the first page after a snapshot).
func (s *Source) WatermarkPage(ctx context.Context, wm string, key []string, bound string, limit int) ([]Row, error) {
	return s.WatermarkRows(ctx, Cursor{Mark: wm, Key: key}, Bound{Value: bound}, limit)
}

// CursorOf returns the cursor of a row read by WatermarkRows.
func (s *Source) CursorOf(r Row) Cursor {
	return Cursor{Mark: s.WatermarkOf(r), Key: s.KeyOf(r), Deleted: s.FromDeleteFeed(r)}
}

// WatermarkRows returns up to limit rows after c and below bound (at or
// below an Inclusive one), in (watermark, key) order; with a delete feed,
// its rows are merged in (key values, NULL elsewhere, IsDeleted true),
// before a table row of the same watermark and key.
func (s *Source) WatermarkRows(ctx context.Context, c Cursor, bound Bound, limit int) ([]Row, error) {
	wmCol := pgconn.Quote(s.cols[s.wmIdx].Name)
	lt := "<"
	if bound.Inclusive {
		lt = "<="
	}
	// A bound is a timestamp with time zone for time columns; a date
	// column compares with it as a timestamp (a date is its midnight).
	boundType := s.wmType
	if s.wmKind == markDate {
		boundType = "timestamp with time zone"
	}
	args := []any{bound.Value, c.Mark}
	for _, k := range c.Key {
		args = append(args, k)
	}
	// after is the condition "(col, key) is after the cursor" for a branch
	// whose rows sort at kind (0 delete feed, 1 table) among equal keys.
	after := func(col string, kind int) string {
		if c.Key == nil {
			return fmt.Sprintf("%s >= $2::text::%s", col, s.wmType)
		}
		op := ">"
		if kind == 1 && c.Deleted {
			op = ">=" // the table row of the cursor's key sorts after its delete
		}
		return fmt.Sprintf("(%s, %s) %s ($2::text::%s, %s)", col, s.keyList, op, s.wmType, s.params(3, s.keyIdx))
	}
	table := fmt.Sprintf("SELECT %s%s FROM %s WHERE %s %s $1::text::%s AND %s ORDER BY %s, %s LIMIT %d",
		s.colList, s.extraCols(true), s.table.Quoted(), wmCol, lt, boundType, after(wmCol, 1), wmCol, s.keyList, limit)
	if s.delTab == (pgconn.Table{}) {
		return s.query(ctx, table, args)
	}
	// The delete feed: key values, NULL for the other columns.
	isKey := map[int]bool{}
	for _, j := range s.keyIdx {
		isKey[j] = true
	}
	var sel []string
	for i, col := range s.cols {
		if isKey[i] {
			sel = append(sel, "d."+pgconn.Quote(col.Name))
		} else {
			sel = append(sel, fmt.Sprintf("NULL::%s", col.Type))
		}
	}
	ptr := "d." + pgconn.Quote(s.delPtr)
	sel = append(sel, "true")
	if s.epochIdx >= 0 {
		sel = append(sel, fmt.Sprintf("extract(epoch from %s)::float8", ptr))
	}
	sel = append(sel, ptr+"::text", "0")
	// A delete of a key that is in the table again is obsolete: the row is
	// (or was) read with its current state. Dropping it keeps a re-insert
	// whose watermark is older than the delete's (transactions start and
	// commit in different orders) from being deleted after it.
	var same []string
	for _, k := range s.keyNames() {
		same = append(same, fmt.Sprintf("s.%[1]s = d.%[1]s", pgconn.Quote(k)))
	}
	deletes := fmt.Sprintf("SELECT %s FROM %s d WHERE %s %s $1::text::%s AND %s AND NOT EXISTS (SELECT 1 FROM %s s WHERE %s) ORDER BY %s, %s LIMIT %d",
		strings.Join(sel, ", "), s.delTab.Quoted(), ptr, lt, boundType, after(ptr, 0), s.table.Quoted(), strings.Join(same, " AND "),
		ptr, s.keyList, limit)
	// The outer order: the mark as the column's type, then key, then kind.
	q := fmt.Sprintf("SELECT * FROM ((%s) UNION ALL (%s)) u ORDER BY u.%s::%s, %s, u.%s LIMIT %d",
		table, deletes, colName(s.markIdx), s.wmType, pgconn.QuoteList("u.", s.keyNames()), colName(s.kindIdx), limit)
	return s.query(ctx, q, args)
}

// colName is the alias of extra column i in a merged read.
func colName(i int) string { return fmt.Sprintf("oneway_x%d", i) }

func (s *Source) keyNames() []string {
	out := make([]string, len(s.keyIdx))
	for i, j := range s.keyIdx {
		out[i] = s.cols[j].Name
	}
	return out
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
		out = append(out, copyRow(rows.RawValues()))
	}
	if err := rows.Err(); err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read %s: %w", s.table, err))
	}
	return out, nil
}

// copyRow copies raw values with one allocation: RawValues is only valid
// until the next row.
func copyRow(raw [][]byte) Row {
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
	return r
}

func parseFloat(b []byte) float64 {
	f, _ := strconv.ParseFloat(string(b), 64)
	return f
}
