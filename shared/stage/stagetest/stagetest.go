// Package stagetest is the conformance suite of stage.Store: every
// implementation runs Run (and BenchmarkApply) against its real database.
package stagetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/stage"
)

// Opener opens a store of pipeline on one storage. Each call returns a new
// handle, as another process would open it; the handle is closed when the
// test ends (the suite may close it earlier).
type Opener func(t testing.TB, pipeline string) stage.Store

// Storage prepares fresh, empty storage for one test and returns how to
// open stores on it.
type Storage func(t testing.TB) Opener

// Run runs the conformance suite.
func Run(t *testing.T, storage Storage) {
	t.Run("Apply", func(t *testing.T) { testApply(t, storage) })
	t.Run("ApplyInvalid", func(t *testing.T) { testApplyInvalid(t, storage) })
	t.Run("SidesAndPipelinesAreIsolated", func(t *testing.T) { testIsolation(t, storage) })
	t.Run("Join", func(t *testing.T) { testJoin(t, storage) })
	t.Run("Scan", func(t *testing.T) { testScan(t, storage) })
	t.Run("Count", func(t *testing.T) { testCount(t, storage) })
	t.Run("Pushes", func(t *testing.T) { testPushes(t, storage) })
	t.Run("PushPositions", func(t *testing.T) { testPushPositions(t, storage) })
	t.Run("ReportedPushes", func(t *testing.T) { testReportedPushes(t, storage) })
	t.Run("Holds", func(t *testing.T) { testHolds(t, storage) })
	t.Run("SurvivesReopen", func(t *testing.T) { testReopen(t, storage) })
	t.Run("ConcurrentApplyKeepsHighestVersion", func(t *testing.T) { testConcurrentApply(t, storage) })
	t.Run("Cancel", func(t *testing.T) { testCancel(t, storage) })
	t.Run("Close", func(t *testing.T) { testClose(t, storage) })
}

const pipeline = "orders"

var target = stage.TargetSide("crm")

func ctxOf(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Live builds a live record of a single-column key whose row is
// (key, content).
func Live(key string, version int64, content string) stage.Record {
	return stage.Record{
		Key:     stage.Key{Text: key, Parts: []string{key}},
		Version: version,
		Row:     event.PackRow([][]byte{[]byte(key), []byte(content)}),
	}
}

// Tombstone builds a tombstone of a single-column key.
func Tombstone(key string, version int64) stage.Record {
	return stage.Record{Key: stage.Key{Text: key, Parts: []string{key}}, Version: version, Deleted: true}
}

func keyTexts(keys []stage.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.Text
	}
	return out
}

// state is what a test expects stored for a key: version, deleted, content.
type state struct {
	version int64
	deleted bool
	content string
}

func stateOf(t testing.TB, r *stage.Record) *state {
	t.Helper()
	if r == nil {
		return nil
	}
	s := &state{version: r.Version, deleted: r.Deleted}
	if !r.Deleted {
		vals, err := event.Row(r.Row, nil)
		require.NoError(t, err)
		require.Len(t, vals, 2, "row of %s", r.Key.Text)
		s.content = string(vals[1])
	}
	return s
}

// get returns the record of key on side (nil when absent).
func get(t testing.TB, s stage.Store, side stage.Side, key string) *stage.Record {
	t.Helper()
	tgt, ok := side.Target()
	if !ok {
		tgt = "crm"
	}
	pairs, err := s.Join(ctxOf(t), tgt, []string{key})
	require.NoError(t, err)
	require.Len(t, pairs, 1)
	if side == stage.SourceSide {
		return pairs[0].Source
	}
	return pairs[0].Target
}

