package target

import (
	"testing"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
)

func TestCheckItems(t *testing.T) {
	cols := []*onewayv1.Column{{Name: "id", Type: "bigint", Key: true}, {Name: "name", Type: "text"}}
	batch := func(n int, c []*onewayv1.Column) *onewayv1.Batch {
		return &onewayv1.Batch{Table: "public.t", Columns: c, Changes: make([]*onewayv1.Change, n)}
	}
	other := []*onewayv1.Column{{Name: "id", Type: "integer", Key: true}, {Name: "name", Type: "text"}}
	tests := []struct {
		name      string
		items     []Item
		wantErr   bool
		permanent bool
	}{
		{"none", nil, false, false},
		{"same layouts", []Item{{Seq: 1, Batch: batch(3, cols)}, {Seq: 2, Batch: batch(1, cols)}}, false, false},
		{"2^20 changes", []Item{{Seq: 1, Batch: batch(1<<20, cols)}}, true, true},
		{"different layouts", []Item{{Seq: 1, Batch: batch(1, cols)}, {Seq: 2, Batch: batch(1, other)}}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckItems(tt.items)
			if (err != nil) != tt.wantErr || errs.IsPermanent(err) != tt.permanent {
				t.Fatalf("CheckItems = %v (permanent %v), want error %v permanent %v", err, errs.IsPermanent(err), tt.wantErr, tt.permanent)
			}
		})
	}
}
