// Package sqlitestage is the embedded stage store: one SQLite file
// (modernc.org/sqlite, pure Go) under the data directory, for the
// single-process default (`oneway up`).
//
// The file, <dir>/stage.db, is in WAL mode with synchronous=FULL: a commit
// has reached the disk when Apply returns, so the caller may ack. Several
// pipelines may share it. Writes go through one connection and run in
// BEGIN IMMEDIATE transactions, which take SQLite's write lock before
// reading, so the version guard is a plain read-then-write: two writers
// (goroutines, or another process that opened the same file) serialise at
// BEGIN and the second sees what the first committed. Reads use a small
// pool of read-only connections and never wait for writes (WAL). A writer
// that cannot get the lock within the busy timeout (10 s, cut short by
// ctx) fails with a transient error.
package sqlitestage

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/internal/storekit"
)

// FileName is the stage file's name in the data directory.
const FileName = "stage.db"

const (
	busyTimeoutMS = 10000
	readConns     = 4
	// joinChunk bounds the keys (bound parameters) of one Join query.
	joinChunk = 512
)

// Config configures a Store.
type Config struct {
	// Dir is the data directory; created when missing.
	Dir string
	// Pipeline is the pipeline this store serves.
	Pipeline string
}

// Store is the stage of one pipeline in a SQLite file. Safe for
// concurrent use.
type Store struct {
	w, r     *sql.DB // one writing connection; read-only connections
	path     string
	pipeline string
	closed   atomic.Bool

	mu     sync.Mutex
	scopes map[stage.Side]int64

	stmtMu  sync.Mutex
	upserts map[int]*sql.Stmt // prepared upserts by number of records
	joinMu  sync.Mutex        // apart from stmtMu: a join never waits for a write
	joins   map[int]*sql.Stmt // prepared join queries by number of keys
}

var _ stage.Store = (*Store)(nil)

// Open opens (creating and migrating when needed) <cfg.Dir>/stage.db.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	return open(ctx, cfg, len(migrations))
}

func open(ctx context.Context, cfg Config, upTo int) (*Store, error) {
	if err := config.ValidName(cfg.Pipeline); err != nil {
		return nil, errs.Permanentf("stage pipeline: %w", err)
	}
	if cfg.Dir == "" {
		return nil, errs.Permanentf("stage of pipeline %q: no data directory", cfg.Pipeline)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, errs.Permanentf("stage data directory %q: %w", cfg.Dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, errs.Unavailable(fmt.Errorf("stage data directory %s: %w", dir, err))
	}
	path := filepath.Join(dir, FileName)
	s := &Store{path: path, pipeline: cfg.Pipeline, scopes: map[stage.Side]int64{}, upserts: map[int]*sql.Stmt{}, joins: map[int]*sql.Stmt{}}
	if err := s.openDBs(ctx, upTo); err != nil {
		s.closeDBs()
		return nil, classify(fmt.Errorf("stage %s: open: %w", path, err))
	}
	return s, nil
}

func (s *Store) openDBs(ctx context.Context, upTo int) error {
	var err error
	if s.w, err = sql.Open("sqlite", dsn(s.path, true)); err != nil {
		return err
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)
	var mode string
	if err := s.w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if !strings.EqualFold(mode, "wal") {
		return errs.Permanentf("journal_mode is %q, not WAL (does the file system support it?)", mode)
	}
	if err := migrate(ctx, s.w, s.path, upTo); err != nil {
		return err
	}
	if s.r, err = sql.Open("sqlite", dsn(s.path, false)); err != nil {
		return err
	}
	s.r.SetMaxOpenConns(readConns)
	s.r.SetMaxIdleConns(readConns)
	return s.r.PingContext(ctx)
}

// dsn is a file: URI (path escaped) with the connection's pragmas. The
// writer's BEGIN means BEGIN IMMEDIATE (_txlock); readers are query_only.
// The writer checkpoints the WAL every 16384 pages (64 MiB with 4 KiB
// pages) rather than SQLite's 1000: a stage takes large transactions of
// keys spread over the tree, and a page rewritten by many of them is then
// copied to the file once, not once per commit.
func dsn(path string, writer bool) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	if writer {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(FULL)")
		q.Add("_pragma", "wal_autocheckpoint(16384)")
		q.Set("_txlock", "immediate")
	} else {
		q.Add("_pragma", "query_only(1)")
	}
	return "file:" + r.Replace(filepath.ToSlash(path)) + "?" + q.Encode()
}

