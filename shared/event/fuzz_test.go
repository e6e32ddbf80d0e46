package event

import (
	"bytes"
	"testing"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
)

// FuzzDecode feeds arbitrary bytes to Decode, as a consumer receives them
// from the stream: it must return a valid batch or an error, never panic,
// and whatever it accepts must be usable by every consumer (rows unpack to
// one value per column, keys render, Describe works) and survive a
// round trip.
func FuzzDecode(f *testing.F) {
	valid := &onewayv1.Batch{
		SchemaVersion: SchemaVersion, Pipeline: "invoices", Table: "public.invoices",
		Columns: []*onewayv1.Column{{Name: "id", Key: true}, {Name: "note"}},
		Changes: []*onewayv1.Change{
			{Op: onewayv1.Op_OP_UPSERT, Row: PackRow([][]byte{[]byte("1"), []byte("a\tb")})},
			{Op: onewayv1.Op_OP_DELETE, Row: PackRow([][]byte{[]byte("2"), nil})},
		},
	}
	composite := &onewayv1.Batch{
		SchemaVersion: SchemaVersion, Pipeline: "p", Table: "t",
		Columns: []*onewayv1.Column{{Name: "a", Key: true}, {Name: "b", Key: true}},
		Changes: []*onewayv1.Change{{Op: onewayv1.Op_OP_INSERT, Row: PackRow([][]byte{[]byte(""), []byte("é")})}},
	}
	for _, b := range []*onewayv1.Batch{valid, composite, {}} {
		data, err := Encode(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data)
		if err != nil {
			return
		}
		keyIdx := KeyIndexes(b)
		var vals [][]byte
		for i, c := range b.GetChanges() {
			vals, err = Row(c.GetRow(), vals)
			if err != nil || len(vals) != len(b.GetColumns()) {
				t.Fatalf("change %d of an accepted batch: %d values for %d columns (%v)", i, len(vals), len(b.GetColumns()), err)
			}
			_ = Key(c, keyIdx)
			_ = Describe(b, c)
		}
		again, err := Encode(b)
		if err != nil {
			t.Fatalf("encode an accepted batch: %v", err)
		}
		if _, err := Decode(again); err != nil {
			t.Fatalf("an accepted batch does not decode after a round trip: %v", err)
		}
	})
}

// FuzzRow: unpacking arbitrary bytes never panics, and what unpacks packs
// back to bytes that unpack to the same values.
func FuzzRow(f *testing.F) {
	f.Add(PackRow([][]byte{[]byte("1"), nil, {}, []byte("x")}))
	f.Add([]byte{0x80})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, row []byte) {
		vals, err := Row(row, nil)
		if err != nil {
			return
		}
		again, err := Row(PackRow(vals), nil)
		if err != nil || len(again) != len(vals) {
			t.Fatalf("re-packed row: %d values, want %d (%v)", len(again), len(vals), err)
		}
		for i := range vals {
			if !bytes.Equal(vals[i], again[i]) || (vals[i] == nil) != (again[i] == nil) {
				t.Fatalf("value %d: %q after a round trip, want %q", i, again[i], vals[i])
			}
		}
	})
}
