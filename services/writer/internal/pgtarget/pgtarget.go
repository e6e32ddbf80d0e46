// Package pgtarget applies change batches to a PostgreSQL table,
// set-based and effect-once.
//
// Effect-once rests on a per-key ledger in the target database: one table
// per target table, <ledger_schema>.ledger_<scope>, keyed by the target's own
// key columns (typed, so its index costs what the target's does) and holding
// the last applied version and content hash of each key, written in the same
// statement (so the same transaction) as the rows. A change is
// applied only when its version is newer than the ledger's for that key, and
// the row is written only when its content hash differs from what was last
// applied. Because INSERT … ON CONFLICT DO UPDATE locks the ledger row and
// re-checks the version against the latest committed value, two writers
// racing on one key serialise: the older change loses, whichever commits
// first. Any writer may therefore take any message, in any order.
//
// Only owned columns are written: other target columns keep their values
// (new rows get their defaults) and rows whose keys never come from the
// source (orphans) are never touched.
package pgtarget

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/ledgerdb"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// DeletePolicy says what a source delete does to the target row.
type DeletePolicy string

const (
	DeleteHard DeletePolicy = "hard"
	DeleteSoft DeletePolicy = "soft"
	DeleteNone DeletePolicy = "none"
)

// Spec configures a Target.
type Spec struct {
	Pipeline, Target string
	Table            pgconn.Table
	CreateTable      bool
	Delete           DeletePolicy
	SoftDeleteColumn string
	LedgerSchema     string
	// Staged opens the target for staged mode (target.Reporter): a newer
	// change is written when the row's owned values differ from it, not
	// when its hash differs from the one last applied, and Apply reports
	// in Result.Applied what each newer change left in the table, as the
	// table stored it (RETURNING, after triggers).
	Staged bool
}

// Target applies batches to one table. Safe for concurrent use.
type Target struct {
	pool   *pgxpool.Pool
	spec   Spec
	log    *slog.Logger
	scope  int32
	ledger pgconn.Table

	mu    sync.Mutex
	plans map[string]*plan // by column signature
	// bulkOffUntil disables the bulk path for a while after it met an
	// existing key, so a reload over a full target does not pay twice.
	bulkOffUntil  atomic.Int64
	bulkConflicts atomic.Int32
	// keyNames and owned are the key columns and the owned columns of
	// the layouts prepared so far (under mu), for a shadow's swap.
	keyNames []string
	owned    map[string]bool
}

// Open registers this target in the ledger catalog,
// <ledger_schema>.ledger_scopes, and returns a Target. The ledger table
// itself is created on the first batch, when the key's types are known.
func Open(ctx context.Context, pool *pgxpool.Pool, spec Spec, log *slog.Logger) (*Target, error) {
	t := &Target{pool: pool, spec: spec, log: log, plans: map[string]*plan{}}
	err := ledgerdb.WithDDLLock(ctx, pool, func(tx pgx.Tx) error {
		var err error
		t.scope, err = ledgerdb.RegisterScope(ctx, tx, spec.LedgerSchema, spec.Pipeline, spec.Target, spec.Table.String())
		return err
	})
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("prepare ledger catalog in schema %s: %w", spec.LedgerSchema, err))
	}
	t.ledger = pgconn.Table{Schema: spec.LedgerSchema, Name: fmt.Sprintf("ledger_%d", t.scope)}
	return t, nil
}

// Ledger is this target's ledger table.
func (t *Target) Ledger() pgconn.Table { return t.ledger }

// Scope is this target's id in the ledger.
func (t *Target) Scope() int32 { return t.scope }

// plan is the SQL for one column layout.
type plan struct {
	ledSQL string // fences the changes in the ledger, returns the ones to write
	rowSQL string // writes those changes to the target
	// noBulk keeps the batches of this layout off the bulk path: in staged
	// mode on a table with BEFORE INSERT row triggers, whose effect only
	// the fenced path's RETURNING sees.
	noBulk     bool
	keyIdx     []int
	softIsBool bool
	copyTarget string // COPY statements for the bulk path
	copyLedger string
	copySoft   string // COPY text of the soft-delete column ("" = none)
}

