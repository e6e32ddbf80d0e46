package pgsource

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// ---- helpers ---------------------------------------------------------------

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newDB(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	pool, err := pgconn.Open(t.Context(), dbURL, "pgsource-test", 4)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return dbURL, pool
}

func exec(t *testing.T, pool *pgxpool.Pool, sql ...string) {
	t.Helper()
	for _, s := range sql {
		if _, err := pool.Exec(testCtx(t), s); err != nil {
			t.Fatalf("exec %q: %v", s, err)
		}
	}
}

func open(t *testing.T, pool *pgxpool.Pool, spec Spec) *Source {
	t.Helper()
	s, err := Open(testCtx(t), pool, spec, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open source: %v", err)
	}
	return s
}

// render shows a row as its values joined by "|", NULL as ∅ and every
// value quoted (so an empty string is "").
func render(r Row) string {
	parts := make([]string, len(r))
	for i, v := range r {
		if v == nil {
			parts[i] = "∅"
		} else {
			parts[i] = fmt.Sprintf("%q", v)
		}
	}
	return strings.Join(parts, "|")
}

func renderAll(rows []Row) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = render(r)
	}
	return out
}

// oracle runs a plain query (text results, as the source reads them) and
// renders its rows.
func oracle(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) []string {
	t.Helper()
	rows, err := pool.Query(testCtx(t), sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		raw := rows.RawValues()
		r := make(Row, len(raw))
		for i, v := range raw {
			if v != nil {
				r[i] = append([]byte{}, v...)
			}
		}
		out = append(out, render(r))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got: %q\nwant: %q", what, got, want)
	}
}

// ---- SnapshotPage --------------------------------------------------------------

func TestSnapshotPage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		setup  []string
		spec   Spec
		limits []int
		// wantCols names the columns of every row, key ones marked with *.
		wantCols string
		// oracle lists all rows in key order.
		oracle string
	}{
		{
			name: "integer key",
			setup: []string{
				"CREATE TABLE public.t (id integer PRIMARY KEY, v text, n numeric(8,2))",
				"INSERT INTO public.t SELECT i, CASE WHEN i % 5 = 0 THEN NULL WHEN i % 7 = 0 THEN '' ELSE 'v' || i END, i / 3.0 FROM unnest(array[17,-3,0,5,2,99,100,-40,7,8,9,10,11,12,13,14,15,1,3,4,1000,6,42]) i",
			},
			spec:     Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}},
			limits:   []int{1, 5, 23, 100},
			wantCols: "id*,v,n",
			oracle:   "SELECT id, v, n FROM public.t ORDER BY id",
		},
		{
			name: "composite key (text, integer)",
			setup: []string{
				"CREATE TABLE public.t (region text, id integer, v text, PRIMARY KEY (region, id))",
				`INSERT INTO public.t SELECT r, i, r || '/' || i FROM unnest(array['b', 'a', 'B', 'ä', 'a b', '', 'ab', 'a\tb', '日本', 'zz']) r,
				   unnest(array[3, -1, 2, 10]) i`,
			},
			spec:     Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"region", "id"}},
			limits:   []int{1, 3, 7, 40, 41},
			wantCols: "region*,id*,v",
			oracle:   "SELECT region, id, v FROM public.t ORDER BY region, id",
		},
		{
			name: "key declared in another order than the columns",
			setup: []string{
				"CREATE TABLE public.t (a integer, b text, v text, PRIMARY KEY (a, b))",
				"INSERT INTO public.t SELECT a, b, a || b FROM generate_series(1, 4) a, unnest(array['x', 'y', 'w']) b",
			},
			spec:     Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"b", "a"}},
			limits:   []int{2, 5},
			wantCols: "a*,b*,v",
			oracle:   "SELECT a, b, v FROM public.t ORDER BY b, a",
		},
		{
			name: "owned subset of the columns, in their own order",
			setup: []string{
				"CREATE TABLE public.t (id integer PRIMARY KEY, secret text, v text, at timestamptz)",
				"INSERT INTO public.t SELECT i, 'hidden', 'v' || i, '2024-02-29 12:00:00.123456+00'::timestamptz + i * interval '1 day' FROM generate_series(1, 9) i",
			},
			spec:     Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}, Columns: []string{"at", "v", "id"}},
			limits:   []int{4},
			wantCols: "at,v,id*",
			oracle:   "SELECT at, v, id FROM public.t ORDER BY id",
		},
		{
			name: "awkward identifiers and numeric key",
			setup: []string{
				`CREATE SCHEMA "s p"`,
				`CREATE TABLE "s p"."Mixed ""Case""; t" ("Région ""k""" numeric, "val;ue" text, PRIMARY KEY ("Région ""k"""))`,
				`INSERT INTO "s p"."Mixed ""Case""; t" VALUES (1.5, 'a'), (1.50000001, 'b'), (-2, E'tab\there'), (10, NULL), (1.25, 'ü')`,
			},
			spec:     Spec{Table: pgconn.Table{Schema: "s p", Name: `Mixed "Case"; t`}, Key: []string{`Région "k"`}},
			limits:   []int{2},
			wantCols: `Région "k"*,val;ue`,
			oracle:   `SELECT "Région ""k""", "val;ue" FROM "s p"."Mixed ""Case""; t" ORDER BY 1`,
		},
		{
			name:     "empty table",
			setup:    []string{"CREATE TABLE public.t (id integer PRIMARY KEY)"},
			spec:     Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}},
			limits:   []int{3},
			wantCols: "id*",
			oracle:   "SELECT id FROM public.t",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, pool := newDB(t)
			exec(t, pool, tt.setup...)
			src := open(t, pool, tt.spec)
			var cols []string
			for _, c := range src.Columns() {
				n := c.GetName()
				if c.GetKey() {
					n += "*"
				}
				cols = append(cols, n)
			}
			if got := strings.Join(cols, ","); got != tt.wantCols {
				t.Errorf("Columns() = %s, want %s", got, tt.wantCols)
			}
			want := oracle(t, pool, tt.oracle)
			for _, limit := range tt.limits {
				var all []Row
				var after []string
				for pages := 0; ; pages++ {
					if pages > len(want)+1 {
						t.Fatalf("limit %d: paging does not end", limit)
					}
					page, err := src.SnapshotPage(testCtx(t), after, limit)
					if err != nil {
						t.Fatalf("limit %d: page %d: %v", limit, pages, err)
					}
					if len(page) > limit {
						t.Fatalf("limit %d: page %d has %d rows", limit, pages, len(page))
					}
					if len(page) == 0 {
						break
					}
					all = append(all, page...)
					after = src.KeyOf(page[len(page)-1])
				}
				equal(t, fmt.Sprintf("limit %d: all pages", limit), renderAll(all), want)
			}
		})
	}
}