func testApply(t *testing.T, storage Storage) {
	type step struct {
		recs    []stage.Record
		changed []string
		current []string
		stale   int
	}
	cases := []struct {
		name  string
		steps []step
		want  map[string]*state // final state; nil = absent
	}{
		{
			name:  "new key",
			steps: []step{{recs: []stage.Record{Live("a", 1, "x")}, changed: []string{"a"}}},
			want:  map[string]*state{"a": {version: 1, content: "x"}},
		},
		{
			name: "redelivery writes nothing and is current",
			steps: []step{
				{recs: []stage.Record{Live("a", 5, "x"), Live("b", 6, "y")}, changed: []string{"a", "b"}},
				{recs: []stage.Record{Live("b", 6, "y"), Live("a", 5, "x")}, current: []string{"a", "b"}},
			},
			want: map[string]*state{"a": {version: 5, content: "x"}, "b": {version: 6, content: "y"}},
		},
		{
			name: "newer version with the same content only moves the version",
			steps: []step{
				{recs: []stage.Record{Live("a", 1, "x")}, changed: []string{"a"}},
				{recs: []stage.Record{Live("a", 2, "x")}, current: []string{"a"}},
				{recs: []stage.Record{Live("a", 1, "x")}, stale: 1},
			},
			want: map[string]*state{"a": {version: 2, content: "x"}},
		},
		{
			name: "newer content wins, older is stale",
			steps: []step{
				{recs: []stage.Record{Live("a", 10, "x")}, changed: []string{"a"}},
				{recs: []stage.Record{Live("a", 20, "y")}, changed: []string{"a"}},
				{recs: []stage.Record{Live("a", 15, "z")}, stale: 1},
			},
			want: map[string]*state{"a": {version: 20, content: "y"}},
		},
		{
			name: "tombstone keeps its version: an older upsert cannot resurrect the key",
			steps: []step{
				{recs: []stage.Record{Live("a", 1, "x")}, changed: []string{"a"}},
				{recs: []stage.Record{Tombstone("a", 3)}, changed: []string{"a"}},
				{recs: []stage.Record{Live("a", 2, "late")}, stale: 1},
				{recs: []stage.Record{Tombstone("a", 3)}, current: []string{"a"}},
			},
			want: map[string]*state{"a": {version: 3, deleted: true}},
		},
		{
			name: "a newer upsert after a tombstone re-creates the key",
			steps: []step{
				{recs: []stage.Record{Tombstone("a", 3)}, changed: []string{"a"}},
				{recs: []stage.Record{Live("a", 4, "back")}, changed: []string{"a"}},
			},
			want: map[string]*state{"a": {version: 4, content: "back"}},
		},
		{
			name: "tombstone of a key never seen guards against an older upsert",
			steps: []step{
				{recs: []stage.Record{Tombstone("a", 9)}, changed: []string{"a"}},
				{recs: []stage.Record{Live("a", 8, "x")}, stale: 1},
			},
			want: map[string]*state{"a": {version: 9, deleted: true}},
		},
		{
			name: "a repeated key in one call keeps the highest version",
			steps: []step{
				{recs: []stage.Record{Live("a", 2, "two"), Live("b", 1, "b"), Live("a", 7, "seven"), Tombstone("a", 5), Live("a", 7, "seven")},
					changed: []string{"a", "b"}, stale: 3},
			},
			want: map[string]*state{"a": {version: 7, content: "seven"}, "b": {version: 1, content: "b"}},
		},
		{
			name: "mixed call: changed, current and stale at once, results in key order",
			steps: []step{
				{recs: []stage.Record{Live("c", 5, "c"), Live("a", 5, "a"), Live("b", 5, "b")}, changed: []string{"a", "b", "c"}},
				{recs: []stage.Record{Live("d", 1, "d"), Live("c", 4, "old"), Live("b", 6, "b"), Live("a", 6, "new")},
					changed: []string{"a", "d"}, current: []string{"b"}, stale: 1},
			},
			want: map[string]*state{
				"a": {version: 6, content: "new"}, "b": {version: 6, content: "b"},
				"c": {version: 5, content: "c"}, "d": {version: 1, content: "d"},
			},
		},
		{
			name: "version 0 and large versions",
			steps: []step{
				{recs: []stage.Record{Live("a", 0, "zero"), Live("b", 1<<62, "big")}, changed: []string{"a", "b"}},
				{recs: []stage.Record{Live("a", 0, "zero"), Live("b", 1<<62-1, "smaller")}, current: []string{"a"}, stale: 1},
			},
			want: map[string]*state{"a": {version: 0, content: "zero"}, "b": {version: 1 << 62, content: "big"}},
		},
		{
			name:  "empty call",
			steps: []step{{}},
			want:  map[string]*state{"a": nil},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := storage(t)(t, pipeline)
			ctx := ctxOf(t)
			start := time.Now()
			for i, st := range tc.steps {
				got, err := s.Apply(ctx, target, st.recs)
				require.NoError(t, err, "step %d", i)
				assert.Equal(t, st.changed, nilIfEmpty(keyTexts(got.Changed)), "step %d: changed", i)
				assert.Equal(t, st.current, nilIfEmpty(keyTexts(got.Current)), "step %d: current", i)
				assert.Equal(t, st.stale, got.Stale, "step %d: stale", i)
			}
			for k, want := range tc.want {
				r := get(t, s, target, k)
				assert.Equal(t, want, stateOf(t, r), "key %s", k)
				if r == nil {
					continue
				}
				assert.Equal(t, []string{k}, r.Key.Parts, "key parts of %s", k)
				assert.WithinRange(t, r.StagedAt, start.Add(-time.Minute), time.Now().Add(time.Minute), "staged_at of %s", k)
				if r.Deleted {
					assert.Nil(t, r.Row, "a tombstone has no row")
					assert.Empty(t, r.Hash, "a tombstone has no hash")
				} else {
					assert.Equal(t, event.RowHash(r.Row), r.Hash, "hash of %s", k)
				}
				assert.Nil(t, get(t, s, stage.SourceSide, k), "the source side is untouched")
			}
		})
	}

	t.Run("composite keys, unicode and binary-safe rows round-trip", func(t *testing.T) {
		s := storage(t)(t, pipeline)
		ctx := ctxOf(t)
		parts := []string{"Ünïcødé ✓", "", `quote " and \ backslash`}
		key := event.KeyOf([][]byte{[]byte(parts[0]), []byte(parts[1]), []byte(parts[2])}, []int{0, 1, 2})
		row := event.PackRow([][]byte{[]byte(parts[0]), []byte(parts[1]), []byte(parts[2]), nil, {0, 1, 2, 0xff}, {}})
		hash := []byte("given hash kept!")
		_, err := s.Apply(ctx, stage.SourceSide, []stage.Record{{Key: stage.Key{Text: key, Parts: parts}, Version: 42, Row: row, Hash: hash}})
		require.NoError(t, err)
		r := get(t, s, stage.SourceSide, key)
		require.NotNil(t, r)
		assert.Equal(t, stage.Key{Text: key, Parts: parts}, r.Key)
		assert.Equal(t, row, r.Row)
		assert.Equal(t, hash, r.Hash, "a hash the caller gave is kept as given")
		assert.Equal(t, int64(42), r.Version)
	})

	t.Run("the caller's records are not modified", func(t *testing.T) {
		s := storage(t)(t, pipeline)
		recs := []stage.Record{Live("b", 1, "x"), Live("a", 1, "y"), Tombstone("c", 1)}
		recs[2].Row = []byte("ignored")
		before := slices.Clone(recs)
		_, err := s.Apply(ctxOf(t), stage.SourceSide, recs)
		require.NoError(t, err)
		assert.Equal(t, before, recs)
	})
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func testApplyInvalid(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	noParts := Live("p", 1, "x")
	noParts.Key.Parts = nil
	noRow := Live("r", 1, "x")
	noRow.Row = nil
	cases := []struct {
		name string
		side stage.Side
		rec  stage.Record
	}{
		{"empty key", stage.SourceSide, stage.Record{Key: stage.Key{Parts: []string{"x"}}, Version: 1, Row: []byte{1, 'x'}}},
		{"no key parts", stage.SourceSide, noParts},
		{"negative version", stage.SourceSide, Live("n", -1, "x")},
		{"live record without a row", stage.SourceSide, noRow},
		{"unknown side", stage.Side("sauce"), Live("a", 1, "x")},
		{"target side with a bad name", stage.Side("target.Bad-Name"), Live("a", 1, "x")},
		{"target side without a name", stage.Side("target."), Live("a", 1, "x")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A valid record in the same call is not written either.
			_, err := s.Apply(ctx, tc.side, []stage.Record{Live("ok", 1, "x"), tc.rec})
			require.Error(t, err)
			assert.True(t, errs.IsPermanent(err), "want a permanent error, got %v", err)
			assert.Nil(t, get(t, s, stage.SourceSide, "ok"), "nothing is written")
		})
	}
	t.Run("bad target names in reads", func(t *testing.T) {
		for _, name := range []string{"", "Bad", "a.b", `x"; drop table y; --`} {
			_, err := s.Join(ctx, name, []string{"a"})
			assert.True(t, errs.IsPermanent(err), "Join(%q): %v", name, err)
			_, err = s.Scan(ctx, name, "", 10)
			assert.True(t, errs.IsPermanent(err), "Scan(%q): %v", name, err)
			_, err = s.Count(ctx, stage.Side("target."+name))
			assert.True(t, errs.IsPermanent(err), "Count(%q): %v", name, err)
			_, err = s.Hold(ctx, name, stage.HoldCounts{})
			assert.True(t, errs.IsPermanent(err), "Hold(%q): %v", name, err)
			_, err = s.RecordPushes(ctx, name, []stage.Push{{Key: "a", Version: 1}})
			assert.True(t, errs.IsPermanent(err), "RecordPushes(%q): %v", name, err)
		}
	})
	t.Run("bad page limits", func(t *testing.T) {
		_, err := s.Scan(ctx, "crm", "", 0)
		assert.True(t, errs.IsPermanent(err), "Scan limit 0: %v", err)
		_, err = s.Stuck(ctx, "crm", 1, "", -1)
		assert.True(t, errs.IsPermanent(err), "Stuck limit -1: %v", err)
	})
}