// prepare checks (or creates) the target table for the batch's columns and
// builds the apply statement. Cached per column layout.
func (t *Target) prepare(ctx context.Context, b *onewayv1.Batch) (*plan, error) {
	var sig strings.Builder
	for _, c := range b.GetColumns() {
		fmt.Fprintf(&sig, "%s\x00%s\x00%v\x00", c.GetName(), c.GetType(), c.GetKey())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.plans[sig.String()]; ok {
		return p, nil
	}
	cols, found, err := pgconn.Columns(ctx, t.pool, t.spec.Table)
	if err != nil {
		return nil, err
	}
	if !found {
		if !t.spec.CreateTable {
			return nil, errs.Permanentf("target table %s does not exist and create_table is false", t.spec.Table)
		}
		if err := t.createTable(ctx, b); err != nil {
			return nil, err
		}
		if cols, _, err = pgconn.Columns(ctx, t.pool, t.spec.Table); err != nil {
			return nil, err
		}
	}
	byName := map[string]pgconn.Column{}
	for _, c := range cols {
		byName[c.Name] = c
	}
	for _, c := range b.GetColumns() {
		if _, ok := byName[c.GetName()]; !ok {
			return nil, errs.Permanentf("target table %s has no column %q (owned by the source); add it or map it", t.spec.Table, c.GetName())
		}
	}
	keyIdx := event.KeyIndexes(b)
	var keyNames []string
	for _, k := range keyIdx {
		keyNames = append(keyNames, b.GetColumns()[k].GetName())
	}
	if err := t.checkUnique(ctx, keyNames); err != nil {
		return nil, err
	}
	keyTypes := make([]string, len(keyIdx))
	for i, k := range keyIdx {
		keyTypes[i] = byName[keyNames[i]].Type
		_ = k
	}
	if err := t.ensureLedger(ctx, keyNames, keyTypes); err != nil {
		return nil, err
	}
	p := &plan{keyIdx: keyIdx}
	if t.spec.Delete == DeleteSoft {
		sc, ok := byName[t.spec.SoftDeleteColumn]
		if !ok {
			return nil, errs.Permanentf("target table %s has no soft-delete column %q", t.spec.Table, t.spec.SoftDeleteColumn)
		}
		p.softIsBool = sc.Type == "boolean"
	}
	p.ledSQL, p.rowSQL = t.buildSQL(b, byName, keyIdx, p.softIsBool)
	if t.spec.Staged {
		if p.noBulk, err = t.hasInsertTriggers(ctx); err != nil {
			return nil, err
		}
	}
	copyCols := event.ColumnNames(b)
	if t.spec.Delete == DeleteSoft {
		// The fenced path writes false (or NULL) there; so must COPY.
		copyCols = append(copyCols, t.spec.SoftDeleteColumn)
		p.copySoft = `\N`
		if p.softIsBool {
			p.copySoft = "f"
		}
	}
	p.copyTarget = fmt.Sprintf("COPY %s (%s) FROM STDIN", t.spec.Table.Quoted(), pgconn.QuoteList("", copyCols))
	p.copyLedger = fmt.Sprintf("COPY %s (%s, oneway_version, oneway_hash, oneway_changed, oneway_applies) FROM STDIN",
		t.ledger.Quoted(), pgconn.QuoteList("", keyNames))
	t.keyNames = keyNames
	if t.owned == nil {
		t.owned = map[string]bool{}
	}
	for _, c := range b.GetColumns() {
		t.owned[c.GetName()] = true
	}
	t.plans[sig.String()] = p
	return p, nil
}

func (t *Target) createTable(ctx context.Context, b *onewayv1.Batch) error {
	var defs, keys []string
	for _, c := range b.GetColumns() {
		if err := validType(c.GetType()); err != nil {
			return errs.Permanentf("create target table %s: column %q: %w", t.spec.Table, c.GetName(), err)
		}
		d := pgconn.Quote(c.GetName()) + " " + c.GetType()
		if c.GetKey() {
			d += " NOT NULL"
			keys = append(keys, pgconn.Quote(c.GetName()))
		}
		defs = append(defs, d)
	}
	sql := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (%s, PRIMARY KEY (%s))",
		t.spec.Table.Quoted(), strings.Join(defs, ", "), strings.Join(keys, ", "))
	err := ledgerdb.WithDDLLock(ctx, t.pool, func(tx pgx.Tx) error {
		// The schema too: a target schema named like the source's may not
		// exist yet.
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgconn.Quote(t.spec.Table.Schema)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, sql)
		return err
	})
	if err != nil {
		return pgconn.Classify(fmt.Errorf("create target table %s: %w", t.spec.Table, err))
	}
	t.log.Info("created target table", "table", t.spec.Table.String())
	return nil
}

