// Package mysqltarget applies change batches to a MySQL or MariaDB table
// (InnoDB), effect-once, with the semantics of pgtarget.
//
// Effect-once rests on a per-key ledger in the target table's database, one
// table per (pipeline, target, table), oneway_ledger_<scope>, registered in
// oneway_ledger_scopes. It is keyed by the target's key columns (with their
// types and collations, so it identifies rows exactly as the target does)
// and holds the last applied version and content hash of each key, written
// in the same transaction as the rows.
//
// Every Apply runs in READ COMMITTED transactions, in chunks of keys sorted
// as target.Collapse sorts them. For each chunk it first locks the ledger
// rows of its keys, creating missing ones as placeholders (one INSERT …
// ON DUPLICATE KEY UPDATE, which takes an exclusive record lock on every
// key, in key order, and stamps each row with the key's position); then
// reads them, decides per change (stale: skip;
// newer with the same hash: advance the version only; newer with new
// content: write), writes the rows (one multi-row upsert and one DELETE)
// and the ledger. Two writers racing on a key serialise on its ledger row,
// and the second decides on what the first committed: the older change
// loses, whichever commits first. Deadlocks (1213) and lock wait timeouts
// (1205) are retried a few times, then returned as transient errors.
//
// Only owned columns are written: other target columns keep their values
// (new rows get their defaults) and rows whose keys never come from the
// source (orphans) are never touched. When the table has unique indexes
// besides the key's, rows are upserted one by one (UPDATE, then INSERT), so
// that a conflict on such an index is an error rather than an update of
// another key's row.
//
// Every session runs in strict SQL mode (STRICT_ALL_TABLES, NO_ZERO_DATE,
// …, whatever the server's default), so a value that does not fit is an
// error, never silently truncated; such a change is rejected alone
// (Result.Failed, errs.Permanent, with the MySQL error) and the others are
// applied. Decimal values with more fractional digits than the column's
// scale are rejected too (MySQL would round them with a note).
package mysqltarget

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

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
	// DSN is a go-sql-driver DSN, user:pass@tcp(host:port)/db?params. It
	// is a secret: never logged, and left out of errors.
	DSN string
	// Database holds the table and its ledger; "" = the DSN's database.
	Database string
	// Table is a table name in Database; always quoted.
	Table       string
	CreateTable bool
	// Delete is hard, soft or none ("" = hard).
	Delete string
	// SoftDeleteColumn marks soft-deleted rows (Delete = soft). A column of
	// type BOOLEAN/TINYINT/BIT gets 1 on delete and 0 on upsert; any other
	// gets the UTC time of the delete and NULL on upsert. A table created by
	// the target gets it as a DATETIME(6) column.
	SoftDeleteColumn string
	// MaxConns bounds the connection pool (default 4).
	MaxConns int
}

// Session settings forced on every connection, whatever the DSN says.
var sessionParams = map[string]string{
	// Strict: a value that does not fit is an error, never truncated.
	"sql_mode": "'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
	// timestamptz values are written in UTC; so is the soft-delete time.
	"time_zone": "'+00:00'",
	// A writer waits this long (s) for another's row lock, then retries.
	"innodb_lock_wait_timeout": "10",
	// A writer paused in a transaction (SIGSTOP) holds its row locks until
	// the server drops its session: after this many idle seconds.
	"wait_timeout": "120",
}

const (
	defaultMaxConns = 4
	// chunkRows bounds the changes of one statement.
	chunkRows = 500
	// lockRetries is how often a deadlocked or lock-timed-out transaction
	// is tried before Apply returns the (transient) error.
	lockRetries = 5
)

// Target applies batches to one table. Safe for concurrent use.
type Target struct {
	db       *sql.DB
	spec     Spec
	log      *slog.Logger
	database string
	scope    int64
	ledger   string
	// maxStmt bounds the bytes of values in one statement (a share of the
	// server's max_allowed_packet).
	maxStmt  int
	binColl  string // a binary, no-pad collation for text keys of created tables
	foldName bool   // lower_case_table_names != 0

	mu    sync.Mutex
	plans map[string]*plan // by column layout
}