func (s *Store) closeDBs() error {
	var errW, errR error
	s.stmtMu.Lock()
	for _, st := range s.upserts {
		_ = st.Close()
	}
	clear(s.upserts)
	s.stmtMu.Unlock()
	s.joinMu.Lock()
	for _, st := range s.joins {
		_ = st.Close()
	}
	clear(s.joins)
	s.joinMu.Unlock()
	if s.w != nil {
		errW = s.w.Close()
	}
	if s.r != nil {
		errR = s.r.Close()
	}
	return errors.Join(errW, errR)
}

// Close closes the file. Idempotent.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	if err := s.closeDBs(); err != nil {
		return fmt.Errorf("stage %s: close: %w", s.path, err)
	}
	return nil
}

// Path is the stage file.
func (s *Store) Path() string { return s.path }

func (s *Store) where(side stage.Side) string {
	return fmt.Sprintf("stage %s (pipeline %q, side %q)", s.path, s.pipeline, string(side))
}

func (s *Store) fail(op string, side stage.Side, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("%s: %s: %w", s.where(side), op, stage.ErrClosed)
	}
	return classify(fmt.Errorf("%s: %s: %w", s.where(side), op, err))
}

// classify marks SQLite errors: constraints and bad SQL are permanent; a
// full disk, I/O errors, an unopenable, read-only or corrupt file are
// outages (an operator must act); SQLITE_BUSY (the busy timeout ran out)
// and the rest are transient.
func classify(err error) error {
	if err == nil || errs.IsPermanent(err) || errs.IsUnavailable(err) {
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
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w (another writer held the stage beyond the busy timeout)", err)
	}
	return err
}

// scope returns the id of side, registering it the first time.
func (s *Store) scope(ctx context.Context, side stage.Side) (int64, error) {
	if s.closed.Load() {
		return 0, fmt.Errorf("%s: %w", s.where(side), stage.ErrClosed)
	}
	if err := side.Validate(); err != nil {
		return 0, fmt.Errorf("stage of pipeline %q: %w", s.pipeline, err)
	}
	s.mu.Lock()
	id, ok := s.scopes[side]
	s.mu.Unlock()
	if ok {
		return id, nil
	}
	err := s.w.QueryRowContext(ctx, `
INSERT INTO scopes (pipeline, side, created_at) VALUES (?, ?, ?)
ON CONFLICT (pipeline, side) DO UPDATE SET side = excluded.side
RETURNING id`, s.pipeline, string(side), time.Now().UnixNano()).Scan(&id)
	if err != nil {
		return 0, s.fail("register scope", side, err)
	}
	s.mu.Lock()
	s.scopes[side] = id
	s.mu.Unlock()
	return id, nil
}

func (s *Store) targetScope(ctx context.Context, target string) (int64, stage.Side, error) {
	if err := stage.ValidateTarget(target); err != nil {
		return 0, "", fmt.Errorf("stage of pipeline %q: %w", s.pipeline, err)
	}
	side := stage.TargetSide(target)
	id, err := s.scope(ctx, side)
	return id, side, err
}

