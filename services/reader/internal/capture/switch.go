package capture

import (
	"fmt"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
)

// Setup is what the reader is configured to do now.
type Setup struct {
	Pattern string // a config.Pattern*
	// Source names the table and key, e.g. "public.invoices(id)".
	Source string
	// Column is the watermark column of the watermark patterns.
	Column string
	// NumericWatermark is true when Column is a number (bounded by samples,
	// not by time).
	NumericWatermark bool
	// Stream is true for a change stream that resumes from positions it
	// keeps itself (a Kafka consumer group's committed offsets): see
	// streamTransition.
	Stream bool
	// Slot is the replication slot of the cdc pattern.
	Slot string
}

func isWatermarkPattern(p string) bool {
	return p == config.PatternWatermark || p == config.PatternWatermarkCDC
}

// Transition adapts a saved position to the configured setup, so that a
// pipeline switches patterns without a full re-sync. It returns the
// position to start from and, when it changed anything, a note for the
// log. A switch it cannot make safely is refused with a permanent error
// that says what to do.
//
//   - A first start: a snapshot (watermark patterns) or a first cycle
//     without a hash list (synthetic, window).
//   - watermark ↔ watermark_cdc: the watermark carries over. Into
//     watermark_cdc the overlap state starts empty: the first poll sends the
//     rows of the overlap zone once more. Into watermark the watermark is
//     read again from its value inclusive.
//   - watermark patterns → synthetic, window: a new hash list; the first
//     cycle sends every row as an upsert. The writers' ledger skips a change
//     whose hash it already applied, so the targets see no writes for
//     unchanged rows.
//   - synthetic ↔ window: the hash list carries over (window: keys outside
//     the window are looked up once and leave the list; synthetic: rows
//     outside the old window are sent once).
//   - synthetic, window → watermark patterns: the watermark starts at the
//     commit-safe bound taken when the last completed cycle began: every
//     change that cycle did not read has a watermark at or after it. With
//     no completed cycle, or a numeric watermark column (the bound is a
//     time), it starts with a snapshot instead.
//   - any other pattern → cdc: a snapshot taken with the new replication
//     slot, then its stream. The snapshot sends every row (the writers skip
//     unchanged ones); a row deleted after the last read of the old pattern
//     is not in it and stays in the targets (verify shows it), as the
//     watermark patterns never saw deletes anyway.
//
// Refused: a position of another table or key, of another watermark
// column, of another replication slot, or written by a pattern this reader
// does not know (run `oneway resync`); and cdc → any other pattern, because
// the cdc slot would keep WAL on the source for ever: `oneway resync`
// drops it, then the new pattern starts afresh.
func Transition(pos Position, s Setup) (Position, string, error) {
	if s.Stream {
		return streamTransition(pos, s)
	}
	resync := "run `oneway resync` to start this pipeline over (a full re-read, which the writers' ledger deduplicates)"
	fresh := func(note string) (Position, string, error) {
		p := Position{Pattern: s.Pattern, Source: s.Source}
		if isWatermarkPattern(s.Pattern) {
			p.Column = s.Column
			if s.Pattern == config.PatternWatermarkCDC {
				p.Lineage = NewLineage()
			}
		} else if s.Pattern == config.PatternCDC {
			p.Phase, p.Slot = PhaseSnapshot, s.Slot
		} else {
			p.Phase, p.Cycle, p.Lineage = PhaseCycle, 1, NewLineage()
		}
		return p, note, nil
	}
	if pos.Phase == "" {
		return fresh("")
	}
	old := pos.Pattern
	if old == "" {
		old = config.PatternWatermark // positions written before patterns were recorded
	}
	if pos.Source != "" && pos.Source != s.Source {
		return pos, "", errs.Permanentf("the saved reader position is for %s but the config reads %s: %s", pos.Source, s.Source, resync)
	}
	switch {
	case old == config.PatternCDC && s.Pattern == config.PatternCDC:
		if pos.Slot != s.Slot {
			return pos, "", errs.Permanentf("the replication slot changed from %s to %s: the saved position is a position of slot %s; run `oneway resync` (it drops slot %s) to start over with a snapshot from the new slot",
				pos.Slot, s.Slot, pos.Slot, pos.Slot)
		}
		p := pos
		p.Source = s.Source
		return p, "", nil
	case old == config.PatternCDC:
		return pos, "", errs.Permanentf("the saved reader position belongs to the cdc pattern, whose replication slot %s keeps WAL on the source for as long as it exists: run `oneway resync` first (it drops the slot), then start with pattern %s (a full first read, which the writers' ledger deduplicates)",
			pos.Slot, s.Pattern)
	case s.Pattern == config.PatternCDC:
		return fresh(fmt.Sprintf("switched from %s to cdc: it starts with a snapshot consistent with the replication slot %s, which sends every row again (the writers skip unchanged ones); a row deleted after the last read of %s is not in the snapshot, so it stays in the targets (`oneway verify` shows it)", old, s.Slot, old))
	case isWatermarkPattern(old) && isWatermarkPattern(s.Pattern):
		if pos.Column != "" && pos.Column != s.Column {
			return pos, "", errs.Permanentf("the watermark column changed from %q to %q: the saved watermark is a value of the old column; %s", pos.Column, s.Column, resync)
		}
		p := pos
		p.Pattern, p.Source, p.Column = s.Pattern, s.Source, s.Column
		if old == s.Pattern {
			return p, "", nil
		}
		if s.Pattern == config.PatternWatermarkCDC {
			p.Lineage = NewLineage()
			return p, "switched from watermark to watermark_cdc: the first poll reads the overlap zone again and may send its rows once more (the writers skip what they already applied)", nil
		}
		p.Lineage = ""
		if p.Phase == PhaseWatermark {
			p.WatermarkKey, p.WatermarkDeleted = nil, false
		}
		return p, "switched from watermark_cdc to watermark: reading again from the watermark inclusive", nil
	case config.IsCyclePattern(old) && config.IsCyclePattern(s.Pattern):
		p := pos
		p.Pattern, p.Source = s.Pattern, s.Source
		if old == s.Pattern {
			return p, "", nil
		}
		return p, fmt.Sprintf("switched from %s to %s: the hash list carries over", old, s.Pattern), nil
	case isWatermarkPattern(old) && config.IsCyclePattern(s.Pattern):
		return fresh(fmt.Sprintf("switched from %s to %s: the first cycle has no hash list and sends every row as an upsert (the writers skip the rows they already have)", old, s.Pattern))
	case config.IsCyclePattern(old) && isWatermarkPattern(s.Pattern):
		if pos.DoneBound == "" || s.NumericWatermark {
			why := "no cycle was completed"
			if s.NumericWatermark {
				why = "the watermark column is a number and the cycles recorded a time"
			}
			return fresh(fmt.Sprintf("switched from %s to %s: %s, so it starts with a snapshot", old, s.Pattern, why))
		}
		p, _, _ := fresh("")
		p.Phase, p.Watermark = PhaseWatermark, pos.DoneBound
		return p, fmt.Sprintf("switched from %s to %s: the watermark starts at the bound taken when the last complete cycle began (%s)", old, s.Pattern, pos.DoneBound), nil
	}
	return pos, "", errs.Permanentf("the saved reader position was written by capture pattern %q, which this reader cannot continue from with pattern %q; %s", old, s.Pattern, resync)
}
