package pgcdc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	pgxconn "github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// Op is what a Change does.
type Op uint8

const (
	// OpUpsert inserts or updates the row.
	OpUpsert Op = iota + 1
	// OpDelete deletes the row with the key in Row.
	OpDelete
	// OpTruncate says the table was truncated; Row is nil.
	OpTruncate
)

func (o Op) String() string {
	switch o {
	case OpUpsert:
		return "upsert"
	case OpDelete:
		return "delete"
	case OpTruncate:
		return "truncate"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// Change is one row change of a transaction.
type Change struct {
	Op Op
	// Table is the table's layout for this change; it is the same *Table as
	// Capture.Tables unless a column type changed since Open.
	Table *Table
	// Row holds the owned values in Table.Columns order. For OpDelete only
	// the key columns are set (the others are nil); for OpTruncate it is
	// nil. An update that changes the key comes as OpDelete of the old key,
	// then OpUpsert.
	Row Row
	// LSN is the WAL position of the change. It orders the changes of one
	// transaction, not those of different ones: use the chunk's CommitLSN.
	LSN LSN
}

// Chunk is a transaction, or a part of one, in commit order.
type Chunk struct {
	// CommitLSN is where the transaction's commit record starts; it names
	// the transaction and is the same in each of its chunks.
	CommitLSN LSN
	// Seq numbers the transaction's chunks from 0.
	Seq int
	// Changes are in the order the transaction made them; never empty.
	Changes []Change
	// Last is set on the transaction's last chunk, which alone carries
	// EndLSN (the end of the commit record): the position to Confirm and to
	// restart from once this transaction is durable.
	Last       bool
	EndLSN     LSN
	CommitTime time.Time
	Xid        uint32

	size int // the bytes it holds, roughly: what it counts in the stream's buffer
}

// Whole reports whether the chunk is a whole transaction.
func (ch *Chunk) Whole() bool { return ch.Seq == 0 && ch.Last }

// Size is roughly the bytes of the chunk's values.
func (ch *Chunk) Size() int { return ch.size }

// Buffering between the stream's goroutine and its caller: chunks are
// handed over through a queue of up to outChunks chunks, which the stream
// fills only while it holds less than outBytes (or nothing): a caller
// that publishes slower than the server sends finds several small
// transactions waiting, and may send them as one message (TryNext).
const (
	outChunks = 256
	outBytes  = 4 << 20
)

// Stream hands over the slot's transactions. Next is called from one
// goroutine; Confirm and Close may be called from any goroutine.
type Stream struct {
	c      *Capture
	conn   *pgxconn.PgConn
	until  LSN // the bridge's end; 0 for an open-ended stream
	out    chan *Chunk
	done   chan struct{}
	err    error // set before done closes
	cancel context.CancelFunc

	// queued is the size of the chunks in out; room is signalled when a
	// chunk is taken.
	queued atomic.Int64
	room   chan struct{}

	confirmed atomic.Uint64
	// idle: every transaction committing below it was handed over (see
	// Idle).
	idle      atomic.Uint64
	closeErr  error
	closeOnce sync.Once
}

// Stream starts the slot at from (a saved position: a Snapshot's LSN, or
// the EndLSN of the last transaction confirmed; the server starts at its
// own confirmed LSN when that is later) and hands over the transactions
// that commit at or after it. ctx bounds the stream's whole life; Close
// ends it earlier. It fails with ErrSlotLost when the slot does not exist
// or was invalidated. The slot serves one stream at a time: while another
// connection streams from it, Stream fails with a transient error.
func (c *Capture) Stream(ctx context.Context, from LSN) (*Stream, error) {
	return c.stream(ctx, from, 0)
}

func (c *Capture) stream(ctx context.Context, from, until LSN) (*Stream, error) {
	exists, confirmed, err := c.slot(ctx)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, errs.Permanent(fmt.Errorf("cdc: slot %s does not exist: %w; resync (StartSnapshot creates it)", c.cfg.Slot, ErrSlotLost))
	}
	conn, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	err = pglogrepl.StartReplication(ctx, conn, c.cfg.Slot, from, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names '" + c.cfg.Publication + "'"},
	})
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, pgconn.Classify(fmt.Errorf("start replication from slot %s at %s: %w", c.cfg.Slot, from, err))
	}
	pctx, cancel := context.WithCancel(ctx)
	s := &Stream{c: c, conn: conn, until: until, out: make(chan *Chunk, outChunks), room: make(chan struct{}, 1),
		done: make(chan struct{}), cancel: cancel}
	base := max(from, confirmed)
	s.confirmed.Store(uint64(base))
	s.idle.Store(uint64(base))
	p := &pump{s: s, c: c, conn: conn, base: base, rels: map[uint32]*relation{},
		nextStatus: time.Now().Add(c.cfg.StatusInterval)}
	if err := c.track(s); err != nil {
		cancel()
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	c.log.Info("replication started", "from", from.String(), "until", until.String())
	go s.run(pctx, p)
	return s, nil
}

