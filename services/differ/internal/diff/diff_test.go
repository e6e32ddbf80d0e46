package diff

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/stage"
)

func live(version int64, content string) *stage.Record {
	row := event.PackRow([][]byte{[]byte("k"), []byte(content)})
	return &stage.Record{Key: stage.Key{Text: "k", Parts: []string{"k"}}, Version: version, Row: row, Hash: event.RowHash(row)}
}

func tomb(version int64) *stage.Record {
	return &stage.Record{Key: stage.Key{Text: "k", Parts: []string{"k"}}, Version: version, Deleted: true}
}

func TestDecide(t *testing.T) {
	equalRows := func(a, b *stage.Record) bool { return string(a.Row) == string(b.Row) }
	hard := Policy{Delete: "hard", Orphans: "keep"}
	tests := []struct {
		name string
		src  *stage.Record
		tgt  *stage.Record
		pol  Policy
		want Action
	}{
		{"absent on both sides", nil, nil, hard, None},
		{"deleted in the target, unknown at the source", nil, tomb(5), hard, None},
		{"orphan kept", nil, live(5, "x"), hard, OrphanKept},
		{"orphan deleted", nil, live(5, "x"), Policy{Delete: "hard", Orphans: "delete"}, OrphanDelete},
		{"orphan soft-deleted is a delete too", nil, live(5, "x"), Policy{Delete: "soft", Orphans: "delete"}, OrphanDelete},
		{"orphan reported", nil, live(5, "x"), Policy{Delete: "hard", Orphans: "report"}, OrphanReport},
		{"source delete, target never had it", tomb(5), nil, hard, None},
		{"source delete, target deleted too", tomb(5), tomb(9), hard, None},
		{"source delete hard", tomb(5), live(2, "x"), hard, Delete},
		{"source delete soft", tomb(5), live(2, "x"), Policy{Delete: "soft"}, Delete},
		{"source delete none", tomb(5), live(2, "x"), Policy{Delete: "none"}, DeleteSkipped},
		{"source delete, target re-added later", tomb(5), live(9, "x"), hard, Delete},
		{"insert", live(5, "a"), nil, hard, Insert},
		{"deleted in the target, recreated", live(5, "a"), tomb(9), Policy{Delete: "hard", RecreateDeleted: true}, Insert},
		{"deleted in the target, kept deleted", live(5, "a"), tomb(9), hard, KeptDeleted},
		{"source changed after the target's deletion", live(12, "b"), tomb(9), hard, Insert},
		{"source re-created after our delete", live(12, "b"), tomb(9), Policy{Delete: "hard"}, Insert},
		{"equal", live(5, "a"), live(9, "a"), hard, None},
		{"owned field differs", live(5, "a"), live(9, "b"), hard, Update},
		{"target older but equal", live(9, "a"), live(5, "a"), hard, None},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			eq := func(a, b *stage.Record) bool { called = true; return equalRows(a, b) }
			got := Decide(stage.Pair{Key: stage.Key{Text: "k"}, Source: tt.src, Target: tt.tgt}, tt.pol, eq)
			if got != tt.want {
				t.Fatalf("Decide = %s, want %s", got, tt.want)
			}
			bothLive := tt.src != nil && !tt.src.Deleted && tt.tgt != nil && !tt.tgt.Deleted
			if called != bothLive {
				t.Fatalf("equal called = %v, want %v (only for two live records)", called, bothLive)
			}
		})
	}
}