// validType accepts a type name as format_type() prints it: letters,
// digits, spaces, underscores, dots, quotes for quoted type names,
// parentheses, commas and brackets. It keeps a batch from smuggling SQL
// into CREATE TABLE or a cast.
func validType(s string) error {
	if s == "" || len(s) > 200 || strings.Contains(s, "--") || strings.Contains(s, "/*") {
		return fmt.Errorf("unsupported type %q", s)
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune(` _."(),[]`, r):
		default:
			return fmt.Errorf("unsupported type %q", s)
		}
	}
	return nil
}

func (t *Target) checkUnique(ctx context.Context, keys []string) error {
	var ok bool
	err := t.pool.QueryRow(ctx, `
SELECT EXISTS (
  SELECT 1 FROM pg_index i
  WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate AND i.indisvalid
    AND i.indpred IS NULL AND i.indexprs IS NULL
    AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE "C") FROM pg_attribute a
         WHERE a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1])) =
        (SELECT array_agg(k ORDER BY k COLLATE "C") FROM unnest($2::text[]) k))`,
		t.spec.Table.Quoted(), keys).Scan(&ok)
	if err != nil {
		return pgconn.Classify(fmt.Errorf("check key of %s: %w", t.spec.Table, err))
	}
	if !ok {
		return errs.Permanentf("target table %s has no primary key or unique index on the key columns (%s)", t.spec.Table, strings.Join(keys, ", "))
	}
	return nil
}

// lengthTyped matches the types whose explicit cast cuts a value to the
// declared length without an error (character varying(n), character(n),
// bit varying(n), bit(n), and arrays of them).
var lengthTyped = regexp.MustCompile(`^(character varying|character|bit varying|bit)\(\d+\)((\[\])*)$`)

// castType is the type the fenced path casts a column's text to: the
// target column's type, but without the length of a length-limited string
// or bit type. An explicit cast to varchar(n) silently truncates a longer
// value (a source column widened after the target was made, say); cast to
// the unlimited type, the value meets the column's length on assignment,
// which rejects it (22001, a dead letter naming the key) instead.
func castType(typ string) string {
	m := lengthTyped.FindStringSubmatch(typ)
	if m == nil {
		return typ
	}
	base := map[string]string{"character varying": "character varying", "character": "bpchar",
		"bit varying": "bit varying", "bit": "bit varying"}[m[1]]
	return base + m[2]
}