// ---- WatermarkPage -------------------------------------------------------------

func TestWatermarkPage(t *testing.T) {
	t.Parallel()
	// Rows as (region, id, watermark); ties on the watermark are ordered by
	// the key (region, id).
	const (
		t0 = "2024-03-01 10:00:00+00"
		t1 = "2024-03-01 10:00:00.5+00"
		t2 = "2024-03-01 10:00:01+00"
		t3 = "2024-03-01 10:00:02.123456+00"
		t4 = "2024-03-01 10:00:02.123457+00" // one microsecond later
		t5 = "2024-03-01 11:00:00+00"
		tF = "2999-01-01 00:00:00+00"
	)
	insert := fmt.Sprintf(`INSERT INTO public.ev (region, id, updated_at, v) VALUES
  ('a', 1, '%[1]s', 'r1'), ('b', 1, '%[2]s', 'r4'), ('a', 3, '%[2]s', 'r3'), ('a', 2, '%[2]s', 'r2'),
  ('a', 4, '%[3]s', 'r5'), ('a', 5, '%[4]s', 'r6'), ('a', 6, '%[5]s', 'r7'), ('a', 7, '%[6]s', 'r8')`, t0, t1, t2, t3, t4, t5)
	type page struct {
		wm    string
		key   []string // nil: from wm inclusive
		bound string
		limit int
		want  string // values of v, space-separated
	}
	pages := []struct {
		name string
		page
	}{
		{"from the start, below a bound", page{t0, nil, t5, 100, "r1 r2 r3 r4 r5 r6 r7"}},
		{"bound is exclusive", page{t0, nil, t3, 100, "r1 r2 r3 r4 r5"}},
		{"microsecond bound", page{t0, nil, t4, 100, "r1 r2 r3 r4 r5 r6"}},
		{"no key: the watermark is inclusive", page{t1, nil, tF, 100, "r2 r3 r4 r5 r6 r7 r8"}},
		{"strictly after a position inside a tie", page{t1, []string{"a", "2"}, tF, 100, "r3 r4 r5 r6 r7 r8"}},
		{"after the last key of a tie", page{t1, []string{"b", "1"}, tF, 100, "r5 r6 r7 r8"}},
		{"after a key between the keys of a tie", page{t1, []string{"a", "9"}, tF, 100, "r4 r5 r6 r7 r8"}},
		{"microsecond after a position", page{t3, []string{"a", "5"}, tF, 100, "r7 r8"}},
		{"limit", page{t0, nil, tF, 3, "r1 r2 r3"}},
		{"nothing below the bound", page{t2, []string{"a", "4"}, t3, 100, ""}},
		{"bound before the position", page{t5, nil, t0, 100, ""}},
	}
	for _, wmType := range []string{"timestamptz", "timestamp"} {
		t.Run(wmType, func(t *testing.T) {
			t.Parallel()
			_, pool := newDB(t)
			exec(t, pool,
				fmt.Sprintf("CREATE TABLE public.ev (region text, id integer, updated_at %s NOT NULL, v text, PRIMARY KEY (region, id))", wmType),
				insert)
			src := open(t, pool, Spec{Table: pgconn.Table{Schema: "public", Name: "ev"}, Key: []string{"region", "id"}, WatermarkColumn: "updated_at"})
			vIdx := 3
			vs := func(rows []Row) string {
				var out []string
				for _, r := range rows {
					out = append(out, string(r[vIdx]))
				}
				return strings.Join(out, " ")
			}
			// A timestamp without time zone takes the text of the bounds
			// without their offset (all UTC here).
			conv := func(s string) string {
				if wmType == "timestamp" {
					return strings.TrimSuffix(s, "+00")
				}
				return s
			}
			for _, p := range pages {
				rows, err := src.WatermarkPage(testCtx(t), conv(p.wm), p.key, conv(p.bound), p.limit)
				if err != nil {
					t.Fatalf("%s: %v", p.name, err)
				}
				if got := vs(rows); got != p.want {
					t.Errorf("%s: got %q, want %q", p.name, got, p.want)
				}
			}
			// Paging with the positions the source itself returns reaches
			// every row below the bound once, in (watermark, key) order.
			for _, limit := range []int{1, 2, 3} {
				var got []Row
				wm, key := conv(t0), []string(nil)
				for n := 0; ; n++ {
					if n > 10 {
						t.Fatalf("limit %d: paging does not end", limit)
					}
					rows, err := src.WatermarkPage(testCtx(t), wm, key, conv(tF), limit)
					if err != nil {
						t.Fatal(err)
					}
					if len(rows) == 0 {
						break
					}
					got = append(got, rows...)
					last := rows[len(rows)-1]
					wm, key = src.WatermarkOf(last), src.KeyOf(last)
				}
				if v := vs(got); v != "r1 r2 r3 r4 r5 r6 r7 r8" {
					t.Errorf("limit %d: paged %q", limit, v)
				}
			}
		})
	}
}