func testIsolation(t *testing.T, storage Storage) {
	open := storage(t)
	orders, refunds := open(t, "orders"), open(t, "refunds")
	ctx := ctxOf(t)
	apply := func(s stage.Store, side stage.Side, r stage.Record) {
		t.Helper()
		_, err := s.Apply(ctx, side, []stage.Record{r})
		require.NoError(t, err)
	}
	apply(orders, stage.SourceSide, Live("k", 1, "orders source"))
	apply(orders, stage.TargetSide("crm"), Live("k", 2, "orders crm"))
	apply(orders, stage.TargetSide("erp"), Live("k", 3, "orders erp"))
	apply(refunds, stage.SourceSide, Live("k", 4, "refunds source"))
	apply(refunds, stage.TargetSide("crm"), Tombstone("k", 5))

	for _, tc := range []struct {
		store       stage.Store
		target      string
		src, tgt    *state
		description string
	}{
		{orders, "crm", &state{1, false, "orders source"}, &state{2, false, "orders crm"}, "orders/crm"},
		{orders, "erp", &state{1, false, "orders source"}, &state{3, false, "orders erp"}, "orders/erp"},
		{orders, "wms", &state{1, false, "orders source"}, nil, "orders/wms"},
		{refunds, "crm", &state{4, false, "refunds source"}, &state{5, true, ""}, "refunds/crm"},
		{refunds, "erp", &state{4, false, "refunds source"}, nil, "refunds/erp"},
	} {
		pairs, err := tc.store.Join(ctx, tc.target, []string{"k"})
		require.NoError(t, err)
		require.Len(t, pairs, 1)
		assert.Equal(t, tc.src, stateOf(t, pairs[0].Source), "%s source", tc.description)
		assert.Equal(t, tc.tgt, stateOf(t, pairs[0].Target), "%s target", tc.description)
	}
	c, err := refunds.Count(ctx, stage.TargetSide("erp"))
	require.NoError(t, err)
	assert.Equal(t, stage.Counts{}, c)
}

func testJoin(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	_, err := s.Apply(ctx, stage.SourceSide, []stage.Record{Live("both", 1, "s"), Live("src", 2, "s"), Tombstone("gone", 3)})
	require.NoError(t, err)
	_, err = s.Apply(ctx, target, []stage.Record{Live("both", 10, "t"), Live("tgt", 11, "t"), Live("gone", 12, "t")})
	require.NoError(t, err)

	pairs, err := s.Join(ctx, "crm", []string{"tgt", "none", "both", "src", "gone", "both"})
	require.NoError(t, err)
	type row struct {
		key      string
		src, tgt *state
	}
	var got []row
	for _, p := range pairs {
		got = append(got, row{p.Key.Text, stateOf(t, p.Source), stateOf(t, p.Target)})
		if p.Source != nil {
			assert.Equal(t, p.Key, p.Source.Key)
		}
		if p.Target != nil {
			assert.Equal(t, p.Key.Text, p.Target.Key.Text)
		}
	}
	assert.Equal(t, []row{
		{"both", &state{1, false, "s"}, &state{10, false, "t"}},
		{"gone", &state{3, true, ""}, &state{12, false, "t"}},
		{"none", nil, nil},
		{"src", &state{2, false, "s"}, nil},
		{"tgt", nil, &state{11, false, "t"}},
	}, got)
	assert.Equal(t, []string{"tgt"}, pairs[4].Key.Parts, "parts come from the side that has the key")
	assert.Nil(t, pairs[2].Key.Parts, "a key absent on both sides has no parts")

	pairs, err = s.Join(ctx, "crm", nil)
	require.NoError(t, err)
	assert.Empty(t, pairs)

	// Many keys at once (implementations may chunk them).
	var recs []stage.Record
	var keys []string
	for i := range 1500 {
		k := fmt.Sprintf("bulk%05d", i)
		recs = append(recs, Live(k, int64(i), "v"))
		keys = append(keys, k)
	}
	_, err = s.Apply(ctx, stage.SourceSide, recs)
	require.NoError(t, err)
	rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	pairs, err = s.Join(ctx, "crm", keys)
	require.NoError(t, err)
	require.Len(t, pairs, 1500)
	for i, p := range pairs {
		require.Equal(t, fmt.Sprintf("bulk%05d", i), p.Key.Text)
		require.NotNil(t, p.Source)
		require.Equal(t, int64(i), p.Source.Version)
	}
}

