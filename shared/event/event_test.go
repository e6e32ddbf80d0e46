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

func upsert(vals ...*onewayv1.Value) *onewayv1.Change {
	return &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Values: vals, Hash: Hash(vals)}
}

func TestHash(t *testing.T) {
	a := Hash([]*onewayv1.Value{Text("1"), Text("x")})
	if !bytes.Equal(a, Hash([]*onewayv1.Value{Text("1"), Text("x")})) {
		t.Fatal("hash is not deterministic")
	}
	distinct := [][]*onewayv1.Value{
		{Text("1"), Text("x")},
		{Text("1"), Null()},
		{Text("1"), Text("")},
		{Text("1x"), Text("")},
		{Text("1"), Text("x"), Null()},
	}
	seen := map[string]int{}
	for i, vs := range distinct {
		h := string(Hash(vs))
		if j, ok := seen[h]; ok {
			t.Fatalf("values %d and %d hash alike", i, j)
		}
		seen[h] = i
	}
	if !bytes.Equal(Hash([]*onewayv1.Value{Text("1"), Null()}), HashTexts([][]byte{[]byte("1"), nil})) {
		t.Fatal("Hash and HashTexts disagree")
	}
}

func TestRoundTripAndValidate(t *testing.T) {
	good := batch(upsert(Text("1"), Text("a")))
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
		{"value count", func() *onewayv1.Batch { return batch(upsert(Text("1"))) }},
		{"null key", func() *onewayv1.Batch { return batch(upsert(Null(), Text("a"))) }},
		{"unknown op", func() *onewayv1.Batch {
			c := upsert(Text("1"), Text("a"))
			c.Op = 99
			return batch(c)
		}},
		{"no table", func() *onewayv1.Batch { b := batch(); b.Table = ""; return b }},
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
	b := batch()
	b.Columns[1].Key = true
	c := upsert(Text("1"), Text(`a"b`))
	if got := Key(c, KeyIndexes(b)); got != `["1","a\"b"]` {
		t.Fatalf("key = %s", got)
	}
}

func FuzzDecode(f *testing.F) {
	data, _ := Encode(batch(upsert(Text("1"), Text("a"))))
	f.Add(data)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data)
		if err == nil {
			keyIdx := KeyIndexes(b)
			for _, c := range b.GetChanges() {
				_ = Key(c, keyIdx)
			}
		}
	})
}