// Next returns the next chunk, waiting for one. It returns io.EOF at the
// end of a bridge, and an error when the stream failed (the caller starts
// a new Stream from its saved position) or was closed.
func (s *Stream) Next(ctx context.Context) (*Chunk, error) {
	select {
	case ch, ok := <-s.out:
		if ok {
			s.taken(ch)
			return ch, nil
		}
		<-s.done
		return nil, s.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TryNext returns the next chunk if one is waiting, nil otherwise (also
// when the stream ended: Next then reports how). Called from the goroutine
// that calls Next.
func (s *Stream) TryNext() *Chunk {
	select {
	case ch, ok := <-s.out:
		if !ok {
			return nil
		}
		s.taken(ch)
		return ch
	default:
		return nil
	}
}

func (s *Stream) taken(ch *Chunk) {
	s.queued.Add(-int64(ch.size))
	select {
	case s.room <- struct{}{}:
	default:
	}
}

// Idle returns a position below which every transaction the slot will
// hand over was already handed over (put where Next returns it): the
// stream's start, then the server's WAL position of the last keepalive it
// sent between transactions (the walsender sends one as soon as its
// decoding has caught up with the WAL, and the stream asks for one with
// each status update). A transaction committed before a CurrentLSN call
// that returned L was handed over once Idle() >= L.
func (s *Stream) Idle() LSN { return LSN(s.idle.Load()) }

// HandedOver reports whether every transaction committed below want was
// handed over and taken by Next: Idle() >= want and nothing waits for Next
// (the stream hands a chunk over before it moves Idle past it).
func (s *Stream) HandedOver(want LSN) bool {
	return s.Idle() >= want && len(s.out) == 0
}

// Confirm records that every transaction up to the one ending at lsn (a
// Last chunk's EndLSN) is durable downstream; the next status update
// reports it to the server, which may then recycle the WAL before it.
// Confirming a position that was not handed over is capped to what was.
// Positions below one already confirmed are ignored.
func (s *Stream) Confirm(lsn LSN) {
	for {
		cur := s.confirmed.Load()
		if uint64(lsn) <= cur || s.confirmed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// Close stops the stream: it sends a last status update with what was
// confirmed, closes the connection and waits for its goroutine. It returns
// an error only when that last update could not be sent (a restart then
// replays from the previously reported position). Safe to call more than
// once.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
		if s.c != nil {
			s.c.untrack(s)
		}
	})
	return s.closeErr
}

func (s *Stream) run(ctx context.Context, p *pump) {
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		p.watch(ctx, stop)
	}()
	err := p.loop(ctx)
	close(stop)
	<-watched
	if p.stalled.Load() && ctx.Err() == nil {
		err = errs.Unavailable(fmt.Errorf("replication from slot %s: no message for %s inside a transaction; connection closed (%w)", s.c.cfg.Slot, midTxStall, err))
	}
	if ctx.Err() != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("cdc stream of slot %s closed: %w", s.c.cfg.Slot, context.Cause(ctx))
	}
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if !s.conn.IsClosed() {
		if serr := p.sendStatus(); serr != nil {
			s.closeErr = pgconn.Classify(fmt.Errorf("send the last status update of slot %s: %w", s.c.cfg.Slot, serr))
		}
	}
	pid := s.conn.PID()
	_ = s.conn.Close(fctx)
	// The walsender releases the slot as it exits, a moment after the
	// connection closed: wait, so that the next Stream or a Drop finds
	// the slot free.
	if err := s.c.waitReleased(fctx, pid); err != nil {
		s.c.log.Warn("replication slot still held after its stream closed", "pid", pid, "error", err)
	}
	cancel()
	s.err = err
	close(s.out)
	close(s.done)
}

