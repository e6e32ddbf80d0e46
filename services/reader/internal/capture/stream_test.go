package capture

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/config"
)

func TestStreamTransition(t *testing.T) {
	s := Setup{Pattern: config.PatternCDC, Source: "kafka:topic→public.customers(id)", Stream: true}
	first, note, err := Transition(Position{}, s)
	require.NoError(t, err)
	require.Empty(t, note)
	require.Equal(t, Position{Pattern: config.PatternCDC, Source: s.Source, Phase: phaseFeed}, first)

	again, _, err := Transition(first, s)
	require.NoError(t, err)
	require.Equal(t, first, again)

	for name, pos := range map[string]Position{
		"another topic":        {Pattern: config.PatternCDC, Source: "kafka:other→public.customers(id)", Phase: phaseFeed},
		"a PostgreSQL pattern": {Pattern: config.PatternSynthetic, Source: "public.customers(id)", Phase: PhaseCycle, Cycle: 3},
	} {
		_, _, err := Transition(pos, s)
		require.ErrorContains(t, err, "oneway resync", name)
	}
}
