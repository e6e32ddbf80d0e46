// Package jsonltarget appends one JSON line per change to a file.
//
// Each line is the change envelope of package changejson, the same document
// the NATS target publishes:
//
//	{"op":"upsert","key":"42","fields":{"id":42,"name":"x"},"version":123}
//	{"op":"delete","key":"42","fields":{"id":42},"version":124}
//
// Fencing: a file cannot compare versions, so the target is fenced by a
// PostgreSQL side ledger (package sideledger, table
// <ledger_schema>.jsonl_ledger_<scope>): a change is appended only when it
// is newer than, and differs in content from, what the ledger recorded for
// its key, so a redelivered or replayed change is not appended again and
// writers racing on a key append its changes in increasing version order.
//
// Exactly once in the committed file. A naive append-then-commit would
// duplicate the last lines when the writer crashes (or the ledger commit
// fails) after the lines reached the disk but before the ledger recorded
// them: the changes are redelivered and appended again. This target avoids
// that by recording, in the same ledger transaction, the file's committed
// length (table <ledger_schema>.jsonl_files, one row per target: size, and
// the device and inode it refers to). Every Apply that has lines to write
// locks that row, and before appending cuts the file back to the committed
// length: bytes past it can only come from an Apply whose ledger
// transaction did not commit, whose changes are therefore still pending and
// will be written again. It then appends the lines in one write, fsyncs the
// file (and its directory when the file is new), records the new length and
// commits. Open does the same cut, so a crash leaves its uncommitted tail
// only until the target is opened again.
//
// The guarantee, precisely: after each successful Apply, the first
// jsonl_files.size bytes of the file hold every applied change exactly
// once, each key's lines in increasing version order, and are durable.
// Bytes past that length are provisional: a reader tailing the file may see
// lines of an Apply that then fails; they are cut and written again (with
// the same versions, maybe collapsed into a newer change). Readers that need
// exactly once read up to the committed size, or keep per key the highest
// version seen.
//
// The file belongs to the target: nothing else may append to it. All
// writers of the target must write the same file (one host, or a shared
// file system with working fsync and O_APPEND); the row lock serialises
// them. Rotation by renaming the file away is detected by its inode: the
// target then starts a new file at the path and leaves the old one alone. A
// file truncated from outside is taken as it is. Any I/O error (disk full,
// read-only file, missing directory) is an outage: errs.Unavailable, nothing
// recorded, the bytes written so far cut by the next Apply.
package jsonltarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/services/writer/internal/ledgerdb"
	"github.com/oneway-sync/oneway/services/writer/internal/sideledger"
	"github.com/oneway-sync/oneway/services/writer/internal/sideledger/changejson"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// Spec configures a Target.
type Spec struct {
	Pipeline, Target string
	// Path of the file to append to; created if missing (its directory must
	// exist). A relative path is taken from the working directory at Open.
	Path         string
	FileMode     os.FileMode   // of a file the target creates, default 0644
	Ledger       *pgxpool.Pool // PostgreSQL holding the fencing ledger
	LedgerSchema string        // default "oneway"
}

// Target appends batches to one file. Safe for concurrent use.
type Target struct {
	spec   Spec
	log    *slog.Logger
	path   string // absolute
	ledger *sideledger.Ledger
	files  pgconn.Table // <schema>.jsonl_files

	lockSQL, updateSQL string

	// afterSync, when set (tests), runs after the fsync, before the ledger
	// records the new length: an error stands for a crash there.
	afterSync func() error
}

var _ target.Writer = (*Target)(nil)

