package verify

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

// TestCanon: the forms in which the target kinds hold one value are
// equal after canon, and different values stay different.
func TestCanon(t *testing.T) {
	for _, tc := range []struct {
		typ   string
		equal []string // all canonically equal
		other []string // each different from equal[0]
	}{
		{"bigint", []string{"42", "+42", "42.0"}, []string{"43", "-42", "4.2"}},
		{"numeric(12,2)", []string{"10.50", "10.5", "1.05e1", "010.500"}, []string{"10.51", "105", "-10.5"}},
		{"numeric", []string{"0", "0.00", "-0", "0e5"}, []string{"0.01", "NaN"}},
		{"numeric", []string{"NaN", "nan"}, []string{"Infinity"}},
		{"numeric", []string{"-Infinity", "-inf"}, []string{"Infinity"}},
		{"numeric", []string{"123456789012345678901234567890.123456789", "123456789012345678901234567890.1234567890"},
			[]string{"123456789012345678901234567890.12345679"}},
		{"double precision", []string{"1000000", "1e+06", "1e6", "1000000.0"}, []string{"1000001"}},
		{"double precision", []string{"0.30000000000000004"}, []string{"0.3"}},
		{"double precision", []string{"0", "-0", "0.0"}, []string{"1e-300"}},
		{"double precision", []string{"Infinity", "+Inf", "inf"}, []string{"-Infinity", "NaN"}},
		{"real", []string{"0.1", "0.10"}, []string{"0.2"}},
		{"boolean", []string{"t", "true", "1"}, []string{"f", "false", "0"}},
		{"jsonb", []string{`{"a": 1, "b": [1, 2]}`, `{"a":1,"b":[1,2]}`}, []string{`{"b":[1,2],"a":1}`, `{"a":"1","b":[1,2]}`}},
		{"json", []string{"  [1,\n 2]"}, []string{"[2,1]"}},
		{"text", []string{"a b"}, []string{"a  b", "A b", ""}},
		{"timestamp with time zone", []string{"2024-01-02 03:04:05.5+00"}, []string{"2024-01-02 03:04:05.50+00"}},
		{"bytea", []string{`\x0102`}, []string{`\x0103`}},
		{"text[]", []string{`{a,"b c"}`}, []string{`{a,b c}`}},
	} {
		c := classOf(tc.typ)
		want := canon(c, []byte(tc.equal[0]))
		for _, v := range tc.equal[1:] {
			if got := canon(c, []byte(v)); !bytes.Equal(got, want) {
				t.Errorf("%s: canon(%q) = %q, canon(%q) = %q: want equal", tc.typ, v, got, tc.equal[0], want)
			}
		}
		for _, v := range tc.other {
			if got := canon(c, []byte(v)); bytes.Equal(got, want) {
				t.Errorf("%s: canon(%q) = canon(%q) = %q: want different", tc.typ, v, tc.equal[0], got)
			}
		}
	}
	if canon(classText, nil) != nil || canon(classNumeric, nil) != nil {
		t.Error("NULL must stay nil")
	}
	if got := canon(classText, []byte{}); got == nil {
		t.Error("an empty text became NULL")
	}
	if got := canon(classJSON, []byte("null")); got != nil {
		t.Errorf("JSON null = %q, want nil (a JSON document cannot tell it from NULL)", got)
	}
}

// TestNumericString prints canonical numerics as PostgreSQL does.
func TestNumericString(t *testing.T) {
	for in, want := range map[string]string{
		"10.50": "10.5", "1e+20": "100000000000000000000", "1.5e-07": "0.00000015", "-0.50": "-0.5",
		"00012": "12", ".5": "0.5", "5.": "5", "120": "120", "-1.2E3": "-1200",
	} {
		d, ok := parseDecimal([]byte(in))
		if !ok || d.String() != want {
			t.Errorf("parseDecimal(%q) = %v, %v; want %s", in, d.String(), ok, want)
		}
	}
	for _, bad := range []string{"", "-", ".", "1.2.3", "1e", "abc", "1,5", "0x10", " 1"} {
		if _, ok := parseDecimal([]byte(bad)); ok {
			t.Errorf("parseDecimal(%q) accepted", bad)
		}
	}
}