// write runs f in a write transaction (BEGIN IMMEDIATE) and commits.
func (s *Store) write(ctx context.Context, f func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// Apply implements stage.Records.
func (s *Store) Apply(ctx context.Context, side stage.Side, recs []stage.Record) (stage.Applied, error) {
	return s.apply(ctx, side, recs, false)
}

// ApplyReports implements stage.Records.
func (s *Store) ApplyReports(ctx context.Context, target string, recs []stage.Record) (stage.Applied, error) {
	if err := stage.ValidateTarget(target); err != nil {
		return stage.Applied{}, fmt.Errorf("stage of pipeline %q: %w", s.pipeline, err)
	}
	return s.apply(ctx, stage.TargetSide(target), recs, true)
}

// apply is Apply, and with reports ApplyReports on a target side.
func (s *Store) apply(ctx context.Context, side stage.Side, recs []stage.Record, reports bool) (stage.Applied, error) {
	scope, err := s.scope(ctx, side)
	if err != nil {
		return stage.Applied{}, err
	}
	kept, dropped, err := storekit.Prepare(recs)
	if err != nil {
		return stage.Applied{}, fmt.Errorf("%s: apply: %w", s.where(side), err)
	}
	if len(kept) == 0 {
		return stage.Applied{Stale: dropped}, nil
	}
	// The statements are prepared before the transaction takes the one
	// writing connection.
	stmts := map[int]*sql.Stmt{}
	for n := len(kept); n > 0; n -= upsertSize(n) {
		size := upsertSize(n)
		if stmts[size], err = s.upsertStmt(ctx, size); err != nil {
			return stage.Applied{}, s.fail(fmt.Sprintf("prepare the upsert of %d records", size), side, err)
		}
	}
	var res stage.Applied
	err = s.write(ctx, func(tx *sql.Tx) error {
		res = stage.Applied{Stale: dropped}
		// Under the write lock, one multi-row statement per chunk of
		// applyChunk records (a statement per record costs more in the
		// driver than in SQLite). The upsert writes only a newer version,
		// and changed_version moves only when the content or the deleted
		// flag changes, so RETURNING tells a change from a version that
		// moved. Keys with no row back were not written: a redelivery or
		// stale, told apart by one read of their stored versions.
		now := time.Now().UnixNano()
		written := make(map[string]bool, len(kept)) // key → content changed
		var left []stage.Record
		for rest := kept; len(rest) > 0; {
			if err := ctx.Err(); err != nil {
				return err
			}
			chunk := rest[:upsertSize(len(rest))]
			rest = rest[len(chunk):]
			if err := upsert(ctx, tx.StmtContext(ctx, stmts[len(chunk)]), scope, now, chunk, written); err != nil {
				return err
			}
			for _, r := range chunk {
				if _, ok := written[r.Key.Text]; !ok {
					left = append(left, r)
				}
			}
		}
		stored := make(map[string]int64, len(left))
		for chunk := range slices.Chunk(left, joinChunk) {
			if err := readVersions(ctx, tx, scope, chunk, stored); err != nil {
				return err
			}
		}
		confirmed := map[string]bool{}
		if reports {
			for chunk := range slices.Chunk(kept, joinChunk) {
				if err := markReported(ctx, tx, scope, chunk, confirmed); err != nil {
					return err
				}
			}
		}
		// Results in key order (kept is sorted), with the caller's parts.
		for _, r := range kept {
			changed, ok := written[r.Key.Text]
			switch {
			case ok && changed:
				res.Changed = append(res.Changed, r.Key)
			case ok:
				res.Current = append(res.Current, r.Key)
			case stored[r.Key.Text] == r.Version:
				res.Current = append(res.Current, r.Key)
			default:
				res.Stale++
			}
			if confirmed[r.Key.Text] {
				res.Confirmed = append(res.Confirmed, r.Key)
			}
		}
		return ctx.Err()
	})
	if err != nil {
		return stage.Applied{}, s.fail(fmt.Sprintf("apply %d records", len(kept)), side, err)
	}
	return res, nil
}

// applyChunk bounds the records of one upsert statement (9 bound
// parameters each, below SQLite's limit of 32766).
const applyChunk = 1024

// upsertSize is the number of records of the next upsert statement for n
// records left: applyChunk, or the largest power of two up to n, so that
// a few prepared statements serve every call.
func upsertSize(n int) int {
	if n >= applyChunk {
		return applyChunk
	}
	size := 1
	for size*2 <= n {
		size *= 2
	}
	return size
}

// upsertStmt returns the prepared upsert of n records, preparing it on the
// writing connection the first time. Not to be called in a write
// transaction (it would wait for the connection that holds).
func (s *Store) upsertStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if st, ok := s.upserts[n]; ok {
		return st, nil
	}
	var q strings.Builder
	q.WriteString("INSERT INTO records AS r (scope, key, parts, version, hash, packed_row, deleted, changed_version, staged_at) VALUES ")
	// Anonymous parameters only: the driver looks each numbered one up
	// by name, which is quadratic in their number.
	for i := range n {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?)")
	}
	q.WriteString(`
ON CONFLICT (scope, key) DO UPDATE SET
  parts = excluded.parts, version = excluded.version, hash = excluded.hash, packed_row = excluded.packed_row,
  deleted = excluded.deleted, staged_at = excluded.staged_at,
  changed_version = CASE WHEN r.deleted = excluded.deleted AND r.hash = excluded.hash
                         THEN r.changed_version ELSE excluded.version END
WHERE r.version < excluded.version
RETURNING key, changed_version = version`)
	st, err := s.w.PrepareContext(ctx, q.String())
	if err != nil {
		return nil, err
	}
	s.upserts[n] = st
	return st, nil
}

