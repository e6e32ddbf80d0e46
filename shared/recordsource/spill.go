package recordsource

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/source"
)

// spill is a temporary store of rows sorted by a byte key: a SQLite file
// under the system's temporary directory (or Dir), removed by close. It
// turns a listing in no order into a read in key order with memory that
// does not grow with the listing (SQLite's page cache is bounded; the
// B-tree lives on disk). One goroutine uses it at a time.
type spill struct {
	dir string
	db  *sql.DB
	tx  *sql.Tx
	ins *sql.Stmt
	// replace keeps the last row of a duplicate key instead of failing.
	replace bool
	n       int64
}

// spillBatch is the number of rows per insert transaction.
const spillBatch = 5000

// newSpill creates an empty store under dir ("" = os.TempDir()).
func newSpill(ctx context.Context, dir string, replace bool) (*spill, error) {
	tmp, err := os.MkdirTemp(dir, "oneway-spill-")
	if err != nil {
		return nil, fmt.Errorf("create the spill directory: %w", err)
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(OFF)")
	q.Add("_pragma", "synchronous(OFF)")
	q.Add("_pragma", "cache_size(-8192)") // KiB
	q.Add("_pragma", "temp_store(FILE)")
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	db, err := sql.Open("sqlite", "file:"+r.Replace(filepath.ToSlash(filepath.Join(tmp, "spill.db")))+"?"+q.Encode())
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("open the spill database: %w", err)
	}
	db.SetMaxOpenConns(1)
	s := &spill{dir: tmp, db: db, replace: replace}
	if _, err := db.ExecContext(ctx, `CREATE TABLE spill (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID`); err != nil {
		s.close()
		return nil, fmt.Errorf("create the spill table: %w", err)
	}
	return s, nil
}

// add stores a row under key k. A key added twice is an error naming
// what (unless the store replaces).
func (s *spill) add(ctx context.Context, k []byte, row source.Row, what func() string) error {
	if s.tx == nil {
		var err error
		if s.tx, err = s.db.BeginTx(ctx, nil); err != nil {
			return fmt.Errorf("spill: begin: %w", err)
		}
		verb := "INSERT"
		if s.replace {
			verb = "INSERT OR REPLACE"
		}
		if s.ins, err = s.tx.PrepareContext(ctx, verb+" INTO spill (k, v) VALUES (?, ?)"); err != nil {
			return fmt.Errorf("spill: prepare: %w", err)
		}
	}
	if _, err := s.ins.ExecContext(ctx, k, event.PackRow(row)); err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint") {
			return errs.Permanentf("%s: duplicate key: another record has the same key", what())
		}
		return fmt.Errorf("spill: insert: %w", err)
	}
	s.n++
	if s.n%spillBatch == 0 {
		return s.flush()
	}
	return nil
}

// flush commits the rows added so far.
func (s *spill) flush() error {
	if s.tx == nil {
		return nil
	}
	s.ins.Close()
	err := s.tx.Commit()
	s.tx, s.ins = nil, nil
	if err != nil {
		return fmt.Errorf("spill: commit: %w", err)
	}
	return nil
}

// rows returns the rows with key after from (at or after, when inclusive;
// nil = from the start), in key order, at most limit (<= 0: all). The
// caller closes it.
func (s *spill) rows(ctx context.Context, from []byte, inclusive bool, limit int) (*spillRows, error) {
	if err := s.flush(); err != nil {
		return nil, err
	}
	q := "SELECT k, v FROM spill"
	var args []any
	if from != nil {
		op := ">"
		if inclusive {
			op = ">="
		}
		q += " WHERE k " + op + " ?"
		args = append(args, from)
	}
	q += " ORDER BY k"
	if limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", limit)
	}
	rs, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("spill: read: %w", err)
	}
	return &spillRows{rs: rs}, nil
}

// close removes the store.
func (s *spill) close() {
	if s.ins != nil {
		s.ins.Close()
	}
	if s.tx != nil {
		_ = s.tx.Rollback()
	}
	s.db.Close()
	os.RemoveAll(s.dir)
}

// spillRows iterates over rows of the store.
type spillRows struct {
	rs  *sql.Rows
	err error
}

// next returns the next key and row (values of their own), false at the
// end or on an error (see err).
func (r *spillRows) next() ([]byte, source.Row, bool) {
	if r.err != nil || !r.rs.Next() {
		if err := r.rs.Err(); err != nil && r.err == nil {
			r.err = fmt.Errorf("spill: read: %w", err)
		}
		return nil, nil, false
	}
	var k, v []byte
	if err := r.rs.Scan(&k, &v); err != nil {
		r.err = fmt.Errorf("spill: read: %w", err)
		return nil, nil, false
	}
	row, err := event.Row(v, nil)
	if err != nil {
		r.err = err
		return nil, nil, false
	}
	return k, row, true
}

func (r *spillRows) close() { r.rs.Close() }
