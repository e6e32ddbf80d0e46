// Package pgtarget applies change batches to a PostgreSQL table,
// set-based and effect-once.
//
// Effect-once rests on a per-key ledger in the target database,
// <ledger_schema>.ledger(scope, key, version, hash, applies, ...), written in
// the same statement (so the same transaction) as the rows. A change is
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
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
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
}

// Target applies batches to one table. Safe for concurrent use.
type Target struct {
	pool  *pgxpool.Pool
	spec  Spec
	log   *slog.Logger
	scope int32

	mu    sync.Mutex
	plans map[string]*plan // by column signature
}

// Open prepares the ledger (schema, tables, this target's scope id).
func Open(ctx context.Context, pool *pgxpool.Pool, spec Spec, log *slog.Logger) (*Target, error) {
	t := &Target{pool: pool, spec: spec, log: log, plans: map[string]*plan{}}
	ls := pgconn.Quote(spec.LedgerSchema)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// Writers of several targets may start at once; DDL races otherwise.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('oneway.ledger.ddl'))"); err != nil {
			return err
		}
		stmts := []string{
			"CREATE SCHEMA IF NOT EXISTS " + ls,
			`CREATE TABLE IF NOT EXISTS ` + ls + `.ledger_scopes (
  id serial PRIMARY KEY, pipeline text NOT NULL, target text NOT NULL, table_name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (pipeline, target, table_name))`,
			`CREATE TABLE IF NOT EXISTS ` + ls + `.ledger (
  scope int NOT NULL, key text NOT NULL, version bigint NOT NULL, hash bytea,
  changed boolean NOT NULL DEFAULT true, applies int NOT NULL DEFAULT 1,
  applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (scope, key))`,
			"COMMENT ON TABLE " + ls + `.ledger IS 'oneway effect-once ledger: per key, the last applied stream version and content hash; applies counts real writes'`,
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		return tx.QueryRow(ctx, `
INSERT INTO `+ls+`.ledger_scopes (pipeline, target, table_name) VALUES ($1, $2, $3)
ON CONFLICT (pipeline, target, table_name) DO UPDATE SET pipeline = excluded.pipeline
RETURNING id`, spec.Pipeline, spec.Target, spec.Table.String()).Scan(&t.scope)
	})
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("prepare ledger in schema %s: %w", spec.LedgerSchema, err))
	}
	return t, nil
}

// Scope is this target's id in the ledger.
func (t *Target) Scope() int32 { return t.scope }

