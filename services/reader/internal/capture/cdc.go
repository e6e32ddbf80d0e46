package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/pgcdc"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/retry"
)

// PhaseStream is the cdc pattern's phase once the snapshot is done: the
// position is the LSN to stream the slot from.
const PhaseStream = "stream"

// CDC is the cdc pattern: PostgreSQL logical replication (pgcdc).
//
// A first start creates the replication slot with an exported snapshot and
// sends the table as of that snapshot in key order (pattern SNAPSHOT), then
// streams the slot from the snapshot's LSN (pattern CDC): every transaction
// committed after the snapshot, and none before it. Positions follow
// pgcdc's protocol (see its package doc): in the snapshot phase the
// position holds the stream LSN (after the bridge) and the last key
// published; a snapshot interrupted by a crash resumes with a bridge, then
// the remaining pages, then the stream. In the stream phase it holds the
// EndLSN of the last transaction whose every change JetStream acknowledged.
//
// A transaction's last page carries a Commit that confirms its EndLSN to the
// slot: it runs only after JetStream acknowledged the page, and before the
// position is saved, so the slot never moves past what JetStream holds. A
// transaction too large for one message comes as several pages, each with a
// Msg-Id built from (CommitLSN, chunk Seq, part): the same after a restart,
// so a republish is dropped as a duplicate.
//
// Deletes (and the old key of a key update) are delete changes carrying the
// key values. A TRUNCATE of the table stops the capture with a permanent
// error: it removed rows without a delete for each, so the only repair is
// `oneway resync`. A lost slot (dropped, or invalidated by
// max_slot_wal_keep_size) stops it the same way.
//
// Transient failures (the source restarting, the slot still held by a
// previous connection) are retried inside Run from the last position it
// emitted: the emitted pages are published in order before any later ones,
// so that position is as good as a saved one for this term.
type CDC struct {
	// Source is the opened capture; Run uses its first table.
	Source *pgcdc.Capture
	// Layout gives the pipeline, table name and message budget; columns
	// and key positions come from Source's table.
	Layout    Layout
	BatchSize int
	// Idle is how long the stream must be quiet before Run reports being
	// caught up (a page with CaughtUp), and then again every Idle.
	Idle time.Duration
	// SlotInterval is the time between reads of the slot's state (lag,
	// retained WAL, budget), each passed to OnSlotState; default 5s.
	SlotInterval time.Duration
	// OnSlotState, when set, receives each slot state read (for metrics).
	// It is called from a goroutine of Run's.
	OnSlotState func(pgcdc.SlotState)
	// Slot is the slot's name, for messages.
	Slot  string
	Log   *slog.Logger
	Retry retry.Policy
}

var _ Capture = (*CDC)(nil)

// Run implements Capture.
func (c *CDC) Run(ctx context.Context, pos Position, _ *onewayv1.Batch, emit func(Page) error) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.watchSlot(ctx)
	}()
	defer wg.Wait()
	defer cancel()

	if pos.Phase == "" {
		pos.Phase = PhaseSnapshot
	}
	initial := max(c.Retry.Initial, 50*time.Millisecond)
	wait, failures := initial, 0
	for {
		progressed := false
		counted := func(p Page) error {
			progressed = true
			return emit(p)
		}
		err := c.term(ctx, &pos, counted)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("cdc: the stream ended")
		}
		if errors.Is(err, pgcdc.ErrSlotLost) {
			return errs.Permanent(fmt.Errorf("cdc: replication slot %s is gone or was invalidated (max_slot_wal_keep_size), so the changes after the saved position (%s, LSN %s) are lost: run `oneway resync` (it drops what is left of the slot; the next start snapshots the table again): %w",
				c.Slot, pos.Phase, lsnText(pos.LSN), err))
		}
		if errs.IsPermanent(err) {
			return err
		}
		if progressed {
			wait, failures = initial, 0
		}
		if !errs.IsUnavailable(err) {
			failures++
			if c.Retry.Attempts > 0 && failures >= c.Retry.Attempts {
				return fmt.Errorf("cdc: giving up after %d attempts: %w", failures, err)
			}
		}
		if c.Retry.OnRetry != nil {
			c.Retry.OnRetry(err, wait)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(wait*2, max(c.Retry.Max, initial))
	}
}

