package capture

import (
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/event"
)

// Layout is what every batch of one source shares.
type Layout struct {
	Pipeline string
	// Origin is the batches' origin: "source" (when empty), or
	// "target.<t>" for a target's read-back.
	Origin  string
	Table   string
	Columns []*onewayv1.Column
	// KeyIdx are the positions of the key columns in Columns, in key order.
	KeyIdx []int
	// Budget is the most bytes a message may take (below the server's
	// max_payload, leaving room for the envelope).
	Budget int
}

// rowChange is a change of the full owned state of a record.
func rowChange(op onewayv1.Op, owned [][]byte, now int64) *onewayv1.Change {
	packed := event.PackRow(owned)
	return &onewayv1.Change{Op: op, Row: packed, Hash: event.RowHash(packed), CapturedAtUnixNano: now}
}

// deleteChange is the delete of the record with the given key values
// (packed, in key order): the key columns hold them, the others are NULL.
func (l *Layout) deleteChange(key [][]byte, now int64) *onewayv1.Change {
	vals := make([][]byte, len(l.Columns))
	for i, j := range l.KeyIdx {
		vals[j] = key[i]
	}
	return &onewayv1.Change{Op: onewayv1.Op_OP_DELETE, Row: event.PackRow(vals), CapturedAtUnixNano: now}
}

// deleteRowChange is the delete of the record a row (key values set,
// perhaps other values too) stands for.
func (l *Layout) deleteRowChange(owned [][]byte, now int64) *onewayv1.Change {
	key := make([][]byte, len(l.KeyIdx))
	for i, j := range l.KeyIdx {
		key[i] = owned[j]
	}
	return l.deleteChange(key, now)
}

// packKey packs a row's key values, in key order.
func (l *Layout) packKey(owned [][]byte) []byte {
	key := make([][]byte, len(l.KeyIdx))
	for i, j := range l.KeyIdx {
		key[i] = owned[j]
	}
	return event.PackRow(key)
}

// send emits changes as one page, or as several when they would not fit
// the budget: each page ends at a change i and carries next(i) as its
// position (and, when tag is set, tag(i) as the Position of its last
// change, and of its first).
func (l *Layout) send(pattern onewayv1.CapturePattern, changes []*onewayv1.Change, next func(i int) Position,
	tag func(i int) string, emit func(Page) error) error {
	start, size := 0, 0
	flush := func(end int) error { // changes[start:end]
		last := end - 1
		if tag != nil {
			changes[last].Position = tag(last)
			if start < last {
				changes[start].Position = tag(start)
			}
		}
		b := &onewayv1.Batch{
			SchemaVersion: event.SchemaVersion, Pipeline: l.Pipeline, Origin: l.origin(),
			Pattern: pattern, Table: l.Table, Columns: l.Columns, Changes: changes[start:end],
		}
		return emit(Page{Batch: b, Next: next(last)})
	}
	for i, c := range changes {
		n := 48 + len(c.GetRow()) + len(c.GetPosition()) // per-change overhead: hash, varints, timestamp
		if i > start && size+n > l.Budget {
			if err := flush(i); err != nil {
				return err
			}
			start, size = i, 0
		}
		size += n
	}
	if start < len(changes) {
		return flush(len(changes))
	}
	return nil
}

// origin is the batches' origin.
func (l *Layout) origin() string {
	if l.Origin == "" {
		return "source"
	}
	return l.Origin
}

func nowNano() int64 { return time.Now().UnixNano() }
