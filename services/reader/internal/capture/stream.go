package capture

import "github.com/oneway-sync/oneway/shared/errs"

// phaseFeed is the phase of a change stream that keeps its own position.
const phaseFeed = "stream"

// streamTransition is Transition for a change stream that keeps its own
// position (Setup.Stream: a Kafka topic read in a consumer group, whose
// committed offsets say where to resume). The saved position only records
// what it is about; it carries over as long as that stays the same. A
// position of another source (a PostgreSQL table, another topic) is
// refused: the stream cannot know what the other source had sent.
func streamTransition(pos Position, s Setup) (Position, string, error) {
	if pos.Phase == "" {
		return Position{Pattern: s.Pattern, Source: s.Source, Phase: phaseFeed}, "", nil
	}
	if pos.Source != s.Source || pos.Pattern != s.Pattern {
		return pos, "", errs.Permanentf("the saved reader position is for %s (pattern %s) but the config reads %s (pattern %s): run `oneway resync` to start this pipeline over (the consumer group's offsets decide what is read again)",
			pos.Source, pos.Pattern, s.Source, s.Pattern)
	}
	return pos, "", nil
}