// plan is the SQL for one column layout.
type plan struct {
	sql       string
	keyIdx    []int
	softIsBool bool
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
	p := &plan{keyIdx: keyIdx}
	if t.spec.Delete == DeleteSoft {
		sc, ok := byName[t.spec.SoftDeleteColumn]
		if !ok {
			return nil, errs.Permanentf("target table %s has no soft-delete column %q", t.spec.Table, t.spec.SoftDeleteColumn)
		}
		p.softIsBool = sc.Type == "boolean"
	}
	p.sql = t.buildSQL(b, byName, keyIdx, p.softIsBool)
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
	if _, err := t.pool.Exec(ctx, sql); err != nil {
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
  WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
    AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
         WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) =
        (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))`,
		t.spec.Table.Quoted(), keys).Scan(&ok)
	if err != nil {
		return pgconn.Classify(fmt.Errorf("check key of %s: %w", t.spec.Table, err))
	}
	if !ok {
		return errs.Permanentf("target table %s has no primary key or unique index on the key columns (%s)", t.spec.Table, strings.Join(keys, ", "))
	}
	return nil
}

// buildSQL renders the one statement that applies a batch: unnest the
// arrays, upsert the ledger (fenced by version), then write the rows the
// ledger let through and whose content changed.
func (t *Target) buildSQL(b *onewayv1.Batch, byName map[string]pgconn.Column, keyIdx []int, softIsBool bool) string {
	cols := b.GetColumns()
	ls := pgconn.Quote(t.spec.LedgerSchema)
	var unnestArgs, unnestCols []string
	unnestArgs = append(unnestArgs, "$2::text[]", "$3::int8[]", "$4::bytea[]", "$5::bool[]")
	unnestCols = append(unnestCols, "k", "v", "h", "del")
	for i := range cols {
		unnestArgs = append(unnestArgs, fmt.Sprintf("$%d::text[]", 6+i))
		unnestCols = append(unnestCols, fmt.Sprintf("c%d", i))
	}
	// Values arrive as text and are cast to the target's own column types.
	cast := func(i int) string {
		return fmt.Sprintf("inc.c%d::%s", i, byName[cols[i].GetName()].Type)
	}
	var names, sel, set, keyNames, keyMatch []string
	isKey := map[int]bool{}
	for _, k := range keyIdx {
		isKey[k] = true
		keyNames = append(keyNames, pgconn.Quote(cols[k].GetName()))
		keyMatch = append(keyMatch, fmt.Sprintf("t.%s = %s", pgconn.Quote(cols[k].GetName()), cast(k)))
	}
	for i, c := range cols {
		q := pgconn.Quote(c.GetName())
		names = append(names, q)
		sel = append(sel, cast(i))
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
		del = fmt.Sprintf("DELETE FROM %s t USING inc JOIN led ON led.key = inc.k AND led.changed WHERE inc.del AND %s RETURNING 1",
			t.spec.Table.Quoted(), strings.Join(keyMatch, " AND "))
	case DeleteSoft:
		val := "now()"
		if softIsBool {
			val = "true"
		}
		del = fmt.Sprintf("UPDATE %s t SET %s = %s FROM inc JOIN led ON led.key = inc.k AND led.changed WHERE inc.del AND %s RETURNING 1",
			t.spec.Table.Quoted(), pgconn.Quote(t.spec.SoftDeleteColumn), val, strings.Join(keyMatch, " AND "))
	default:
		del = "SELECT 1 WHERE false"
	}
	return fmt.Sprintf(`WITH inc AS (
  SELECT * FROM unnest(%s) AS u(%s)
), led AS (
  INSERT INTO %s.ledger AS l (scope, key, version, hash, changed, applies)
  SELECT $1, k, v, h, true, 1 FROM inc ORDER BY k
  ON CONFLICT (scope, key) DO UPDATE
    SET version = excluded.version, hash = excluded.hash,
        changed = l.hash IS DISTINCT FROM excluded.hash,
        applies = l.applies + CASE WHEN l.hash IS DISTINCT FROM excluded.hash THEN 1 ELSE 0 END,
        applied_at = now()
    WHERE l.version < excluded.version
  RETURNING key, changed
), del AS (
  %s
), ups AS (
  INSERT INTO %s AS t (%s)
  SELECT %s FROM inc JOIN led ON led.key = inc.k AND led.changed WHERE NOT inc.del
  ON CONFLICT (%s) %s
  RETURNING 1
)
SELECT (SELECT count(*) FROM led), (SELECT count(*) FROM ups), (SELECT count(*) FROM del)`,
		strings.Join(unnestArgs, ", "), strings.Join(unnestCols, ", "),
		ls, del, t.spec.Table.Quoted(), strings.Join(names, ", "), strings.Join(sel, ", "),
		strings.Join(keyNames, ", "), conflict)
}

// Result counts what one Apply did.
type Result struct {
	Changes int // changes in the batch after collapsing repeats of a key
	Newer   int // changes newer than the ledger (the rest were stale or repeats)
	Written int // rows inserted or updated
	Deleted int // rows deleted (or soft-deleted)
	// Failed lists changes the target rejected (permanent errors), each
	// isolated so the rest of the batch was applied.
	Failed []Failure
}

// Failure is one change the target rejected.
type Failure struct {
	Index int // in the batch
	Key   string
	Err   error
}

// Apply writes batch b, read at stream sequence seq, in one transaction.
// Change i of the batch has version seq<<20 | i. A permanent error of the
// whole batch makes Apply retry each change alone, so one bad record does
// not hold back the others; the rejected ones come back in Result.Failed.
// Other errors are returned classified (pgconn.Classify) and nothing is
// applied.
func (t *Target) Apply(ctx context.Context, seq uint64, b *onewayv1.Batch) (Result, error) {
	if len(b.GetChanges()) >= 1<<20 {
		return Result{}, errs.Permanentf("batch of %d changes exceeds 2^20", len(b.GetChanges()))
	}
	p, err := t.prepare(ctx, b)
	if err != nil {
		return Result{}, err
	}
	idx := collapse(b, p.keyIdx)
	res, err := t.exec(ctx, p, seq, b, idx)
	if err == nil || !errs.IsPermanent(err) {
		return res, err
	}
	t.log.Warn("batch rejected; applying its changes one by one to isolate the bad ones",
		"table", t.spec.Table.String(), "stream_seq", seq, "error", err)
	total := Result{Changes: len(idx)}
	for _, i := range idx {
		r, err := t.exec(ctx, p, seq, b, []int{i})
		if err != nil {
			if !errs.IsPermanent(err) {
				return Result{}, err
			}
			total.Failed = append(total.Failed, Failure{Index: i, Key: event.Key(b.GetChanges()[i], p.keyIdx), Err: err})
			continue
		}
		total.Newer += r.Newer
		total.Written += r.Written
		total.Deleted += r.Deleted
	}
	return total, nil
}

// collapse returns the indexes of the last change of each key, sorted by key
// (a stable lock order keeps concurrent writers from deadlocking).
func collapse(b *onewayv1.Batch, keyIdx []int) []int {
	last := make(map[string]int, len(b.GetChanges()))
	keys := make([]string, 0, len(b.GetChanges()))
	for i, c := range b.GetChanges() {
		k := event.Key(c, keyIdx)
		if _, ok := last[k]; !ok {
			keys = append(keys, k)
		}
		last[k] = i
	}
	if len(keys) == len(b.GetChanges()) {
		idx := make([]int, len(keys))
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	sort.Strings(keys)
	idx := make([]int, len(keys))
	for i, k := range keys {
		idx[i] = last[k]
	}
	return idx
}

func (t *Target) exec(ctx context.Context, p *plan, seq uint64, b *onewayv1.Batch, idx []int) (Result, error) {
	n := len(idx)
	cols := b.GetColumns()
	keys := make([]string, n)
	versions := make([]int64, n)
	hashes := make([][]byte, n)
	dels := make([]bool, n)
	colVals := make([][]*string, len(cols))
	for j := range cols {
		colVals[j] = make([]*string, n)
	}
	for r, i := range idx {
		c := b.GetChanges()[i]
		keys[r] = event.Key(c, p.keyIdx)
		versions[r] = int64(seq<<20 | uint64(i))
		del := c.GetOp() == onewayv1.Op_OP_DELETE
		dels[r] = del
		if del {
			hashes[r] = []byte{} // a tombstone: distinct from any content hash
		} else {
			hashes[r] = c.GetHash()
			if len(hashes[r]) == 0 {
				hashes[r] = event.Hash(c.GetValues())
			}
		}
		for j, v := range c.GetValues() {
			if tv, ok := v.GetKind().(*onewayv1.Value_Text); ok {
				s := tv.Text
				colVals[j][r] = &s
			}
		}
	}
	args := make([]any, 0, 5+len(cols))
	args = append(args, t.scope, keys, versions, hashes, dels)
	for j := range cols {
		args = append(args, colVals[j])
	}
	res := Result{Changes: n}
	err := pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		var newer, written, deleted int64
		if err := tx.QueryRow(ctx, p.sql, args...).Scan(&newer, &written, &deleted); err != nil {
			return err
		}
		res.Newer, res.Written, res.Deleted = int(newer), int(written), int(deleted)
		return nil
	})
	if err != nil {
		err = pgconn.Classify(fmt.Errorf("apply %d changes to %s: %w", n, t.spec.Table, err))
		if errors.Is(err, context.Canceled) {
			return Result{}, err
		}
		return Result{}, err
	}
	return res, nil
}