// buildSQL renders the two statements that apply a set of changes, over
// execArgs' arrays (unnested, text cast to the target's types; ledSQL takes
// only the key columns' arrays, see ledgerArgs). ledSQL
// upserts the ledger fenced by version and returns the positions (1-based)
// of the changes it let through whose content changed; rowSQL writes such
// changes to the target. They must be separate statements: rowSQL needs a
// snapshot taken after ledSQL holds the ledger rows' locks, or a row another
// writer inserted and committed while ledSQL waited for it would be
// invisible to the DELETE/UPDATE and survive a newer delete.
func (t *Target) buildSQL(b *onewayv1.Batch, byName map[string]pgconn.Column, keyIdx []int, softIsBool bool) (ledSQL, rowSQL string) {
	cols := b.GetColumns()
	unnestArgs := []string{"$1::int8[]", "$2::bytea[]", "$3::bool[]"}
	unnestCols := []string{"v", "h", "del"}
	var casts []string
	for i, c := range cols {
		unnestArgs = append(unnestArgs, fmt.Sprintf("$%d::text[]", 4+i))
		unnestCols = append(unnestCols, fmt.Sprintf("c%d", i))
		casts = append(casts, fmt.Sprintf("u.c%d::%s AS c%d", i, castType(byName[c.GetName()].Type), i))
	}
	// ledSQL unnests only the key columns (ledgerArgs passes only their
	// arrays): casting every owned column's text, a timestamp or numeric
	// parse per value, would be paid again by rowSQL.
	ledArgs, ledCols := slices.Clone(unnestArgs[:3]), slices.Clone(unnestCols[:3])
	var ledCasts []string
	for j, k := range keyIdx {
		ledArgs = append(ledArgs, fmt.Sprintf("$%d::text[]", 4+j))
		ledCols = append(ledCols, fmt.Sprintf("c%d", k))
		ledCasts = append(ledCasts, casts[k])
	}
	var names, sel, set, keyNames, incKeys, ledJoin, tgtMatch []string
	isKey := map[int]bool{}
	for _, k := range keyIdx {
		isKey[k] = true
		q := pgconn.Quote(cols[k].GetName())
		keyNames = append(keyNames, q)
		incKeys = append(incKeys, fmt.Sprintf("c%d", k))
		ledJoin = append(ledJoin, fmt.Sprintf("led.%s = inc.c%d", q, k))
		tgtMatch = append(tgtMatch, fmt.Sprintf("t.%s = inc.c%d", q, k))
	}
	for i, c := range cols {
		q := pgconn.Quote(c.GetName())
		names = append(names, q)
		sel = append(sel, fmt.Sprintf("inc.c%d", i))
		if !isKey[i] {
			set = append(set, fmt.Sprintf("%s = excluded.%s", q, q))
		}
	}
	if t.spec.Delete == DeleteSoft {
		sc := pgconn.Quote(t.spec.SoftDeleteColumn)
		names = append(names, sc)
		if softIsBool {
			sel = append(sel, "false")
		} else {
			sel = append(sel, "NULL")
		}
		set = append(set, fmt.Sprintf("%s = excluded.%s", sc, sc))
	}
	conflict := "DO NOTHING"
	if len(set) > 0 {
		conflict = "DO UPDATE SET " + strings.Join(set, ", ")
	}
	var del string
	switch t.spec.Delete {
	case DeleteHard:
		del = fmt.Sprintf("DELETE FROM %s t USING inc WHERE inc.del AND %s RETURNING 1",
			t.spec.Table.Quoted(), strings.Join(tgtMatch, " AND "))
	case DeleteSoft:
		val := "now()"
		if softIsBool {
			val = "true"
		}
		del = fmt.Sprintf("UPDATE %s t SET %s = %s FROM inc WHERE inc.del AND %s RETURNING 1",
			t.spec.Table.Quoted(), pgconn.Quote(t.spec.SoftDeleteColumn), val, strings.Join(tgtMatch, " AND "))
	default:
		del = "SELECT 1 WHERE false"
	}
	// Direct mode: a change is written when its hash differs from the one
	// last applied, which counts as an apply. Staged mode: every newer
	// change goes on to the row statement, which writes it only where the
	// row differs and counts the applies itself.
	firstApplies, changed, applies := "1", "l.oneway_hash IS DISTINCT FROM excluded.oneway_hash",
		"l.oneway_applies + CASE WHEN l.oneway_hash IS DISTINCT FROM excluded.oneway_hash THEN 1 ELSE 0 END"
	if t.spec.Staged {
		firstApplies, changed, applies = "0", "true", "l.oneway_applies"
	}
	ledSQL = fmt.Sprintf(`WITH inc AS (
  SELECT u.ord, u.v, u.h, u.del, %s FROM unnest(%s) WITH ORDINALITY AS u(%s, ord)
), led AS (
  INSERT INTO %s AS l (%s, oneway_version, oneway_hash, oneway_changed, oneway_applies)
  SELECT %s, v, h, true, %s FROM inc ORDER BY %s
  ON CONFLICT (%s) DO UPDATE
    SET oneway_version = excluded.oneway_version, oneway_hash = excluded.oneway_hash,
        oneway_changed = %s,
        oneway_applies = %s,
        oneway_applied_at = now()
    WHERE l.oneway_version < excluded.oneway_version
  RETURNING %s, oneway_changed
)
SELECT count(*), coalesce(array_agg(inc.ord ORDER BY inc.ord) FILTER (WHERE led.oneway_changed), '{}')
FROM led JOIN inc ON %s`,
		strings.Join(ledCasts, ", "), strings.Join(ledArgs, ", "), strings.Join(ledCols, ", "),
		t.ledger.Quoted(), strings.Join(keyNames, ", "),
		strings.Join(incKeys, ", "), firstApplies, strings.Join(incKeys, ", "),
		strings.Join(keyNames, ", "), changed, applies, strings.Join(keyNames, ", "),
		strings.Join(ledJoin, " AND "))
	if t.spec.Staged {
		return ledSQL, t.stagedRowSQL(cols, byName, keyIdx, casts, unnestArgs, unnestCols, names, sel, set, keyNames, tgtMatch, softIsBool)
	}
	rowSQL = fmt.Sprintf(`WITH inc AS (
  SELECT u.v, u.h, u.del, %s FROM unnest(%s) AS u(%s)
), del AS (
  %s
), ups AS (
  INSERT INTO %s AS t (%s)
  SELECT %s FROM inc WHERE NOT inc.del
  ON CONFLICT (%s) %s
  RETURNING 1
)
SELECT (SELECT count(*) FROM ups), (SELECT count(*) FROM del)`,
		strings.Join(casts, ", "), strings.Join(unnestArgs, ", "), strings.Join(unnestCols, ", "),
		del, t.spec.Table.Quoted(), strings.Join(names, ", "), strings.Join(sel, ", "),
		strings.Join(keyNames, ", "), conflict)
	return ledSQL, rowSQL
}