// upsert writes recs (distinct keys) with the version guard in one
// statement and notes in written, for each key it wrote, whether its
// content changed.
// st is the upsert of len(recs) records, bound to the transaction.
func upsert(ctx context.Context, st *sql.Stmt, scope, now int64, recs []stage.Record, written map[string]bool) error {
	args := make([]any, 0, 9*len(recs))
	for _, r := range recs {
		args = append(args, scope, r.Key.Text, storekit.PackParts(r.Key.Parts), r.Version, nonNil(r.Hash), r.Row, r.Deleted, r.Version, now)
	}
	// Run without ctx: the driver would start a goroutine per statement
	// to watch it; ctx is checked between statements.
	rows, err := st.QueryContext(context.WithoutCancel(ctx), args...)
	if err != nil {
		return fmt.Errorf("write %d keys from %s: %w", len(recs), recs[0].Key.Text, err)
	}
	defer rows.Close()
	for rows.Next() {
		var key string
		var changed bool
		if err := rows.Scan(&key, &changed); err != nil {
			return fmt.Errorf("write %d keys from %s: %w", len(recs), recs[0].Key.Text, err)
		}
		written[key] = changed
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("write %d keys from %s: %w", len(recs), recs[0].Key.Text, err)
	}
	return nil
}

// readVersions reads the stored versions of recs' keys into stored.
func readVersions(ctx context.Context, tx *sql.Tx, scope int64, recs []stage.Record, stored map[string]int64) error {
	args := make([]any, 0, 1+len(recs))
	args = append(args, scope)
	for _, r := range recs {
		args = append(args, r.Key.Text)
	}
	rows, err := tx.QueryContext(context.WithoutCancel(ctx),
		"SELECT key, version FROM records WHERE scope = ? AND key IN (?"+strings.Repeat(", ?", len(recs)-1)+")", args...)
	if err != nil {
		return fmt.Errorf("read %d keys from %s: %w", len(recs), recs[0].Key.Text, err)
	}
	defer rows.Close()
	for rows.Next() {
		var key string
		var version int64
		if err := rows.Scan(&key, &version); err != nil {
			return fmt.Errorf("read %d keys from %s: %w", len(recs), recs[0].Key.Text, err)
		}
		stored[key] = version
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read %d keys from %s: %w", len(recs), recs[0].Key.Text, err)
	}
	return nil
}