// pump is the state of the goroutine that owns the replication connection.
type pump struct {
	s    *Stream
	c    *Capture
	conn *pgxconn.PgConn
	rels map[uint32]*relation

	// base is the position the stream started from (or the slot's
	// confirmed LSN when later): confirmable without anything handed over.
	base LSN
	// handed is the EndLSN of the last transaction handed over.
	handed LSN
	// idle is a position below which nothing is pending: a keepalive's
	// position or the end of a transaction that held nothing for us.
	idle LSN

	inTx     bool
	finished bool // the bridge reached its end
	tx       txState

	nextStatus time.Time

	// blockedSince is when a receive without a deadline began (UnixNano;
	// 0: none is waiting); stalled is set when the watchdog closed the
	// connection under one.
	blockedSince atomic.Int64
	stalled      atomic.Bool
}

type txState struct {
	commitLSN  LSN
	xid        uint32
	commitTime time.Time
	seq        int
	changes    []Change
	bytes      int
}

func (p *pump) loop(ctx context.Context) error {
	for {
		if !time.Now().Before(p.nextStatus) {
			if err := p.sendStatus(); err != nil {
				return pgconn.Classify(fmt.Errorf("send status update of slot %s: %w", p.c.cfg.Slot, err))
			}
		}
		if p.finished {
			return io.EOF
		}
		msg, err := p.receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgxconn.Timeout(err) {
				continue
			}
			return pgconn.Classify(fmt.Errorf("receive from slot %s: %w", p.c.cfg.Slot, err))
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := p.copyData(ctx, m.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return pgconn.Classify(fmt.Errorf("replication from slot %s: %w", p.c.cfg.Slot, pgxconn.ErrorResponseToPgError(m)))
		case *pgproto3.CopyDone:
			return errs.Unavailable(fmt.Errorf("replication from slot %s: the server ended the stream", p.c.cfg.Slot))
		}
	}
}

// midTxStall bounds a receive inside a transaction, which has no deadline
// of its own (see receive): with no message for this long, the connection
// is closed and the stream fails, to be restarted.
var midTxStall = 30 * time.Second

// receive returns the next message. Between transactions it waits until
// the next status update is due (a timeout error then). Inside one, the
// walsender sends the rest of the transaction without pause, so receive
// waits without a context: a cancellable context costs a timer and a
// watcher goroutine per message, a tenth of the reader's CPU under a
// steady stream of small changes. The watchdog (see watch) ends such a
// receive when ctx ends or the connection stalls.
func (p *pump) receive(ctx context.Context) (pgproto3.BackendMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !p.inTx {
		rctx, cancel := context.WithDeadline(ctx, p.nextStatus)
		defer cancel()
		return p.conn.ReceiveMessage(rctx)
	}
	p.blockedSince.Store(time.Now().UnixNano())
	defer p.blockedSince.Store(0)
	return p.conn.ReceiveMessage(context.Background())
}

// watch is the watchdog of receives without a context: it closes the
// connection under a receive that outlived ctx (by a second: the next
// message of the transaction usually ends it first) or that waited
// midTxStall. It returns when stop closes.
func (p *pump) watch(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		since := p.blockedSince.Load()
		if since == 0 {
			continue
		}
		waited := time.Since(time.Unix(0, since))
		if waited >= midTxStall || (ctx.Err() != nil && waited >= time.Second) {
			p.stalled.Store(true)
			_ = p.conn.Conn().Close()
			return
		}
	}
}

// flushPos is what the next status update reports as flushed.
func (p *pump) flushPos() LSN {
	pos := min(LSN(p.s.confirmed.Load()), max(p.handed, p.base))
	if !p.inTx && pos >= p.handed && p.idle > pos {
		pos = p.idle
	}
	return pos
}

func (p *pump) sendStatus() error {
	pos := p.flushPos()
	p.nextStatus = time.Now().Add(p.c.cfg.StatusInterval)
	return pglogrepl.SendStandbyStatusUpdate(context.Background(), p.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
		// A keepalive in reply moves Idle even when the walsender sent
		// none of its own.
		ReplyRequested: true})
}

// setIdle records that nothing is pending below pos.
func (p *pump) setIdle(pos LSN) {
	if p.s.until != 0 {
		pos = min(pos, p.s.until)
	}
	p.idle = max(p.idle, pos)
	if uint64(p.idle) > p.s.idle.Load() {
		p.s.idle.Store(uint64(p.idle))
	}
}

func (p *pump) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("replication from slot %s: %w", p.c.cfg.Slot, err)
		}
		if !p.inTx {
			p.setIdle(ka.ServerWALEnd)
			if p.s.until != 0 && ka.ServerWALEnd >= p.s.until {
				p.finished = true
			}
		}
		if ka.ReplyRequested {
			p.nextStatus = time.Time{}
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("replication from slot %s: %w", p.c.cfg.Slot, err)
		}
		msg, err := pglogrepl.Parse(xld.WALData)
		if err != nil {
			return fmt.Errorf("replication from slot %s at %s: %w", p.c.cfg.Slot, xld.WALStart, err)
		}
		if err := p.message(ctx, xld.WALStart, msg); err != nil {
			return err
		}
	}
	return nil
}

