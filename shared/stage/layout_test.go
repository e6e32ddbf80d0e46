package stage

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

func cols(names ...string) []*onewayv1.Column {
	out := make([]*onewayv1.Column, len(names))
	for i, n := range names {
		out[i] = &onewayv1.Column{Name: n, Type: "text", Key: n == "id" || n == "region"}
	}
	return out
}

func packed(vals ...string) []byte {
	b := make([][]byte, len(vals))
	for i, v := range vals {
		if v != "NULL" {
			b[i] = []byte(v)
		}
	}
	return event.PackRow(b)
}

// Rows of any column order are staged in the config's owned-column order,
// other columns dropped; a batch missing an owned column, or disagreeing on
// the key, cannot be staged.
func TestLayout(t *testing.T) {
	l := LayoutOf(&config.Pipeline{Source: config.Source{Key: []string{"region", "id"}, Columns: []string{"id", "name", "region"}}})
	assert.Equal(t, []int{2, 0}, l.Key)
	tests := []struct {
		name     string
		cols     []*onewayv1.Column
		row      []byte
		identity bool
		want     []byte
		wantKey  string
		err      string
	}{
		{"same order", cols("id", "name", "region"), packed("1", "a", "eu"), true, packed("1", "a", "eu"), `["eu","1"]`, ""},
		{"other order and an extra column", cols("region", "secret", "name", "id"), packed("eu", "x", "a", "1"), false, packed("1", "a", "eu"), `["eu","1"]`, ""},
		{"NULLs kept", cols("name", "id", "region"), packed("NULL", "1", "eu"), false, packed("1", "NULL", "eu"), `["eu","1"]`, ""},
		{"owned column missing", cols("id", "region"), nil, false, nil, "", `no column "name"`},
		{"key on one side only", []*onewayv1.Column{{Name: "id", Key: true}, {Name: "name", Key: true}, {Name: "region", Key: true}}, nil, false, nil, "", "key column on one side only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &onewayv1.Batch{Table: "t", Origin: "source", Columns: tt.cols}
			m, err := l.Map(b)
			if tt.err != "" {
				require.Error(t, err)
				assert.True(t, errs.IsPermanent(err))
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.identity, m.Identity)
			assert.Equal(t, []string{"id", "name", "region"}, event.ColumnNames(&onewayv1.Batch{Columns: m.Columns(b)}))
			r, _, err := l.Record(m, &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: tt.row}, 7, nil)
			require.NoError(t, err)
			assert.Equal(t, tt.want, r.Row)
			assert.Equal(t, event.RowHash(tt.want), r.Hash)
			assert.Equal(t, tt.wantKey, r.Key.Text)
			assert.Equal(t, []string{"eu", "1"}, r.Key.Parts)
			assert.Equal(t, int64(7), r.Version)

			del, _, err := l.Record(m, &onewayv1.Change{Op: onewayv1.Op_OP_DELETE, Row: tt.row}, 8, nil)
			require.NoError(t, err)
			assert.True(t, del.Deleted)
			assert.Equal(t, tt.wantKey, del.Key.Text)
		})
	}
}