// markReported raises the push log's reported position of recs' keys to
// their versions, and sets confirmed[key] for the keys whose last push
// (position > 0) the version reaches. It reads the keys' entries first:
// most reports (first inserts) have none, and one read of a chunk costs
// far less than a multi-row update. recs are in key order, as RecordPushes
// writes.
func markReported(ctx context.Context, tx *sql.Tx, scope int64, recs []stage.Record, confirmed map[string]bool) error {
	fail := func(err error) error {
		return fmt.Errorf("mark reported pushes of %d keys from %s: %w", len(recs), recs[0].Key.Text, err)
	}
	args := make([]any, 0, 1+len(recs))
	args = append(args, scope)
	given := make(map[string]int64, len(recs))
	for _, r := range recs {
		args = append(args, r.Key.Text)
		given[r.Key.Text] = r.Version
	}
	rows, err := tx.QueryContext(context.WithoutCancel(ctx),
		"SELECT key, position, reported FROM pushes WHERE scope = ? AND key IN (?"+strings.Repeat(", ?", len(recs)-1)+") ORDER BY key", args...)
	if err != nil {
		return fail(err)
	}
	var raise []string
	for rows.Next() {
		var key string
		var position, reported int64
		if err := rows.Scan(&key, &position, &reported); err != nil {
			rows.Close()
			return fail(err)
		}
		v := given[key]
		if position > 0 && position <= v {
			confirmed[key] = true
		}
		if reported < v {
			raise = append(raise, key)
		}
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return fail(err)
	}
	rows.Close()
	for _, key := range raise {
		if _, err := tx.ExecContext(context.WithoutCancel(ctx), "UPDATE pushes SET reported = max(reported, ?) WHERE scope = ? AND key = ?",
			given[key], scope, key); err != nil {
			return fail(err)
		}
	}
	return nil
}

// nonNil makes a tombstone's empty hash an empty BLOB rather than NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

const recordCols = "scope, key, parts, version, hash, packed_row, deleted, staged_at"

// collect reads records (recordCols) and splits them by scope.
func collect(rows *sql.Rows, srcScope int64) (src, tgt []stage.Record, err error) {
	defer rows.Close()
	for rows.Next() {
		var scope, stagedAt int64
		var parts []byte
		var r stage.Record
		if err := rows.Scan(&scope, &r.Key.Text, &parts, &r.Version, &r.Hash, &r.Row, &r.Deleted, &stagedAt); err != nil {
			return nil, nil, err
		}
		if r.Key.Parts, err = storekit.UnpackParts(parts); err != nil {
			return nil, nil, fmt.Errorf("key %s: %w", r.Key.Text, err)
		}
		r.StagedAt = time.Unix(0, stagedAt)
		if r.Deleted {
			r.Row, r.Hash = nil, nil
		}
		if scope == srcScope {
			src = append(src, r)
		} else {
			tgt = append(tgt, r)
		}
	}
	return src, tgt, rows.Err()
}

// Join implements stage.Records.
func (s *Store) Join(ctx context.Context, target string, keys []string) ([]stage.Pair, error) {
	tscope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	sscope, err := s.scope(ctx, stage.SourceSide)
	if err != nil {
		return nil, err
	}
	keys = storekit.UniqueKeys(keys)
	srcBy := make(map[string]*stage.Record, len(keys))
	tgtBy := make(map[string]*stage.Record, len(keys))
	for rest := keys; len(rest) > 0; {
		chunk := rest[:joinSize(len(rest))]
		rest = rest[len(chunk):]
		st, err := s.joinStmt(ctx, len(chunk))
		if err != nil {
			return nil, s.fail("join", side, err)
		}
		args := make([]any, 0, 2+len(chunk))
		args = append(args, sscope, tscope)
		for _, k := range chunk {
			args = append(args, k)
		}
		rows, err := st.QueryContext(ctx, args...)
		if err != nil {
			return nil, s.fail("join", side, err)
		}
		src, tgt, err := collect(rows, sscope)
		if err != nil {
			return nil, s.fail("join", side, err)
		}
		for i := range src {
			srcBy[src[i].Key.Text] = &src[i]
		}
		for i := range tgt {
			tgtBy[tgt[i].Key.Text] = &tgt[i]
		}
	}
	return storekit.Join(keys, srcBy, tgtBy), nil
}