func testScan(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	// Keys on the source only, the target only, both, tombstones, another
	// target (ignored), and texts whose byte order is not their numeric
	// or case-folded order.
	want := map[string][2]*state{}
	var src, tgt, other []stage.Record
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 257 {
		k := fmt.Sprint(i)
		switch i % 7 {
		case 0, 1:
			src = append(src, Live(k, int64(i), "s"))
			want[k] = [2]*state{{int64(i), false, "s"}, nil}
		case 2, 3:
			tgt = append(tgt, Live(k, int64(i), "t"))
			want[k] = [2]*state{nil, {int64(i), false, "t"}}
		case 4:
			src = append(src, Tombstone(k, int64(i)))
			tgt = append(tgt, Live(k, int64(i+1), "t"))
			want[k] = [2]*state{{int64(i), true, ""}, {int64(i + 1), false, "t"}}
		case 5:
			src = append(src, Live(k, int64(i), "s"))
			tgt = append(tgt, Tombstone(k, int64(i+1)))
			want[k] = [2]*state{{int64(i), false, "s"}, {int64(i + 1), true, ""}}
		case 6:
			other = append(other, Live(k, int64(i), "other target"))
		}
	}
	for _, k := range []string{"B", "a", "Z", "é", "e", "[\"a\",\"b\"]", " "} {
		src = append(src, Live(k, 1, "s"))
		want[k] = [2]*state{{1, false, "s"}, nil}
	}
	rng.Shuffle(len(src), func(i, j int) { src[i], src[j] = src[j], src[i] })
	_, err := s.Apply(ctx, stage.SourceSide, src)
	require.NoError(t, err)
	_, err = s.Apply(ctx, target, tgt)
	require.NoError(t, err)
	_, err = s.Apply(ctx, stage.TargetSide("erp"), other)
	require.NoError(t, err)

	var wantKeys []string
	for k := range want {
		wantKeys = append(wantKeys, k)
	}
	slices.Sort(wantKeys) // byte order

	for _, limit := range []int{1, 2, 7, 50, 1000} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			var gotKeys []string
			after := ""
			for pages := 0; ; pages++ {
				require.Less(t, pages, len(wantKeys)+2, "paging does not end")
				page, err := s.Scan(ctx, "crm", after, limit)
				require.NoError(t, err)
				if len(page) == 0 {
					break
				}
				require.LessOrEqual(t, len(page), limit)
				if len(gotKeys)+len(page) < len(wantKeys) {
					require.Len(t, page, limit, "only the last page may be short")
				}
				for _, p := range page {
					w := want[p.Key.Text]
					assert.Equal(t, w[0], stateOf(t, p.Source), "source of %q", p.Key.Text)
					assert.Equal(t, w[1], stateOf(t, p.Target), "target of %q", p.Key.Text)
					assert.Equal(t, []string{p.Key.Text}, p.Key.Parts)
					gotKeys = append(gotKeys, p.Key.Text)
				}
				after = page[len(page)-1].Key.Text
			}
			assert.Equal(t, wantKeys, gotKeys)
		})
	}
	t.Run("after a key that is not stored", func(t *testing.T) {
		page, err := s.Scan(ctx, "crm", "25", 3)
		require.NoError(t, err)
		i, _ := slices.BinarySearch(wantKeys, "25")
		if wantKeys[i] == "25" {
			i++
		}
		assert.Equal(t, wantKeys[i:i+3], keyTexts(pairKeys(page)))
	})
	t.Run("a target with no records scans the source", func(t *testing.T) {
		page, err := s.Scan(ctx, "wms", "", 1000)
		require.NoError(t, err)
		for _, p := range page {
			assert.Nil(t, p.Target)
			assert.NotNil(t, p.Source)
		}
	})
}

func pairKeys(pairs []stage.Pair) []stage.Key {
	out := make([]stage.Key, len(pairs))
	for i, p := range pairs {
		out[i] = p.Key
	}
	return out
}

func testCount(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	c, err := s.Count(ctx, stage.SourceSide)
	require.NoError(t, err)
	assert.Equal(t, stage.Counts{}, c)
	_, err = s.Apply(ctx, stage.SourceSide, []stage.Record{Live("a", 1, "x"), Live("b", 1, "x"), Tombstone("c", 1)})
	require.NoError(t, err)
	_, err = s.Apply(ctx, stage.SourceSide, []stage.Record{Tombstone("a", 2)})
	require.NoError(t, err)
	_, err = s.Apply(ctx, target, []stage.Record{Live("a", 1, "x")})
	require.NoError(t, err)
	c, err = s.Count(ctx, stage.SourceSide)
	require.NoError(t, err)
	assert.Equal(t, stage.Counts{Live: 1, Deleted: 2}, c)
	c, err = s.Count(ctx, target)
	require.NoError(t, err)
	assert.Equal(t, stage.Counts{Live: 1}, c)
}