// ---- SafeBound -----------------------------------------------------------------

// TestSafeBound: transaction A, still open, began at T and inserted a row
// stamped T (DEFAULT now()); transaction B began later and inserted another;
// a third, committed after both began, inserted a row stamped after T. The
// bound must stay at or below T while A is open, whatever B does, so the
// reader never moves past A's row; once A commits the bound moves past T and
// every row is read.
func TestSafeBound(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.ev (id integer PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now(), v text)",
		"INSERT INTO public.ev (id, updated_at, v) VALUES (1, '2000-01-01 00:00:00+00', 'old')")
	src := open(t, pool, Spec{Table: pgconn.Table{Schema: "public", Name: "ev"}, Key: []string{"id"}, WatermarkColumn: "updated_at"})
	ctx := testCtx(t)
	atOrBefore := func(a, b string) bool {
		t.Helper()
		var ok bool
		if err := pool.QueryRow(ctx, "SELECT $1::text::timestamptz <= $2::text::timestamptz", a, b).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	ids := func(bound string) string {
		t.Helper()
		rows, err := src.WatermarkPage(ctx, "1999-01-01 00:00:00+00", nil, bound, 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rows {
			out = append(out, string(r[0]))
		}
		return strings.Join(out, " ")
	}
	// begin opens a transaction on its own connection, reads its start and
	// inserts a row stamped with it.
	begin := func(id int) (pgx.Tx, string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var start string
		if err := tx.QueryRow(ctx, "SELECT now()::text").Scan(&start); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO public.ev (id, v) VALUES ($1, 'late')", id); err != nil {
			t.Fatal(err)
		}
		return tx, start
	}

	var start string
	if err := pool.QueryRow(ctx, "SELECT now()::text").Scan(&start); err != nil {
		t.Fatal(err)
	}
	idle, err := src.SafeBound(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !atOrBefore(start, idle) {
		t.Errorf("with no open transaction the bound %s is before %s (now() of an earlier statement)", idle, start)
	}

	txA, T := begin(2)
	txB, TB := begin(4)
	exec(t, pool, "INSERT INTO public.ev (id, v) VALUES (3, 'committed after T')")
	if atOrBefore(TB, T) {
		t.Fatalf("B began at %s, not after A (%s)", TB, T)
	}

	tests := []struct {
		name      string
		commit    pgx.Tx // commit this transaction first
		atOrBelow bool   // bound <= T
		read      string // ids read below the bound, in watermark order
	}{
		{name: "A and B open", atOrBelow: true, read: "1"},
		{name: "B committed, A open", commit: txB, atOrBelow: true, read: "1"},
		{name: "A committed", commit: txA, atOrBelow: false, read: "1 2 4 3"}, // watermark order
	}
	for _, tt := range tests {
		if tt.commit != nil {
			if err := tt.commit.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		bound, err := src.SafeBound(ctx, 0)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := atOrBefore(bound, T); got != tt.atOrBelow {
			t.Errorf("%s: bound %s <= T %s is %v, want %v", tt.name, bound, T, got, tt.atOrBelow)
		}
		if got := ids(bound); got != tt.read {
			t.Errorf("%s: read %q below bound %s, want %q", tt.name, got, bound, tt.read)
		}
	}
}

// ---- Open errors -------------------------------------------------------------

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	exec(t, pool, `CREATE TABLE public.ev (id integer PRIMARY KEY, region text, updated_at timestamptz, v text)`)
	ev := pgconn.Table{Schema: "public", Name: "ev"}
	tests := []struct {
		name string
		spec Spec
		want []string // substrings of a permanent error; nil = success
	}{
		{"missing table", Spec{Table: pgconn.Table{Schema: "public", Name: "nope"}, Key: []string{"id"}},
			[]string{"public.nope", "does not exist"}},
		{"missing schema", Spec{Table: pgconn.Table{Schema: "nowhere", Name: "ev"}, Key: []string{"id"}},
			[]string{"nowhere.ev", "does not exist"}},
		{"missing key column", Spec{Table: ev, Key: []string{"ident"}},
			[]string{"public.ev", `"ident"`}},
		{"key column not among the owned columns", Spec{Table: ev, Key: []string{"region"}, Columns: []string{"id", "v"}},
			[]string{"public.ev", `"region"`}},
		{"missing owned column", Spec{Table: ev, Key: []string{"id"}, Columns: []string{"id", "ghost"}},
			[]string{"public.ev", `"ghost"`}},
		{"missing watermark column", Spec{Table: ev, Key: []string{"id"}, WatermarkColumn: "changed_at"},
			[]string{"public.ev", `"changed_at"`}},
		{"watermark column not owned", Spec{Table: ev, Key: []string{"id"}, Columns: []string{"id", "v"}, WatermarkColumn: "updated_at"},
			[]string{"public.ev", `"updated_at"`}},
		{"nullable watermark column is accepted", Spec{Table: ev, Key: []string{"id"}, WatermarkColumn: "updated_at"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(testCtx(t), pool, tt.spec, slog.New(slog.DiscardHandler))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("open succeeded, want an error naming %q", tt.want)
			}
			if !errs.IsPermanent(err) {
				t.Errorf("error is not permanent: %v", err)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}