// Open checks spec, registers the target in <ledger_schema>.ledger_scopes
// (table_name "jsonl:" + absolute path), creates its ledger table and its
// row in <ledger_schema>.jsonl_files, opens (or creates) the file and cuts
// any uncommitted tail left by a crash.
func Open(ctx context.Context, spec Spec, log *slog.Logger) (*Target, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if spec.Ledger == nil {
		return nil, errs.Permanentf("jsonl target %q: no ledger database", spec.Target)
	}
	if spec.Path == "" {
		return nil, errs.Permanentf("jsonl target %q: no path", spec.Target)
	}
	if spec.FileMode == 0 {
		spec.FileMode = 0o644
	}
	if spec.LedgerSchema == "" {
		spec.LedgerSchema = sideledger.DefaultSchema
	}
	path, err := filepath.Abs(spec.Path)
	if err != nil {
		return nil, errs.Permanentf("jsonl target %q: path %q: %w", spec.Target, spec.Path, err)
	}
	t := &Target{spec: spec, log: log, path: path}
	t.ledger, err = sideledger.Open(ctx, sideledger.Spec{
		Pipeline: spec.Pipeline, Target: spec.Target, Kind: "jsonl", Sink: path,
		Describe: "JSON lines file " + path, Pool: spec.Ledger, Schema: spec.LedgerSchema,
	})
	if err != nil {
		return nil, err
	}
	t.files = pgconn.Table{Schema: t.ledger.Schema(), Name: "jsonl_files"}
	err = ledgerdb.WithDDLLock(ctx, spec.Ledger, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+t.files.Quoted()+` (
  scope int PRIMARY KEY, path text NOT NULL, size bigint NOT NULL,
  dev bigint NOT NULL DEFAULT 0, ino bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "COMMENT ON TABLE "+t.files.Quoted()+" IS "+ledgerdb.QuoteLiteral(
			"oneway: committed length of each JSON lines target's file (scope = ledger_scopes.id); bytes past it are uncommitted")); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+t.files.Quoted()+` (scope, path, size) VALUES ($1, $2, -1)
ON CONFLICT (scope) DO NOTHING`, t.ledger.Scope(), path)
		return err
	})
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("prepare %s: %w", t.files, err))
	}
	t.lockSQL = `SELECT size, dev, ino FROM ` + t.files.Quoted() + ` WHERE scope = $1 FOR UPDATE`
	t.updateSQL = `UPDATE ` + t.files.Quoted() + ` SET size = $2, dev = $3, ino = $4, updated_at = now() WHERE scope = $1`
	// Cut a tail a crash left behind, and check the file can be written.
	err = pgx.BeginFunc(ctx, spec.Ledger, func(tx pgx.Tx) error {
		f, st, err := t.openLocked(ctx, tx)
		if err != nil {
			return err
		}
		defer f.Close()
		if st.created {
			if err := syncDir(t.path); err != nil {
				return t.ioErr("sync directory of", err)
			}
		}
		return t.record(ctx, tx, st.base, st.id)
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Close releases nothing (the file is opened per Apply); it is there so
// every target kind closes alike.
func (t *Target) Close() error { return nil }

// Path is the file's absolute path.
func (t *Target) Path() string { return t.path }

// Ledger is this target's ledger table.
func (t *Target) Ledger() pgconn.Table { return t.ledger.Table() }

// Scope is this target's id in the ledger catalog.
func (t *Target) Scope() int32 { return t.ledger.Scope() }

// Apply appends the items' changes, fenced by the ledger, in one ledger
// transaction. Items must share one column layout. Any I/O error fails the
// call as errs.Unavailable and nothing is recorded.
func (t *Target) Apply(ctx context.Context, items []target.Item) (target.Result, error) {
	return t.ledger.Apply(ctx, items, t.send)
}

// send appends the batch's lines under the file's lock, fsyncs, and
// records the file's new committed length in the ledger transaction.
func (t *Target) send(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
	outs := make([]sideledger.Outcome, len(b.Decisions))
	var buf []byte
	n := 0
	for i, d := range b.Decisions {
		line, err := changejson.AppendEnvelope(buf, b.Columns, d.Values, d.Key, d.Delete, d.Version)
		if err != nil {
			outs[i].Err = errs.Permanentf("encode key %s: %w", d.Key, err)
			continue
		}
		buf = append(line, '\n')
		n++
	}
	if n == 0 {
		return outs, nil
	}
	f, st, err := t.openLocked(ctx, b.Tx)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Write(buf); err != nil {
		// Cut what made it to the file now; the next Apply would anyway.
		if terr := f.Truncate(st.base); terr != nil {
			t.log.Warn("jsonl target: cannot cut a failed write", "target", t.spec.Target, "path", t.path, "error", terr)
		}
		return nil, t.ioErr("append to", err)
	}
	if err := f.Sync(); err != nil {
		return nil, t.ioErr("fsync", err)
	}
	if st.created {
		if err := syncDir(t.path); err != nil {
			return nil, t.ioErr("sync directory of", err)
		}
	}
	if t.afterSync != nil {
		if err := t.afterSync(); err != nil {
			return nil, err
		}
	}
	if err := t.record(ctx, b.Tx, st.base+int64(len(buf)), st.id); err != nil {
		return nil, err
	}
	return outs, nil
}

// fileState is what openLocked found.
type fileState struct {
	base    int64  // where this Apply's lines start: the committed length
	id      fileID // the file's identity
	created bool   // a new file (created, or replacing the one recorded)
}

// openLocked locks the file's row in tx, opens the file for appending and
// cuts it back to its committed length.
func (t *Target) openLocked(ctx context.Context, tx pgx.Tx) (*os.File, fileState, error) {
	var (
		size     int64
		dev, ino int64
	)
	if err := tx.QueryRow(ctx, t.lockSQL, t.ledger.Scope()).Scan(&size, &dev, &ino); err != nil {
		if ctx.Err() != nil {
			return nil, fileState{}, ctx.Err()
		}
		return nil, fileState{}, pgconn.Classify(fmt.Errorf("lock %s of %s: %w", t.files, t.path, err))
	}
	f, err := os.OpenFile(t.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, t.spec.FileMode)
	if err != nil {
		return nil, fileState{}, t.ioErr("open", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fileState{}, t.ioErr("stat", err)
	}
	cur, id := fi.Size(), identity(fi)
	st := fileState{base: cur, id: id}
	was := fileID{dev: uint64(dev), ino: uint64(ino)}
	switch {
	case size < 0:
		// First use: the file's content, if any, is not ours to judge.
		st.created = true
	case id != was:
		t.log.Info("jsonl target: a new file at the path (rotated or replaced); appending to it",
			"target", t.spec.Target, "path", t.path, "size", cur)
		st.created = true
	case cur > size:
		t.log.Warn("jsonl target: cutting lines whose ledger transaction did not commit; they will be written again",
			"target", t.spec.Target, "path", t.path, "committed", size, "bytes", cur-size)
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fileState{}, t.ioErr("cut uncommitted lines of", err)
		}
		st.base = size
	case cur < size:
		t.log.Warn("jsonl target: the file is shorter than committed (truncated from outside); appending to it as it is",
			"target", t.spec.Target, "path", t.path, "committed", size, "size", cur)
	}
	return f, st, nil
}

// record sets the committed length in tx.
func (t *Target) record(ctx context.Context, tx pgx.Tx, size int64, id fileID) error {
	if _, err := tx.Exec(ctx, t.updateSQL, t.ledger.Scope(), size, int64(id.dev), int64(id.ino)); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return pgconn.Classify(fmt.Errorf("record length of %s in %s: %w", t.path, t.files, err))
	}
	return nil
}

func (t *Target) ioErr(what string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err // the path is in our message
	}
	return errs.Unavailable(fmt.Errorf("jsonl target %s: %s %s: %w", t.spec.Target, what, t.path, err))
}

// syncDir fsyncs the directory holding path, making a new file's entry
// durable.
func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	return nil
}
