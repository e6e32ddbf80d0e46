// Package target is the contract between the writer and what it writes to.
package target

import (
	"context"
	"sort"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
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
