package stage

import (
	"testing"

	"github.com/stretchr/testify/assert"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
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

func TestRecordOf(t *testing.T) {
	row := event.PackRow([][]byte{[]byte("7"), []byte("x"), []byte("eu"), nil})
	keyIdx := []int{2, 0} // composite key, not in column order
	for _, tc := range []struct {
		name   string
		change *onewayv1.Change
		want   Record
	}{
		{"upsert without a hash gets one", &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: row},
			Record{Key: Key{Text: `["eu","7"]`, Parts: []string{"eu", "7"}}, Version: 9, Row: row, Hash: event.RowHash(row)}},
		{"update keeps its hash", &onewayv1.Change{Op: onewayv1.Op_OP_UPDATE, Row: row, Hash: []byte("h")},
			Record{Key: Key{Text: `["eu","7"]`, Parts: []string{"eu", "7"}}, Version: 9, Row: row, Hash: []byte("h")}},
		{"delete is a tombstone", &onewayv1.Change{Op: onewayv1.Op_OP_DELETE, Row: row},
			Record{Key: Key{Text: `["eu","7"]`, Parts: []string{"eu", "7"}}, Version: 9, Deleted: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RecordOf(tc.change, keyIdx, 9)
			assert.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.NoError(t, got.Validate())
		})
	}
	_, err := RecordOf(&onewayv1.Change{Row: row}, []int{3}, 1)
	assert.True(t, errs.IsPermanent(err), "a NULL key: %v", err)
}