// Item, Result and Failure are the writer's target contract.
type (
	Item    = target.Item
	Result  = target.Result
	Failure = target.Failure
)

// SameLayout reports whether two batches have the same columns, types and key.
var SameLayout = target.SameLayout

var _ target.Reporter = (*Target)(nil)

// Reports implements target.Reporter.
func (t *Target) Reports() bool { return t.spec.Staged }

// Apply writes the items' changes in one transaction. Items must share one
// column layout (same columns, types and key). Change i of an item read at
// stream sequence seq has version seq<<20 | i, so later messages and later
// changes in a message win. A permanent error of the whole set makes Apply
// retry each change alone, so one bad record does not hold back the others;
// the rejected ones come back in Result.Failed. Other errors are returned
// classified (pgconn.Classify) and nothing is applied.
func (t *Target) Apply(ctx context.Context, items []Item) (Result, error) {
	if len(items) == 0 {
		return Result{}, nil
	}
	if err := target.CheckItems(items); err != nil {
		return Result{}, err
	}
	first := items[0].Batch
	p, err := t.prepare(ctx, first)
	if err != nil {
		return Result{}, err
	}
	refs := target.Collapse(items, p.keyIdx)
	if !p.noBulk && t.bulkEligible(items, refs) {
		if res, ok := t.bulkInsert(ctx, p, refs, first); ok {
			return res, nil
		}
	}
	res, err := t.exec(ctx, p, first, refs)
	if err == nil || !errs.IsPermanent(err) {
		return res, err
	}
	t.log.Warn("changes rejected; applying them one by one to isolate the bad ones",
		"table", t.spec.Table.String(), "changes", len(refs), "error", err)
	total := Result{Changes: len(refs)}
	for _, r := range refs {
		one, err := t.exec(ctx, p, first, []target.Ref{r})
		if err != nil {
			if !errs.IsPermanent(err) {
				return Result{}, err
			}
			total.Failed = append(total.Failed, Failure{Item: r.Item, Index: r.Index, Key: r.Key, Err: err})
			continue
		}
		total.Newer += one.Newer
		total.Written += one.Written
		total.Deleted += one.Deleted
		total.Applied = append(total.Applied, one.Applied...)
	}
	return total, nil
}