// joinSize is the number of keys of the next join query for n keys left:
// joinChunk, or the largest power of two up to n (see upsertSize).
func joinSize(n int) int {
	if n >= joinChunk {
		return joinChunk
	}
	size := 1
	for size*2 <= n {
		size *= 2
	}
	return size
}

// joinStmt returns the prepared join query of n keys (on the reading
// connections), preparing it the first time.
func (s *Store) joinStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	if st, ok := s.joins[n]; ok {
		return st, nil
	}
	st, err := s.r.PrepareContext(ctx, "SELECT "+recordCols+" FROM records WHERE scope IN (?, ?) AND key IN (?"+strings.Repeat(", ?", n-1)+")")
	if err != nil {
		return nil, err
	}
	s.joins[n] = st
	return st, nil
}

// Scan implements stage.Records. Both sides are read in one read
// transaction, so a page is one snapshot.
func (s *Store) Scan(ctx context.Context, target string, after string, limit int) ([]stage.Pair, error) {
	if err := storekit.CheckPage(limit); err != nil {
		return nil, fmt.Errorf("stage of pipeline %q: scan: %w", s.pipeline, err)
	}
	tscope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	sscope, err := s.scope(ctx, stage.SourceSide)
	if err != nil {
		return nil, err
	}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, s.fail("scan", side, err)
	}
	defer tx.Rollback()
	var sides [2][]stage.Record
	for i, scope := range []int64{sscope, tscope} {
		rows, err := tx.QueryContext(ctx, "SELECT "+recordCols+" FROM records WHERE scope = ? AND key > ? ORDER BY key LIMIT ?", scope, after, limit)
		if err != nil {
			return nil, s.fail("scan", side, err)
		}
		if sides[i], _, err = collect(rows, scope); err != nil {
			return nil, s.fail("scan", side, err)
		}
	}
	return storekit.Page(sides[0], sides[1], limit), nil
}

// Count implements stage.Records.
func (s *Store) Count(ctx context.Context, side stage.Side) (stage.Counts, error) {
	scope, err := s.scope(ctx, side)
	if err != nil {
		return stage.Counts{}, err
	}
	var c stage.Counts
	err = s.r.QueryRowContext(ctx, `
SELECT coalesce(sum(CASE WHEN deleted THEN 0 ELSE 1 END), 0), coalesce(sum(CASE WHEN deleted THEN 1 ELSE 0 END), 0)
FROM records WHERE scope = ?`, scope).Scan(&c.Live, &c.Deleted)
	if err != nil {
		return stage.Counts{}, s.fail("count", side, err)
	}
	return c, nil
}

// RecordPushes implements stage.PushLog.
func (s *Store) RecordPushes(ctx context.Context, target string, pushes []stage.Push) ([]int, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	if err := storekit.CheckPushes(pushes); err != nil {
		return nil, fmt.Errorf("%s: record pushes: %w", s.where(side), err)
	}
	out := make([]int, len(pushes))
	if len(pushes) == 0 {
		return out, nil
	}
	// Write in key order, like Apply.
	order := make([]int, len(pushes))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(pushes[a].Key, pushes[b].Key) })
	err = s.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, `
INSERT INTO pushes (scope, key, version, push_count, first_at, last_at, position) VALUES (?, ?, ?, 1, ?, ?, ?)
ON CONFLICT (scope, key) DO UPDATE SET
  push_count = CASE WHEN pushes.version = excluded.version THEN pushes.push_count + 1 ELSE 1 END,
  first_at = CASE WHEN pushes.version = excluded.version THEN pushes.first_at ELSE excluded.first_at END,
  position = CASE WHEN excluded.position > 0 THEN excluded.position
                  WHEN pushes.version = excluded.version THEN pushes.position ELSE 0 END,
  version = excluded.version, last_at = excluded.last_at
RETURNING push_count`)
		if err != nil {
			return err
		}
		defer st.Close()
		now := time.Now().UnixNano()
		for _, i := range order {
			if err := st.QueryRowContext(ctx, scope, pushes[i].Key, pushes[i].Version, now, now, pushes[i].Position).Scan(&out[i]); err != nil {
				return fmt.Errorf("key %s: %w", pushes[i].Key, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.fail("record pushes", side, err)
	}
	return out, nil
}

// Stuck implements stage.PushLog.
func (s *Store) Stuck(ctx context.Context, target string, minCount int, after string, limit int) ([]stage.PushState, error) {
	if err := storekit.CheckPage(limit); err != nil {
		return nil, fmt.Errorf("stage of pipeline %q: stuck: %w", s.pipeline, err)
	}
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `
SELECT `+pushCols+` FROM pushes
WHERE scope = ? AND push_count >= ? AND key > ? ORDER BY key LIMIT ?`, scope, minCount, after, limit)
	if err != nil {
		return nil, s.fail("list stuck keys", side, err)
	}
	out, err := scanPushStates(rows, nil)
	if err != nil {
		return nil, s.fail("list stuck keys", side, err)
	}
	return out, nil
}

