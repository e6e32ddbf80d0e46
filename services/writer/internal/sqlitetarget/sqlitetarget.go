// Package sqlitetarget applies change batches to a table in a SQLite
// database file, effect-once, with the semantics of pgtarget.
//
// Effect-once rests on a per-key ledger in the same database file, one
// table per target table (default oneway_ledger_<table>), keyed by the
// target's key columns (as TEXT, the key values exactly as the source sent
// them) and holding the last applied version and content hash of each key.
// Every Apply runs in one BEGIN IMMEDIATE transaction: it takes SQLite's
// write lock first, then reads the ledger rows of its keys, decides per
// change (stale: skip; newer with the same hash: advance the version only;
// newer with new content: write), writes the rows and the ledger, and
// commits. SQLite admits one writer per database file at a time, so two
// writers (goroutines or processes) racing on a key serialise at BEGIN
// IMMEDIATE and the second sees what the first committed: the older change
// loses, whichever commits first.
//
// Only owned columns (the batch's columns) are written: other target
// columns keep their values (new rows get their defaults) and rows whose
// keys never come from the source (orphans) are never touched.
//
// Durability: the database is opened with journal_mode=WAL and
// synchronous=FULL, so a COMMIT has reached the disk when Apply returns and
// the caller may ack. Each Target holds a single connection
// (SetMaxOpenConns(1)): SQLite serialises writers per file anyway, so more
// connections would only queue in SQLite's busy handler instead of in
// database/sql. Writers that find the file locked wait up to busy_timeout
// (10 s, cut short by ctx) and then fail with a transient error.
package sqlitetarget

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// Delete policies: what a source delete does to the target row.
const (
	DeleteHard = "hard" // delete the row
	DeleteSoft = "soft" // mark it in SoftDeleteColumn
	DeleteNone = "none" // leave it (the ledger still records the delete)
)

// Spec configures a Target.
type Spec struct {
	Pipeline, Target string
	// Path is the database file, created if missing.
	Path string
	// Table is a plain table name (no schema); it is always quoted, so any
	// characters but NUL are allowed.
	Table       string
	CreateTable bool
	// Delete is hard, soft or none ("" = hard).
	Delete string
	// SoftDeleteColumn marks soft-deleted rows (Delete = soft). A column
	// whose declared type contains BOOL gets 1 on delete and 0 on upsert;
	// any other gets the UTC time of the delete (ISO 8601 text) and NULL on
	// upsert. A table created by the target gets it as a TEXT column.
	SoftDeleteColumn string
	// LedgerTable is the ledger's table in the same file; default
	// "oneway_ledger_<Table>".
	LedgerTable string
	// Staged opens the target for staged mode (target.Reporter): a change
	// newer than the ledger's is written where the row's owned values
	// differ from it, whatever hash was applied last, and what each change
	// left in the table is reported in Result.Applied.
	Staged bool
}

// busyTimeoutMS is how long a writer waits for another one's write lock.
const busyTimeoutMS = 10000

// Target applies batches to one table of one SQLite file. Safe for
// concurrent use (calls serialise on its one connection).
type Target struct {
	db   *sql.DB
	spec Spec
	log  *slog.Logger

	mu    sync.Mutex
	plans map[string]*plan // by column layout
}

var _ target.Reporter = (*Target)(nil)

// Reports implements target.Reporter: true when opened in staged mode.
func (t *Target) Reports() bool { return t.spec.Staged }

// Open opens (creating if needed) the database file. The target table and
// the ledger are checked or created on the first batch, when the columns
// and their types are known.
func Open(ctx context.Context, spec Spec, log *slog.Logger) (*Target, error) {
	return open(ctx, spec, log, busyTimeoutMS)
}

