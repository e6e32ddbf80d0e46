package sqlsource

import (
	"bytes"
	"context"
	"database/sql"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/shared/source"
	"github.com/oneway-sync/oneway/shared/testkit/mysqltest"
)

func TestText(t *testing.T) {
	tests := []struct {
		k    kind
		v    any
		want string
	}{
		{kInt, int64(-42), "-42"},
		{kInt, []byte("7"), "7"},
		{kInt, float64(5), "5"},
		{kNumeric, []byte("10.50"), "10.50"},
		{kNumeric, float64(10.5), "10.5"},
		{kBool, int64(1), "t"},
		{kBool, []byte("0"), "f"},
		{kFloat64, float64(1e6), "1000000"},
		{kFloat64, float64(1e15), "1e+15"},
		{kFloat64, float64(0.00001), "1e-05"},
		{kFloat32, []byte("1.1"), "1.1"},
		{kBytea, []byte{0xde, 0xad}, `\xdead`},
		{kTimestamp, []byte("2024-01-02 03:04:05.120000"), "2024-01-02 03:04:05.12"},
		{kTimestampTZ, "2024-01-02 03:04:05", "2024-01-02 03:04:05+00"},
		{kTimestampTZ, "2024-01-02T03:04:05.5Z", "2024-01-02 03:04:05.5+00"},
		{kTimestampTZ, "2024-01-02 05:04:05+02:00", "2024-01-02 03:04:05+00"},
		{kDate, []byte("2024-01-02"), "2024-01-02"},
		{kTime, []byte("10:11:12.500000"), "10:11:12.5"},
		{kText, "héllo", "héllo"},
		{kText, int64(3), "3"},
	}
	for _, tt := range tests {
		if got := string(text(tt.k, tt.v)); got != tt.want {
			t.Errorf("text(%d, %#v) = %q, want %q", tt.k, tt.v, got, tt.want)
		}
	}
	if text(kText, nil) != nil {
		t.Error("NULL is not nil")
	}
}

// dbKind is one database a source test runs against.
type dbKind struct {
	name string
	// setup creates a database with the statements run on it and returns
	// the Spec's Kind and URL, and a function running more statements.
	setup func(t *testing.T, ddl ...string) (spec Spec, exec func(...string))
	now   string // the SQL of the current UTC time as a stored timestamp
}

var dbKinds = []dbKind{
	{name: "sqlite", now: "strftime('%Y-%m-%d %H:%M:%f','now')", setup: func(t *testing.T, ddl ...string) (Spec, func(...string)) {
		path := filepath.Join(t.TempDir(), "src.db")
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		exec := func(stmts ...string) {
			t.Helper()
			for _, s := range stmts {
				if _, err := db.Exec(s); err != nil {
					t.Fatalf("exec %q: %v", s, err)
				}
			}
		}
		exec(ddl...)
		return Spec{Kind: KindSQLite, URL: path}, exec
	}},
	{name: "mysql", now: "UTC_TIMESTAMP(6)", setup: func(t *testing.T, ddl ...string) (Spec, func(...string)) {
		dsn := mysqltest.NewDatabase(t)
		exec := func(stmts ...string) { t.Helper(); mysqltest.Exec(t, dsn, stmts...) }
		exec(ddl...)
		return Spec{Kind: KindMySQL, URL: dsn}, exec
	}},
}

func ddlFor(k string) string {
	if k == KindSQLite {
		return `CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price NUMERIC(12,2), ok BOOLEAN, at DATETIME NOT NULL, gone BOOLEAN)`
	}
	return "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50), price DECIMAL(12,2), ok TINYINT(1), at DATETIME(6) NOT NULL, gone TINYINT(1))"
}