func testPushes(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	steps := []struct {
		target string
		pushes []stage.Push
		want   []int
	}{
		{"crm", []stage.Push{push("a", 1), push("b", 1)}, []int{1, 1}},
		{"crm", []stage.Push{push("b", 1), push("a", 1), push("c", 7)}, []int{2, 2, 1}},
		{"crm", []stage.Push{push("a", 1)}, []int{3}},
		{"crm", []stage.Push{push("b", 2)}, []int{1}}, // a new version starts again
		{"erp", []stage.Push{push("a", 1)}, []int{1}}, // targets count apart
		{"crm", nil, []int{}},
	}
	for i, st := range steps {
		got, err := s.RecordPushes(ctx, st.target, st.pushes)
		require.NoError(t, err, "step %d", i)
		assert.Equal(t, st.want, nilToEmpty(got), "step %d", i)
	}

	stuck, err := s.Stuck(ctx, "crm", 2, "", 10)
	require.NoError(t, err)
	require.Len(t, stuck, 1)
	assert.Equal(t, "a", stuck[0].Key)
	assert.Equal(t, int64(1), stuck[0].Version)
	assert.Equal(t, 3, stuck[0].Count)
	assert.False(t, stuck[0].LastAt.Before(stuck[0].FirstAt), "last push not before the first")

	all, err := s.Stuck(ctx, "crm", 1, "", 10)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b", "c"}, pushKeys(all))
	page, err := s.Stuck(ctx, "crm", 1, "a", 1)
	require.NoError(t, err)
	assert.Equal(t, []string{"b"}, pushKeys(page))

	_, err = s.RecordPushes(ctx, "crm", []stage.Push{push("x", 1), push("x", 2)})
	assert.True(t, errs.IsPermanent(err), "a repeated key: %v", err)
	_, err = s.RecordPushes(ctx, "crm", []stage.Push{push("", 1)})
	assert.True(t, errs.IsPermanent(err), "an empty key: %v", err)
	all, err = s.Stuck(ctx, "crm", 1, "", 10)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b", "c"}, pushKeys(all), "a rejected call counts nothing")

	n, err := s.ClearPushes(ctx, "crm", []string{"a", "zz"})
	require.NoError(t, err)
	assert.Equal(t, int64(1), n)
	got, err := s.RecordPushes(ctx, "crm", []stage.Push{push("a", 1)})
	require.NoError(t, err)
	assert.Equal(t, []int{1}, got, "a cleared key counts from 1")

	n, err = s.ClearPushes(ctx, "crm", nil)
	require.NoError(t, err)
	assert.Equal(t, int64(3), n)
	all, err = s.Stuck(ctx, "crm", 1, "", 10)
	require.NoError(t, err)
	assert.Empty(t, all)
	all, err = s.Stuck(ctx, "erp", 1, "", 10)
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, pushKeys(all), "clearing one target leaves the others")
}

// testPushPositions: the log keeps the position of the last published push
// of a key's version, which Pushes returns with the count and when it was
// last counted.
func testPushPositions(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	at := func(key string, version, position int64) stage.Push {
		return stage.Push{Key: key, Version: version, Position: position}
	}
	type entry struct {
		Key               string
		Version, Position int64
		Count             int
	}
	read := func(target string, keys ...string) []entry {
		t.Helper()
		ps, err := s.Pushes(ctx, target, keys)
		require.NoError(t, err)
		out := []entry{}
		for _, p := range ps {
			assert.False(t, p.LastAt.IsZero(), "key %s has a last push time", p.Key)
			assert.False(t, p.LastAt.Before(p.FirstAt), "key %s: last push not before the first", p.Key)
			out = append(out, entry{p.Key, p.Version, p.Position, p.Count})
		}
		return out
	}
	steps := []struct {
		name   string
		pushes []stage.Push
		want   []entry // Pushes of a, b, c after the step
	}{
		{"first pushes store their positions", []stage.Push{at("a", 1, 10<<20), at("b", 1, 10<<20|1)},
			[]entry{{"a", 1, 10 << 20, 1}, {"b", 1, 10<<20 | 1, 1}}},
		{"a push again moves the position", []stage.Push{at("a", 1, 12<<20)},
			[]entry{{"a", 1, 12 << 20, 2}, {"b", 1, 10<<20 | 1, 1}}},
		{"counted but not published keeps the position", []stage.Push{at("a", 1, 0)},
			[]entry{{"a", 1, 12 << 20, 3}, {"b", 1, 10<<20 | 1, 1}}},
		{"a new version not published has no position", []stage.Push{at("b", 2, 0), at("c", 5, 0)},
			[]entry{{"a", 1, 12 << 20, 3}, {"b", 2, 0, 1}, {"c", 5, 0, 1}}},
		{"a new version published", []stage.Push{at("b", 3, 14<<20)},
			[]entry{{"a", 1, 12 << 20, 3}, {"b", 3, 14 << 20, 1}, {"c", 5, 0, 1}}},
	}
	for _, st := range steps {
		_, err := s.RecordPushes(ctx, "crm", st.pushes)
		require.NoError(t, err, st.name)
		assert.Equal(t, st.want, read("crm", "c", "zz", "a", "b", "a"), "%s: any key order and repeats, unknown keys left out", st.name)
	}
	assert.Equal(t, []entry{{"b", 3, 14 << 20, 1}}, read("crm", "b"))
	assert.Equal(t, []entry{}, read("crm"), "no keys")
	assert.Equal(t, []entry{}, read("erp", "a", "b"), "targets apart")

	stuck, err := s.Stuck(ctx, "crm", 3, "", 10)
	require.NoError(t, err)
	require.Len(t, stuck, 1)
	assert.Equal(t, int64(12<<20), stuck[0].Position, "Stuck reports the position too")

	_, err = s.RecordPushes(ctx, "crm", []stage.Push{at("d", 1, -1)})
	assert.True(t, errs.IsPermanent(err), "a negative position: %v", err)
	_, err = s.Pushes(ctx, "bad name!", []string{"a"})
	assert.True(t, errs.IsPermanent(err), "an invalid target: %v", err)

	// Many keys (more than one query's worth in any store).
	many := make([]stage.Push, 0, 6000)
	keys := make([]string, 0, 6000)
	for i := range 6000 {
		k := fmt.Sprintf("k%05d", i)
		many = append(many, at(k, 1, int64(i+1)))
		keys = append(keys, k)
	}
	_, err = s.RecordPushes(ctx, "erp", many)
	require.NoError(t, err)
	ps, err := s.Pushes(ctx, "erp", keys)
	require.NoError(t, err)
	require.Len(t, ps, 6000)
	for i, p := range ps {
		require.Equal(t, keys[i], p.Key, "key order")
		require.Equal(t, int64(i+1), p.Position)
	}
}

