// Package capture holds the reader's capture patterns: how it finds a
// source's changes. Each pattern is a Capture; the reader runs one and
// publishes what it sends, in order, fenced, saving each page's position
// once JetStream acknowledged it (services/reader/app).
//
// Patterns on PostgreSQL (see DESIGN.md §2):
//
//   - watermark: a key-ordered snapshot, then pages in (watermark, key)
//     order below a commit-safe bound; optionally a delete feed.
//   - watermark_cdc: the same with an overlap: every poll reads again from
//     the watermark minus the overlap and drops what it already emitted
//     (by hash), so coarse or late values are caught and no no-op update
//     is ever emitted.
//   - synthetic: each cycle reads the whole table in key order and merges
//     it with the previous cycle's (key, hash) list, kept in JetStream.
//   - window: synthetic restricted to the rows whose date lies in a
//     sliding window.
//   - cdc: logical replication (pgcdc): a snapshot consistent with a
//     replication slot, then the slot's stream of committed changes.
package capture

import (
	"context"
	"encoding/json"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
)

// Capture finds one pattern's changes.
//
// The reader calls Run once per term as the active reader (after it took
// the lease), never concurrently. pos is the last position the reader
// saved, that is, one whose pages JetStream acknowledged (the zero
// Position on a first start; Transition has already adapted it to this
// pattern). last is the last batch on the pipeline's source subject (nil
// when there is none): it may be newer than pos, because the position is
// saved after the ack, and a pattern whose state must cover everything
// published uses it to see what was published past pos.
//
// Run sends pages in source order through emit, which blocks while the
// reader is behind and returns an error once ctx ended. Each page's Next
// is the position to save once that page (and every page before it) was
// acknowledged; a page's Commit, when set, runs after that ack and before
// Next is saved. Run returns nil or ctx's error when ctx ends, and a
// permanent error (errs.Permanent) when the source cannot be read as
// configured. Transient read errors are retried inside Run.
//
// A CDC feed fits the same contract: its pages carry the feed position
// (an LSN, offsets) in Next, and confirming the feed position to the
// source belongs in Commit, which runs only after JetStream has the
// changes.
type Capture interface {
	Run(ctx context.Context, pos Position, last *onewayv1.Batch, emit func(Page) error) error
}

// Page is one unit from a Capture to the publisher.
type Page struct {
	// Batch is the changes to publish; nil for a marker that only moves
	// the position (or commits, or reports being caught up).
	Batch *onewayv1.Batch
	// Next is the position once this page is acknowledged.
	Next Position
	// Commit, when set, runs once every page up to this one was
	// acknowledged, before Next is saved. It must be idempotent: after a
	// crash the page may be produced and committed again.
	Commit func(ctx context.Context) error
	// Save asks for Next to be saved at once rather than with the next
	// periodic save.
	Save bool
	// CaughtUp marks the end of a poll or cycle: everything the source
	// held below the bound (or in the cycle) was published.
	CaughtUp bool
	// ID, when set, names the page for JetStream's duplicate detection
	// (the Msg-Id is built from it): a page produced again after a restart
	// must get the same ID, and no other page may. When empty, the reader
	// derives the Msg-Id from the page's start position and content.
	ID string
}

// Recoverer is a Capture that can tell, from the last batch on its
// subject, that pages were published after its position was saved (a
// crash between a publish and the next save): Recover returns the
// position after them, and true when it moved. The reader calls it before
// Run, only when the stream holds messages above the saved position's
// StreamSeq, so last is of the same lineage as pos.
type Recoverer interface {
	Recover(pos Position, last *onewayv1.Batch) (Position, bool)
}

// Position is where the reader is, stored as JSON in the state bucket. It
// only ever names data that JetStream has acknowledged.
type Position struct {
	// Pattern is the capture pattern that wrote the position; "" (a
	// position written before patterns were recorded) is watermark.
	Pattern string `json:"pattern,omitempty"`
	// Source names the table and key the position is about, and Column the
	// watermark column its Watermark is a value of; a position of another
	// table, key or watermark column is refused.
	Source string `json:"source,omitempty"`
	Column string `json:"column,omitempty"`
	// Phase is "snapshot" or "watermark" (watermark patterns), "cycle"
	// (synthetic and window), or "snapshot" or "stream" (cdc).
	Phase string `json:"phase"`
	// SnapshotBound is the watermark bound when the snapshot began; the
	// watermark phase starts there.
	SnapshotBound string `json:"snapshot_bound,omitempty"`
	// SnapshotKey is the last key published by the snapshot.
	SnapshotKey []string `json:"snapshot_key,omitempty"`
	// Watermark and WatermarkKey are the last (watermark, key) published;
	// WatermarkDeleted is true when that row came from the delete feed.
	Watermark        string   `json:"watermark,omitempty"`
	WatermarkKey     []string `json:"watermark_key,omitempty"`
	WatermarkDeleted bool     `json:"watermark_deleted,omitempty"`
	// Lineage identifies the capture state (hash list, overlap hashes) that
	// belongs with this position: state objects of another lineage (left
	// over from an earlier period of the pipeline) are ignored.
	Lineage string `json:"lineage,omitempty"`
	// Cycle is the number of the current cycle (synthetic, window).
	Cycle uint64 `json:"cycle,omitempty"`
	// Dirty is the largest order key that the current cycle may have
	// published before the reader restarted: up to it, the cycle re-emits
	// every row instead of comparing (see cycle.go).
	Dirty []byte `json:"dirty,omitempty"`
	// DoneBound is the commit-safe time bound taken when the last completed
	// cycle began: every change it did not see has a watermark at or after
	// it, so a switch to a watermark pattern starts there.
	DoneBound string `json:"done_bound,omitempty"`
	// Reported is, for a target's read-back, the stream sequence up to
	// which the last completed cycle read the writers' applied reports
	// before its read began (see reported.go).
	Reported uint64 `json:"reported,omitempty"`
	// Slot is the replication slot of the cdc pattern, and LSN its stream
	// position: in the snapshot phase the point the stream continues from
	// once the pages are done (empty before the slot exists), in the stream
	// phase the end of the last transaction JetStream acknowledged.
	Slot string `json:"slot,omitempty"`
	LSN  string `json:"lsn,omitempty"`
	// StreamSeq is the pipeline stream's sequence of the last page this
	// position covers (or a floor the stream's sequences must stay above).
	// The reader keeps it; captures ignore it. A stream whose last
	// sequence is below it was deleted or replaced: see the reader.
	StreamSeq uint64 `json:"stream_seq,omitempty"`
}

// Phases.
const (
	PhaseSnapshot  = "snapshot"
	PhaseWatermark = "watermark"
	PhaseCycle     = "cycle"
)

// equalPosition reports whether two positions are the same.
func equalPosition(a, b Position) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