func lsnText(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// positionLSN is the LSN a position holds (0 when none).
func positionLSN(pos Position) (pgcdc.LSN, error) {
	if pos.LSN == "" {
		return 0, nil
	}
	lsn, err := pgcdc.ParseLSN(pos.LSN)
	if err != nil {
		return 0, errs.Permanentf("cdc: the saved reader position holds LSN %q, which does not parse (%v): run `oneway resync`", pos.LSN, err)
	}
	return lsn, nil
}

// term runs the protocol once from *pos, keeping *pos at the last position
// emitted. It returns when ctx ends or something failed.
func (c *CDC) term(ctx context.Context, pos *Position, emit func(Page) error) error {
	if pos.Phase == PhaseSnapshot {
		if err := c.snapshot(ctx, pos, emit); err != nil {
			return err
		}
	}
	if pos.Phase != PhaseStream {
		return errs.Permanentf("cdc: the saved reader position has phase %q, which the cdc pattern does not know: run `oneway resync`", pos.Phase)
	}
	from, err := positionLSN(*pos)
	if err != nil {
		return err
	}
	// Caught up means: every transaction committed before this term
	// started was published (the changes that waited in the slot while no
	// reader ran take a while to decode), and the stream was then quiet.
	want, err := c.Source.CurrentLSN(ctx)
	if err != nil {
		return err
	}
	s, err := c.Source.Stream(ctx, from)
	if err != nil {
		return err
	}
	defer func() { _ = s.Close() }()
	return c.drain(ctx, s, pos, emit, want)
}

// snapshot reads the initial copy: the bridge (a resumed snapshot), the
// pages from the last key published, then moves *pos to the stream phase.
func (c *CDC) snapshot(ctx context.Context, pos *Position, emit func(Page) error) error {
	resume, err := positionLSN(*pos)
	if err != nil {
		return err
	}
	snap, err := c.Source.StartSnapshot(ctx, resume)
	if err != nil {
		return err
	}
	defer func() { _ = snap.Close() }()
	bridge, err := snap.Bridge(ctx)
	if err != nil {
		return err
	}
	err = c.drain(ctx, bridge, pos, emit, 0)
	_ = bridge.Close()
	if err != nil {
		return err
	}
	if at := snap.LSN().String(); pos.LSN != at {
		pos.LSN = at
		if err := emit(Page{Next: *pos, Save: true}); err != nil {
			return err
		}
	}
	if pos.SnapshotKey == nil {
		c.Log.Info("snapshot starting", "lsn", pos.LSN)
	} else {
		c.Log.Info("snapshot resuming", "lsn", pos.LSN, "after_key", pos.SnapshotKey)
	}
	t := c.Source.Tables()[0]
	layout := c.layout(t)
	for {
		rows, err := snap.Page(ctx, t, pos.SnapshotKey, c.BatchSize)
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			break
		}
		now := nowNano()
		changes := make([]*onewayv1.Change, len(rows))
		for i, r := range rows {
			changes[i] = rowChange(onewayv1.Op_OP_UPSERT, r, now)
		}
		at := *pos
		err = layout.send(onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT, changes, func(i int) Position {
			p := at
			p.SnapshotKey = t.KeyOf(rows[i])
			return p
		}, nil, emit)
		if err != nil {
			return err
		}
		pos.SnapshotKey = t.KeyOf(rows[len(rows)-1])
	}
	if err := snap.Close(); err != nil {
		c.Log.Warn("ending the snapshot transaction failed", "error", err)
	}
	pos.Phase, pos.SnapshotKey = PhaseStream, nil
	c.Log.Info("snapshot done; streaming from the slot", "lsn", pos.LSN)
	return emit(Page{Next: *pos, Save: true})
}

// layout is c.Layout with t's columns.
func (c *CDC) layout(t *pgcdc.Table) Layout {
	l := c.Layout
	l.Columns, l.KeyIdx = t.Columns, t.KeyIdx
	return l
}