// testReportedPushes: ApplyReports stages the writer's reports and marks,
// in the same call, the push log's Reported of keys with an entry, even
// when the stage keeps a newer read-back.
func testReportedPushes(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	type entry struct {
		Key                         string
		Version, Position, Reported int64
	}
	read := func(target string, keys ...string) []entry {
		t.Helper()
		ps, err := s.Pushes(ctx, target, keys)
		require.NoError(t, err)
		out := []entry{}
		for _, p := range ps {
			out = append(out, entry{p.Key, p.Version, p.Position, p.Reported})
		}
		return out
	}
	record := func(pushes ...stage.Push) {
		t.Helper()
		_, err := s.RecordPushes(ctx, "crm", pushes)
		require.NoError(t, err)
	}
	report := func(target string, recs ...stage.Record) stage.Applied {
		t.Helper()
		res, err := s.ApplyReports(ctx, target, recs)
		require.NoError(t, err)
		return res
	}
	record(stage.Push{Key: "a", Version: 1, Position: 10 << 20}, stage.Push{Key: "b", Version: 1, Position: 11 << 20})
	// A read-back of a, published after its push, is staged first.
	_, err := s.Apply(ctx, target, []stage.Record{Live("a", 12<<20, "read back")})
	require.NoError(t, err)

	res := report("crm", Live("a", 10<<20, "pushed"), Live("b", 11<<20, "pushed"), Live("c", 13<<20, "no push logged"))
	assert.Equal(t, []string{"b", "c"}, keyTexts(res.Changed))
	assert.Equal(t, 1, res.Stale, "a's report is older than its read-back")
	assert.Equal(t, []string{"a", "b"}, keyTexts(res.Confirmed), "a's push is confirmed though the guard kept the read-back")
	assert.Equal(t, &state{version: 12 << 20, content: "read back"}, stateOf(t, get(t, s, target, "a")))
	assert.Equal(t, []entry{{"a", 1, 10 << 20, 10 << 20}, {"b", 1, 11 << 20, 11 << 20}}, read("crm", "a", "b", "c"),
		"c got no entry")

	res = report("crm", Live("a", 10<<20, "pushed"), Live("b", 11<<20, "pushed"))
	assert.Equal(t, []string{"a", "b"}, keyTexts(res.Confirmed), "a redelivery confirms again")
	assert.Equal(t, []entry{{"a", 1, 10 << 20, 10 << 20}, {"b", 1, 11 << 20, 11 << 20}}, read("crm", "a", "b"))

	res = report("crm", Live("a", 5<<20, "an older push"))
	assert.Empty(t, res.Confirmed, "a report below the last push confirms nothing")
	assert.Equal(t, []entry{{"a", 1, 10 << 20, 10 << 20}}, read("crm", "a"), "Reported is never lowered")

	record(stage.Push{Key: "a", Version: 1, Position: 14 << 20})
	assert.Equal(t, []entry{{"a", 1, 14 << 20, 10 << 20}}, read("crm", "a"), "a new push is not confirmed by the old report")
	res = report("crm", Live("a", 14<<20, "pushed again"))
	assert.Equal(t, []string{"a"}, keyTexts(res.Confirmed))
	assert.Equal(t, []entry{{"a", 1, 14 << 20, 14 << 20}}, read("crm", "a"))

	// The writer's report may be staged before the differ records where
	// its push went out: recording keeps Reported, so the push is
	// confirmed.
	report("crm", Live("b", 20<<20, "quick writer"))
	record(stage.Push{Key: "b", Version: 2, Position: 20 << 20})
	assert.Equal(t, []entry{{"b", 2, 20 << 20, 20 << 20}}, read("crm", "b"))

	// Apply marks nothing; targets are apart.
	res, err = s.Apply(ctx, target, []stage.Record{Live("a", 30<<20, "read back")})
	require.NoError(t, err)
	assert.Nil(t, res.Confirmed)
	res = report("erp", Live("a", 40<<20, "another target"))
	assert.Empty(t, res.Confirmed)
	assert.Equal(t, []entry{{"a", 1, 14 << 20, 14 << 20}}, read("crm", "a"))
	assert.Equal(t, []entry{}, read("erp", "a"))

	_, err = s.ApplyReports(ctx, "bad name!", []stage.Record{Live("a", 1, "x")})
	assert.True(t, errs.IsPermanent(err), "an invalid target: %v", err)
	_, err = s.ApplyReports(ctx, "crm", []stage.Record{{Key: stage.Key{Text: "a"}, Version: 1}})
	assert.True(t, errs.IsPermanent(err), "an invalid record: %v", err)
	assert.Equal(t, []entry{{"a", 1, 14 << 20, 14 << 20}}, read("crm", "a"))

	// Many keys (more than one statement's worth in any store).
	const n = 1500
	pushes := make([]stage.Push, 0, n)
	recs := make([]stage.Record, 0, n)
	for i := range n {
		k := fmt.Sprintf("m%05d", i)
		pushes = append(pushes, stage.Push{Key: k, Version: 1, Position: int64(100+i) << 20})
		recs = append(recs, Live(k, int64(100+i)<<20, "pushed"))
	}
	_, err = s.RecordPushes(ctx, "erp", pushes)
	require.NoError(t, err)
	res = report("erp", recs...)
	require.Len(t, res.Confirmed, n)
	require.Len(t, res.Changed, n)
	ps, err := s.Pushes(ctx, "erp", []string{"m00000", "m01499"})
	require.NoError(t, err)
	require.Len(t, ps, 2)
	assert.Equal(t, ps[1].Position, ps[1].Reported)
}