func open(ctx context.Context, spec Spec, log *slog.Logger, busyMS int) (*Target, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if spec.Delete == "" {
		spec.Delete = DeleteHard
	}
	if spec.LedgerTable == "" {
		spec.LedgerTable = "oneway_ledger_" + spec.Table
	}
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	path, err := filepath.Abs(spec.Path)
	if err != nil {
		return nil, errs.Permanentf("sqlite target %q: path %q: %w", spec.Target, spec.Path, err)
	}
	db, err := sql.Open("sqlite", dsn(path, busyMS))
	if err != nil {
		return nil, errs.Permanentf("sqlite target %q: open %s: %w", spec.Target, path, err)
	}
	// One connection: SQLite admits one writer per file at a time anyway.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, classify(fmt.Errorf("sqlite target %q: open %s: %w", spec.Target, path, err))
	}
	if !strings.EqualFold(mode, "wal") {
		log.Warn("sqlite target is not in WAL mode; writers will block readers", "path", path, "journal_mode", mode)
	}
	return &Target{db: db, spec: spec, log: log, plans: map[string]*plan{}}, nil
}

func checkSpec(spec Spec) error {
	where := fmt.Sprintf("sqlite target %q", spec.Target)
	if spec.Path == "" {
		return errs.Permanentf("%s: no database path", where)
	}
	if spec.Table == "" {
		return errs.Permanentf("%s: no table", where)
	}
	for _, id := range []string{spec.Table, spec.LedgerTable, spec.SoftDeleteColumn} {
		if strings.IndexByte(id, 0) >= 0 {
			return errs.Permanentf("%s: identifier %q contains NUL", where, id)
		}
	}
	if foldEq(spec.LedgerTable, spec.Table) {
		return errs.Permanentf("%s: ledger table %q is the target table", where, spec.LedgerTable)
	}
	switch spec.Delete {
	case DeleteHard, DeleteNone:
		if spec.SoftDeleteColumn != "" {
			return errs.Permanentf("%s: soft_delete_column %q set but delete is %q", where, spec.SoftDeleteColumn, spec.Delete)
		}
	case DeleteSoft:
		if spec.SoftDeleteColumn == "" {
			return errs.Permanentf("%s: delete is soft but no soft_delete_column", where)
		}
	default:
		return errs.Permanentf("%s: delete must be one of hard, soft, none; got %q", where, spec.Delete)
	}
	return nil
}

// dsn is a file: URI (path escaped) with the connection's pragmas; BEGIN
// means BEGIN IMMEDIATE (_txlock), so a transaction holds the write lock
// before it reads the ledger.
func dsn(path string, busyMS int) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyMS))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate")
	return "file:" + r.Replace(filepath.ToSlash(path)) + "?" + q.Encode()
}

// Close closes the database.
func (t *Target) Close() error { return t.db.Close() }

// Ledger is this target's ledger table.
func (t *Target) Ledger() string { return t.spec.LedgerTable }

// Item, Result and Failure are the writer's target contract.
type (
	Item    = target.Item
	Result  = target.Result
	Failure = target.Failure
)

// Apply writes the items' changes in one transaction. Items must share one
// column layout. Change i of an item read at stream sequence seq has
// version seq<<20 | i. A change whose value cannot be converted to its
// column's type is rejected alone (Result.Failed); if SQLite rejects the
// transaction for good (constraint, type), Apply re-checks the table and
// applies each change alone in its own transaction, so one bad record does
// not hold back the others. Other errors are returned classified and
// nothing is known to be applied.
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
	res, err := t.exec(ctx, p, refs)
	if err == nil || !errs.IsPermanent(err) {
		return res, err
	}
	t.log.Warn("changes rejected; applying them one by one to isolate the bad ones",
		"table", t.spec.Table, "changes", len(refs), "error", err)
	// The table may have changed under the cached plan (a dropped table or
	// column fails every change): check it again first.
	t.forget(first)
	if p, err = t.prepare(ctx, first); err != nil {
		return Result{}, err
	}
	total := Result{Changes: len(refs)}
	for _, r := range refs {
		one, err := t.exec(ctx, p, []target.Ref{r})
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
		total.Failed = append(total.Failed, one.Failed...)
	}
	return total, nil
}

