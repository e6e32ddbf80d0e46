package event

import (
	"bytes"
	"testing"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
)

func batch(changes ...*onewayv1.Change) *onewayv1.Batch {
	return &onewayv1.Batch{
		SchemaVersion: SchemaVersion, Pipeline: "p", Table: "public.t", Origin: "source",
		Columns: []*onewayv1.Column{{Name: "id", Type: "bigint", Key: true}, {Name: "v", Type: "text"}},
		Changes: changes,
	}
}

func upsert(vals ...[]byte) *onewayv1.Change {
	row := PackRow(vals)
	return &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: row, Hash: RowHash(row)}
}

func b(s string) []byte { return []byte(s) }

func TestRowRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		vals [][]byte
	}{
		{"empty row", nil},
		{"null", [][]byte{nil}},
		{"empty string is not null", [][]byte{{}}},
		{"mixed", [][]byte{b("1"), nil, b(""), b("ünïcødé\t\n\\"), bytes.Repeat([]byte("x"), 300)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Row(PackRow(tt.vals), nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.vals) {
				t.Fatalf("got %d values, want %d", len(got), len(tt.vals))
			}
			for i := range got {
				if (got[i] == nil) != (tt.vals[i] == nil) || !bytes.Equal(got[i], tt.vals[i]) {
					t.Fatalf("value %d = %q (nil %v), want %q (nil %v)", i, got[i], got[i] == nil, tt.vals[i], tt.vals[i] == nil)
				}
			}
		})
	}
}

func TestRowHashDistinguishes(t *testing.T) {
	distinct := [][][]byte{
		{b("1"), b("x")},
		{b("1"), nil},
		{b("1"), b("")},
		{b("1x"), b("")},
		{b("1"), b("x"), nil},
	}
	seen := map[string]int{}
	for i, vs := range distinct {
		h := string(RowHash(PackRow(vs)))
		if j, ok := seen[h]; ok {
			t.Fatalf("values %d and %d hash alike", i, j)
		}
		seen[h] = i
	}
	if !bytes.Equal(RowHash(PackRow(distinct[0])), RowHash(PackRow(distinct[0]))) {
		t.Fatal("hash is not deterministic")
	}
}

func TestRoundTripAndValidate(t *testing.T) {
	good := batch(upsert(b("1"), b("a")))
	data, err := Encode(good)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if Key(got.Changes[0], KeyIndexes(got)) != "1" {
		t.Fatalf("key = %q", Key(got.Changes[0], KeyIndexes(got)))
	}

	bad := []struct {
		name string
		b    func() *onewayv1.Batch
	}{
		{"unknown schema version", func() *onewayv1.Batch { b := batch(); b.SchemaVersion = 9; return b }},
		{"no key column", func() *onewayv1.Batch { b := batch(); b.Columns[0].Key = false; return b }},
		{"value count", func() *onewayv1.Batch { return batch(upsert(b("1"))) }},
		{"null key", func() *onewayv1.Batch { return batch(upsert(nil, b("a"))) }},
		{"corrupt row", func() *onewayv1.Batch {
			return batch(&onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: []byte{0x7f, 'a'}})
		}},
		{"unknown op", func() *onewayv1.Batch {
			c := upsert(b("1"), b("a"))
			c.Op = 99
			return batch(c)
		}},
		{"no table", func() *onewayv1.Batch { b := batch(); b.Table = ""; return b }},
		{"repeated column", func() *onewayv1.Batch { b := batch(); b.Columns[1].Name = "id"; return b }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			data, err := Encode(tt.b())
			if err != nil {
				t.Fatal(err)
			}
			_, err = Decode(data)
			if err == nil || !errs.IsPermanent(err) {
				t.Fatalf("err = %v, want a permanent error", err)
			}
		})
	}
	if _, err := Decode([]byte{0xff, 0xff, 0xff}); err == nil || !errs.IsPermanent(err) {
		t.Fatalf("garbage: err = %v, want a permanent error", err)
	}
}

func TestCompositeKey(t *testing.T) {
	bt := batch()
	bt.Columns[1].Key = true
	c := upsert(b("1"), b(`a"b`))
	if got := Key(c, KeyIndexes(bt)); got != `["1","a\"b"]` {
		t.Fatalf("key = %s", got)
	}
}