func push(key string, version int64) stage.Push { return stage.Push{Key: key, Version: version} }

func nilToEmpty(s []int) []int {
	if s == nil {
		return []int{}
	}
	return s
}

func pushKeys(ps []stage.PushState) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.Key)
	}
	return out
}

func testHolds(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	start := time.Now()

	holds, err := s.Holds(ctx)
	require.NoError(t, err)
	assert.Empty(t, holds)

	_, err = s.Approve(ctx, "crm", "alice")
	assert.ErrorIs(t, err, stage.ErrNoHold)

	h, err := s.Hold(ctx, "crm", stage.HoldCounts{Deletes: 50, Total: 100})
	require.NoError(t, err)
	assert.Equal(t, "crm", h.Target)
	assert.Equal(t, stage.HoldHeld, h.State)
	assert.Equal(t, stage.HoldCounts{Deletes: 50, Total: 100}, h.HoldCounts)
	assert.WithinRange(t, h.HeldAt, start.Add(-time.Minute), time.Now().Add(time.Minute))
	assert.Empty(t, h.ApprovedBy)
	assert.True(t, h.ApprovedAt.IsZero())
	heldAt := h.HeldAt

	h, err = s.Hold(ctx, "crm", stage.HoldCounts{Deletes: 60, Total: 100})
	require.NoError(t, err)
	assert.Equal(t, stage.HoldHeld, h.State)
	assert.Equal(t, int64(60), h.Deletes, "a held diff takes the new counts")
	assert.True(t, h.HeldAt.Equal(heldAt), "and keeps when it was first held")

	_, err = s.Approve(ctx, "crm", " ")
	assert.True(t, errs.IsPermanent(err), "an empty approver: %v", err)

	h, err = s.Approve(ctx, "crm", "alice")
	require.NoError(t, err)
	assert.Equal(t, stage.HoldApproved, h.State)
	assert.Equal(t, "alice", h.ApprovedBy)
	assert.WithinRange(t, h.ApprovedAt, start.Add(-time.Minute), time.Now().Add(time.Minute))
	approved := h

	h, err = s.Approve(ctx, "crm", "bob")
	require.NoError(t, err)
	assert.Equal(t, "alice", h.ApprovedBy, "approving twice keeps the first approval")

	h, err = s.Hold(ctx, "crm", stage.HoldCounts{Deletes: 70, Total: 100})
	require.NoError(t, err)
	assertSameHold(t, approved, h)

	_, err = s.Hold(ctx, "erp", stage.HoldCounts{Deletes: 1, Total: 2})
	require.NoError(t, err)
	holds, err = s.Holds(ctx)
	require.NoError(t, err)
	require.Len(t, holds, 2)
	assert.Equal(t, "crm", holds[0].Target)
	assert.Equal(t, "erp", holds[1].Target)
	assertSameHold(t, approved, holds[0])

	require.NoError(t, s.Release(ctx, "crm"))
	require.NoError(t, s.Release(ctx, "crm"), "release is idempotent")
	holds, err = s.Holds(ctx)
	require.NoError(t, err)
	require.Len(t, holds, 1)
	assert.Equal(t, "erp", holds[0].Target)

	h, err = s.Hold(ctx, "crm", stage.HoldCounts{Deletes: 5, Total: 6})
	require.NoError(t, err)
	assert.Equal(t, stage.HoldHeld, h.State, "after a release the next hold is new")
	assert.Empty(t, h.ApprovedBy)
}

func assertSameHold(t *testing.T, want, got stage.Hold) {
	t.Helper()
	assert.Equal(t, want.Target, got.Target)
	assert.Equal(t, want.State, got.State)
	assert.Equal(t, want.HoldCounts, got.HoldCounts)
	assert.Equal(t, want.ApprovedBy, got.ApprovedBy)
	assert.True(t, want.HeldAt.Equal(got.HeldAt), "held_at %v, want %v", got.HeldAt, want.HeldAt)
	assert.True(t, want.ApprovedAt.Equal(got.ApprovedAt), "approved_at %v, want %v", got.ApprovedAt, want.ApprovedAt)
}

func testReopen(t *testing.T, storage Storage) {
	open := storage(t)
	ctx := ctxOf(t)
	s := open(t, pipeline)
	_, err := s.Apply(ctx, stage.SourceSide, []stage.Record{Live("a", 3, "x"), Tombstone("b", 4)})
	require.NoError(t, err)
	_, err = s.RecordPushes(ctx, "crm", []stage.Push{push("a", 3)})
	require.NoError(t, err)
	_, err = s.Hold(ctx, "crm", stage.HoldCounts{Deletes: 9, Total: 10})
	require.NoError(t, err)
	h, err := s.Approve(ctx, "crm", "alice")
	require.NoError(t, err)
	require.NoError(t, s.Close())

	s = open(t, pipeline)
	assert.Equal(t, &state{3, false, "x"}, stateOf(t, get(t, s, stage.SourceSide, "a")))
	assert.Equal(t, &state{4, true, ""}, stateOf(t, get(t, s, stage.SourceSide, "b")))
	got, err := s.Apply(ctx, stage.SourceSide, []stage.Record{Live("b", 2, "late")})
	require.NoError(t, err)
	assert.Equal(t, 1, got.Stale, "a tombstone still guards after a restart")
	counts, err := s.RecordPushes(ctx, "crm", []stage.Push{push("a", 3)})
	require.NoError(t, err)
	assert.Equal(t, []int{2}, counts)
	holds, err := s.Holds(ctx)
	require.NoError(t, err)
	require.Len(t, holds, 1)
	assertSameHold(t, h, holds[0])
}

