package verify

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func openPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgconn.Open(ctxT(t), url, "verify-test", 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// layoutOf builds the layout of a PostgreSQL table, as the CLI does.
func layoutOf(t *testing.T, pool *pgxpool.Pool, tbl pgconn.Table, key ...string) *Layout {
	t.Helper()
	cols, found, err := pgconn.Columns(ctxT(t), pool, tbl)
	if err != nil || !found {
		t.Fatalf("columns of %s: %v, %v", tbl, found, err)
	}
	var lc []Column
	for _, c := range cols {
		lc = append(lc, Column{Name: c.Name, Type: c.Type})
	}
	l, err := NewLayout(lc, key)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// names reads a side to its end and returns its keys' names.
func names(t *testing.T, s Side) []string {
	t.Helper()
	defer s.Close()
	var out []string
	for {
		r, err := s.Next(ctxT(t))
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r.Name)
	}
}

// TestPostgresKeyOrder: whatever the key columns' collations (here ICU
// locales, where '_' < 'a' < 'B' < 'é'), a table is read in the canonical
// order: texts by bytes, numbers by value, part by part.
func TestPostgresKeyOrder(t *testing.T) {
	url := pgtest.NewDatabase(t)
	pgtest.Exec(t, url,
		`CREATE TABLE public.one (k text COLLATE "en-US-x-icu" PRIMARY KEY, v int)`,
		`INSERT INTO public.one VALUES ('a', 1), ('B', 2), ('_', 3), ('é', 4), ('Z', 5), ('ab', 6), ('A', 7)`,
		`CREATE TABLE public.two (n numeric, s varchar(10) COLLATE "und-x-icu", b boolean, PRIMARY KEY (s, n, b))`,
		`INSERT INTO public.two VALUES (10, 'a', true), (9, 'a', true), (-1.5, 'a', false), (2, 'B', true), (1, 'é', false), (1e20, '_', true)`,
		`CREATE TABLE public.three (ts timestamptz PRIMARY KEY, f float8)`,
		`INSERT INTO public.three VALUES ('2024-01-02 03:04:05.5+00', 1), ('2024-01-02 03:04:05+00', 2), ('2024-01-02 03:04:06+01', 3)`,
	)
	pool := openPool(t, url)
	// Locale order is not byte order here: the test would prove nothing
	// otherwise.
	var locale []string
	rows, _ := pool.Query(ctxT(t), "SELECT k FROM public.one ORDER BY k")
	for rows.Next() {
		var k string
		_ = rows.Scan(&k)
		locale = append(locale, k)
	}
	if rows.Err() != nil || slices.Equal(locale, []string{"A", "B", "Z", "_", "a", "ab", "é"}) {
		t.Fatalf("locale order %v (%v): not different from byte order", locale, rows.Err())
	}
	for _, tc := range []struct {
		table string
		key   []string
		want  []string
	}{
		{"one", []string{"k"}, []string{"A", "B", "Z", "_", "a", "ab", "é"}},
		{"two", []string{"s", "n", "b"}, []string{`["2","B","t"]`, `["100000000000000000000","_","t"]`,
			`["-1.5","a","f"]`, `["9","a","t"]`, `["10","a","t"]`, `["1","é","f"]`}},
		{"three", []string{"ts"}, []string{"2024-01-02 02:04:06+00", "2024-01-02 03:04:05+00", "2024-01-02 03:04:05.5+00"}},
	} {
		tbl := pgconn.Table{Schema: "public", Name: tc.table}
		l := layoutOf(t, pool, tbl, tc.key...)
		side, err := OpenPostgres(ctxT(t), pool, tbl, l)
		if err != nil {
			t.Fatal(err)
		}
		// Compare checks the order on its own.
		other, err := OpenPostgres(ctxT(t), pool, tbl, l)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := Compare(ctxT(t), side, other, Options{})
		if err != nil || !rep.Equal(true) || rep.SourceRows != int64(len(tc.want)) {
			t.Fatalf("%s against itself: %+v, %v", tc.table, rep, err)
		}
		side, err = OpenPostgres(ctxT(t), pool, tbl, l)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(t, side); !slices.Equal(got, tc.want) {
			t.Errorf("%s read in order %q, want %q", tc.table, got, tc.want)
		}
	}
}

// TestPostgresTargets: a target table whose key collation and column types
// differ from the source's (numeric(12,2) for numeric, text for a float,
// C collation for an ICU one) compares equal when the values are, and
// each kind of difference is reported by key.
func TestPostgresTargets(t *testing.T) {
	srcURL, dstURL := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	pgtest.Exec(t, srcURL,
		`CREATE TABLE public.inv (k text COLLATE "en-US-x-icu", n int, amount numeric, ratio float8, ok boolean, doc jsonb, PRIMARY KEY (k, n))`,
		`INSERT INTO public.inv SELECT k, n, n * 1.5, n / 3.0, n % 2 = 0, jsonb_build_object('n', n, 'k', k)
		 FROM unnest(ARRAY['a','B','_','é','Z']) k, generate_series(1, 200) n`)
	pgtest.Exec(t, dstURL,
		`CREATE TABLE public.inv (k text COLLATE "C", n bigint, amount numeric(12,2), ratio text, ok boolean, doc json, crm text, PRIMARY KEY (k, n))`)
	src, dst := openPool(t, srcURL), openPool(t, dstURL)
	copyRows(t, src, dst)
	tbl := pgconn.Table{Schema: "public", Name: "inv"}
	l := layoutOf(t, src, tbl, "k", "n")
	l.Columns = l.Columns[:6]
	run := func() Report {
		t.Helper()
		s, err := OpenPostgres(ctxT(t), src, tbl, l)
		if err != nil {
			t.Fatal(err)
		}
		d, err := OpenPostgres(ctxT(t), dst, tbl, l)
		if err != nil {
			t.Fatal(err)
		}
		var progress []int64
		rep, err := Compare(ctxT(t), s, d, Options{Progress: func(n int64) { progress = append(progress, n) }, ProgressEvery: 400})
		if err != nil {
			t.Fatal(err)
		}
		if len(progress) < 2 || progress[len(progress)-1] != rep.SourceRows {
			t.Errorf("progress %v", progress)
		}
		s.Close()
		d.Close()
		return rep
	}
	if rep := run(); !rep.Equal(true) || rep.SourceRows != 1000 || rep.TargetRows != 1000 {
		t.Fatalf("equal tables: %+v", rep)
	}
	pgtest.Exec(t, dstURL,
		`UPDATE public.inv SET amount = amount + 0.01 WHERE k = 'é' AND n = 7`,
		`UPDATE public.inv SET doc = '{"n": 8, "k": "B", "x": 1}' WHERE k = 'B' AND n = 8`,
		`UPDATE public.inv SET ok = NULL WHERE k = '_' AND n = 9`,
		`DELETE FROM public.inv WHERE k = 'a' AND n = 10`,
		`INSERT INTO public.inv (k, n) VALUES ('zz', 1)`,
		`UPDATE public.inv SET crm = 'target-only' WHERE n = 11`)
	rep := run()
	want := Report{SourceRows: 1000, TargetRows: 1000, Missing: 1, Different: 3, Extra: 1,
		MissingKeys: []string{`["a","10"]`}, DifferentKeys: []string{`["B","8"]`, `["_","9"]`, `["é","7"]`}, ExtraKeys: []string{`["zz","1"]`}}
	if !equalReport(rep, want) {
		t.Fatalf("report %+v\nwant   %+v", rep, want)
	}

	// A missing owned column is an error naming it.
	pgtest.Exec(t, dstURL, `ALTER TABLE public.inv DROP COLUMN ratio`)
	if _, err := OpenPostgres(ctxT(t), dst, tbl, l); err == nil || !strings.Contains(err.Error(), `"ratio"`) {
		t.Errorf("a target without an owned column: %v", err)
	}
}

// copyRows copies public.inv's owned columns as text.
func copyRows(t *testing.T, src, dst *pgxpool.Pool) {
	t.Helper()
	rows, err := src.Query(ctxT(t), "SELECT k, n::text, amount::text, ratio::text, ok::text, doc::text FROM public.inv")
	if err != nil {
		t.Fatal(err)
	}
	var all [][]*string
	for rows.Next() {
		r := make([]*string, 6)
		if err := rows.Scan(&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	for _, r := range all {
		if _, err := dst.Exec(ctxT(t), `INSERT INTO public.inv (k, n, amount, ratio, ok, doc) VALUES ($1, $2::bigint, $3::numeric, $4, $5::boolean, $6::json)`,
			r[0], r[1], r[2], r[3], r[4], r[5]); err != nil {
			t.Fatal(err)
		}
	}
}