var _ target.Writer = (*Target)(nil)

// Open connects, checks the server and registers this target in the
// database's ledger catalog, oneway_ledger_scopes (creating it when
// missing). The table and the ledger are checked or created on the first
// batch, when the columns and their types are known.
func Open(ctx context.Context, spec Spec, log *slog.Logger) (*Target, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if spec.Delete == "" {
		spec.Delete = DeleteHard
	}
	if spec.MaxConns <= 0 {
		spec.MaxConns = defaultMaxConns
	}
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	cfg, err := mysql.ParseDSN(spec.DSN)
	if err != nil {
		return nil, errs.Permanentf("mysql target %q: invalid DSN (user:pass@tcp(host:port)/db): %s", spec.Target, redactErr(err, spec.DSN))
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	for k, v := range sessionParams {
		cfg.Params[k] = v
	}
	cfg.InterpolateParams = true // one round trip per statement
	cfg.ClientFoundRows = true   // UPDATE counts matched rows, not changed ones
	cfg.ParseTime = false
	cfg.MultiStatements = false
	cfg.MaxAllowedPacket = 0 // ask the server
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = time.Minute // a silent network: fail, do not hang
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = time.Minute
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, errs.Permanentf("mysql target %q: invalid DSN: %s", spec.Target, redactErr(err, spec.DSN))
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(spec.MaxConns)
	db.SetMaxIdleConns(spec.MaxConns)
	db.SetConnMaxIdleTime(time.Minute) // below wait_timeout
	db.SetConnMaxLifetime(30 * time.Minute)
	t := &Target{db: db, spec: spec, log: log, database: spec.Database, plans: map[string]*plan{}}
	if t.database == "" {
		t.database = cfg.DBName
	}
	if err := t.setup(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return t, nil
}

func checkSpec(spec Spec) error {
	where := fmt.Sprintf("mysql target %q", spec.Target)
	if spec.DSN == "" {
		return errs.Permanentf("%s: no DSN", where)
	}
	if spec.Table == "" {
		return errs.Permanentf("%s: no table", where)
	}
	for _, id := range []string{spec.Table, spec.Database, spec.SoftDeleteColumn} {
		if err := validName(id); id != "" && err != nil {
			return errs.Permanentf("%s: %w", where, err)
		}
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

// redactErr is err's text with the DSN's password, if it appears, masked.
func redactErr(err error, dsn string) string {
	msg := err.Error()
	if cfg, perr := mysql.ParseDSN(dsn); perr == nil && cfg.Passwd != "" {
		msg = strings.ReplaceAll(msg, cfg.Passwd, "xxxxx")
	} else if strings.Contains(dsn, "@") {
		// Unparsable: the message may quote any part of it.
		return "(details withheld: the DSN may hold a password)"
	}
	return msg
}

// setup reads the server's settings, then creates the ledger catalog and
// registers this target's scope, under oneway's DDL lock.
func (t *Target) setup(ctx context.Context) error {
	where := fmt.Sprintf("mysql target %q", t.spec.Target)
	conn, err := t.db.Conn(ctx)
	if err != nil {
		return classify(fmt.Errorf("%s: connect: %w", where, err))
	}
	defer conn.Close()
	var db sql.NullString
	var maxPacket int64
	var lctn int
	if err := conn.QueryRowContext(ctx, "SELECT DATABASE(), @@max_allowed_packet, @@lower_case_table_names").Scan(&db, &maxPacket, &lctn); err != nil {
		return classify(fmt.Errorf("%s: read server settings: %w", where, err))
	}
	if t.database == "" {
		t.database = db.String
	}
	if t.database == "" {
		return errs.Permanentf("%s: no database: name one in the DSN (…/db) or the table (db.table)", where)
	}
	t.foldName = lctn != 0
	t.maxStmt = int(min(max(maxPacket/3, 64<<10), 8<<20))
	t.binColl = "utf8mb4_bin"
	rows, err := conn.QueryContext(ctx, "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')")
	if err != nil {
		return classify(fmt.Errorf("%s: read collations: %w", where, err))
	}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			rows.Close()
			return classify(fmt.Errorf("%s: read collations: %w", where, err))
		}
		if t.binColl == "utf8mb4_bin" || c == "utf8mb4_0900_bin" {
			t.binColl = c
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return classify(fmt.Errorf("%s: read collations: %w", where, err))
	}
	return withDDLLock(ctx, conn, func() error {
		scopes := t.name("oneway_ledger_scopes")
		if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+scopes+` (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  pipeline VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  target VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  table_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  created_at DATETIME(6) NOT NULL,
  UNIQUE KEY oneway_scope (pipeline, target, table_name)
) ENGINE=InnoDB COMMENT='oneway: one row per (pipeline, target, table); its ledger is oneway_ledger_<id>'`); err != nil {
			return classify(fmt.Errorf("%s: create ledger catalog %s: %w", where, scopes, err))
		}
		if _, err := conn.ExecContext(ctx, "INSERT INTO "+scopes+" (pipeline, target, table_name, created_at) VALUES (?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE id = id",
			t.spec.Pipeline, t.spec.Target, t.spec.Table); err != nil {
			return classify(fmt.Errorf("%s: register in %s: %w", where, scopes, err))
		}
		if err := conn.QueryRowContext(ctx, "SELECT id FROM "+scopes+" WHERE pipeline = ? AND target = ? AND table_name = ?",
			t.spec.Pipeline, t.spec.Target, t.spec.Table).Scan(&t.scope); err != nil {
			return classify(fmt.Errorf("%s: read scope from %s: %w", where, scopes, err))
		}
		t.ledger = fmt.Sprintf("oneway_ledger_%d", t.scope)
		return nil
	})
}

// ddlLock names the server-wide lock that serialises oneway's DDL (table
// and ledger creation and checks) across writers.
const ddlLock = "oneway.ledger.ddl"

// withDDLLock runs f while conn holds oneway's DDL lock (GET_LOCK, held by
// the session; released on return or when the session ends).
func withDDLLock(ctx context.Context, conn *sql.Conn, f func() error) error {
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 30)", ddlLock).Scan(&got); err != nil {
		return classify(fmt.Errorf("take lock %s: %w", ddlLock, err))
	}
	if got.Int64 != 1 {
		return fmt.Errorf("take lock %s: not granted within 30 s", ddlLock)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", ddlLock)
	}()
	return f()
}

