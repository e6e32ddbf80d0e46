package pgcdc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	pgxconn "github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// Snapshot is a read-only view of the captured tables exactly as of LSN:
// every transaction that committed before LSN is in it, and streaming the
// slot from LSN yields exactly the later ones. It holds one pooled
// connection with an open transaction (which holds back vacuum's horizon
// on the source) until Close. Page may be called from one goroutine at a
// time.
type Snapshot struct {
	c    *Capture
	mu   sync.Mutex // guards conn and tx against Close
	conn *pgxpool.Conn
	tx   pgx.Tx
	lsn  LSN
	// bridgeFrom is where the bridge starts; bridge is false when the
	// snapshot came with the slot and no bridge is needed.
	bridgeFrom LSN
	bridge     bool
}

// snapshotNameRe is the shape of an exported snapshot's name.
var snapshotNameRe = regexp.MustCompile(`^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$`)

// StartSnapshot opens the snapshot for the initial copy. resume is the
// stream position the caller saved during an earlier attempt at the
// snapshot (the last bridge transaction's EndLSN it saved, or a
// Snapshot.LSN once that snapshot's bridge was drained), zero on the first
// attempt.
//
// When the slot does not exist, StartSnapshot creates it with an exported
// snapshot; the bridge is empty. When it exists (an earlier attempt died),
// the snapshot comes from a temporary slot, and the caller must drain
// Bridge before reading pages; see the package doc. When resume is set but
// the slot does not exist, it fails with ErrSlotLost. Creating a slot waits
// for the transactions running on the source to end.
func (c *Capture) StartSnapshot(ctx context.Context, resume LSN) (*Snapshot, error) {
	exists, confirmed, err := c.slot(ctx)
	if err != nil {
		return nil, err
	}
	if !exists && resume != 0 {
		return nil, errs.Permanent(fmt.Errorf("cdc: slot %s does not exist although the snapshot was in progress at %s: %w; resync", c.cfg.Slot, resume, ErrSlotLost))
	}
	if !exists {
		s, err := c.exportSnapshot(ctx, c.cfg.Slot, false)
		var pgErr *pgxconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created meanwhile
			return c.StartSnapshot(ctx, resume)
		}
		if err != nil {
			return nil, err
		}
		c.log.Info("replication slot created; snapshot starting", "lsn", s.lsn.String())
		return s, nil
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	tmp := fmt.Sprintf("%s_snap_%s", c.cfg.Slot[:min(len(c.cfg.Slot), 40)], hex.EncodeToString(b[:]))
	s, err := c.exportSnapshot(ctx, tmp, true)
	if err != nil {
		return nil, err
	}
	s.bridge = true
	s.bridgeFrom = max(resume, confirmed)
	if s.bridgeFrom > s.lsn {
		s.bridgeFrom = s.lsn // cannot happen: the new point is after everything confirmed
	}
	c.log.Info("snapshot resuming with a bridge", "bridge_from", s.bridgeFrom.String(), "lsn", s.lsn.String())
	return s, nil
}

// exportSnapshot creates slot with an exported snapshot and imports it into
// a transaction on a pooled connection. A temporary slot is dropped again
// when the replication connection closes, right after the import.
func (c *Capture) exportSnapshot(ctx context.Context, slot string, temporary bool) (*Snapshot, error) {
	repl, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = repl.Close(context.WithoutCancel(ctx)) }()
	res, err := pglogrepl.CreateReplicationSlot(ctx, repl, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary: temporary, SnapshotAction: "EXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication})
	if err != nil {
		var pgErr *pgxconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" {
			return nil, err
		}
		if errors.As(err, &pgErr) && pgErr.Code == "53400" {
			return nil, errs.Unavailable(fmt.Errorf("create replication slot %s: %w (raise max_replication_slots, or drop unused slots)", slot, err))
		}
		return nil, pgconn.Classify(fmt.Errorf("create replication slot %s: %w", slot, err))
	}
	lsn, err := ParseLSN(res.ConsistentPoint)
	if err != nil {
		return nil, fmt.Errorf("create replication slot %s: consistent point: %w", slot, err)
	}
	if !snapshotNameRe.MatchString(res.SnapshotName) {
		return nil, fmt.Errorf("create replication slot %s: unexpected snapshot name %q", slot, res.SnapshotName)
	}
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("open snapshot connection: %w", err))
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err == nil {
		_, err = tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+res.SnapshotName+"'")
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}
	if err != nil {
		conn.Release()
		return nil, pgconn.Classify(fmt.Errorf("import snapshot of slot %s: %w", slot, err))
	}
	s := &Snapshot{c: c, conn: conn, tx: tx, lsn: lsn}
	if err := c.track(s); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// LSN is the snapshot's consistent point: after the pages, stream from it.
func (s *Snapshot) LSN() LSN { return s.lsn }

// Bridge streams the slot's transactions that committed before LSN from
// where an earlier attempt left off. The caller publishes its chunks like
// a stream's (confirming them and saving each Last chunk's EndLSN), until
// Next returns io.EOF; it then saves LSN as its stream position, closes the
// bridge and reads the pages. For a snapshot that came with the slot the
// bridge is empty: Next returns io.EOF at once.
func (s *Snapshot) Bridge(ctx context.Context) (*Stream, error) {
	if !s.bridge {
		return endedStream(), nil
	}
	return s.c.stream(ctx, s.bridgeFrom, s.lsn)
}

// Page returns up to limit rows of t with key greater than after (nil =
// from the start), in key order, as of the snapshot.
func (s *Snapshot) Page(ctx context.Context, t *Table, after []string, limit int) ([]Row, error) {
	if t == nil || t.Index < 0 || t.Index >= len(s.c.tables) {
		return nil, errs.Permanentf("cdc: snapshot page of an unknown table")
	}
	m := s.c.tables[t.Index]
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s FROM %s", m.colList, m.base.Name.Quoted())
	args := []any{pgx.QueryResultFormats{pgx.TextFormatCode}}
	if after != nil {
		if len(after) != len(m.keyTypes) {
			return nil, errs.Permanentf("cdc: snapshot page of %s after a key of %d values, want %d", m.base.Name, len(after), len(m.keyTypes))
		}
		params := make([]string, len(after))
		for i, k := range after {
			params[i] = fmt.Sprintf("$%d::text::%s", i+1, m.keyTypes[i])
			args = append(args, k)
		}
		fmt.Fprintf(&b, " WHERE (%s) > (%s)", m.keyList, strings.Join(params, ", "))
	}
	fmt.Fprintf(&b, " ORDER BY %s LIMIT %d", m.keyList, limit)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tx == nil {
		return nil, fmt.Errorf("read snapshot page of %s: the snapshot is closed", m.base.Name)
	}
	rows, err := queryRows(ctx, s.tx, b.String(), args)
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read snapshot page of %s: %w", m.base.Name, err))
	}
	return rows, nil
}

// Close ends the snapshot's transaction and returns its connection. It is
// safe to call more than once.
func (s *Snapshot) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tx == nil {
		return nil
	}
	s.c.untrack(s)
	err := s.tx.Rollback(context.Background())
	s.conn.Release()
	s.tx, s.conn = nil, nil
	if err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("end snapshot transaction: %w", err)
	}
	return nil
}

// endedStream is a Stream that has nothing to hand over.
func endedStream() *Stream {
	s := &Stream{out: make(chan *Chunk), done: make(chan struct{}), err: io.EOF, cancel: func() {}}
	close(s.out)
	close(s.done)
	return s
}