// TestKeyOrder: the encoded key orders numbers by value (NaN last, as
// PostgreSQL does), texts by bytes (COLLATE "C", where 'B' < '_' < 'a' <
// 'é' unlike any locale), and composite keys part by part.
func TestKeyOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		cols []Column
		key  []string
		rows [][]string // ascending
	}{
		{"numbers", []Column{{"k", "numeric"}}, []string{"k"}, rows1(
			"-Infinity", "-1e+20", "-12", "-1.23", "-1.2", "-1", "-0.5", "-1e-07", "0", "1e-07", "0.5", "1", "1.2",
			"1.23", "9", "10", "12", "99.999", "100", "1e+20", "Infinity", "NaN")},
		{"integers", []Column{{"k", "bigint"}}, []string{"k"}, rows1(
			"-9223372036854775808", "-10", "-9", "-1", "0", "1", "2", "9", "10", "11", "100", "9223372036854775807")},
		{"floats", []Column{{"k", "double precision"}}, []string{"k"}, rows1(
			"-Infinity", "-1.5e+300", "-2", "-0.30000000000000004", "-0.3", "5e-324", "0.3", "0.30000000000000004", "1e+06", "Infinity", "NaN")},
		{"texts by bytes", []Column{{"k", "text"}}, []string{"k"}, rows1(
			"", " ", "B", "Z", "_", "a", "a ", "ab", "b", "z", "é", "ü", "中")},
		{"booleans", []Column{{"k", "boolean"}}, []string{"k"}, rows1("f", "t")},
		{"timestamps by text", []Column{{"k", "timestamp with time zone"}}, []string{"k"}, rows1(
			"2024-01-02 03:04:05+00", "2024-01-02 03:04:05.5+00", "2024-01-02 03:04:06+00")},
		{"composite (text, int)", []Column{{"a", "text"}, {"n", "integer"}}, []string{"a", "n"}, [][]string{
			{"B", "5"}, {"a", "-1"}, {"a", "9"}, {"a", "10"}, {"a\x01", "0"}, {"ab", "1"}, {"é", "0"}}},
		{"composite in key order, not column order", []Column{{"n", "integer"}, {"a", "text"}}, []string{"a", "n"}, [][]string{
			{"2", "a"}, {"10", "a"}, {"1", "b"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := NewLayout(tc.cols, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			var prev []byte
			for i, r := range tc.rows {
				k, err := l.KeyOf(bytesRow(r))
				if err != nil {
					t.Fatalf("%v: %v", r, err)
				}
				if i > 0 && bytes.Compare(prev, k) >= 0 {
					t.Errorf("key %q does not sort after %q", r, tc.rows[i-1])
				}
				prev = k
			}
		})
	}
}

// TestKeyEquality: equal keys in the forms targets hold them encode alike.
func TestKeyEquality(t *testing.T) {
	for _, tc := range []struct{ typ, a, b string }{
		{"numeric", "1.50", "1.5"},
		{"double precision", "1000000", "1e+06"},
		{"double precision", "-0", "0"},
		{"boolean", "t", "1"},
		{"boolean", "f", "false"},
		{"bigint", "42", "42.0"},
	} {
		l, _ := NewLayout([]Column{{"k", tc.typ}}, []string{"k"})
		ka, err1 := l.KeyOf(bytesRow([]string{tc.a}))
		kb, err2 := l.KeyOf(bytesRow([]string{tc.b}))
		if err1 != nil || err2 != nil || !bytes.Equal(ka, kb) {
			t.Errorf("%s keys %q and %q: %x, %x (%v, %v); want equal", tc.typ, tc.a, tc.b, ka, kb, err1, err2)
		}
	}
	l, _ := NewLayout([]Column{{"k", "bigint"}}, []string{"k"})
	if _, err := l.KeyOf(bytesRow([]string{"x1"})); err == nil || !strings.Contains(err.Error(), `"k"`) {
		t.Errorf("a non-numeric numeric key: %v, want an error naming the column", err)
	}
}

func TestNames(t *testing.T) {
	l, _ := NewLayout([]Column{{"n", "integer"}, {"v", "text"}, {"a", "text"}}, []string{"a", "n"})
	row := bytesRow([]string{"7", "x", `q"1`})
	name := l.NameOf(row)
	if name != `["7","q\"1"]` {
		t.Fatalf("name %s: want the key texts in column order, as event.Key renders them", name)
	}
	parts, err := l.ParseName(name)
	if err != nil || parts[0] != "7" || parts[1] != `q"1` {
		t.Fatalf("ParseName = %q, %v", parts, err)
	}
	if _, err := l.ParseName("7"); err == nil {
		t.Error("a composite key that is not a JSON array was accepted")
	}
	one, _ := NewLayout([]Column{{"id", "text"}}, []string{"id"})
	if got := one.NameOf(bytesRow([]string{`["x"]`})); got != `["x"]` {
		t.Errorf("single key name %s", got)
	}
	if _, err := NewLayout([]Column{{"id", "text"}}, []string{"nope"}); err == nil {
		t.Error("a key column that is not owned was accepted")
	}
}

// TestCompare merges two sides: missing, different and extra keys are
// counted and sampled, and a side out of key order is an error.
func TestCompare(t *testing.T) {
	l, _ := NewLayout([]Column{{"id", "integer"}, {"v", "numeric"}}, []string{"id"})
	src := rowsSide(t, l, [][]string{{"1", "1.0"}, {"2", "2"}, {"3", "3"}, {"5", "5"}, {"10", ""}})
	dst := rowsSide(t, l, [][]string{{"1", "1"}, {"2", "2.5"}, {"4", "4"}, {"5", "5"}, {"10", "NULL"}, {"11", "0"}})
	rep, err := Compare(context.Background(), src, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := Report{SourceRows: 5, TargetRows: 6, Missing: 1, Different: 2, Extra: 2,
		MissingKeys: []string{"3"}, DifferentKeys: []string{"2", "10"}, ExtraKeys: []string{"4", "11"}}
	if !equalReport(rep, want) {
		t.Fatalf("report %+v\nwant   %+v", rep, want)
	}
	if rep.Equal(false) || rep.Equal(true) {
		t.Error("a report with differences is equal")
	}

	rep, err = Compare(context.Background(), rowsSide(t, l, [][]string{{"1", "1"}}), rowsSide(t, l, [][]string{{"1", "1"}, {"2", "2"}}), Options{})
	if err != nil || !rep.Equal(false) || rep.Equal(true) {
		t.Errorf("an extra key: %+v, %v; want equal unless orphans count", rep, err)
	}

	unordered := rowsSide(t, l, [][]string{{"2", "2"}, {"1", "1"}})
	if _, err := Compare(context.Background(), rowsSide(t, l, nil), unordered, Options{}); err == nil ||
		!strings.Contains(err.Error(), "target is not in key order at key 1") {
		t.Errorf("a target out of order: %v", err)
	}
	dup := rowsSide(t, l, [][]string{{"1", "1"}, {"1", "1"}})
	if _, err := Compare(context.Background(), dup, rowsSide(t, l, nil), Options{}); err == nil || !strings.Contains(err.Error(), "source") {
		t.Errorf("a source repeating a key: %v", err)
	}
}

func equalReport(a, b Report) bool {
	eq := func(x, y []string) bool { return strings.Join(x, ",") == strings.Join(y, ",") }
	return a.SourceRows == b.SourceRows && a.TargetRows == b.TargetRows && a.Missing == b.Missing &&
		a.Different == b.Different && a.Extra == b.Extra &&
		eq(a.MissingKeys, b.MissingKeys) && eq(a.DifferentKeys, b.DifferentKeys) && eq(a.ExtraKeys, b.ExtraKeys)
}

func rows1(keys ...string) [][]string {
	out := make([][]string, len(keys))
	for i, k := range keys {
		out[i] = []string{k}
	}
	return out
}

// bytesRow turns texts into values; "NULL" is NULL.
func bytesRow(r []string) [][]byte {
	out := make([][]byte, len(r))
	for i, v := range r {
		if v != "NULL" {
			out[i] = []byte(v)
		}
	}
	return out
}

// sliceSide is a Side over records given in order (not checked).
type sliceSide struct {
	recs []Record
	i    int
}

func rowsSide(t *testing.T, l *Layout, rows [][]string) Side {
	t.Helper()
	s := &sliceSide{}
	for _, r := range rows {
		vals := bytesRow(r)
		k, err := l.KeyOf(vals)
		if err != nil {
			t.Fatal(err)
		}
		s.recs = append(s.recs, Record{Key: k, Name: l.NameOf(vals), Values: l.Values(vals)})
	}
	return s
}

func (s *sliceSide) Next(context.Context) (Record, error) {
	if s.i >= len(s.recs) {
		return Record{}, io.EOF
	}
	s.i++
	return s.recs[s.i-1], nil
}

func (s *sliceSide) Close() error { return nil }