// Close closes the connection pool.
func (t *Target) Close() error { return t.db.Close() }

// Ledger is this target's ledger table (in Database).
func (t *Target) Ledger() string { return t.ledger }

// Database is the database of the table and its ledger.
func (t *Target) Database() string { return t.database }

// Item, Result and Failure are the writer's target contract.
type (
	Item    = target.Item
	Result  = target.Result
	Failure = target.Failure
)

// Apply writes the items' changes in one transaction. Items must share one
// column layout. Change i of an item read at stream sequence seq has
// version seq<<20 | i. A change whose value cannot be converted for its
// column is rejected alone (Result.Failed); if MySQL rejects the
// transaction for good (data too long, NULL, foreign key, bad value), Apply
// re-checks the table and applies each change alone in its own
// transaction, so one bad record does not hold back the others. Other
// errors are returned classified and nothing is known to be applied.
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
	chs, failed := t.convertAll(p, refs)
	if len(failed) > 0 {
		// The checks use the table's types (a decimal's scale): the table
		// may have changed under the cached plan; check it again first.
		t.forget(first)
		if p, err = t.prepare(ctx, first); err != nil {
			return Result{}, err
		}
		chs, failed = t.convertAll(p, refs)
	}
	res, err := t.exec(ctx, p, chs)
	if err == nil {
		res.Changes, res.Failed = len(refs), failed
		return res, nil
	}
	if !errs.IsPermanent(err) {
		return Result{}, err
	}
	t.log.Warn("changes rejected; applying them one by one to isolate the bad ones",
		"table", t.spec.Table, "changes", len(refs), "error", err)
	// The table may have changed under the cached plan (a dropped or
	// altered column fails every change): check it again first.
	t.forget(first)
	if p, err = t.prepare(ctx, first); err != nil {
		return Result{}, err
	}
	chs, failed = t.convertAll(p, refs)
	total := Result{Changes: len(refs), Failed: failed}
	for _, c := range chs {
		one, err := t.exec(ctx, p, []change{c})
		if err != nil {
			if !errs.IsPermanent(err) {
				return Result{}, err
			}
			total.Failed = append(total.Failed, Failure{Item: c.ref.Item, Index: c.ref.Index, Key: c.ref.Key, Err: err})
			continue
		}
		total.Newer += one.Newer
		total.Written += one.Written
		total.Deleted += one.Deleted
	}
	return total, nil
}

