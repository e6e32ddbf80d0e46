package pgsource

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/oneway-sync/oneway/shared/pgconn"
)

// ---- Scan: SQL order and Go order agree --------------------------------------

// TestScanOrderIsByteOrder: keys whose order differs between a locale and
// bytes (case, accents, spaces, punctuation, digits as text, char(n)
// padding, numerics) come out of Scan in strictly increasing OrdKey order,
// every row once. The text column has a locale collation on purpose: the
// merge compares bytes, so Scan must not use it.
func TestScanOrderIsByteOrder(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	texts := []string{"a", "B", "b", "A", "ä", "Ä", "a b", "ab", "a-b", "", " ", "Z", "_x", "日本", "a\tb", "10", "9", "é", "e", "f", "ß", "ss"}
	exec(t, pool,
		`CREATE TABLE public.t (name text COLLATE "en-x-icu", n integer, code char(3), amount numeric, v text,
		  PRIMARY KEY (name, n, code, amount))`)
	var vals []string
	for i, s := range texts {
		for j, n := range []int{-2, 10, 9} {
			code := []string{"a", "a\t", "ab"}[(i+j)%3]
			amount := []string{"10", "9.5", "-1"}[(i*j)%3]
			vals = append(vals, fmt.Sprintf("(%s, %d, %s, %s, 'v')", quoteLit(s), n, quoteLit(code), amount))
		}
	}
	exec(t, pool, "INSERT INTO public.t VALUES "+strings.Join(vals, ", "))
	// The locale order really differs from byte order here.
	locale := oracle(t, pool, "SELECT DISTINCT name FROM public.t ORDER BY name")
	bytewise := oracle(t, pool, `SELECT DISTINCT name COLLATE "C" FROM public.t ORDER BY 1`)
	if slices.Equal(locale, bytewise) {
		t.Fatal("test data does not tell a locale order from byte order")
	}

	src := open(t, pool, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"name", "n", "code", "amount"}})
	sc, err := src.Scan(testCtx(t), ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	var ords [][]byte
	seen := map[string]bool{}
	for {
		r, ok := sc.Next()
		if !ok {
			break
		}
		ord, err := src.OrdKey(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		if len(ords) > 0 && bytes.Compare(ords[len(ords)-1], ord) >= 0 {
			t.Fatalf("row %d (%s) is not after the previous one in byte order", len(ords), render(src.Owned(r)))
		}
		ords = append(ords, ord)
		seen[render(src.Owned(r))] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(ords) != len(vals) || len(seen) != len(vals) {
		t.Fatalf("scan returned %d rows (%d distinct), want %d", len(ords), len(seen), len(vals))
	}
	if !sort.SliceIsSorted(ords, func(i, j int) bool { return bytes.Compare(ords[i], ords[j]) < 0 }) {
		t.Fatal("not sorted")
	}
}

func quoteLit(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, "'", `\'`, "\t", `\t`).Replace(s) + "'"
}

// TestScanWindowAndSoftDelete: a window scan reads only rows at or after
// its start (a whole one reads all and says which are inside); a row whose
// soft-delete column is set is flagged, and Lookup finds rows by key.
func TestScanWindowAndSoftDelete(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	exec(t, pool,
		`CREATE TABLE public.ev (id bigint PRIMARY KEY, v text, day date NOT NULL, gone boolean NOT NULL DEFAULT false)`,
		`INSERT INTO public.ev VALUES (1, 'old', '2020-01-01', false), (2, 'new', '2024-06-02', false),
		   (3, 'new, deleted', '2024-06-03', true), (4, 'edge', '2024-06-01', false)`)
	src := open(t, pool, Spec{Table: pgconn.Table{Schema: "public", Name: "ev"}, Key: []string{"id"},
		Columns: []string{"id", "v", "day"}, SoftDeleteColumn: "gone", WindowColumn: "day"})
	scan := func(o ScanOptions) string {
		sc, err := src.Scan(testCtx(t), o)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		var out []string
		for {
			r, ok := sc.Next()
			if !ok {
				break
			}
			s := string(r[0])
			if src.IsDeleted(r) {
				s += "d"
			}
			if !sc.InWindow(r) {
				s += "~"
			}
			out = append(out, s)
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
		return strings.Join(out, " ")
	}
	from := "2024-06-01 00:00:00+00"
	if got := scan(ScanOptions{}); got != "1 2 3d 4" {
		t.Errorf("full scan: %q", got)
	}
	if got := scan(ScanOptions{WindowFrom: from}); got != "2 3d 4" {
		t.Errorf("window scan: %q", got)
	}
	if got := scan(ScanOptions{WindowFrom: from, Whole: true}); got != "1~ 2 3d 4" {
		t.Errorf("whole window scan: %q", got)
	}
	rows, err := src.Lookup(testCtx(t), [][]string{{"3"}, {"1"}, {"99"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rows {
		got = append(got, fmt.Sprintf("%s:%v", r[0], src.IsDeleted(r)))
	}
	slices.Sort(got)
	if strings.Join(got, " ") != "1:false 3:true" {
		t.Errorf("lookup: %v", got)
	}
}

// ---- delete feed -----------------------------------------------------------------

// TestWatermarkRowsWithDeleteFeed: rows of the deleted-records table come
// in watermark order with the table's rows, except deletes of keys that are
// in the table again; paging with the cursors the source returns reads
// each once.
func TestWatermarkRowsWithDeleteFeed(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	const (
		t1 = "2024-03-01 10:00:01+00"
		t2 = "2024-03-01 10:00:02+00"
		t3 = "2024-03-01 10:00:03+00"
		tF = "2999-01-01 00:00:00+00"
	)
	exec(t, pool,
		`CREATE TABLE public.inv (id integer PRIMARY KEY, v text, updated_at timestamptz NOT NULL)`,
		`CREATE SCHEMA audit`,
		`CREATE TABLE audit.inv_deleted (id integer NOT NULL, deleted_at timestamptz NOT NULL)`,
		fmt.Sprintf(`INSERT INTO public.inv VALUES (1, 'r1', '%[1]s'), (2, 'r2', '%[2]s'), (3, 'r3', '%[2]s'), (5, 'r5', '%[3]s')`, t1, t2, t3),
		fmt.Sprintf(`INSERT INTO audit.inv_deleted VALUES (4, '%[1]s'), (2, '%[2]s'), (9, '%[2]s'), (6, '%[3]s')`, t1, t2, t3))
	src := open(t, pool, Spec{Table: pgconn.Table{Schema: "public", Name: "inv"}, Key: []string{"id"},
		WatermarkColumn: "updated_at", DeleteTable: pgconn.Table{Schema: "audit", Name: "inv_deleted"}, DeletePointer: "deleted_at"})
	// Key 2 was deleted and is in the table again: its delete is obsolete
	// and left out (the row carries its current state).
	want := "r1 -4 r2 r3 -9 r5 -6"
	for _, limit := range []int{1, 2, 3, 100} {
		var got []string
		c := Cursor{Mark: "2000-01-01 00:00:00+00"}
		for n := 0; ; n++ {
			if n > 20 {
				t.Fatalf("limit %d: paging does not end", limit)
			}
			rows, err := src.WatermarkRows(testCtx(t), c, Bound{Value: tF}, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) == 0 {
				break
			}
			for _, r := range rows {
				if src.IsDeleted(r) != src.FromDeleteFeed(r) {
					t.Fatalf("row %s: deleted %v, from the feed %v", render(r), src.IsDeleted(r), src.FromDeleteFeed(r))
				}
				if src.FromDeleteFeed(r) {
					got = append(got, "-"+string(r[0]))
				} else {
					got = append(got, string(src.Owned(r)[1]))
				}
			}
			c = src.CursorOf(rows[len(rows)-1])
		}
		if g := strings.Join(got, " "); g != want {
			t.Errorf("limit %d: got %q, want %q", limit, g, want)
		}
	}
	// Below a bound, exclusive.
	rows, err := src.WatermarkRows(testCtx(t), Cursor{Mark: t1}, Bound{Value: t3}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 5 {
		t.Errorf("%d rows below %s, want 5", len(rows), t3)
	}
}

func TestOpenDeleteFeedErrors(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	exec(t, pool,
		`CREATE TABLE public.inv (id integer PRIMARY KEY, v text, updated_at timestamptz NOT NULL, day date, seq bigint)`,
		`CREATE TABLE public.gone_text (id text, deleted_at timestamptz)`,
		`CREATE TABLE public.gone_date (id integer, deleted_at date)`)
	inv := pgconn.Table{Schema: "public", Name: "inv"}
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"missing table", Spec{Table: inv, Key: []string{"id"}, WatermarkColumn: "updated_at", DeleteTable: pgconn.Table{Schema: "public", Name: "nope"}, DeletePointer: "deleted_at"}, "does not exist"},
		{"key of another type", Spec{Table: inv, Key: []string{"id"}, WatermarkColumn: "updated_at", DeleteTable: pgconn.Table{Schema: "public", Name: "gone_text"}, DeletePointer: "deleted_at"}, `key column "id" has type text`},
		{"pointer of another type", Spec{Table: inv, Key: []string{"id"}, WatermarkColumn: "updated_at", DeleteTable: pgconn.Table{Schema: "public", Name: "gone_date"}, DeletePointer: "deleted_at"}, "pointer column"},
		{"missing pointer", Spec{Table: inv, Key: []string{"id"}, WatermarkColumn: "updated_at", DeleteTable: pgconn.Table{Schema: "public", Name: "gone_date"}, DeletePointer: "at"}, `no pointer column "at"`},
		{"missing soft-delete column", Spec{Table: inv, Key: []string{"id"}, SoftDeleteColumn: "gone"}, `soft-delete column "gone"`},
		{"a date watermark", Spec{Table: inv, Key: []string{"id"}, WatermarkColumn: "day"}, "use the watermark_cdc pattern"},
		{"a number with an overlap", Spec{Table: inv, Key: []string{"id"}, WatermarkColumn: "seq", Marks: MarksCoarse, Epoch: true}, "needs a date or timestamp"},
		{"a text watermark", Spec{Table: inv, Key: []string{"id"}, WatermarkColumn: "v"}, "has type text"},
		{"a window on text", Spec{Table: inv, Key: []string{"id"}, WindowColumn: "v"}, "needs a date or timestamp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(testCtx(t), pool, tt.spec, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// ---- numeric watermark -------------------------------------------------------------

// TestNumericBound: a number set from a sequence is bounded by samples of
// max(column). While a transaction that took a number is open, the bound
// stays below that number (or is not known yet), even after later numbers
// were committed; once it ends, the bound covers every committed number.
func TestNumericBound(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.ev (id bigserial PRIMARY KEY, v text)",
		"INSERT INTO public.ev (v) VALUES ('committed before')")
	src := open(t, pool, Spec{Table: pgconn.Table{Schema: "public", Name: "ev"}, Key: []string{"id"}, WatermarkColumn: "id"})
	ctx := testCtx(t)
	bound := func() Bound {
		t.Helper()
		b, err := src.Bound(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	read := func(b Bound) string {
		t.Helper()
		if !b.Ready() {
			return "(no bound)"
		}
		rows, err := src.WatermarkRows(ctx, Cursor{Mark: "0"}, b, 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rows {
			out = append(out, string(r[0]))
		}
		return strings.Join(out, " ")
	}
	if b := bound(); b.Ready() {
		t.Fatalf("the first sample is not older than now: bound %+v", b)
	}
	if got := read(bound()); got != "1" {
		t.Fatalf("idle: read %q, want 1", got)
	}
	// A takes number 2 and stays open; B takes 3 and commits.
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	txA, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := txA.Exec(ctx, "INSERT INTO public.ev (v) VALUES ('A, late')"); err != nil {
		t.Fatal(err)
	}
	exec(t, pool, "INSERT INTO public.ev (v) VALUES ('B, committed')")
	for i := 0; i < 3; i++ {
		if got := read(bound()); got != "1" {
			t.Fatalf("A open: read %q, want 1 (3 is committed, but 2 may still come)", got)
		}
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	bound() // a sample after A ended
	if got := read(bound()); got != "1 2 3" {
		t.Fatalf("A committed: read %q, want 1 2 3", got)
	}
}