// pushCols are the columns scanPushStates reads.
const pushCols = `key, version, push_count, position, reported, first_at, last_at`

// scanPushStates appends the push states of rows to out and closes rows.
func scanPushStates(rows *sql.Rows, out []stage.PushState) ([]stage.PushState, error) {
	defer rows.Close()
	for rows.Next() {
		var p stage.PushState
		var first, last int64
		if err := rows.Scan(&p.Key, &p.Version, &p.Count, &p.Position, &p.Reported, &first, &last); err != nil {
			return nil, err
		}
		p.FirstAt, p.LastAt = time.Unix(0, first), time.Unix(0, last)
		out = append(out, p)
	}
	return out, rows.Err()
}

// pushesChunk bounds the keys of one Pushes query (SQLite's default
// limit of bound parameters is 32766).
const pushesChunk = 500

// Pushes implements stage.PushLog.
func (s *Store) Pushes(ctx context.Context, target string, keys []string) ([]stage.PushState, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	keys = storekit.UniqueKeys(keys)
	var out []stage.PushState
	for len(keys) > 0 {
		n := min(len(keys), pushesChunk)
		args := make([]any, 0, n+1)
		args = append(args, scope)
		for _, k := range keys[:n] {
			args = append(args, k)
		}
		rows, err := s.r.QueryContext(ctx, `SELECT `+pushCols+` FROM pushes WHERE scope = ? AND key IN (?`+
			strings.Repeat(", ?", n-1)+`) ORDER BY key`, args...)
		if err != nil {
			return nil, s.fail("read pushes", side, err)
		}
		if out, err = scanPushStates(rows, out); err != nil {
			return nil, s.fail("read pushes", side, err)
		}
		keys = keys[n:]
	}
	return out, nil
}

// ClearPushes implements stage.PushLog.
func (s *Store) ClearPushes(ctx context.Context, target string, keys []string) (int64, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return 0, err
	}
	var n int64
	err = s.write(ctx, func(tx *sql.Tx) error {
		if keys == nil {
			res, err := tx.ExecContext(ctx, "DELETE FROM pushes WHERE scope = ?", scope)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		}
		st, err := tx.PrepareContext(ctx, "DELETE FROM pushes WHERE scope = ? AND key = ?")
		if err != nil {
			return err
		}
		defer st.Close()
		for _, k := range storekit.UniqueKeys(keys) {
			res, err := st.ExecContext(ctx, scope, k)
			if err != nil {
				return err
			}
			m, err := res.RowsAffected()
			if err != nil {
				return err
			}
			n += m
		}
		return nil
	})
	if err != nil {
		return 0, s.fail("clear pushes", side, err)
	}
	return n, nil
}

const holdCols = "state, deletes, total, held_at, coalesce(approved_by, ''), approved_at"