// change is one ref with its values bound for the table.
type change struct {
	ref  target.Ref
	del  bool
	hash []byte
	vals []any // every column, bound
	key  []any // the key columns, bound
	size int   // bytes of the values, roughly
}

// convertAll binds each ref's values; refs whose values do not convert
// come back as failures.
func (t *Target) convertAll(p *plan, refs []target.Ref) ([]change, []Failure) {
	chs := make([]change, 0, len(refs))
	var failed []Failure
	var raw [][]byte
	for _, r := range refs {
		c, err := p.bind(r, &raw)
		if err != nil {
			failed = append(failed, Failure{Item: r.Item, Index: r.Index, Key: r.Key,
				Err: errs.Permanentf("table %s key %s: %w", t.spec.Table, r.Key, err)})
			continue
		}
		chs = append(chs, c)
	}
	return chs, failed
}

// exec applies chs (sorted by key, one per key) in one transaction, trying
// again after a deadlock or lock wait timeout.
func (t *Target) exec(ctx context.Context, p *plan, chs []change) (Result, error) {
	if len(chs) == 0 {
		return Result{}, nil
	}
	wait := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		res, err := t.execOnce(ctx, p, chs)
		if err == nil {
			return res, nil
		}
		var key string
		var ke *keyError
		if errors.As(err, &ke) {
			key = " key " + ke.key
		}
		err = classify(fmt.Errorf("apply %d changes to %s%s: %w", len(chs), t.name(t.spec.Table), key, err))
		if !lockConflict(err) || attempt == lockRetries || ctx.Err() != nil {
			return Result{}, err
		}
		t.log.Debug("lock conflict; retrying the transaction", "table", t.spec.Table, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return Result{}, ctx.Err()
		case <-time.After(wait/2 + rand.N(wait)):
		}
		wait *= 2
	}
}

// keyError names the key a statement of one change failed on.
type keyError struct {
	key string
	err error
}

func (e *keyError) Error() string { return e.err.Error() }
func (e *keyError) Unwrap() error { return e.err }

func (t *Target) execOnce(ctx context.Context, p *plan, chs []change) (res Result, err error) {
	tx, err := t.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return res, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	for start := 0; start < len(chs); {
		end, size := start, 0
		for end < len(chs) && end-start < chunkRows && (end == start || size+chs[end].size <= t.maxStmt) {
			size += chs[end].size
			end++
		}
		one, err := t.execChunk(ctx, tx, p, chs[start:end])
		if err != nil {
			if end-start == 1 {
				err = &keyError{key: chs[start].ref.Key, err: err}
			}
			return Result{}, err
		}
		res.Newer += one.Newer
		res.Written += one.Written
		res.Deleted += one.Deleted
		start = end
	}
	if err := tx.Commit(); err != nil {
		return Result{}, fmt.Errorf("commit: %w", err)
	}
	return res, nil
}

// ledgerRow is a key's ledger state; version 0 is a placeholder (no
// change applied yet).
type ledgerRow struct {
	version int64
	hash    []byte
	applies int64
	found   bool
}

