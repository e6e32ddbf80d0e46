package capture

import (
	"context"
	"errors"
	"log/slog"
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/retry"
	"github.com/oneway-sync/oneway/shared/source"
)

// Watermark is the watermark pattern and, with CDC set, watermark_cdc.
//
// It first reads a snapshot in key order, then polls in (watermark, key)
// order below the source's commit-safe bound (Source.Bound).
// Rows marked deleted (soft-delete column) and rows of the delete feed
// become delete events, in watermark order with the other rows.
//
// With CDC, each poll starts again at the watermark minus Overlap and a
// row is emitted only if its state differs from what was emitted for its
// key (overlap.go). That state is stored with the position (object
// ObjectName, replaced at the end of each poll once the poll's pages were
// acknowledged, before the position is saved), so a restart does not emit
// again. Within a poll the position does not move: a poll interrupted by a
// crash is read again from its start (its pages, if unchanged, carry the
// same Msg-Ids and are dropped by JetStream's duplicate window).
type Watermark struct {
	Source    Source
	Layout    Layout
	BatchSize int
	Interval  time.Duration
	Lookback  time.Duration
	// CDC selects watermark_cdc; Overlap is how far back each poll starts.
	CDC        bool
	Overlap    time.Duration
	Store      *Store
	ObjectName string
	Log        *slog.Logger
	Retry      retry.Policy
}

var _ Capture = (*Watermark)(nil)

func (w *Watermark) pattern() onewayv1.CapturePattern {
	if w.CDC {
		return onewayv1.CapturePattern_CAPTURE_PATTERN_WATERMARK_CDC
	}
	return onewayv1.CapturePattern_CAPTURE_PATTERN_WATERMARK
}

func (w *Watermark) read(ctx context.Context, f func(ctx context.Context) error) error {
	return retry.Do(ctx, w.Retry, f)
}

// wait sleeps for the poll interval; false when ctx ended.
func (w *Watermark) wait(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(w.Interval):
		return true
	}
}

// Run implements Capture.
func (w *Watermark) Run(ctx context.Context, pos Position, _ *onewayv1.Batch, emit func(Page) error) error {
	lookback := w.Lookback.Seconds()
	bound := func() (source.Bound, error) {
		var b source.Bound
		err := w.read(ctx, func(ctx context.Context) (err error) { b, err = w.Source.Bound(ctx, lookback); return })
		return b, err
	}
	if pos.Phase == "" {
		// The snapshot starts below a bound: every row the snapshot may miss
		// (changed while it runs) has a watermark at or after it.
		for n := 0; ; n++ {
			b, err := bound()
			if err != nil {
				return err
			}
			if b.Ready() {
				pos.Phase, pos.SnapshotBound = PhaseSnapshot, b.Value
				break
			}
			if n == 1 {
				w.Log.Info("waiting for the transactions open at the start to end before the snapshot (numeric watermark)")
			}
			if !w.wait(ctx) {
				return nil
			}
		}
		w.Log.Info("snapshot starting", "bound", pos.SnapshotBound)
	}
	var ov *overlap
	if pos.Phase == PhaseSnapshot {
		var seed *seeding
		if w.CDC {
			// The first poll reads again from the snapshot's bound minus
			// the overlap: remember what the snapshot emitted there.
			var from float64
			if err := w.read(ctx, func(ctx context.Context) (err error) {
				_, from, _, err = w.Source.Lower(ctx, pos.SnapshotBound, w.Overlap.Seconds())
				return
			}); err != nil {
				return err
			}
			seed = &seeding{ov: newOverlap(), from: from}
		}
		var err error
		if pos, err = w.snapshot(ctx, pos, seed, emit); err != nil {
			return err
		}
		if seed != nil {
			ov = seed.ov
		}
	}
	if w.CDC && ov == nil {
		ov = newOverlap()
		var data []byte
		err := w.read(ctx, func(ctx context.Context) (err error) {
			data, err = w.Store.GetBytes(ctx, w.ObjectName, pos.Lineage)
			if errors.Is(err, errNoList) {
				return nil
			}
			return err
		})
		if err != nil {
			return err
		}
		if data != nil {
			if ov, err = unmarshalOverlap(data); err != nil {
				return err
			}
		}
	}
	for {
		b, err := bound()
		if err != nil {
			return err
		}
		if b.Ready() {
			if w.CDC {
				pos, err = w.pollOverlap(ctx, pos, b, ov, emit)
			} else {
				pos, err = w.poll(ctx, pos, b, emit)
			}
			if err != nil {
				return err
			}
		}
		if !w.wait(ctx) {
			return nil
		}
	}
}

