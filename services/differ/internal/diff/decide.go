// Package diff is the differ's decision table: given the staged state of
// one key on the source side and on a target, and the target's policies,
// what the target needs. It is pure: no I/O, no clock.
package diff

import (
	"github.com/oneway-sync/oneway/shared/stage"
)

// Action is what a target needs for one key.
type Action int

const (
	// None: nothing to do (equal, absent on both sides, or a delete the
	// target already has).
	None Action = iota
	// Insert: the source has the key and the target lacks it (never had
	// it, or deleted it and recreate_deleted is on, or deleted it before
	// the source's current state).
	Insert
	// Update: both have the key and owned fields differ.
	Update
	// Delete: the source deleted the key, the target still has it, and the
	// delete policy is hard or soft.
	Delete
	// OrphanDelete: the target has a key the source never had, and the
	// orphan policy is delete.
	OrphanDelete
	// OrphanReport: the same, with the orphan policy report.
	OrphanReport
	// OrphanKept: the same, with the orphan policy keep.
	OrphanKept
	// KeptDeleted: the target deleted a key that the source still has (in
	// the state the target deleted), and recreate_deleted is off.
	KeptDeleted
	// DeleteSkipped: the source deleted the key, the target has it, and
	// the delete policy is none.
	DeleteSkipped
)

var actionNames = [...]string{
	None: "unchanged", Insert: "insert", Update: "update", Delete: "delete",
	OrphanDelete: "orphan_delete", OrphanReport: "orphan_report", OrphanKept: "orphan_kept",
	KeptDeleted: "kept_deleted", DeleteSkipped: "delete_skipped",
}

// String is the action's name, as metrics and `oneway diff` print it.
func (a Action) String() string {
	if a >= 0 && int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "unknown"
}

// Actions lists every action in a stable order.
func Actions() []Action {
	return []Action{Insert, Update, Delete, OrphanDelete, OrphanReport, OrphanKept, KeptDeleted, DeleteSkipped, None}
}

// Pushes reports whether the action publishes a change to the target.
func (a Action) Pushes() bool {
	return a == Insert || a == Update || a == Delete || a == OrphanDelete
}

// Deletes reports whether the action deletes in the target (what the
// mass-delete breaker counts).
func (a Action) Deletes() bool { return a == Delete || a == OrphanDelete }

// Policy is what a target's config says about deletes and orphans.
type Policy struct {
	// Delete is "hard", "soft" or "none".
	Delete string
	// Orphans is "keep", "delete" or "report".
	Orphans string
	// RecreateDeleted inserts again a key deleted in the target while the
	// source has it.
	RecreateDeleted bool
}

// Decide is the decision table. equal compares two live records' owned
// fields (normalised); it is called only when both sides are live.
//
//	source     target     action
//	absent     absent     None
//	absent     deleted    None
//	absent     live       orphan policy: OrphanKept | OrphanDelete | OrphanReport
//	deleted    absent     None
//	deleted    deleted    None
//	deleted    live       delete policy: Delete (hard, soft) | DeleteSkipped (none)
//	live       absent     Insert
//	live       deleted    Insert if recreate_deleted, or if the source's state is newer
//	                      than the target's deletion (the source changed the key since);
//	                      else KeptDeleted
//	live       live       None if equal, else Update
//
// Versions of both sides are positions in the pipeline's one stream, so
// "newer" compares them directly.
func Decide(p stage.Pair, pol Policy, equal func(src, tgt *stage.Record) bool) Action {
	src, tgt := p.Source, p.Target
	srcLive := src != nil && !src.Deleted
	tgtLive := tgt != nil && !tgt.Deleted
	switch {
	case src == nil && !tgtLive:
		return None
	case src == nil:
		switch pol.Orphans {
		case "delete":
			return OrphanDelete
		case "report":
			return OrphanReport
		default:
			return OrphanKept
		}
	case !srcLive && !tgtLive:
		return None
	case !srcLive:
		if pol.Delete == "none" {
			return DeleteSkipped
		}
		return Delete
	case tgt == nil:
		return Insert
	case !tgtLive:
		if pol.RecreateDeleted || src.Version > tgt.Version {
			return Insert
		}
		return KeptDeleted
	case equal(src, tgt):
		return None
	default:
		return Update
	}
}