// scanHold reads holdCols.
func scanHold(scan func(dest ...any) error, target string) (stage.Hold, error) {
	h := stage.Hold{Target: target}
	var state string
	var heldAt int64
	var approvedAt sql.NullInt64
	if err := scan(&state, &h.Deletes, &h.Total, &heldAt, &h.ApprovedBy, &approvedAt); err != nil {
		return h, err
	}
	h.State = stage.HoldState(state)
	h.HeldAt = time.Unix(0, heldAt)
	if approvedAt.Valid {
		h.ApprovedAt = time.Unix(0, approvedAt.Int64)
	}
	return h, nil
}

// Hold implements stage.Approvals.
func (s *Store) Hold(ctx context.Context, target string, c stage.HoldCounts) (stage.Hold, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return stage.Hold{}, err
	}
	var h stage.Hold
	err = s.write(ctx, func(tx *sql.Tx) error {
		row := tx.QueryRowContext(ctx, `
INSERT INTO holds (scope, state, deletes, total, held_at) VALUES (?, 'held', ?, ?, ?)
ON CONFLICT (scope) DO UPDATE SET
  deletes = CASE WHEN holds.state = 'held' THEN excluded.deletes ELSE holds.deletes END,
  total = CASE WHEN holds.state = 'held' THEN excluded.total ELSE holds.total END
RETURNING `+holdCols, scope, c.Deletes, c.Total, time.Now().UnixNano())
		var err error
		h, err = scanHold(row.Scan, target)
		return err
	})
	if err != nil {
		return stage.Hold{}, s.fail("hold diff", side, err)
	}
	return h, nil
}

// Approve implements stage.Approvals.
func (s *Store) Approve(ctx context.Context, target, by string) (stage.Hold, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return stage.Hold{}, err
	}
	if err := stage.ValidateApprover(by); err != nil {
		return stage.Hold{}, fmt.Errorf("%s: %w", s.where(side), err)
	}
	var h stage.Hold
	err = s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE holds SET state = 'approved', approved_by = ?, approved_at = ? WHERE scope = ? AND state = 'held'`,
			by, time.Now().UnixNano(), scope); err != nil {
			return err
		}
		var err error
		h, err = scanHold(tx.QueryRowContext(ctx, "SELECT "+holdCols+" FROM holds WHERE scope = ?", scope).Scan, target)
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return stage.Hold{}, errs.Permanent(fmt.Errorf("%s: approve: %w", s.where(side), stage.ErrNoHold))
	}
	if err != nil {
		return stage.Hold{}, s.fail("approve", side, err)
	}
	return h, nil
}

// Release implements stage.Approvals.
func (s *Store) Release(ctx context.Context, target string) error {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return err
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "DELETE FROM holds WHERE scope = ?", scope)
		return err
	})
	if err != nil {
		return s.fail("release hold", side, err)
	}
	return nil
}

// Holds implements stage.Approvals.
func (s *Store) Holds(ctx context.Context) ([]stage.Hold, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("%s: %w", s.where(""), stage.ErrClosed)
	}
	rows, err := s.r.QueryContext(ctx, `
SELECT sc.side, h.state, h.deletes, h.total, h.held_at, coalesce(h.approved_by, ''), h.approved_at
FROM holds h JOIN scopes sc ON sc.id = h.scope WHERE sc.pipeline = ?`, s.pipeline)
	if err != nil {
		return nil, s.fail("list holds", "", err)
	}
	defer rows.Close()
	var out []stage.Hold
	for rows.Next() {
		var side string
		h, err := scanHold(func(dest ...any) error { return rows.Scan(append([]any{&side}, dest...)...) }, "")
		if err != nil {
			return nil, s.fail("list holds", "", err)
		}
		h.Target, _ = stage.Side(side).Target()
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail("list holds", "", err)
	}
	slices.SortFunc(out, func(a, b stage.Hold) int { return cmp.Compare(a.Target, b.Target) })
	return out, nil
}