// seeding is the overlap state a watermark_cdc snapshot fills: the state
// it emitted for each row whose watermark is at or after from (the start
// of the first poll). A snapshot interrupted by a crash starts again at
// its saved key and remembers only the rows it reads then, so the first
// poll after it may emit the overlap zone's earlier rows once more.
type seeding struct {
	ov   *overlap
	from float64
}

// snapshot reads the table in key order from pos and returns the position
// of the watermark phase. With seed set, the state it emitted in the
// overlap zone is stored with the last page, before the position of the
// watermark phase is saved.
func (w *Watermark) snapshot(ctx context.Context, pos Position, seed *seeding, emit func(Page) error) (Position, error) {
	for {
		var rows []source.Row
		if err := w.read(ctx, func(ctx context.Context) (err error) {
			rows, err = w.Source.SnapshotPage(ctx, pos.SnapshotKey, w.BatchSize)
			return
		}); err != nil {
			return pos, err
		}
		if len(rows) == 0 {
			next := pos
			next.Phase, next.Watermark, next.SnapshotBound, next.SnapshotKey = PhaseWatermark, pos.SnapshotBound, "", nil
			w.Log.Info("snapshot done; watermark phase starting", "watermark", next.Watermark)
			if seed == nil {
				return next, emit(Page{Next: next})
			}
			data := seed.ov.marshal()
			seed.ov.changed = false
			lineage := pos.Lineage
			commit := func(ctx context.Context) error { return w.Store.PutBytes(ctx, w.ObjectName, lineage, data) }
			return next, emit(Page{Next: next, Commit: commit, Save: true})
		}
		now := nowNano()
		changes := make([]*onewayv1.Change, len(rows))
		for i, r := range rows {
			changes[i] = w.change(r, now)
			if seed != nil {
				if epoch := w.Source.Epoch(r); epoch >= seed.from {
					var h []byte
					if changes[i].GetOp() != onewayv1.Op_OP_DELETE {
						h = changes[i].GetHash()
					}
					seed.ov.row(w.Layout.packKey(w.Source.Owned(r)), h, epoch)
				}
			}
		}
		err := w.Layout.send(onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT, changes, func(i int) Position {
			p := pos
			p.SnapshotKey = w.Source.KeyOf(rows[i])
			return p
		}, nil, emit)
		if err != nil {
			return pos, err
		}
		pos.SnapshotKey = w.Source.KeyOf(rows[len(rows)-1])
	}
}

// change is the change a row stands for: an upsert of its owned values,
// or the delete of its key when it is marked deleted or comes from the
// delete feed.
func (w *Watermark) change(r source.Row, now int64) *onewayv1.Change {
	owned := w.Source.Owned(r)
	if w.Source.IsDeleted(r) {
		return w.Layout.deleteRowChange(owned, now)
	}
	return rowChange(onewayv1.Op_OP_UPSERT, owned, now)
}

func cursorOf(pos Position) source.Cursor {
	return source.Cursor{Mark: pos.Watermark, Key: pos.WatermarkKey, Deleted: pos.WatermarkDeleted}
}

func (w *Watermark) withCursor(pos Position, c source.Cursor) Position {
	pos.Watermark, pos.WatermarkKey, pos.WatermarkDeleted = c.Mark, c.Key, c.Deleted
	return pos
}

// overlapPruneAt is the size of the overlap state at which a poll prunes
// it as it goes, not only at its start.
const overlapPruneAt = 100_000