func openSource(t *testing.T, spec Spec) *Source {
	t.Helper()
	s, err := Open(t.Context(), spec, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ids(rows []source.Row) []string {
	var out []string
	for _, r := range rows {
		out = append(out, string(r[0]))
	}
	return out
}

// Every read of a source, on both databases: snapshot pages, watermark
// pages below the bound, a scan in order-key order, lookups, soft
// deletes and the PostgreSQL text of the values.
func TestSourceReads(t *testing.T) {
	for _, k := range dbKinds {
		t.Run(k.name, func(t *testing.T) {
			spec, exec := k.setup(t, ddlFor(k.name),
				"INSERT INTO items VALUES (1, 'a', 10.5, 1, '2024-01-01 10:00:00', NULL), (2, 'b', NULL, 0, '2024-01-01 10:00:01', 1), (10, 'B', 3, NULL, '2024-01-01 10:00:00', 0)")
			spec.Table, spec.Key, spec.WatermarkColumn, spec.SoftDeleteColumn = "items", []string{"id"}, "at", "gone"
			s := openSource(t, spec)
			cols := s.Columns()
			var types []string
			for _, c := range cols {
				types = append(types, c.GetType())
			}
			// SQLite ignores a NUMERIC's precision; so does the type.
			wantTypes := []string{"bigint", "text", "numeric", "boolean", "timestamp with time zone", "boolean"}
			if k.name == KindMySQL {
				wantTypes = []string{"bigint", "text", "numeric(12,2)", "boolean", "timestamp without time zone", "boolean"}
			}
			if !slices.Equal(types, wantTypes) {
				t.Fatalf("types %v, want %v", types, wantTypes)
			}
			ctx := t.Context()
			page, err := s.SnapshotPage(ctx, nil, 2)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(page); !slices.Equal(got, []string{"1", "2"}) {
				t.Fatalf("first page %v", got)
			}
			wantAt := "2024-01-01 10:00:00+00"
			if k.name == KindMySQL {
				wantAt = "2024-01-01 10:00:00"
			}
			o := s.Owned(page[0])
			if string(o[1]) != "a" || string(o[2]) != "10.50" && string(o[2]) != "10.5" || string(o[3]) != "t" || string(o[4]) != wantAt || o[5] != nil {
				t.Fatalf("row 1 is %q", o)
			}
			if !s.IsDeleted(page[1]) || s.IsDeleted(page[0]) {
				t.Fatal("soft delete not seen")
			}
			page, err = s.SnapshotPage(ctx, s.KeyOf(page[1]), 2)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(page); !slices.Equal(got, []string{"10"}) {
				t.Fatalf("second page %v", got)
			}

			b, err := s.Bound(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			rows, err := s.WatermarkRows(ctx, source.Cursor{Mark: "2024-01-01 00:00:00"}, b, 10)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(rows); !slices.Equal(got, []string{"1", "10", "2"}) {
				t.Fatalf("watermark order %v", got)
			}
			rows, err = s.WatermarkRows(ctx, s.CursorOf(rows[0]), b, 10)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(rows); !slices.Equal(got, []string{"10", "2"}) {
				t.Fatalf("after the cursor %v", got)
			}
			// A row written now is at or above the bound taken before.
			exec("INSERT INTO items VALUES (3, 'c', 1, 1, " + k.now + ", 0)")
			rows, err = s.WatermarkRows(ctx, source.Cursor{Mark: "2024-01-01 00:00:00"}, b, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 3 {
				t.Fatalf("a row written after the bound was read below it: %v", ids(rows))
			}

			rows, err = s.Lookup(ctx, [][]string{{"10"}, {"3"}, {"99"}})
			if err != nil {
				t.Fatal(err)
			}
			got := ids(rows)
			slices.Sort(got)
			if !slices.Equal(got, []string{"10", "3"}) {
				t.Fatalf("lookup %v", got)
			}
		})
	}
}

// A scan returns text keys in byte order, whatever the collation, and
// OrdKey agrees with it.
func TestScanOrder(t *testing.T) {
	for _, k := range dbKinds {
		t.Run(k.name, func(t *testing.T) {
			ddl := "CREATE TABLE t (name TEXT COLLATE NOCASE PRIMARY KEY, v TEXT)"
			if k.name == KindMySQL {
				ddl = "CREATE TABLE t (name VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY, v TEXT)"
			}
			names := []string{"a", "B", "ab", "a b", "Z", "_x", "日本", "10", "9", "é"}
			if k.name == KindSQLite {
				names = append(names, "É") // MySQL's collation holds it equal to é
			}
			var vals []string
			for _, n := range names {
				vals = append(vals, "('"+n+"', 'v')")
			}
			spec, _ := k.setup(t, ddl, "INSERT INTO t VALUES "+strings.Join(vals, ", "))
			spec.Table, spec.Key = "t", []string{"name"}
			s := openSource(t, spec)
			sc, err := s.Scan(t.Context(), source.ScanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			var prev []byte
			n := 0
			for {
				r, ok := sc.Next()
				if !ok {
					break
				}
				ord, err := s.OrdKey(nil, r)
				if err != nil {
					t.Fatal(err)
				}
				if prev != nil && bytes.Compare(ord, prev) <= 0 {
					t.Fatalf("order key %q after %q", ord, prev)
				}
				prev = ord
				n++
			}
			if err := sc.Err(); err != nil {
				t.Fatal(err)
			}
			if n != len(names) {
				t.Fatalf("scanned %d rows, want %d", n, len(names))
			}
		})
	}
}

// SQLite's bound waits for an open write transaction: a row it wrote
// below "now" is never below a bound taken while it was open.
func TestSQLiteBoundWaitsForWriter(t *testing.T) {
	spec, _ := dbKinds[0].setup(t, ddlFor(KindSQLite))
	spec.Table, spec.Key, spec.WatermarkColumn = "items", []string{"id"}, "at"
	s := openSource(t, spec)
	db, err := sql.Open("sqlite", "file:"+spec.URL+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("INSERT INTO items VALUES (1, 'late', 1, 1, strftime('%Y-%m-%d %H:%M:%f','now'), 0)"); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	go func() {
		b, err := s.SafeBound(ctx, 0)
		if err != nil {
			t.Error(err)
		}
		done <- b
	}()
	select {
	case b := <-done:
		t.Fatalf("bound %s taken while a write transaction was open", b)
	case <-time.After(300 * time.Millisecond): // the bound must still wait; not synchronisation
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if b := <-done; b == "" {
		t.Fatal("no bound")
	}
}
