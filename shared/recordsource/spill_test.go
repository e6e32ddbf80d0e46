package recordsource

import (
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
)

// The external sort with small chunks and a small fan-in: many runs,
// merged in several passes, give every key once, in order; with replace
// the last row added under a key wins, without it a duplicate is an error
// naming both places.
func TestSpillRuns(t *testing.T) {
	defer func(n int) { maxRuns = n }(maxRuns)
	maxRuns = 4
	tests := []struct {
		name       string
		chunkBytes int
		replace    bool
		dups       bool
	}{
		{"in memory", defaultChunkBytes, false, false},
		{"many runs", 2 << 10, false, false},
		{"many runs, replace", 2 << 10, true, true},
		{"in memory, replace", defaultChunkBytes, true, true},
		{"many runs, duplicate", 2 << 10, false, true},
	}
	const n = 3000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sp := newSpill(dir, tt.replace)
			sp.chunkBytes = tt.chunkBytes
			defer sp.close()
			add := func(id, version int) {
				k := fmt.Appendf(nil, "%08d", id)
				require.NoError(t, sp.add(k, source.Row{k, fmt.Appendf(nil, "v%d", version)}, fmt.Sprintf("record %d.%d", id, version)))
			}
			for i := range n {
				add((i*7919)%n, 1)
			}
			if tt.dups {
				for i := 0; i < n; i += 10 {
					add(i, 2)
				}
			}
			rs, err := sp.sorted()
			require.NoError(t, err)
			defer rs.close()
			if tt.chunkBytes < defaultChunkBytes {
				require.LessOrEqual(t, len(sp.runs), maxRuns)
			}
			count := 0
			for {
				_, r, ok := rs.nextRow()
				if !ok {
					break
				}
				require.Equal(t, fmt.Sprintf("%08d", count), string(r[0]))
				want := "v1"
				if tt.dups && count%10 == 0 {
					want = "v2"
				}
				require.Equal(t, want, string(r[1]))
				count++
			}
			if tt.dups && !tt.replace {
				require.Error(t, rs.err)
				require.True(t, errs.IsPermanent(rs.err))
				require.ErrorContains(t, rs.err, "record 0.2: duplicate key: record 0.1 has the same key")
			} else {
				require.NoError(t, rs.err)
				require.Equal(t, n, count)
			}
			rs.close()
			sp.close()
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, entries, "close removes the run files")
		})
	}
}