// testConcurrentApply applies random versions of a few keys from 4
// goroutines on 2 handles (as 2 processes would), in random order, with
// duplicates, and checks that each key ends at its highest version.
func testConcurrentApply(t *testing.T, storage Storage) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			open := storage(t)
			handles := []stage.Store{open(t, pipeline), open(t, pipeline)}
			ctx := ctxOf(t)
			rng := rand.New(rand.NewPCG(seed, 99))

			const keys, versions = 5, 40
			var all []stage.Record
			highest := map[string]stage.Record{}
			for k := range keys {
				key := fmt.Sprintf("k%d", k)
				// Distinct random versions, so "highest" is well defined.
				vs := rng.Perm(versions * 10)[:versions]
				for _, v := range vs {
					r := Live(key, int64(v), fmt.Sprintf("%s@%d", key, v))
					if rng.IntN(4) == 0 {
						r = Tombstone(key, int64(v))
					}
					for range 1 + rng.IntN(3) { // duplicates
						all = append(all, r)
					}
					if h, ok := highest[key]; !ok || r.Version > h.Version {
						highest[key] = r
					}
				}
			}
			rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })

			const workers = 4
			var wg sync.WaitGroup
			errc := make(chan error, workers)
			var mu sync.Mutex
			touched := map[string]bool{}
			for w := range workers {
				part := all[w*len(all)/workers : (w+1)*len(all)/workers]
				wrng := rand.New(rand.NewPCG(seed, uint64(w)))
				wg.Go(func() {
					s := handles[w%len(handles)]
					for len(part) > 0 {
						n := min(len(part), 1+wrng.IntN(8))
						res, err := s.Apply(ctx, target, part[:n])
						if err != nil {
							errc <- fmt.Errorf("worker %d: %w", w, err)
							return
						}
						mu.Lock()
						for _, k := range res.Touched() {
							touched[k.Text] = true
						}
						mu.Unlock()
						part = part[n:]
					}
				})
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				require.NoError(t, err)
			}
			for key, h := range highest {
				r := get(t, handles[0], target, key)
				require.NotNil(t, r, "key %s", key)
				assert.Equal(t, stateOf(t, &h), stateOf(t, r), "key %s ends at its highest version", key)
				assert.True(t, touched[key], "key %s was reported touched", key)
			}
			// A replay of everything changes nothing.
			res, err := handles[1].Apply(ctx, target, all)
			require.NoError(t, err)
			assert.Empty(t, res.Changed)
			assert.Len(t, res.Current, keys)
		})
	}
}

func testCancel(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Apply(ctx, stage.SourceSide, []stage.Record{Live("a", 1, "x")})
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "cancel"), "want a cancellation error, got %v", err)
	_, err = s.Scan(ctx, "crm", "", 10)
	assert.Error(t, err)
	assert.Nil(t, get(t, s, stage.SourceSide, "a"), "a cancelled Apply writes nothing")
}

func testClose(t *testing.T, storage Storage) {
	s := storage(t)(t, pipeline)
	ctx := ctxOf(t)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")
	_, err := s.Apply(ctx, stage.SourceSide, []stage.Record{Live("a", 1, "x")})
	assert.ErrorIs(t, err, stage.ErrClosed)
	_, err = s.Join(ctx, "crm", []string{"a"})
	assert.ErrorIs(t, err, stage.ErrClosed)
	_, err = s.Holds(ctx)
	assert.ErrorIs(t, err, stage.ErrClosed)
	_, err = s.Pushes(ctx, "crm", []string{"a"})
	assert.ErrorIs(t, err, stage.ErrClosed)
}

// BenchmarkApply measures Apply of batches of 10,000 records (each
// iteration a newer version of the same keys, so every record is written).
func BenchmarkApply(b *testing.B, storage Storage) {
	s := storage(b)(b, pipeline)
	ctx := ctxOf(b)
	const n = 10_000
	recs := make([]stage.Record, n)
	payload := strings.Repeat("x", 100)
	version := int64(0)
	fill := func() {
		version++
		for i := range recs {
			k := fmt.Sprintf("key%07d", i)
			recs[i] = stage.Record{
				Key:     stage.Key{Text: k, Parts: []string{k}},
				Version: version,
				Row:     event.PackRow([][]byte{[]byte(k), []byte(payload), fmt.Appendf(nil, "%d", version)}),
			}
		}
	}
	fill()
	_, err := s.Apply(ctx, stage.SourceSide, recs) // insert once; iterations update
	require.NoError(b, err)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		fill()
		b.StartTimer()
		res, err := s.Apply(ctx, stage.SourceSide, recs)
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Changed) != n {
			b.Fatalf("changed %d of %d", len(res.Changed), n)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkInitialLoad measures an initial load as staged push does it:
// numeric keys (whose text order is not their numeric order) staged in
// groups of 32,000 on the source side, then the same rows on a target side
// (the writer's applied reports), at 100,000 keys per iteration.
func BenchmarkInitialLoad(b *testing.B, storage Storage) {
	const n, group = 100_000, 32_000
	ctx := ctxOf(b)
	iter := 0
	for b.Loop() {
		b.StopTimer()
		s := storage(b)(b, fmt.Sprintf("load%d", iter))
		iter++
		b.StartTimer()
		for _, side := range []stage.Side{stage.SourceSide, stage.TargetSide("t")} {
			for start := 1; start <= n; start += group {
				recs := make([]stage.Record, 0, group)
				for id := start; id < start+group && id <= n; id++ {
					k := strconv.Itoa(id)
					recs = append(recs, stage.Record{
						Key:     stage.Key{Text: k, Parts: []string{k}},
						Version: int64(id),
						Row: event.PackRow([][]byte{[]byte(k), fmt.Appendf(nil, "customer-%d", id%5000), fmt.Appendf(nil, "%d.%02d", id%100000, id%100),
							[]byte("open"), []byte("a note of some length for the invoice"), []byte("2026-11-27 17:40:27.123456+00")}),
					})
				}
				if _, err := s.Apply(ctx, side, recs); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.ReportMetric(float64(2*n*b.N)/b.Elapsed().Seconds(), "records/s")
}