func (t *Target) exec(ctx context.Context, p *plan, layout *onewayv1.Batch, refs []target.Ref) (Result, error) {
	n := len(refs)
	args, err := execArgs(layout, refs)
	if err != nil {
		return Result{}, err
	}
	res := Result{Changes: n}
	err = pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		var newer int64
		var changed []int64
		if err := tx.QueryRow(ctx, p.ledSQL, ledgerArgs(args, p.keyIdx)...).Scan(&newer, &changed); err != nil {
			return err
		}
		res.Newer = int(newer)
		if len(changed) == 0 {
			return nil
		}
		write := make([]target.Ref, len(changed)) // still in key order: changed is sorted
		for i, ord := range changed {
			write[i] = refs[ord-1]
		}
		rowArgs, err := execArgs(layout, write)
		if err != nil {
			return err
		}
		if t.spec.Staged {
			return execStagedRows(ctx, tx, p.rowSQL, rowArgs, write, &res)
		}
		var written, deleted int64
		if err := tx.QueryRow(ctx, p.rowSQL, rowArgs...).Scan(&written, &deleted); err != nil {
			return err
		}
		res.Written, res.Deleted = int(written), int(deleted)
		return nil
	})
	if err != nil {
		return Result{}, pgconn.Classify(fmt.Errorf("apply %d changes to %s: %w", n, t.spec.Table, err))
	}
	return res, nil
}

// execArgs turns changes into the statements' array arguments: versions,
// hashes, delete flags, then one text array per column.
func execArgs(layout *onewayv1.Batch, refs []target.Ref) ([]any, error) {
	n := len(refs)
	cols := layout.GetColumns()
	versions := make([]int64, n)
	hashes := make([][]byte, n)
	dels := make([]bool, n)
	colVals := make([][]*string, len(cols))
	for j := range cols {
		colVals[j] = make([]*string, n)
	}
	var vals [][]byte
	for r, rf := range refs {
		c := rf.Change
		var err error
		if vals, err = event.Row(c.GetRow(), vals); err != nil {
			return nil, err
		}
		versions[r] = rf.Version
		del := c.GetOp() == onewayv1.Op_OP_DELETE
		dels[r] = del
		if del {
			hashes[r] = []byte{} // a tombstone: distinct from any content hash
		} else {
			hashes[r] = c.GetHash()
			if len(hashes[r]) == 0 {
				hashes[r] = event.RowHash(c.GetRow())
			}
		}
		for j, v := range vals {
			if v != nil {
				s := string(v)
				colVals[j][r] = &s
			}
		}
	}
	args := make([]any, 0, 3+len(cols))
	args = append(args, versions, hashes, dels)
	for j := range cols {
		args = append(args, colVals[j])
	}
	return args, nil
}

// ledgerArgs picks ledSQL's arguments from execArgs': versions, hashes,
// delete flags and the key columns' arrays in key order.
func ledgerArgs(args []any, keyIdx []int) []any {
	out := append(make([]any, 0, 3+len(keyIdx)), args[:3]...)
	for _, k := range keyIdx {
		out = append(out, args[3+k])
	}
	return out
}

var _ target.LedgerResetter = (*Target)(nil)

// ResetLedger empties this target's ledger table (see
// target.LedgerResetter). TRUNCATE waits for the transactions applying
// now.
func (t *Target) ResetLedger(ctx context.Context) error {
	_, err := t.pool.Exec(ctx, "TRUNCATE "+t.ledger.Quoted())
	if pgconn.Code(err) == "42P01" { // undefined_table: no batch yet
		return nil
	}
	if err != nil {
		return pgconn.Classify(fmt.Errorf("reset ledger %s: %w", t.ledger, err))
	}
	t.log.Warn("ledger reset: every replayed change will be written", "ledger", t.ledger.String())
	return nil
}
