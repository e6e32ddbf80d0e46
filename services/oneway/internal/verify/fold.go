package verify

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/oneway-sync/oneway/shared/event"
)

// Change is one record of a target read as a log, as a scan emits it.
type Change struct {
	// Row holds the values in Layout.Columns order, as the target holds
	// them in text form (Fold makes them canonical); nil is NULL, Absent
	// a column the record does not carry. For a delete only the key
	// columns need be set.
	Row [][]byte
	// Name is the key as event.Key renders it; empty = rendered from Row.
	Name    string
	Delete  bool
	Version int64 // rows of a table: 0
}

// Absent stands for an owned column a record lacks. It never equals a
// value: PostgreSQL text cannot hold a NUL byte.
var Absent = []byte("\x00absent")

// Scan reads a target in any order and calls emit once per change or row
// found; it stops at emit's first error and returns it. It must honour
// ctx.
type Scan func(ctx context.Context, emit func(Change) error) error

// Fold runs scan into a temporary SQLite database in dir (os.TempDir()
// when empty), keeping per key the change with the highest version (the
// first one seen among equal versions); a delete removes the key. It then
// returns the live keys as a Side, in canonical key order, read from the
// database's key index: memory stays bounded by SQLite's page cache, not
// by the number of keys. Close removes the database. progress, when set,
// is called every 10,000 changes with the number scanned so far.
func Fold(ctx context.Context, l *Layout, dir string, scan Scan, progress func(scanned int64)) (_ Side, err error) {
	tmp, err := os.MkdirTemp(dir, "oneway-verify-")
	if err != nil {
		return nil, fmt.Errorf("create the fold database: %w", err)
	}
	f := &foldSide{l: l, dir: tmp}
	defer func() {
		if err != nil {
			_ = f.Close()
		}
	}()
	q := url.Values{}
	q.Add("_pragma", "journal_mode(OFF)")
	q.Add("_pragma", "synchronous(OFF)")
	q.Add("_pragma", "cache_size(-16384)") // KiB
	q.Add("_pragma", "temp_store(FILE)")
	f.db, err = sql.Open("sqlite", "file:"+sqlitePath(filepath.Join(tmp, "fold.db"))+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open the fold database: %w", err)
	}
	f.db.SetMaxOpenConns(1)
	if _, err := f.db.ExecContext(ctx, `CREATE TABLE fold (k BLOB PRIMARY KEY, name TEXT NOT NULL,
  version INTEGER NOT NULL, del INTEGER NOT NULL, vals BLOB) WITHOUT ROWID`); err != nil {
		return nil, fmt.Errorf("create the fold table: %w", err)
	}
	w := &folder{f: f, ctx: ctx, progress: progress}
	defer w.rollback()
	if err := scan(ctx, w.add); err != nil {
		return nil, err
	}
	if err := w.commit(); err != nil {
		return nil, err
	}
	if progress != nil {
		progress(w.n)
	}
	f.rows, err = f.db.QueryContext(ctx, "SELECT k, name, vals FROM fold WHERE del = 0 ORDER BY k")
	if err != nil {
		return nil, fmt.Errorf("read the fold database: %w", err)
	}
	return f, nil
}

// sqlitePath escapes a file path for a "file:" URI.
func sqlitePath(path string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(path))
}

// folder writes changes in transactions of foldBatch.
type folder struct {
	f        *foldSide
	ctx      context.Context
	tx       *sql.Tx
	stmt     *sql.Stmt
	pending  int
	n        int64
	progress func(int64)
}

const foldBatch = 5000

func (w *folder) add(c Change) error {
	l := w.f.l
	if len(c.Row) != len(l.Columns) {
		return fmt.Errorf("fold: %d values for %d columns", len(c.Row), len(l.Columns))
	}
	key, err := l.KeyOf(c.Row)
	if err != nil {
		return fmt.Errorf("key %s: %w", c.Name, err)
	}
	name := c.Name
	if name == "" {
		name = l.NameOf(c.Row)
	}
	var vals []byte
	if !c.Delete {
		vals = event.PackRow(l.Values(c.Row))
	}
	if w.tx == nil {
		if w.tx, err = w.f.db.BeginTx(w.ctx, nil); err != nil {
			return fmt.Errorf("fold: begin: %w", err)
		}
		if w.stmt, err = w.tx.PrepareContext(w.ctx, `INSERT INTO fold (k, name, version, del, vals) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (k) DO UPDATE SET name = excluded.name, version = excluded.version, del = excluded.del, vals = excluded.vals
WHERE excluded.version > fold.version`); err != nil {
			return fmt.Errorf("fold: prepare: %w", err)
		}
	}
	del := 0
	if c.Delete {
		del = 1
	}
	if _, err := w.stmt.ExecContext(w.ctx, key, name, c.Version, del, vals); err != nil {
		return fmt.Errorf("fold key %s: %w", name, err)
	}
	w.n++
	if w.progress != nil && w.n%10000 == 0 {
		w.progress(w.n)
	}
	if w.pending++; w.pending >= foldBatch {
		return w.commit()
	}
	return nil
}

func (w *folder) commit() error {
	if w.tx == nil {
		return nil
	}
	w.stmt.Close()
	err := w.tx.Commit()
	w.tx, w.stmt, w.pending = nil, nil, 0
	if err != nil {
		return fmt.Errorf("fold: commit: %w", err)
	}
	return nil
}

func (w *folder) rollback() {
	if w.tx != nil {
		w.stmt.Close()
		_ = w.tx.Rollback()
		w.tx = nil
	}
}

// foldSide reads the folded keys back in order.
type foldSide struct {
	l    *Layout
	dir  string
	db   *sql.DB
	rows *sql.Rows
	done bool
	buf  [][]byte
}

func (f *foldSide) Next(ctx context.Context) (Record, error) {
	if f.done {
		return Record{}, io.EOF
	}
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	if !f.rows.Next() {
		f.done = true
		if err := f.rows.Err(); err != nil {
			return Record{}, fmt.Errorf("read the fold database: %w", err)
		}
		return Record{}, io.EOF
	}
	var r Record
	var vals []byte
	if err := f.rows.Scan(&r.Key, &r.Name, &vals); err != nil {
		return Record{}, fmt.Errorf("read the fold database: %w", err)
	}
	var err error
	if f.buf, err = event.Row(vals, f.buf); err != nil {
		return Record{}, fmt.Errorf("read the fold database: key %s: %w", r.Name, err)
	}
	r.Values = f.buf
	return r, nil
}

// Close closes the database and removes it.
func (f *foldSide) Close() error {
	var errRows error
	if f.rows != nil {
		errRows = f.rows.Close()
	}
	var errDB error
	if f.db != nil {
		errDB = f.db.Close()
	}
	return errors.Join(errRows, errDB, os.RemoveAll(f.dir))
}