// execChunk locks, reads and advances the ledger rows of chs and writes
// their rows, in tx.
func (t *Target) execChunk(ctx context.Context, tx *sql.Tx, p *plan, chs []change) (Result, error) {
	res := Result{}
	// 1. Lock every key's ledger row, creating placeholders, in key order.
	args := make([]any, 0, len(chs)*len(p.keyIdx))
	for _, c := range chs {
		args = append(args, c.key...)
	}
	if _, err := tx.ExecContext(ctx, p.lockSQL(len(chs)), args...); err != nil {
		return res, fmt.Errorf("lock ledger rows: %w", err)
	}
	// 2. Read them (the locks make this the final state).
	led := make([]ledgerRow, len(chs))
	rows, err := tx.QueryContext(ctx, p.readSQL(len(chs)), args...)
	if err != nil {
		return res, fmt.Errorf("read ledger: %w", err)
	}
	for rows.Next() {
		var ord int
		var r ledgerRow
		if err := rows.Scan(&ord, &r.version, &r.hash, &r.applies); err != nil {
			rows.Close()
			return res, fmt.Errorf("read ledger: %w", err)
		}
		if ord < 0 || ord >= len(chs) {
			rows.Close()
			return res, fmt.Errorf("read ledger: ordinal %d out of range", ord)
		}
		r.found = true
		led[ord] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("read ledger: %w", err)
	}
	// 3. Decide.
	var ups, dels, adv []int // indexes into chs
	applies := make([]int64, len(chs))
	for i, c := range chs {
		l := led[i]
		if !l.found {
			return res, errs.Permanentf("ledger row of key %s was taken by another key of the batch that the target's key collation holds equal (a case-insensitive key column?)", c.ref.Key)
		}
		applied := l.version > 0
		if applied && l.version >= c.ref.Version {
			continue // stale: a newer or equal version was applied
		}
		res.Newer++
		adv = append(adv, i)
		applies[i] = l.applies
		if applied && bytes.Equal(l.hash, c.hash) {
			continue // same content: advance the version only
		}
		if applied {
			applies[i] = l.applies + 1
		} else {
			applies[i] = 1
		}
		if c.del {
			dels = append(dels, i)
		} else {
			ups = append(ups, i)
		}
	}
	// 4. Write the rows.
	if len(ups) > 0 {
		n, err := t.upsert(ctx, tx, p, chs, ups)
		if err != nil {
			return res, err
		}
		res.Written += n
	}
	if len(dels) > 0 && p.delete != "" {
		args = args[:0]
		for _, i := range dels {
			args = append(args, chs[i].key...)
		}
		sr, err := tx.ExecContext(ctx, p.deleteSQL(len(dels)), args...)
		if err != nil {
			return res, fmt.Errorf("delete rows: %w", err)
		}
		n, _ := sr.RowsAffected()
		res.Deleted += int(n)
	}
	// 5. Advance the ledger.
	if len(adv) > 0 {
		args = args[:0]
		for _, i := range adv {
			args = append(args, chs[i].key...)
			args = append(args, chs[i].ref.Version, chs[i].hash, applies[i])
		}
		if _, err := tx.ExecContext(ctx, p.advanceSQL(len(adv)), args...); err != nil {
			return res, fmt.Errorf("write ledger: %w", err)
		}
	}
	return res, nil
}

// upsert writes the owned columns of chs[idx]: one multi-row INSERT … ON
// DUPLICATE KEY UPDATE when the key's is the table's only unique index,
// else row by row (UPDATE by key, then INSERT when no row matched), so that
// a clash on another unique index fails instead of updating another key's
// row.
func (t *Target) upsert(ctx context.Context, tx *sql.Tx, p *plan, chs []change, idx []int) (int, error) {
	if !p.otherUnique {
		args := make([]any, 0, len(idx)*len(p.names))
		for _, i := range idx {
			args = append(args, chs[i].vals...)
		}
		if _, err := tx.ExecContext(ctx, p.upsertSQL(len(idx)), args...); err != nil {
			return 0, fmt.Errorf("upsert rows: %w", err)
		}
		return len(idx), nil
	}
	for _, i := range idx {
		c := chs[i]
		args := make([]any, 0, len(p.names)+len(p.keyIdx))
		for j, v := range c.vals {
			if !p.isKey[j] {
				args = append(args, v)
			}
		}
		args = append(args, c.key...)
		sr, err := tx.ExecContext(ctx, p.updateSQL, args...)
		if err != nil {
			return 0, &keyError{key: c.ref.Key, err: fmt.Errorf("update row: %w", err)}
		}
		if n, _ := sr.RowsAffected(); n > 0 {
			continue
		}
		if _, err := tx.ExecContext(ctx, p.insertSQL(1), c.vals...); err != nil {
			return 0, &keyError{key: c.ref.Key, err: fmt.Errorf("insert row: %w", err)}
		}
	}
	return len(idx), nil
}