// drain sends the chunks of s until it ends (a bridge: io.EOF, then nil),
// fails or ctx ends. With want set (an open stream), a stream quiet for
// c.Idle reports being caught up, every c.Idle, once it has handed over
// every transaction committed below want.
func (c *CDC) drain(ctx context.Context, s *pgcdc.Stream, pos *Position, emit func(Page) error, want pgcdc.LSN) error {
	var carry *pgcdc.Chunk // taken by TryNext, not merged: the next to send
	for {
		var ch *pgcdc.Chunk
		var err error
		if carry != nil {
			ch, carry = carry, nil
		} else if want != 0 {
			nctx, cancel := context.WithTimeout(ctx, c.Idle)
			ch, err = s.Next(nctx)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				if !s.HandedOver(want) {
					continue // the slot's backlog is still being decoded
				}
				if err := emit(Page{Next: *pos, CaughtUp: true}); err != nil {
					return err
				}
				continue
			}
		} else {
			ch, err = s.Next(ctx)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		id := "cdc:" + ch.CommitLSN.String()
		if want != 0 {
			var through pgcdc.LSN
			if ch, carry, through = c.merge(s, ch); through != 0 {
				id += "-" + through.String()
			}
		}
		if err := c.sendChunk(s, ch, id, pos, emit); err != nil {
			return err
		}
	}
}

// merge adds to ch, a chunk of an open stream, the whole transactions
// (without a TRUNCATE) that wait behind it (while the total stays within BatchSize changes and half
// the message budget, so that they go out as one page), and returns the
// chunk to send, the one taken but left out (nil if none) and, when it
// merged, the CommitLSN of the last transaction merged (0 otherwise). A reader that publishes slower than the source commits
// small transactions so sends fewer, larger messages instead of falling
// behind. A merged chunk stands for its transactions: its CommitLSN is
// the first one's, its EndLSN the last one's, and its pages' IDs name both. A
// restart does not merge the same transactions again: the reader resumes
// after the last transaction the stream holds (see Recover).
func (c *CDC) merge(s *pgcdc.Stream, ch *pgcdc.Chunk) (merged, carry *pgcdc.Chunk, through pgcdc.LSN) {
	if !ch.Whole() || truncates(ch) {
		return ch, nil, 0
	}
	maxChanges, maxBytes := max(c.BatchSize, 1), c.Layout.Budget/2
	group := []*pgcdc.Chunk{ch}
	n, size := len(ch.Changes), ch.Size()
	for {
		next := s.TryNext()
		if next == nil {
			break
		}
		if !next.Whole() || truncates(next) || n+len(next.Changes) > maxChanges || (maxBytes > 0 && size+next.Size() > maxBytes) {
			carry = next
			break
		}
		group = append(group, next)
		n += len(next.Changes)
		size += next.Size()
	}
	if len(group) == 1 {
		return ch, carry, 0
	}
	last := group[len(group)-1]
	changes := make([]pgcdc.Change, 0, n)
	for _, g := range group {
		changes = append(changes, g.Changes...)
	}
	merged = &pgcdc.Chunk{CommitLSN: ch.CommitLSN, Changes: changes, Last: true, EndLSN: last.EndLSN,
		CommitTime: last.CommitTime, Xid: last.Xid}
	return merged, carry, last.CommitLSN
}

// truncates reports whether a chunk holds a TRUNCATE, which stops the
// capture (see sendChunk): it is never merged with the transactions before
// it, which go out first.
func truncates(ch *pgcdc.Chunk) bool {
	for _, x := range ch.Changes {
		if x.Op == pgcdc.OpTruncate {
			return true
		}
	}
	return false
}

