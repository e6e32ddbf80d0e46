package changejson

import (
	"encoding/json"
	"testing"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
)

func TestTyped(t *testing.T) {
	cases := []struct {
		typ, val string
		null     bool
		want     string // JSON
	}{
		{typ: "integer", null: true, want: `null`},
		{typ: "bigint", val: "9007199254740993", want: `9007199254740993`},
		{typ: "numeric(30,2)", val: "-1.50", want: `-1.50`},
		{typ: "double precision", val: "1e-7", want: `1e-7`},
		{typ: "real", val: "NaN", want: `"NaN"`},
		{typ: "numeric", val: "01", want: `"01"`},
		{typ: "boolean", val: "t", want: `true`},
		{typ: "bool", val: "false", want: `false`},
		{typ: "boolean", val: "yes", want: `"yes"`},
		{typ: "jsonb", val: `{"a": 1}`, want: `{"a":1}`}, // compacted
		{typ: "json", val: `{bad`, want: `"{bad"`},
		{typ: "integer[]", val: "{1,2}", want: `"{1,2}"`},
		{typ: "text", val: "<&>", want: `"<&>"`},
		{typ: " TIMESTAMP WITH TIME ZONE ", val: "2024-01-01 00:00:00+00", want: `"2024-01-01 00:00:00+00"`},
	}
	for _, tc := range cases {
		var v []byte
		if !tc.null {
			v = []byte(tc.val)
		}
		enc, err := Object([]*onewayv1.Column{{Name: "c", Type: tc.typ}}, [][]byte{v})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(enc), `{"c":`+tc.want+`}`; got != want {
			t.Errorf("%s %q: %s, want %s", tc.typ, tc.val, got, want)
		}
	}
}

func TestEnvelope(t *testing.T) {
	cols := []*onewayv1.Column{{Name: "k", Type: "text", Key: true}, {Name: "n", Type: "integer"}}
	cases := []struct {
		name string
		vals [][]byte
		del  bool
		want string
	}{
		{"upsert", [][]byte{[]byte("a\"b"), []byte("7")}, false, `{"op":"upsert","key":"a\"b","fields":{"k":"a\"b","n":7},"version":42}`},
		{"delete", [][]byte{[]byte("a\"b"), nil}, true, `{"op":"delete","key":"a\"b","fields":{"k":"a\"b"},"version":42}`},
	}
	for _, tc := range cases {
		got, err := AppendEnvelope([]byte("x"), cols, tc.vals, `a"b`, tc.del, 42)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "x"+tc.want || !json.Valid(got[1:]) {
			t.Errorf("%s: %s, want %s", tc.name, got[1:], tc.want)
		}
	}
	if _, err := Envelope(cols, [][]byte{[]byte("a")}, "a", false, 1); err == nil {
		t.Error("1 value for 2 columns: no error")
	}
}
