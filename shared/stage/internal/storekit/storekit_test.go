package storekit

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/stage"
)

func recs(keys ...string) []stage.Record {
	out := make([]stage.Record, len(keys))
	for i, k := range keys {
		out[i] = stage.Record{Key: stage.Key{Text: k, Parts: []string{k}}, Row: []byte{2, 'x'}}
	}
	return out
}

func TestPage(t *testing.T) {
	type pair struct {
		key      string
		src, tgt bool
	}
	for _, tc := range []struct {
		name     string
		src, tgt []string
		limit    int
		want     []pair
	}{
		{"both empty", nil, nil, 3, []pair{}},
		{"source full: stop at its last key", []string{"a", "c"}, []string{"b", "d"}, 2,
			[]pair{{"a", true, false}, {"b", false, true}}},
		{"source full, target short beyond it", []string{"a", "b"}, []string{"z"}, 2,
			[]pair{{"a", true, false}, {"b", true, false}}},
		{"both short: everything", []string{"a", "c"}, []string{"b", "c"}, 5,
			[]pair{{"a", true, false}, {"b", false, true}, {"c", true, true}}},
		{"both full, matching keys", []string{"a", "b"}, []string{"a", "b"}, 2,
			[]pair{{"a", true, true}, {"b", true, true}}},
		{"target full bounds a short source", []string{"b", "y"}, []string{"a", "c"}, 2,
			[]pair{{"a", false, true}, {"b", true, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := []pair{}
			for _, p := range Page(recs(tc.src...), recs(tc.tgt...), tc.limit) {
				got = append(got, pair{p.Key.Text, p.Source != nil, p.Target != nil})
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestPrepare(t *testing.T) {
	in := []stage.Record{
		{Key: stage.Key{Text: "b", Parts: []string{"b"}}, Version: 1, Row: []byte{2, 'x'}},
		{Key: stage.Key{Text: "a", Parts: []string{"a"}}, Version: 3, Deleted: true, Row: []byte{2, 'x'}},
		{Key: stage.Key{Text: "a", Parts: []string{"a"}}, Version: 5, Row: []byte{2, 'y'}},
		{Key: stage.Key{Text: "a", Parts: []string{"a"}}, Version: 4, Row: []byte{2, 'z'}},
	}
	kept, dropped, err := Prepare(in)
	require.NoError(t, err)
	assert.Equal(t, 2, dropped)
	require.Len(t, kept, 2)
	assert.Equal(t, "a", kept[0].Key.Text)
	assert.Equal(t, int64(5), kept[0].Version)
	assert.NotEmpty(t, kept[0].Hash)
	assert.Equal(t, "b", kept[1].Key.Text)
	assert.Nil(t, in[0].Hash, "the input is not modified")

	_, _, err = Prepare([]stage.Record{{Key: stage.Key{Text: "a"}}})
	assert.True(t, errs.IsPermanent(err))
}

func TestParts(t *testing.T) {
	for _, parts := range [][]string{{"a"}, {"", "ü", "x\x00y"}} {
		got, err := UnpackParts(PackParts(parts))
		require.NoError(t, err)
		assert.Equal(t, parts, got)
	}
	_, err := UnpackParts([]byte{9})
	assert.True(t, errs.IsPermanent(err))
}