// sendChunk emits one chunk as pages, with IDs id:<chunk seq>:<part>. The
// last page of a transaction's last chunk moves the position to its
// EndLSN and confirms it. Each page's last change carries, as its
// Position, the LSN the stream would resume from once the page is
// acknowledged (endTag; see Recover).
func (c *CDC) sendChunk(s *pgcdc.Stream, ch *pgcdc.Chunk, id string, pos *Position, emit func(Page) error) error {
	for _, x := range ch.Changes {
		if x.Op == pgcdc.OpTruncate {
			return errs.Permanent(fmt.Errorf("cdc: table %s was truncated (transaction committed at %s, LSN %s): a TRUNCATE removes rows without a delete for each, which the targets cannot follow. The reader stops before it, so nothing after it is applied out of step. Run `oneway resync` (it drops replication slot %s; the next start snapshots the table again) and remove the truncated rows from the targets by hand if they must go there too",
				x.Table.Name, ch.CommitTime.UTC().Format(time.RFC3339), ch.CommitLSN, c.Slot))
		}
	}
	var held *Page
	part := 0
	collect := func(p Page) error {
		p.ID = fmt.Sprintf("%s:%d:%d", id, ch.Seq, part)
		part++
		if held != nil {
			if err := emit(*held); err != nil {
				return err
			}
		}
		held = &p
		return nil
	}
	now := nowNano()
	at := *pos
	next := func(int) Position { return at }
	for start := 0; start < len(ch.Changes); {
		t := ch.Changes[start].Table
		end := start
		for end < len(ch.Changes) && ch.Changes[end].Table == t {
			end++
		}
		layout := c.layout(t)
		final := end == len(ch.Changes)
		changes := make([]*onewayv1.Change, 0, end-start)
		for _, x := range ch.Changes[start:end] {
			switch x.Op {
			case pgcdc.OpUpsert:
				changes = append(changes, rowChange(onewayv1.Op_OP_UPSERT, x.Row, now))
			case pgcdc.OpDelete:
				changes = append(changes, layout.deleteRowChange(x.Row, now))
			default:
				return errs.Permanentf("cdc: change of %s with unknown operation %s", t.Name, x.Op)
			}
		}
		tag := func(i int) string {
			if ch.Last && final && i == len(changes)-1 {
				return endTag(ch.EndLSN.String())
			}
			return endTag(at.LSN)
		}
		if err := layout.send(onewayv1.CapturePattern_CAPTURE_PATTERN_CDC, changes, next, tag, collect); err != nil {
			return err
		}
		start = end
	}
	if held == nil {
		return nil
	}
	if ch.Last {
		end := ch.EndLSN
		pos.LSN = end.String()
		held.Next = *pos
		held.Commit = func(context.Context) error {
			s.Confirm(end)
			return nil
		}
	}
	return emit(*held)
}

// endTagPrefix starts the Position of a cdc page's last change: the LSN
// to resume streaming from once that page is in the stream.
const endTagPrefix = "cdc-end:"

func endTag(lsn string) string {
	if lsn == "" {
		return ""
	}
	return endTagPrefix + lsn
}

var _ Recoverer = (*CDC)(nil)

// Recover implements Recoverer: a position saved in the stream phase moves
// to the LSN the last page's end tag names when that is later, so that the
// transactions published after the position was saved are not read again.
func (c *CDC) Recover(pos Position, last *onewayv1.Batch) (Position, bool) {
	if pos.Phase != PhaseStream || last.GetPattern() != onewayv1.CapturePattern_CAPTURE_PATTERN_CDC || len(last.GetChanges()) == 0 {
		return pos, false
	}
	tag, ok := strings.CutPrefix(last.GetChanges()[len(last.GetChanges())-1].GetPosition(), endTagPrefix)
	if !ok {
		return pos, false
	}
	end, err := pgcdc.ParseLSN(tag)
	if err != nil {
		return pos, false
	}
	if saved, err := positionLSN(pos); err != nil || end <= saved {
		return pos, false
	}
	pos.LSN = end.String()
	return pos, true
}

// watchSlot reads the slot's state every SlotInterval until ctx ends.
func (c *CDC) watchSlot(ctx context.Context) {
	every := c.SlotInterval
	if every <= 0 {
		every = 5 * time.Second
	}
	failing := false
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		st, err := c.Source.SlotState(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				c.Log.Warn("reading the replication slot's state failed", "error", err)
			}
			failing = true
		default:
			failing = false
			if c.OnSlotState != nil {
				c.OnSlotState(st)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