// MySQL and MariaDB error numbers oneway tells apart.
const (
	erLockWaitTimeout   = 1205
	erLockDeadlock      = 1213
	erTooManyConns      = 1040
	erConCount          = 1203 // user has too many connections
	erServerShutdown    = 1053
	erReadOnly          = 1290 // --read-only / --super-read-only
	erReadOnlyMaria     = 1836 // read-only mode (replica)
	erTableFull         = 1114
	erDiskFull          = 1021
	erQueryInterrupted  = 1317
	erConnKilled        = 1927 // MariaDB
	erNetPacketTooLarge = 1153
	erCheckConstraint   = 3819 // MySQL
	erConstraintFailed  = 4025 // MariaDB
	erBadNull           = 1048
	erNoDefault         = 1364
	erTruncatedValue    = 1366
	erDataTruncated     = 1265
	erIllegalValue      = 1367
	erInvalidJSON       = 3140
	erWrongValueForType = 1411
	erDupEntry          = 1062
	erRowIsReferenced   = 1451
	erNoReferencedRow   = 1452
	erDataTooLong       = 1406
	erOutOfRange        = 1264
	erTruncatedWrong    = 1292
)

// classify marks MySQL errors: bad data, constraints and schema or access
// problems (SQLSTATE classes 22, 23, 42, and the HY000 errors of the same
// kind) are permanent; a server that cannot be reached, is shutting down,
// refuses connections, is read-only or full is an outage; deadlocks, lock
// wait timeouts and the rest are transient.
func classify(err error) error {
	if err == nil || errs.IsPermanent(err) || errs.IsUnavailable(err) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case erLockWaitTimeout, erLockDeadlock, erQueryInterrupted:
			return err
		case erTooManyConns, erConCount, erServerShutdown, erReadOnly, erReadOnlyMaria,
			erTableFull, erDiskFull, erConnKilled:
			return errs.Unavailable(err)
		case erCheckConstraint, erConstraintFailed, erBadNull, erNoDefault, erTruncatedValue, erDataTruncated,
			erIllegalValue, erInvalidJSON, erWrongValueForType, erDupEntry, erRowIsReferenced, erNoReferencedRow,
			erDataTooLong, erOutOfRange, erTruncatedWrong, erNetPacketTooLarge:
			return errs.Permanent(err)
		}
		switch string(me.SQLState[:2]) {
		case "22", "23", "42":
			return errs.Permanent(err)
		case "08":
			return errs.Unavailable(err)
		}
		return err
	}
	if errors.Is(err, mysql.ErrPktTooLarge) {
		return errs.Permanent(err) // one change larger than max_allowed_packet
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, sql.ErrConnDone) {
		return errs.Unavailable(err)
	}
	return err
}

// lockConflict reports a deadlock or a lock wait timeout.
func lockConflict(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == erLockDeadlock || me.Number == erLockWaitTimeout)
}

// name is the quoted, database-qualified name of a table.
func (t *Target) name(table string) string { return quote(t.database) + "." + quote(table) }

// isDelete reports a delete change.
func isDelete(c *onewayv1.Change) bool { return c.GetOp() == onewayv1.Op_OP_DELETE }

// hashOf is a change's content hash; a delete's is empty (a tombstone,
// distinct from any content hash).
func hashOf(c *onewayv1.Change) []byte {
	if isDelete(c) {
		return []byte{}
	}
	if h := c.GetHash(); len(h) > 0 {
		return h
	}
	return event.RowHash(c.GetRow())
}
