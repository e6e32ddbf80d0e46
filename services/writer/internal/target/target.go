// Package target is the contract between the writer and what it writes to.
package target

import (
	"context"
	"fmt"
	"sort"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// Writer applies change batches to one target table or endpoint.
//
// Contract: Apply may be called concurrently, from several goroutines and
// several processes, with any items in any order and any number of times
// (redelivery, replay, scale-out). Change i of an item read at stream
// sequence Seq has version Seq<<20 | i. Apply must leave each key at the
// state of the highest version it has ever been given, writing a key only
// when its content changed: it fences by version and deduplicates by hash.
// A change the target rejects for good (bad data, constraint) comes back in
// Result.Failed with an errs.Permanent error while the other changes are
// applied; any other error means nothing is known to be applied and the
// caller retries later (errors marked errs.Unavailable are outages: wait).
// Items passed to one call share one column layout (SameLayout).
// On ctx cancel Apply returns promptly with an error.
type Writer interface {
	Apply(ctx context.Context, items []Item) (Result, error)
}

// Item is one batch and the stream sequence it was read at.
type Item struct {
	Seq   uint64
	Batch *onewayv1.Batch
}

// Result counts what one Apply did.
type Result struct {
	Changes int // changes after collapsing repeats of a key
	Newer   int // changes newer than what the target had applied
	Written int // records inserted or updated
	Deleted int // records deleted (or soft-deleted)
	// Failed lists changes the target rejected (permanent errors), each
	// isolated so the rest was applied.
	Failed []Failure
	// Applied lists, for a target that reports (see Reporter), every
	// change newer than what the target had applied and the state it left
	// the key in. Changes older than the ledger's are not listed.
	Applied []Applied
}

// Applied is the state one change left a key in, for the writer's applied
// report in staged mode.
type Applied struct {
	Item, Index int // the change: index into Apply's items, index in that batch
	Version     int64
	// Deleted: the key is gone from the target (or soft-deleted).
	Deleted bool
	// Row is the owned row as the target stored it (after its triggers),
	// packed in the batch's column order; the change's own row when the
	// target already held that content. nil when Deleted.
	Row []byte
}

// Reporter is a Writer that can report, in Result.Applied, the state each
// applied change left in the target, and that writes in staged mode: every
// change newer than the ledger's is applied when the target's row differs
// from it (the target's content is compared, not the hash last applied),
// because the differ pushes exactly what it saw differ in the target, and
// someone may have changed the row since it was last written.
type Reporter interface {
	Writer
	// Reports reports whether the writer was opened in staged mode.
	Reports() bool
}

// Failure is one change the target rejected.
type Failure struct {
	Item  int // index into Apply's items
	Index int // change index in that item's batch
	Key   string
	Err   error
}

// Ref points at one change of one item.
type Ref struct {
	Item, Index int
	Version     int64
	Key         string
	Change      *onewayv1.Change
}

// Version is the fencing version of change index of a message at seq.
func Version(seq uint64, index int) int64 { return event.Version(seq, index) }

// Collapse keeps the newest change of each key across items, sorted by key
// (a stable lock order keeps concurrent writers from deadlocking).
func Collapse(items []Item, keyIdx []int) []Ref {
	n := 0
	for _, it := range items {
		n += len(it.Batch.GetChanges())
	}
	refs := make([]Ref, 0, n)
	pos := make(map[string]int, n)
	for ii, it := range items {
		for i, c := range it.Batch.GetChanges() {
			r := Ref{Item: ii, Index: i, Version: Version(it.Seq, i), Key: event.Key(c, keyIdx), Change: c}
			if j, ok := pos[r.Key]; ok {
				if r.Version > refs[j].Version {
					refs[j] = r
				}
				continue
			}
			pos[r.Key] = len(refs)
			refs = append(refs, r)
		}
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].Key < refs[j].Key })
	return refs
}

// SameLayout reports whether two batches have the same columns, types and key.
func SameLayout(a, b *onewayv1.Batch) bool {
	ac, bc := a.GetColumns(), b.GetColumns()
	if len(ac) != len(bc) {
		return false
	}
	for i := range ac {
		if ac[i].GetName() != bc[i].GetName() || ac[i].GetType() != bc[i].GetType() || ac[i].GetKey() != bc[i].GetKey() {
			return false
		}
	}
	return true
}

// CheckItems rejects what no target can apply: a batch of 2^20 changes or
// more, whose versions would run into the next sequence's (permanent), and
// items whose column layouts differ (a caller bug: the writer groups by
// layout).
func CheckItems(items []Item) error {
	if len(items) == 0 {
		return nil
	}
	first := items[0].Batch
	for _, it := range items {
		if n := len(it.Batch.GetChanges()); n >= 1<<20 {
			return errs.Permanentf("batch of %d changes exceeds 2^20", n)
		}
		if !SameLayout(first, it.Batch) {
			return fmt.Errorf("apply: items with different column layouts (%s)", first.GetTable())
		}
	}
	return nil
}

// LedgerResetter is a Writer whose ledger can be cleared, so that the next
// Apply of any version writes. A rebuild replay (`oneway replay --rebuild`)
// uses it for a target that lost rows (truncated, restored from an old
// backup): the replayed changes are then newer than the ledger. It is safe
// while other writers apply: their newer versions re-enter the ledger and
// still fence the replay's older ones. Idempotent; a ledger not created
// yet is nothing to clear.
type LedgerResetter interface {
	ResetLedger(ctx context.Context) error
}