// poll reads every row after pos and below the bound.
func (w *Watermark) poll(ctx context.Context, pos Position, b source.Bound, emit func(Page) error) (Position, error) {
	for {
		var rows []source.Row
		if err := w.read(ctx, func(ctx context.Context) (err error) {
			rows, err = w.Source.WatermarkRows(ctx, cursorOf(pos), b, w.BatchSize)
			return
		}); err != nil {
			return pos, err
		}
		w.Log.Debug("watermark poll", "bound", b.Value, "after", pos.Watermark, "rows", len(rows))
		if len(rows) > 0 {
			now := nowNano()
			changes := make([]*onewayv1.Change, len(rows))
			for i, r := range rows {
				changes[i] = w.change(r, now)
			}
			err := w.Layout.send(w.pattern(), changes, func(i int) Position {
				return w.withCursor(pos, w.Source.CursorOf(rows[i]))
			}, nil, emit)
			if err != nil {
				return pos, err
			}
			pos = w.withCursor(pos, w.Source.CursorOf(rows[len(rows)-1]))
		}
		if len(rows) < w.BatchSize {
			break
		}
	}
	return pos, emit(Page{Next: pos, CaughtUp: true})
}

// pollOverlap reads from the watermark minus the overlap up to the bound,
// emitting only rows whose state differs from what ov remembers.
func (w *Watermark) pollOverlap(ctx context.Context, pos Position, b source.Bound, ov *overlap, emit func(Page) error) (Position, error) {
	var lower string
	var lowerEpoch, markEpoch float64
	if err := w.read(ctx, func(ctx context.Context) (err error) {
		lower, lowerEpoch, markEpoch, err = w.Source.Lower(ctx, pos.Watermark, w.Overlap.Seconds())
		return
	}); err != nil {
		return pos, err
	}
	// Nothing below lower is read again: forget it.
	ov.prune(lowerEpoch)
	cur := source.Cursor{Mark: lower}
	next := pos
	emitted := 0
	for {
		var rows []source.Row
		if err := w.read(ctx, func(ctx context.Context) (err error) {
			rows, err = w.Source.WatermarkRows(ctx, cur, b, w.BatchSize)
			return
		}); err != nil {
			return pos, err
		}
		w.Log.Debug("watermark poll", "bound", b.Value, "after", cur.Mark, "rows", len(rows))
		if len(rows) == 0 {
			break
		}
		now := nowNano()
		var changes []*onewayv1.Change
		for _, r := range rows {
			owned := w.Source.Owned(r)
			key := w.Layout.packKey(owned)
			epoch := w.Source.Epoch(r)
			var emitIt bool
			var ch *onewayv1.Change
			switch {
			case w.Source.FromDeleteFeed(r):
				emitIt = ov.deleted(key, w.Source.WatermarkOf(r), epoch)
				ch = w.Layout.deleteRowChange(owned, now)
			case w.Source.IsDeleted(r):
				emitIt = ov.row(key, nil, epoch)
				ch = w.Layout.deleteRowChange(owned, now)
			default:
				packed := event.PackRow(owned)
				h := event.RowHash(packed)
				emitIt = ov.row(key, h, epoch)
				ch = &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: packed, Hash: h, CapturedAtUnixNano: now}
			}
			if emitIt {
				changes = append(changes, ch)
			}
			// The watermark never moves back (a row at it may have been
			// deleted since).
			if epoch >= markEpoch {
				next = w.withCursor(next, w.Source.CursorOf(r))
				markEpoch = epoch
			}
		}
		cur = w.Source.CursorOf(rows[len(rows)-1])
		if ov.size() > overlapPruneAt {
			// A long poll: what lies below the overlap of where it is now
			// is read neither again in this poll nor by the next ones.
			var le float64
			if err := w.read(ctx, func(ctx context.Context) (err error) {
				_, le, _, err = w.Source.Lower(ctx, cur.Mark, w.Overlap.Seconds())
				return
			}); err != nil {
				return pos, err
			}
			ov.prune(le)
		}
		if len(changes) > 0 {
			emitted += len(changes)
			// The position stays at the poll's start until the poll ends.
			if err := w.Layout.send(w.pattern(), changes, func(int) Position { return pos }, nil, emit); err != nil {
				return pos, err
			}
		}
		if len(rows) < w.BatchSize {
			break
		}
	}
	if emitted > 0 {
		w.Log.Debug("watermark poll emitted changes", "changes", emitted, "overlap_keys", ov.size())
	}
	if !ov.changed && equalPosition(next, pos) {
		return pos, emit(Page{Next: pos, CaughtUp: true})
	}
	data := ov.marshal()
	ov.changed = false
	lineage := pos.Lineage
	commit := func(ctx context.Context) error {
		return w.Store.PutBytes(ctx, w.ObjectName, lineage, data)
	}
	return next, emit(Page{Next: next, Commit: commit, Save: true, CaughtUp: true})
}