func (p *pump) message(ctx context.Context, lsn LSN, msg pglogrepl.Message) error {
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		rel, err := p.c.relation(ctx, m, lsn)
		if err != nil {
			return err
		}
		p.rels[m.RelationID] = rel
	case *pglogrepl.BeginMessage:
		if p.inTx {
			return fmt.Errorf("replication from slot %s at %s: begin inside a transaction", p.c.cfg.Slot, lsn)
		}
		if p.s.until != 0 && m.FinalLSN >= p.s.until {
			p.finished = true // the snapshot has this transaction and all after
			return nil
		}
		p.inTx = true
		p.tx = txState{commitLSN: m.FinalLSN, xid: m.Xid, commitTime: m.CommitTime}
	case *pglogrepl.InsertMessage, *pglogrepl.UpdateMessage, *pglogrepl.DeleteMessage, *pglogrepl.TruncateMessage:
		if !p.inTx {
			if p.finished {
				return nil
			}
			return fmt.Errorf("replication from slot %s at %s: %s outside a transaction", p.c.cfg.Slot, lsn, msg.Type())
		}
		changes, err := p.c.decode(ctx, p.rels, msg, lsn)
		if err != nil {
			return err
		}
		for _, ch := range changes {
			if err := p.add(ctx, ch); err != nil {
				return err
			}
		}
	case *pglogrepl.CommitMessage:
		if !p.inTx {
			if p.finished {
				return nil
			}
			return fmt.Errorf("replication from slot %s at %s: commit outside a transaction", p.c.cfg.Slot, lsn)
		}
		p.inTx = false
		if p.tx.seq == 0 && len(p.tx.changes) == 0 {
			p.setIdle(m.TransactionEndLSN) // nothing of ours in it
			return nil
		}
		ch := p.chunk()
		ch.Last, ch.EndLSN, ch.CommitTime = true, m.TransactionEndLSN, m.CommitTime
		if err := p.emit(ctx, ch); err != nil {
			return err
		}
		p.handed = m.TransactionEndLSN
	}
	// Type, Origin and logical decoding messages carry nothing to capture.
	return nil
}

// add appends a change to the open transaction, handing over the chunk so
// far first when the change would overflow it. Holding the full chunk back
// until the next change means a Last chunk is never empty.
func (p *pump) add(ctx context.Context, ch Change) error {
	size := 16
	for _, v := range ch.Row {
		size += len(v)
	}
	if n := len(p.tx.changes); n > 0 && (n >= p.c.cfg.ChunkChanges || p.tx.bytes+size > p.c.cfg.ChunkBytes) {
		if err := p.emit(ctx, p.chunk()); err != nil {
			return err
		}
		p.tx.seq++
		p.tx.changes, p.tx.bytes = nil, 0
	}
	p.tx.changes = append(p.tx.changes, ch)
	p.tx.bytes += size
	return nil
}

func (p *pump) chunk() *Chunk {
	return &Chunk{CommitLSN: p.tx.commitLSN, Seq: p.tx.seq, Changes: p.tx.changes, Xid: p.tx.xid, CommitTime: p.tx.commitTime,
		size: p.tx.bytes}
}

// emit hands a chunk over, sending status updates while the caller is
// busy, so the server does not time the connection out.
func (p *pump) emit(ctx context.Context, ch *Chunk) error {
	queued := false
	for {
		// First wait for room (the queue holds less than outBytes, or
		// nothing), then for the caller to have room in the queue's channel.
		var room <-chan struct{}
		var out chan<- *Chunk
		if !queued && len(p.s.out) > 0 && p.s.queued.Load()+int64(ch.size) > outBytes {
			room = p.s.room
		} else {
			if !queued {
				p.s.queued.Add(int64(ch.size))
				queued = true
			}
			out = p.s.out
		}
		t := time.NewTimer(time.Until(p.nextStatus))
		select {
		case <-room:
		case out <- ch:
			t.Stop()
			return nil
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
			if err := p.sendStatus(); err != nil {
				return pgconn.Classify(fmt.Errorf("send status update of slot %s: %w", p.c.cfg.Slot, err))
			}
		}
		t.Stop()
	}
}
