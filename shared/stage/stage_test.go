package stage

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/oneway-sync/oneway/shared/errs"
)

func TestSide(t *testing.T) {
	for _, tc := range []struct {
		side   Side
		target string
		ok     bool
	}{
		{SourceSide, "", true},
		{TargetSide("crm"), "crm", true},
		{Side("target.crm_2"), "crm_2", true},
		{Side("target."), "", false},
		{Side("target.CRM"), "", false},
		{Side("target.a.b"), "", false},
		{Side("targets.crm"), "", false},
		{Side(""), "", false},
		{Side("Source"), "", false},
	} {
		name, isTarget := tc.side.Target()
		assert.Equal(t, tc.target, name, "%q", tc.side)
		err := tc.side.Validate()
		if tc.ok {
			assert.NoError(t, err, "%q", tc.side)
			assert.Equal(t, tc.side != SourceSide, isTarget, "%q", tc.side)
		} else {
			assert.True(t, errs.IsPermanent(err), "%q: %v", tc.side, err)
		}
	}
}

func TestAppliedTouched(t *testing.T) {
	k := func(s ...string) []Key {
		var out []Key
		for _, x := range s {
			out = append(out, Key{Text: x})
		}
		return out
	}
	for _, tc := range []struct {
		changed, current, want []Key
	}{
		{nil, nil, []Key{}},
		{k("a", "c"), nil, k("a", "c")},
		{nil, k("b"), k("b")},
		{k("a", "c", "e"), k("b", "d"), k("a", "b", "c", "d", "e")},
		{k("x"), k("a", "b"), k("a", "b", "x")},
	} {
		assert.Equal(t, tc.want, Applied{Changed: tc.changed, Current: tc.current}.Touched())
	}
}

func TestRecordNormalize(t *testing.T) {
	r := Record{Key: Key{Text: "a", Parts: []string{"a"}}, Row: []byte{2, 'a'}}
	assert.NoError(t, r.Validate())
	r.Normalize()
	assert.Len(t, r.Hash, 16, "a live record gets its hash")
	d := Record{Key: Key{Text: "a", Parts: []string{"a"}}, Deleted: true, Row: []byte{2, 'a'}, Hash: []byte{1}}
	assert.NoError(t, d.Validate())
	d.Normalize()
	assert.Nil(t, d.Row)
	assert.Nil(t, d.Hash)
}
