// Package stage is the stage store of staged push: the last known state of
// every record on the source side and on each target side of a pipeline,
// which the stager fills and the differ joins.
//
// A Store is opened for one pipeline; several pipelines may share one
// database. It keeps, per side, one record per key: the key (its canonical
// text and its parts), a version, a content hash, the packed owned row and a
// deleted flag. A tombstone (a deleted record) keeps its version, so an
// older upsert that arrives late cannot resurrect the key.
//
// Key order, wherever this package speaks of it, is the byte order of
// Key.Text (Go's string order; COLLATE "C" in PostgreSQL, BINARY in SQLite).
// It is not the source's order of the key values (the text "10" sorts
// before "9"): it only has to be the same in every implementation, so that
// paging is stable.
//
// Implementations: pgstage (PostgreSQL, for production and several
// processes) and sqlitestage (one file, the single-process default). Both
// pass the conformance suite in stagetest.
package stage

import (
	"context"
	"errors"
	"strings"
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// Store is the stage of one pipeline.
//
// Every method may be called concurrently from several goroutines, and
// (for pgstage) from several processes on the same database. Every method
// returns promptly with an error when ctx is cancelled; a write that
// returns an error has either committed or left no trace, never half of
// itself. Errors marked errs.Unavailable mean the database is down or
// unreachable (wait and retry); errs.Permanent marks bad input (retrying
// the same call cannot help); anything else is transient.
//
// Close releases the store; it is idempotent, and every other method fails
// with ErrClosed after it.
type Store interface {
	Records
	PushLog
	Approvals
	Close() error
}

// Records is the staged state of both sides of a pipeline.
type Records interface {
	// Apply stages recs on side in one transaction, each with a version
	// guard: a record is written only when the key has no record on that
	// side yet or its stored version is lower. An older version never
	// overwrites a newer one, whatever the order of the calls and however
	// many run at once. A record with the version already stored is a
	// redelivery and writes nothing, so Apply is idempotent. recs may
	// repeat a key (the highest version wins) and come in any order.
	//
	// A record must have a key and a version ≥ 0; a live record must have a
	// packed row (its Hash is computed with event.RowHash when empty); a
	// tombstone's Row and Hash are ignored and stored empty. StagedAt is
	// set by the store. Invalid input fails the whole call with an
	// errs.Permanent error naming the record and writes nothing.
	//
	// The result names the keys to hand on to the differ: Changed and
	// Current (see Applied). It is valid only when err is nil.
	Apply(ctx context.Context, side Side, recs []Record) (Applied, error)

	// ApplyReports is Apply on target's side for records taken from the
	// writer's applied reports of pushes: each record's Version is the
	// stream position of the push it reports (Push.Position). In the same
	// transaction, whether or not the version guard kept a newer record
	// (a read-back published after the push), it raises the push log's
	// Reported of each key that has an entry on target to the record's
	// version: never lowering it, and creating no entry for a key that has
	// none. It is as idempotent as Apply.
	//
	// The result is Apply's, and its Confirmed lists the keys whose last
	// logged push (PushState.Position > 0) these records report: Position
	// at or below the record's version.
	ApplyReports(ctx context.Context, target string, recs []Record) (Applied, error)

	// Join returns, for each distinct key in keys, its source record and
	// its record on target (nil where absent, tombstones included), in key
	// order. A key absent on both sides still gets a Pair, with both nil
	// (and Key.Parts nil).
	Join(ctx context.Context, target string, keys []string) ([]Pair, error)

	// Scan is Join over every key that has a record on the source side or
	// on target (tombstones included), in key order, paged: it returns up
	// to limit pairs whose key sorts after after ("" = from the start).
	// Call it again with the last key returned until it returns no pair.
	// Memory and time per call are bounded by limit, not by the number of
	// keys. Pages see the records as they are when each page is read.
	Scan(ctx context.Context, target string, after string, limit int) ([]Pair, error)

	// Count counts the records of side: live ones and tombstones.
	Count(ctx context.Context, side Side) (Counts, error)
}

// PushLog is the differ's memory of what it pushed to each target, so that
// a target that never converges (it trims or rounds a value) cannot make it
// push the same version forever.
type PushLog interface {
	// RecordPushes notes that the source version Push.Version of each key
	// was pushed to target once more, and returns, aligned with pushes, how
	// many times that same version of that key has now been pushed (1 for
	// the first). A push of another version of the key starts the count
	// again at 1. A key may appear only once per call. Not idempotent: a
	// call that returned nil counted its pushes.
	//
	// Each key's LastAt becomes the store's current time. A push with a
	// Position > 0 stores that position; a push with Position 0 (counted
	// but not published) keeps the stored position when the version is
	// the same, and stores 0 for a new version. Reported is kept: stream
	// positions only grow, so a report staged before its push was recorded
	// (the writer may be that quick) still confirms it.
	RecordPushes(ctx context.Context, target string, pushes []Push) ([]int, error)

	// Pushes returns what the log holds of each distinct key in keys on
	// target, in key order; keys without an entry are left out. The
	// differ reads it before deciding which pushes are still in flight.
	Pushes(ctx context.Context, target string, keys []string) ([]PushState, error)

	// Stuck lists the keys of target whose current version has been pushed
	// at least minCount times, in key order after after, up to limit.
	Stuck(ctx context.Context, target string, minCount int, after string, limit int) ([]PushState, error)

	// ClearPushes forgets the push counts of keys on target (all of the
	// target's when keys is nil) and returns how many it forgot. Clearing
	// a key that has none is not an error.
	ClearPushes(ctx context.Context, target string, keys []string) (int64, error)
}

// Approvals holds diffs that the mass-delete breaker stopped, until an
// operator approves them. A hold survives restarts.
type Approvals interface {
	// Hold records that a diff of target is held for deleting too much and
	// returns the hold as it now is. A new hold is HoldHeld; a hold that is
	// still HoldHeld takes the new counts and keeps its HeldAt; a hold that
	// is HoldApproved is returned unchanged, and the caller goes ahead.
	Hold(ctx context.Context, target string, c HoldCounts) (Hold, error)

	// Approve approves the held diff of target on behalf of by (non-empty)
	// and returns it. Approving an approved hold returns it unchanged;
	// approving a target without a hold fails with ErrNoHold.
	Approve(ctx context.Context, target, by string) (Hold, error)

	// Release removes the hold of target: once the approved diff ran, or
	// once a diff no longer trips the breaker. Idempotent.
	Release(ctx context.Context, target string) error

	// Holds lists the pipeline's holds by target name.
	Holds(ctx context.Context) ([]Hold, error)
}

// Errors the stores return (test them with errors.Is).
var (
	ErrClosed = errors.New("stage store is closed")
	ErrNoHold = errors.New("no held diff")
)

// SourceSide is the side of the System of Record.
const SourceSide Side = "source"

// Side names a side of a pipeline as batches name their origin: "source",
// or "target.<name>".
type Side string

// TargetSide is the side of the target named name.
func TargetSide(name string) Side { return Side("target." + name) }

// Target returns the target name of a target side, and false for the
// source side or an invalid side.
func (s Side) Target() (string, bool) {
	name, ok := strings.CutPrefix(string(s), "target.")
	if !ok || config.ValidName(name) != nil {
		return "", false
	}
	return name, true
}

// Validate checks that s is the source side or a target side with a valid
// target name.
func (s Side) Validate() error {
	if s == SourceSide {
		return nil
	}
	if _, ok := s.Target(); !ok {
		return errs.Permanentf("stage side %q: want %q or \"target.<name>\" with a valid target name", string(s), SourceSide)
	}
	return nil
}

// ValidateTarget checks a target name as the stores' methods do.
func ValidateTarget(name string) error {
	if err := config.ValidName(name); err != nil {
		return errs.Permanentf("stage target: %w", err)
	}
	return nil
}

// Key identifies a record.
type Key struct {
	// Text is the canonical key string (event.Key): the text of a
	// single-column key, a JSON array of the texts for a composite key.
	Text string
	// Parts are the key columns' values in key-column order.
	Parts []string
}

// Record is the state of one key on one side.
type Record struct {
	Key Key
	// Version orders the states of a key: the fencing version of the change
	// that produced it (see the writer's target.Version).
	Version int64
	// Hash is the content hash of Row (event.RowHash); empty for a tombstone.
	Hash []byte
	// Row is the owned row, packed (event.PackRow); nil for a tombstone.
	Row []byte
	// Deleted marks a tombstone.
	Deleted bool
	// StagedAt is when the store wrote this state; set by the store.
	StagedAt time.Time
}

// Validate checks what Apply requires of a record.
func (r *Record) Validate() error {
	switch {
	case r.Key.Text == "":
		return errs.Permanentf("record without a key")
	case len(r.Key.Parts) == 0:
		return errs.Permanentf("record %s has no key parts", r.Key.Text)
	case r.Version < 0:
		return errs.Permanentf("record %s has a negative version %d", r.Key.Text, r.Version)
	case !r.Deleted && len(r.Row) == 0:
		return errs.Permanentf("record %s is live but has no row", r.Key.Text)
	}
	return nil
}

// Normalize gives a valid record the form a store keeps: a tombstone
// without row or hash, a live record with its hash.
func (r *Record) Normalize() {
	if r.Deleted {
		r.Row, r.Hash = nil, nil
		return
	}
	if len(r.Hash) == 0 {
		r.Hash = event.RowHash(r.Row)
	}
}

// RecordOf builds the record that change c stages at version: its key
// (event.Key text and parts, from the key columns at keyIdx), a tombstone
// for OP_DELETE, else the packed row and its hash (the change's own, or
// event.RowHash of the row when it has none). c must come from a batch
// that passed event.Validate. The record shares c's row bytes.
func RecordOf(c *onewayv1.Change, keyIdx []int, version int64) (Record, error) {
	vals, err := event.Row(c.GetRow(), nil)
	if err != nil {
		return Record{}, err
	}
	parts := make([]string, len(keyIdx))
	for i, k := range keyIdx {
		if k >= len(vals) || vals[k] == nil {
			return Record{}, errs.Permanentf("change has no value for key column %d", k)
		}
		parts[i] = string(vals[k])
	}
	r := Record{Key: Key{Text: event.KeyOf(vals, keyIdx), Parts: parts}, Version: version}
	if c.GetOp() == onewayv1.Op_OP_DELETE {
		r.Deleted = true
		return r, nil
	}
	r.Row, r.Hash = c.GetRow(), c.GetHash()
	if len(r.Hash) == 0 {
		r.Hash = event.RowHash(r.Row)
	}
	return r, nil
}

// Applied is what one Apply did.
type Applied struct {
	// Changed lists, in key order, the keys whose state changed: a key new
	// to the side, a new content hash, a deleted flag that flipped.
	Changed []Key
	// Current lists, in key order, the keys this call did not change but
	// that are now stored at the version it was given: a newer version with
	// the same content (only the version moved), or a redelivery of the
	// stored version. A stager that publishes Changed must publish these
	// too: it cannot know whether its publish after the first delivery
	// happened before a crash, nor whether the state that this version
	// confirms was ever handed on.
	Current []Key
	// Stale counts records older than what was stored, and lower versions
	// of a key repeated in the call: ignored.
	Stale int
	// Confirmed lists, in key order, the keys whose last push the call's
	// reports confirmed (ApplyReports only; nil for Apply), whether or not
	// their records were written. Like Current, a redelivery lists them
	// again.
	Confirmed []Key
}

// Touched returns Changed and Current merged, in key order: the keys a
// stager hands on to the differ.
func (a Applied) Touched() []Key {
	out := make([]Key, 0, len(a.Changed)+len(a.Current))
	i, j := 0, 0
	for i < len(a.Changed) || j < len(a.Current) {
		if j == len(a.Current) || (i < len(a.Changed) && a.Changed[i].Text < a.Current[j].Text) {
			out = append(out, a.Changed[i])
			i++
			continue
		}
		out = append(out, a.Current[j])
		j++
	}
	return out
}

// Pair is the state of one key on the source side and on one target.
type Pair struct {
	Key    Key
	Source *Record // nil: the source side has no record of the key
	Target *Record // nil: the target side has no record of the key
}

// Counts counts the records of one side.
type Counts struct {
	Live    int64 // records that are not tombstones
	Deleted int64 // tombstones
}

// Push is one push of a source version of a key to a target.
type Push struct {
	Key     string
	Version int64
	// Position is where the push was published in the pipeline's stream,
	// seq<<20 | index (event.Version of the push message and the change's
	// index in it): the version the target's writer fences the change
	// with and reports it applied at. 0: not published (or unknown).
	Position int64
}

// PushState is what the push log knows of one key on one target.
type PushState struct {
	Key      string
	Version  int64 // the source version pushed
	Count    int   // how many times that version was pushed
	Position int64 // the stream position of the last push (0: unknown)
	// Reported is the highest position whose applied report was staged
	// for the key (ApplyReports), 0 when none was: the last push is
	// confirmed when Position > 0 and Reported >= Position, even when a
	// read-back staged above the report replaced it in the stage.
	Reported int64
	FirstAt  time.Time
	LastAt   time.Time // when the last push was counted
}

// HoldState is the state of a held diff.
type HoldState string

const (
	HoldHeld     HoldState = "held"     // waiting for an operator
	HoldApproved HoldState = "approved" // the next diff may delete
)

// HoldCounts is the size of the diff that tripped the breaker.
type HoldCounts struct {
	Deletes int64 // records the diff would delete in the target
	Total   int64 // records in the target
}

// Hold is a diff held by the mass-delete breaker.
type Hold struct {
	Target string
	State  HoldState
	HoldCounts
	HeldAt     time.Time
	ApprovedBy string    // "" until approved
	ApprovedAt time.Time // zero until approved
}

// ValidateApprover checks the name Approve records.
func ValidateApprover(by string) error {
	if strings.TrimSpace(by) == "" {
		return errs.Permanentf("approve: the approver's name is empty")
	}
	if len(by) > 200 {
		return errs.Permanentf("approve: the approver's name is longer than 200 bytes")
	}
	return nil
}