func TestActionFlags(t *testing.T) {
	var pushes, deletes []string
	for _, a := range Actions() {
		if a.Pushes() {
			pushes = append(pushes, a.String())
		}
		if a.Deletes() {
			deletes = append(deletes, a.String())
		}
	}
	if diff := cmp.Diff([]string{"insert", "update", "delete", "orphan_delete"}, pushes); diff != "" {
		t.Fatalf("pushing actions (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"delete", "orphan_delete"}, deletes); diff != "" {
		t.Fatalf("deleting actions (-want +got):\n%s", diff)
	}
	if Action(99).String() != "unknown" {
		t.Fatal("an unknown action has a name")
	}
}

func TestNormalizedEquality(t *testing.T) {
	tests := []struct {
		typ   string
		a, b  string
		equal bool
	}{
		{"numeric(12,2)", "12.50", "12.5", true},
		{"numeric", "1e3", "1000", true},
		{"numeric", "-0", "0", true},
		{"numeric", "12.50", "12.51", false},
		{"numeric", "12.5", "13", false}, // rounded by the target: a real difference
		{"numeric", "NaN", "NaN", true},
		{"numeric", "NaN", "0", false},
		{"bigint", "007", "7", true},
		{"double precision", "1e+20", "100000000000000000000", true},
		{"real", "0.1", "0.100000001", false},
		{"boolean", "t", "true", true},
		{"boolean", "f", "0", true},
		{"boolean", "t", "f", false},
		{"timestamp with time zone", "2024-01-02 03:04:05+00", "2024-01-02T04:04:05+01:00", true},
		{"timestamp with time zone", "2024-01-02 03:04:05.120+00", "2024-01-02 03:04:05.12Z", true},
		{"timestamp with time zone", "2024-01-02 03:04:05+05:30", "2024-01-01 21:34:05+00", true},
		{"timestamp with time zone", "2024-01-02 03:04:05+00", "2024-01-02 03:04:06+00", false},
		{"timestamp with time zone", "infinity", "infinity", true},
		{"timestamp without time zone", "2024-01-02 03:04:05", "2024-01-02T03:04:05.000", true},
		{"timestamp(3) without time zone", "2024-01-02 03:04:05.1", "2024-01-02 03:04:05.100", true},
		{"date", "2024-01-02", "2024-01-02", true},
		{"jsonb", `{"b":1, "a":[1,2]}`, `{"a":[1,2],"b":1}`, true},
		{"json", `{"a":1.0}`, `{"a":1}`, false},
		{"uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", true},
		{"character(5)", "ab   ", "ab", true},
		{"character varying(5)", "ab ", "ab", false},
		{"text", "  padded ", "padded", false}, // trimmed by the target: a real difference
		{"text", "Ab", "ab", false},
		{"bytea", `\xDEAD`, `\xdead`, true},
		{"integer[]", "{1,2}", "{1, 2}", false},
		{"unknown_type", "x", "x", true},
	}
	for _, tt := range tests {
		t.Run(tt.typ+" "+tt.a+" "+tt.b, func(t *testing.T) {
			c := NewComparer([]*onewayv1.Column{{Name: "id", Type: "text", Key: true}, {Name: "v", Type: tt.typ}})
			a := event.PackRow([][]byte{[]byte("1"), []byte(tt.a)})
			b := event.PackRow([][]byte{[]byte("1"), []byte(tt.b)})
			if got := c.Equal(a, b); got != tt.equal {
				t.Fatalf("Equal(%q, %q) as %s = %v, want %v", tt.a, tt.b, tt.typ, got, tt.equal)
			}
			if got := c.Equal(b, a); got != tt.equal {
				t.Fatalf("not symmetric: Equal(%q, %q) = %v", tt.b, tt.a, got)
			}
		})
	}
}

func TestDiffersNamesColumns(t *testing.T) {
	c := NewComparer([]*onewayv1.Column{{Name: "id", Type: "bigint", Key: true}, {Name: "a", Type: "text"}, {Name: "b", Type: "numeric"}})
	row := func(vals ...[]byte) []byte { return event.PackRow(vals) }
	if got := c.Differs(row([]byte("1"), nil, []byte("2.0")), row([]byte("1"), nil, []byte("2"))); got != nil {
		t.Fatalf("equal rows differ in %v", got)
	}
	if diff := cmp.Diff([]int{1}, c.Differs(row([]byte("1"), nil, []byte("2")), row([]byte("1"), []byte(""), []byte("2")))); diff != "" {
		t.Fatalf("NULL and empty string (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{0, 1, 2}, c.Differs(row([]byte("1")), row([]byte("1"), nil, nil))); diff != "" {
		t.Fatalf("a row of another layout (-want +got):\n%s", diff)
	}
}