// exec applies refs (sorted by key, one per key) in one BEGIN IMMEDIATE
// transaction. Changes whose values do not convert come back in
// Result.Failed, the rest is committed; any SQL error rolls everything back.
func (t *Target) exec(ctx context.Context, p *plan, refs []target.Ref) (res Result, err error) {
	res.Changes = len(refs)
	var cur string // key being applied, for errors
	defer func() {
		if err != nil {
			if cur != "" {
				err = fmt.Errorf("key %s: %w", cur, err)
			}
			err = classify(fmt.Errorf("apply %d changes to table %q: %w", len(refs), t.spec.Table, err))
			res = Result{}
		}
	}()
	tx, err := t.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: see dsn
	if err != nil {
		return res, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	st, err := p.statements(ctx, tx)
	if err != nil {
		return res, err
	}
	defer st.close()

	var vals [][]byte
	for _, r := range refs {
		cur = r.Key
		c := r.Change
		if vals, err = event.Row(c.GetRow(), vals); err == nil && len(vals) != len(p.convs) {
			err = fmt.Errorf("%d values for %d columns", len(vals), len(p.convs))
		}
		if err != nil { // Decode validates batches; this one was not
			res.Failed = append(res.Failed, Failure{Item: r.Item, Index: r.Index, Key: r.Key,
				Err: errs.Permanentf("table %q key %s: %w", t.spec.Table, r.Key, err)})
			err = nil
			continue
		}
		keyText := make([]any, len(p.keyIdx))
		for i, k := range p.keyIdx {
			keyText[i] = string(vals[k])
		}
		var (
			ledVersion int64
			ledHash    []byte
			found      = true
		)
		switch err = st.read.QueryRowContext(ctx, keyText...).Scan(&ledVersion, &ledHash); {
		case errors.Is(err, sql.ErrNoRows):
			found = false
		case err != nil:
			return res, fmt.Errorf("read ledger: %w", err)
		}
		if found && ledVersion >= r.Version {
			continue // stale: a newer or equal version was applied
		}
		del := c.GetOp() == onewayv1.Op_OP_DELETE
		hash := []byte{} // a tombstone: distinct from any content hash
		if !del {
			if hash = c.GetHash(); len(hash) == 0 {
				hash = event.RowHash(c.GetRow())
			}
		}
		if t.spec.Staged {
			var failed error
			if failed, err = t.execStaged(ctx, st, p, r, vals, keyText, hash, &res); err != nil {
				return res, err
			}
			if failed != nil {
				res.Failed = append(res.Failed, Failure{Item: r.Item, Index: r.Index, Key: r.Key,
					Err: errs.Permanentf("table %q key %s: %w", t.spec.Table, r.Key, failed)})
			}
			continue
		}
		if !found || !bytes.Equal(ledHash, hash) {
			var stmt *sql.Stmt
			var args []any
			if del {
				stmt = st.del
				if stmt != nil {
					args, err = p.convert(vals, p.keyIdx)
				}
			} else {
				stmt = st.upsert
				args, err = p.convert(vals, nil)
			}
			if err != nil {
				res.Failed = append(res.Failed, Failure{Item: r.Item, Index: r.Index, Key: r.Key,
					Err: errs.Permanentf("table %q key %s: %w", t.spec.Table, r.Key, err)})
				err = nil
				continue
			}
			if stmt != nil {
				sr, err := stmt.ExecContext(ctx, args...)
				if err != nil {
					return res, err
				}
				n, _ := sr.RowsAffected()
				if del {
					res.Deleted += int(n)
				} else {
					res.Written += int(n)
				}
			}
		}
		if _, err = st.write.ExecContext(ctx, append(keyText, r.Version, hash)...); err != nil {
			return res, fmt.Errorf("write ledger: %w", err)
		}
		res.Newer++
	}
	cur = ""
	if err = tx.Commit(); err != nil {
		return res, fmt.Errorf("commit: %w", err)
	}
	return res, nil
}

// execStaged applies one change newer than the ledger's in staged mode: it
// is written where the row's owned values differ from it (whatever hash
// was applied last: someone may have edited the row), and what it left is
// appended to res.Applied, read back from the table (after its triggers).
// A value that does not convert comes back as failed (nothing written).
func (t *Target) execStaged(ctx context.Context, st *stmts, p *plan, r target.Ref, vals [][]byte, keyText []any, hash []byte, res *Result) (failed, err error) {
	del := r.Change.GetOp() == onewayv1.Op_OP_DELETE
	keyArgs, err := p.convert(vals, p.keyIdx)
	if err != nil {
		return err, nil
	}
	a := target.Applied{Item: r.Item, Index: r.Index, Version: r.Version}
	var n int64
	if del {
		a.Deleted = true
		if st.del != nil {
			sr, err := st.del.ExecContext(ctx, keyArgs...)
			if err != nil {
				return nil, err
			}
			n, _ = sr.RowsAffected()
			res.Deleted += int(n)
		}
	} else {
		args, err := p.convert(vals, nil)
		if err != nil {
			return err, nil
		}
		sr, err := st.upsert.ExecContext(ctx, args...)
		if err != nil {
			return nil, err
		}
		n, _ = sr.RowsAffected()
		res.Written += int(n)
		if a.Row, err = readRow(ctx, st.sel, keyArgs, len(p.convs)); err != nil {
			return nil, fmt.Errorf("read the row back: %w", err)
		}
		a.Deleted = a.Row == nil // a trigger kept the row out
	}
	written := int64(0)
	if n > 0 {
		written = 1
	}
	if _, err := st.write.ExecContext(ctx, append(keyText, r.Version, hash, written)...); err != nil {
		return nil, fmt.Errorf("write ledger: %w", err)
	}
	res.Newer++
	res.Applied = append(res.Applied, a)
	return nil, nil
}

// readRow reads the owned values of one row, packed in the batch's column
// order as text (integers and reals in Go's shortest form, blobs as their
// bytes); nil when there is no such row.
func readRow(ctx context.Context, sel *sql.Stmt, keyArgs []any, n int) ([]byte, error) {
	dst := make([]any, n)
	ptrs := make([]any, n)
	for i := range dst {
		ptrs[i] = &dst[i]
	}
	switch err := sel.QueryRowContext(ctx, keyArgs...).Scan(ptrs...); {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, err
	}
	row := make([]byte, 0, 64)
	for _, v := range dst {
		switch v := v.(type) {
		case nil:
			row = event.AppendValue(row, nil)
		case int64:
			row = event.AppendString(row, strconv.FormatInt(v, 10))
		case float64:
			row = event.AppendString(row, strconv.FormatFloat(v, 'g', -1, 64))
		case []byte:
			row = event.AppendValue(row, v)
		case string:
			row = event.AppendString(row, v)
		case bool:
			row = event.AppendString(row, strconv.FormatBool(v))
		case time.Time:
			row = event.AppendString(row, v.Format(time.RFC3339Nano))
		default:
			row = event.AppendString(row, fmt.Sprint(v))
		}
	}
	return row, nil
}

// classify marks SQLite errors: bad data, constraints and schema mismatches
// are permanent; a full disk, I/O errors, an unopenable, read-only or
// corrupt file are outages (an operator must act; the data is fine);
// SQLITE_BUSY (the busy timeout ran out) and the rest are transient.
func classify(err error) error {
	if err == nil || errs.IsPermanent(err) || errs.IsUnavailable(err) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_RANGE, sqlite3.SQLITE_ERROR:
		return errs.Permanent(err)
	case sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY,
		sqlite3.SQLITE_PERM, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_AUTH:
		return errs.Unavailable(err)
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w (another writer held the database beyond the busy timeout)", err)
	}
	return err // SQLITE_INTERRUPT, SQLITE_NOMEM, ...: retry
}

var _ target.LedgerResetter = (*Target)(nil)

// ResetLedger empties this target's ledger table (see
// target.LedgerResetter).
func (t *Target) ResetLedger(ctx context.Context) error {
	_, err := t.db.ExecContext(ctx, "DELETE FROM "+quote(t.spec.LedgerTable))
	if err != nil && strings.Contains(err.Error(), "no such table") {
		return nil
	}
	if err != nil {
		return classify(fmt.Errorf("reset ledger %s: %w", t.spec.LedgerTable, err))
	}
	t.log.Warn("ledger reset: every replayed change will be written", "ledger", t.spec.LedgerTable)
	return nil
}
