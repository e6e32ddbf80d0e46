package sqlitetarget

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/services/writer/internal/target/targettest"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// ---- helpers ---------------------------------------------------------------

var (
	snapshot = onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT
	cdc      = onewayv1.CapturePattern_CAPTURE_PATTERN_CDC
)

// itemCols is the layout most tests use: items (id, name, amount).
var itemCols = []*onewayv1.Column{
	{Name: "id", Type: "integer", Key: true},
	{Name: "name", Type: "text"},
	{Name: "amount", Type: "numeric(12,2)"},
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dbPath(t *testing.T) string { return filepath.Join(t.TempDir(), "target.db") }

func defaultSpec(path string) Spec {
	return Spec{Pipeline: "p", Target: "lite", Path: path, Table: "items", CreateTable: true, Delete: DeleteHard}
}

func openTarget(t *testing.T, spec Spec) *Target {
	t.Helper()
	tg, err := Open(testCtx(t), spec, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open target: %v", err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
}

// inspect opens a second, independent connection on the file, as another
// program reading the target would.
func inspect(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func exec(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := db.ExecContext(testCtx(t), s); err != nil {
			t.Fatalf("exec %q: %v", s, err)
		}
	}
}

func strs(t *testing.T, db *sql.DB, q string, args ...any) []string {
	t.Helper()
	rows, err := db.QueryContext(testCtx(t), q, args...)
	if err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatalf("query %q: %v", q, err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	return out
}

func one[T any](t *testing.T, db *sql.DB, q string, args ...any) T {
	t.Helper()
	var v T
	if err := db.QueryRowContext(testCtx(t), q, args...).Scan(&v); err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	return v
}

// Change builders shared by the target tests.
var (
	packVals = targettest.PackVals
	up       = targettest.Up
	delOf    = targettest.DelOf
	version  = target.Version
)

func del(key string) *onewayv1.Change { return delOf(len(itemCols), key) }

func mkBatch(p onewayv1.CapturePattern, cols []*onewayv1.Column, changes ...*onewayv1.Change) *onewayv1.Batch {
	return &onewayv1.Batch{
		SchemaVersion: event.SchemaVersion, Pipeline: "p", Origin: "source", Pattern: p,
		Table: "public.items", Columns: cols, Changes: changes,
	}
}

func item(seq uint64, p onewayv1.CapturePattern, changes ...*onewayv1.Change) Item {
	return Item{Seq: seq, Batch: mkBatch(p, itemCols, changes...)}
}

// itemRows renders items as id|name|amount[|extra...], each value through
// SQLite's quote() (so NULL, the empty string and numbers differ).
func itemRows(t *testing.T, db *sql.DB, extra ...string) []string {
	t.Helper()
	expr := "quote(id) || '|' || quote(name) || '|' || quote(amount)"
	for _, e := range extra {
		expr += " || '|' || quote(" + e + ")"
	}
	return strs(t, db, "SELECT "+expr+" FROM items ORDER BY id")
}

// ledgerRows renders the ledger as "id v=<version> applies=<n> hash=<bytes>".
func ledgerRows(t *testing.T, db *sql.DB, tg *Target) []string {
	t.Helper()
	return strs(t, db, "SELECT id || ' v=' || oneway_version || ' applies=' || oneway_applies || ' hash=' || length(oneway_hash) FROM "+
		quote(tg.Ledger())+" ORDER BY CAST(id AS INTEGER)")
}

func apply(t *testing.T, tg *Target, its ...Item) Result {
	t.Helper()
	res, err := tg.Apply(testCtx(t), its)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if len(res.Failed) > 0 {
		t.Fatalf("apply: unexpected failures: %+v", res.Failed)
	}
	return res
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got: %q\nwant: %q", what, got, want)
	}
}

func tableExists(t *testing.T, db *sql.DB, name string) bool {
	t.Helper()
	return one[int](t, db, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?", name) == 1
}

// ---- 1. preparing the target -----------------------------------------------

func TestPrepareTarget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		setup       []string
		createTable bool
		spec        func(*Spec)
		wantErr     []string // substrings of a permanent error; nil = success
	}{
		{name: "creates missing table and ledger", createTable: true},
		{name: "missing table, create_table false", createTable: false,
			wantErr: []string{`"items"`, "does not exist", "create_table is false"}},
		{name: "owned column missing in existing target", createTable: true,
			setup:   []string{"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"},
			wantErr: []string{`"items"`, `no column "amount"`}},
		{name: "no unique index on the key", createTable: true,
			setup:   []string{"CREATE TABLE items (id INTEGER, name TEXT, amount TEXT)"},
			wantErr: []string{`"items"`, "no primary key or unique index", "(id)"}},
		{name: "unique index on a superset of the key", createTable: true,
			setup:   []string{"CREATE TABLE items (id INTEGER, name TEXT, amount TEXT, UNIQUE (id, name))"},
			wantErr: []string{`"items"`, "no primary key or unique index"}},
		{name: "partial unique index on the key", createTable: true,
			setup:   []string{"CREATE TABLE items (id INTEGER, name TEXT, amount TEXT)", "CREATE UNIQUE INDEX ix ON items (id) WHERE amount > 0"},
			wantErr: []string{`"items"`, "no primary key or unique index"}},
		{name: "unique index on an expression", createTable: true,
			setup:   []string{"CREATE TABLE items (id INTEGER, name TEXT, amount TEXT)", "CREATE UNIQUE INDEX ix ON items (id + 0)"},
			wantErr: []string{`"items"`, "no primary key or unique index"}},
		{name: "a view, not a table", createTable: true,
			setup:   []string{"CREATE TABLE base (id INTEGER PRIMARY KEY, name TEXT, amount TEXT)", "CREATE VIEW items AS SELECT * FROM base"},
			wantErr: []string{`"items"`, "is a view"}},
		{name: "soft-delete column missing", createTable: true,
			setup:   []string{"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount TEXT)"},
			spec:    func(s *Spec) { s.Delete, s.SoftDeleteColumn = DeleteSoft, "deleted_at" },
			wantErr: []string{`"items"`, `no soft-delete column "deleted_at"`}},
		{name: "soft-delete column is a source column", createTable: true,
			spec:    func(s *Spec) { s.Delete, s.SoftDeleteColumn = DeleteSoft, "Name" },
			wantErr: []string{`"items"`, `soft-delete column "name" is a source column`}},
		{name: "ledger of another key", createTable: true,
			setup:   []string{"CREATE TABLE oneway_ledger_items (other TEXT PRIMARY KEY, oneway_version INTEGER, oneway_hash BLOB, oneway_applies INTEGER, oneway_applied_at TEXT)"},
			wantErr: []string{`ledger "oneway_ledger_items"`, "does not match", "drop the ledger"}},
		{name: "plain unique index on the key is enough",
			setup: []string{"CREATE TABLE items (id INTEGER NOT NULL, name TEXT, amount TEXT)", "CREATE UNIQUE INDEX ix ON items (id)"}},
		{name: "INTEGER PRIMARY KEY (rowid alias, no index)",
			setup: []string{"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount TEXT)"}},
		{name: "WITHOUT ROWID table",
			setup: []string{"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount TEXT) WITHOUT ROWID"}},
		{name: "column names match case-insensitively, as SQLite's do",
			setup: []string{"CREATE TABLE ITEMS (ID INTEGER PRIMARY KEY, Name TEXT, AMOUNT TEXT)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := dbPath(t)
			db := inspect(t, path)
			exec(t, db, tt.setup...)
			spec := defaultSpec(path)
			spec.CreateTable = tt.createTable
			if tt.spec != nil {
				tt.spec(&spec)
			}
			tg := openTarget(t, spec)
			res, err := tg.Apply(testCtx(t), []Item{item(1, cdc, up("1", "a", "1.50"))})
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("apply succeeded (%+v), want an error containing %q", res, tt.wantErr)
				}
				if !errs.IsPermanent(err) {
					t.Errorf("error is not permanent: %v", err)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				if tableExists(t, db, tg.Ledger()) {
					if n := one[int](t, db, "SELECT count(*) FROM "+quote(tg.Ledger())); n != 0 {
						t.Errorf("refused target has %d ledger rows", n)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if res.Written != 1 || res.Newer != 1 || res.Changes != 1 {
				t.Errorf("result %+v, want 1 change, newer and written", res)
			}
			equal(t, "rows", itemRows(t, db), []string{"1|'a'|'1.50'"})
			equal(t, "ledger", ledgerRows(t, db, tg), []string{fmt.Sprintf("1 v=%d applies=1 hash=16", version(1, 0))})
			if tg.Ledger() != "oneway_ledger_items" {
				t.Errorf("default ledger table %q", tg.Ledger())
			}
			if len(tt.setup) == 0 {
				cols := strs(t, db, "SELECT name || ' ' || type || ' ' || pk FROM pragma_table_info('items') ORDER BY cid")
				equal(t, "columns of the created table", cols, []string{"id INTEGER 1", "name TEXT 0", "amount TEXT 0"})
			}
			led := strs(t, db, "SELECT name || ' ' || type || ' ' || pk FROM pragma_table_info('oneway_ledger_items') ORDER BY cid")
			equal(t, "ledger columns", led, []string{"id TEXT 1", "oneway_version INTEGER 0", "oneway_hash BLOB 0",
				"oneway_applies INTEGER 0", "oneway_applied_at TEXT 0"})
		})
	}
}

// The connection is durable (WAL, synchronous=FULL) and waits for other
// writers (busy_timeout).
func TestConnectionPragmas(t *testing.T) {
	t.Parallel()
	tg := openTarget(t, defaultSpec(dbPath(t)))
	for _, p := range []struct{ pragma, want string }{
		{"journal_mode", "wal"}, {"synchronous", "2"}, {"busy_timeout", "10000"},
	} {
		var got string
		if err := tg.db.QueryRowContext(testCtx(t), "PRAGMA "+p.pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != p.want {
			t.Errorf("PRAGMA %s = %q, want %q", p.pragma, got, p.want)
		}
	}
	if n := tg.db.Stats().MaxOpenConnections; n != 1 {
		t.Errorf("MaxOpenConnections = %d, want 1", n)
	}
}

// The path is taken literally, URI metacharacters included.
func TestAwkwardPath(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "we?ird #dir %41 ü")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "t?.db")
	tg := openTarget(t, defaultSpec(path))
	apply(t, tg, item(1, cdc, up("1", "a", "1.00")))
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database file: %v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "t?.db") {
			t.Errorf("unexpected file %q next to the database", e.Name())
		}
	}
}

// ---- 2. types ----------------------------------------------------------------

func TestTypes(t *testing.T) {
	t.Parallel()
	cols := []*onewayv1.Column{
		{Name: "id", Type: "bigint", Key: true},
		{Name: "small", Type: "smallint"},
		{Name: "flag", Type: "boolean"},
		{Name: "off", Type: "boolean"},
		{Name: "big", Type: "numeric(30,9)"},
		{Name: "dbl", Type: "double precision"},
		{Name: "nan", Type: "double precision"},
		{Name: "ts", Type: "timestamp(3) with time zone"},
		{Name: "doc", Type: "jsonb"},
		{Name: "tags", Type: "text[]"},
		{Name: "vc", Type: "character varying(20)"},
		{Name: "nothing", Type: "integer"},
	}
	path := dbPath(t)
	db := inspect(t, path)
	tg := openTarget(t, defaultSpec(path))
	row := []any{"9223372036854775807", "-3", "t", "f", "12345678901234567890.123456789", "1.5", "NaN",
		"2024-02-29 23:59:59.123+01", `{"a": [1, "x"]}`, `{a,"b c"}`, "", nil}
	res, err := tg.Apply(testCtx(t), []Item{{Seq: 1, Batch: mkBatch(cdc, cols, up(row...))}})
	if err != nil || len(res.Failed) > 0 {
		t.Fatalf("apply: %+v %v", res, err)
	}
	equal(t, "declared types", strs(t, db, "SELECT name || ' ' || type FROM pragma_table_info('items') ORDER BY cid"), []string{
		"id INTEGER", "small INTEGER", "flag INTEGER", "off INTEGER", "big TEXT", "dbl REAL", "nan REAL",
		"ts TEXT", "doc TEXT", "tags TEXT", "vc TEXT", "nothing INTEGER",
	})
	var exprs []string
	for _, c := range cols {
		exprs = append(exprs, fmt.Sprintf("typeof(%[1]s) || ':' || quote(%[1]s)", quote(c.GetName())))
	}
	got := strs(t, db, "SELECT "+strings.Join(exprs, " || ' ; ' || ")+" FROM items")
	equal(t, "stored values", strings.Split(strings.Join(got, ""), " ; "), []string{
		"integer:9223372036854775807", "integer:-3", "integer:1", "integer:0",
		"text:'12345678901234567890.123456789'", // numeric keeps its precision as TEXT
		"real:1.5", "text:'NaN'",
		"text:'2024-02-29 23:59:59.123+01'", `text:'{"a": [1, "x"]}'`, `text:'{a,"b c"}'`, "text:''", "null:NULL",
	})

	// A value that does not convert to its column's type is rejected alone,
	// without a retry of the batch, and leaves no ledger row.
	res, err = tg.Apply(testCtx(t), []Item{{Seq: 2, Batch: mkBatch(cdc, cols,
		up("2", "1", "maybe", "f", "1", "1", "1", "x", "{}", "{}", "", nil),
		up("3", "70000000000000000000", "t", "f", "1", "1", "1", "x", "{}", "{}", "", nil),
		up("4", "4", "true", "false", "1", "1", "1", "x", "{}", "{}", "", nil),
	)}})
	if err != nil {
		t.Fatal(err)
	}
	var failed []string
	for _, f := range res.Failed {
		if !errs.IsPermanent(f.Err) || !strings.Contains(f.Err.Error(), `table "items" key `+f.Key) {
			t.Errorf("failure of key %s: %v (want permanent, naming table and key)", f.Key, f.Err)
		}
		failed = append(failed, fmt.Sprintf("%d/%d %s: %v", f.Item, f.Index, f.Key, f.Err))
	}
	equal(t, "failed", failed, []string{
		`0/0 2: table "items" key 2: column "flag": "maybe" is not a boolean`,
		`0/1 3: table "items" key 3: column "small": "70000000000000000000" is not a 64-bit integer`,
	})
	if res.Changes != 3 || res.Newer != 1 || res.Written != 1 {
		t.Errorf("result %+v, want 3 changes, 1 newer and written", res)
	}
	equal(t, "ids", strs(t, db, "SELECT quote(id) || ':' || quote(flag) || quote(off) FROM items ORDER BY id"),
		[]string{"4:10", "9223372036854775807:10"})
	equal(t, "ledger keys", strs(t, db, "SELECT id FROM oneway_ledger_items ORDER BY id"), []string{"4", "9223372036854775807"})
}

// ---- 3. target-only columns and orphans --------------------------------------

func TestTargetOnlyColumnsSurvive(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	db := inspect(t, path)
	exec(t, db,
		"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount TEXT, crm_notes TEXT DEFAULT 'fresh')",
		"INSERT INTO items VALUES (1, 'old', '1', 'keep me'), (99, 'orphan', '5', 'orphan note')")
	tg := openTarget(t, defaultSpec(path))
	apply(t, tg, item(1, snapshot, up("1", "new", "2.00"), up("2", "two", "3.00")))
	apply(t, tg, item(2, cdc, up("1", "newer", nil)))
	apply(t, tg, item(3, cdc, del("5"), up("2", "two!", "3.00"))) // a delete of a key the target never had
	equal(t, "rows", itemRows(t, db, "crm_notes"), []string{
		"1|'newer'|NULL|'keep me'",
		"2|'two!'|'3.00'|'fresh'",
		"99|'orphan'|'5'|'orphan note'",
	})
	equal(t, "ledger keys (the orphan never enters it)",
		strs(t, db, "SELECT id FROM oneway_ledger_items ORDER BY id"), []string{"1", "2", "5"})
}

// ---- 4. effect-once ------------------------------------------------------------

func TestEffectOnce(t *testing.T) {
	t.Parallel()
	A := func(seq uint64) Item { return item(seq, cdc, up("1", "A", "1.00")) }
	B := func(seq uint64) Item { return item(seq, cdc, up("1", "B", "2.00")) }
	type step struct {
		items          []Item
		newer, written int
	}
	tests := []struct {
		name        string
		steps       []step
		wantName    string
		wantVersion int64
		wantApplies int
	}{
		{"same item twice",
			[]step{{[]Item{A(1)}, 1, 1}, {[]Item{A(1)}, 0, 0}}, "A", version(1, 0), 1},
		{"older seq after a newer one is ignored",
			[]step{{[]Item{B(2)}, 1, 1}, {[]Item{A(1)}, 0, 0}}, "B", version(2, 0), 1},
		{"newer seq with identical content advances the version only",
			[]step{{[]Item{A(1)}, 1, 1}, {[]Item{A(3)}, 1, 0}, {[]Item{B(2)}, 0, 0}}, "A", version(3, 0), 1},
		{"newer seq with new content is written",
			[]step{{[]Item{A(1)}, 1, 1}, {[]Item{B(2)}, 1, 1}, {[]Item{B(2)}, 0, 0}}, "B", version(2, 0), 2},
		{"same key twice in one batch: later index wins",
			[]step{{[]Item{item(1, cdc, up("1", "B", "2.00"), up("1", "A", "1.00"))}, 1, 1}}, "A", version(1, 1), 1},
		{"same key in two items of one apply: higher seq wins",
			[]step{{[]Item{B(5), A(4)}, 1, 1}}, "B", version(5, 0), 1},
		{"higher seq wins over a higher index",
			[]step{{[]Item{item(4, cdc, up("2", "x", nil), up("3", "x", nil), up("1", "A", "1.00")), B(5)}, 3, 3}}, "B", version(5, 0), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := dbPath(t)
			db := inspect(t, path)
			tg := openTarget(t, defaultSpec(path))
			for i, st := range tt.steps {
				res := apply(t, tg, st.items...)
				if res.Newer != st.newer || res.Written != st.written {
					t.Errorf("step %d: Newer=%d Written=%d, want %d and %d", i, res.Newer, res.Written, st.newer, st.written)
				}
			}
			if got := one[string](t, db, "SELECT name FROM items WHERE id = 1"); got != tt.wantName {
				t.Errorf("name = %q, want %q", got, tt.wantName)
			}
			var v int64
			var applies int
			if err := db.QueryRowContext(testCtx(t), "SELECT oneway_version, oneway_applies FROM oneway_ledger_items WHERE id = '1'").Scan(&v, &applies); err != nil {
				t.Fatal(err)
			}
			if v != tt.wantVersion || applies != tt.wantApplies {
				t.Errorf("ledger version=%d applies=%d, want %d and %d", v, applies, tt.wantVersion, tt.wantApplies)
			}
		})
	}
}

// ---- 5. deletes ----------------------------------------------------------------

func TestDeletes(t *testing.T) {
	t.Parallel()
	const ddl = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount TEXT, deleted BOOLEAN, deleted_at TEXT)"
	stamp := "deleted_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*Z'"
	tests := []struct {
		name   string
		setup  []string
		policy string
		soft   string // soft-delete column
		extra  string // rendered extra column (or "")
		// rows after: load (1 A, 2 B), delete 1, redelivered (older)
		// upserts, and finally a newer upsert of 1.
		afterDelete, afterRedelivery, afterRevival []string
		deleted                                    int
	}{
		{name: "hard", setup: []string{ddl}, policy: DeleteHard,
			afterDelete:     []string{"2|'B'|'2.00'"},
			afterRedelivery: []string{"2|'B'|'2.00'"},
			afterRevival:    []string{"1|'C'|'3.00'", "2|'B'|'2.00'"},
			deleted:         1},
		{name: "none", setup: []string{ddl}, policy: DeleteNone,
			afterDelete:     []string{"1|'A'|'1.00'", "2|'B'|'2.00'"},
			afterRedelivery: []string{"1|'A'|'1.00'", "2|'B'|'2.00'"},
			afterRevival:    []string{"1|'C'|'3.00'", "2|'B'|'2.00'"},
			deleted:         0},
		{name: "soft boolean", setup: []string{ddl}, policy: DeleteSoft, soft: "deleted", extra: "deleted",
			afterDelete:     []string{"1|'A'|'1.00'|1", "2|'B'|'2.00'|0"},
			afterRedelivery: []string{"1|'A'|'1.00'|1", "2|'B'|'2.00'|0"},
			afterRevival:    []string{"1|'C'|'3.00'|0", "2|'B'|'2.00'|0"},
			deleted:         1},
		{name: "soft timestamp", setup: []string{ddl}, policy: DeleteSoft, soft: "deleted_at", extra: stamp,
			afterDelete:     []string{"1|'A'|'1.00'|1", "2|'B'|'2.00'|NULL"},
			afterRedelivery: []string{"1|'A'|'1.00'|1", "2|'B'|'2.00'|NULL"},
			afterRevival:    []string{"1|'C'|'3.00'|NULL", "2|'B'|'2.00'|NULL"},
			deleted:         1},
		{name: "soft timestamp, column added to the created table", policy: DeleteSoft, soft: "deleted_at", extra: stamp,
			afterDelete:     []string{"1|'A'|'1.00'|1", "2|'B'|'2.00'|NULL"},
			afterRedelivery: []string{"1|'A'|'1.00'|1", "2|'B'|'2.00'|NULL"},
			afterRevival:    []string{"1|'C'|'3.00'|NULL", "2|'B'|'2.00'|NULL"},
			deleted:         1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := dbPath(t)
			db := inspect(t, path)
			exec(t, db, tt.setup...)
			spec := defaultSpec(path)
			spec.Delete, spec.SoftDeleteColumn = tt.policy, tt.soft
			tg := openTarget(t, spec)
			var extra []string
			if tt.extra != "" {
				extra = []string{tt.extra}
			}
			load := item(1, snapshot, up("1", "A", "1.00"), up("2", "B", "2.00"))
			apply(t, tg, load)

			res := apply(t, tg, item(2, cdc, del("1")))
			if res.Newer != 1 || res.Deleted != tt.deleted || res.Written != 0 {
				t.Errorf("delete: %+v, want Newer=1 Deleted=%d Written=0", res, tt.deleted)
			}
			equal(t, "after delete", itemRows(t, db, extra...), tt.afterDelete)
			if h := one[int](t, db, "SELECT length(oneway_hash) FROM oneway_ledger_items WHERE id = '1'"); h != 0 {
				t.Errorf("ledger hash of a deleted key has length %d, want 0 (tombstone)", h)
			}
			// A newer delete of a deleted key advances the version only.
			if res := apply(t, tg, item(3, cdc, del("1"))); res.Newer != 1 || res.Deleted != 0 {
				t.Errorf("second delete: %+v, want Newer=1 Deleted=0", res)
			}

			// No resurrection: the load again, and an older cdc upsert.
			res = apply(t, tg, load)
			if res.Newer != 0 || res.Written != 0 || res.Deleted != 0 {
				t.Errorf("redelivered load: %+v, want nothing newer and nothing written", res)
			}
			apply(t, tg, item(2, cdc, up("1", "Z", "9.00")))
			equal(t, "after redelivered older upserts", itemRows(t, db, extra...), tt.afterRedelivery)

			apply(t, tg, item(4, cdc, up("1", "C", "3.00")))
			equal(t, "after a newer upsert", itemRows(t, db, extra...), tt.afterRevival)
			equal(t, "ledger", ledgerRows(t, db, tg), []string{
				fmt.Sprintf("1 v=%d applies=3 hash=16", version(4, 0)),
				fmt.Sprintf("2 v=%d applies=1 hash=16", version(1, 1)),
			})
		})
	}
}

// ---- 6. poison isolation -------------------------------------------------------

func TestPoisonIsolation(t *testing.T) {
	t.Parallel()
	cols := []*onewayv1.Column{
		{Name: "id", Type: "integer", Key: true},
		{Name: "name", Type: "text"},
		{Name: "amount", Type: "numeric(12,2)"},
		{Name: "qty", Type: "integer"},
	}
	const (
		plain  = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, amount TEXT CHECK (CAST(amount AS REAL) >= 0), qty INTEGER)"
		strict = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, amount REAL CHECK (amount >= 0), qty INTEGER) STRICT"
	)
	// five changes of keys 1..5; bad(i, vals) may spoil change i.
	five := func(from, to int, bad func(i int, v []any)) []*onewayv1.Change {
		var cs []*onewayv1.Change
		for i := from; i <= to; i++ {
			v := []any{fmt.Sprint(i), fmt.Sprint("n", i), fmt.Sprintf("%d.00", i), "7"}
			if bad != nil {
				bad(i, v)
			}
			cs = append(cs, up(v...))
		}
		return cs
	}
	at := func(k int, col int, val any) func(int, []any) {
		return func(i int, v []any) {
			if i == k {
				v[col] = val
			}
		}
	}
	it := func(seq uint64, cs ...*onewayv1.Change) Item { return Item{Seq: seq, Batch: mkBatch(cdc, cols, cs...)} }
	tests := []struct {
		name      string
		ddl       string
		items     []Item
		wantItem  int
		wantIndex int
		wantKey   string
		wantCause string
	}{
		{"check violation", plain, []Item{it(1, five(1, 5, at(3, 2, "-1.00"))...)}, 0, 2, "3", "CHECK constraint failed"},
		{"not null violation", plain, []Item{it(1, five(1, 5, at(2, 1, nil))...)}, 0, 1, "2", "NOT NULL constraint failed"},
		{"type rejected by a STRICT table", strict, []Item{it(1, five(1, 5, at(5, 2, "lots"))...)}, 0, 4, "5", "cannot store TEXT value in REAL column"},
		{"value that does not convert", plain, []Item{it(1, five(1, 5, at(4, 3, "lots"))...)}, 0, 3, "4", `column "qty": "lots" is not a 64-bit integer`},
		{"bad change in the second item", plain, []Item{
			it(1, five(1, 2, nil)...),
			it(2, five(3, 5, at(4, 2, "-7.00"))...),
		}, 1, 1, "4", "CHECK constraint failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := dbPath(t)
			db := inspect(t, path)
			exec(t, db, tt.ddl)
			tg := openTarget(t, defaultSpec(path))
			res, err := tg.Apply(testCtx(t), tt.items)
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if len(res.Failed) != 1 {
				t.Fatalf("Failed = %+v, want exactly key %s", res.Failed, tt.wantKey)
			}
			f := res.Failed[0]
			if f.Key != tt.wantKey || f.Item != tt.wantItem || f.Index != tt.wantIndex {
				t.Errorf("failure at item %d index %d key %q, want item %d index %d key %q", f.Item, f.Index, f.Key, tt.wantItem, tt.wantIndex, tt.wantKey)
			}
			if !errs.IsPermanent(f.Err) {
				t.Errorf("failure error is not permanent: %v", f.Err)
			}
			for _, s := range []string{`table "items"`, "key " + tt.wantKey, tt.wantCause} {
				if !strings.Contains(f.Err.Error(), s) {
					t.Errorf("failure error %q does not name %q", f.Err, s)
				}
			}
			if res.Changes != 5 || res.Newer != 4 || res.Written != 4 {
				t.Errorf("Changes=%d Newer=%d Written=%d, want 5, 4 and 4", res.Changes, res.Newer, res.Written)
			}
			var want []string
			for i := 1; i <= 5; i++ {
				if fmt.Sprint(i) != tt.wantKey {
					want = append(want, fmt.Sprintf("%d|'n%d'|'%d.00'", i, i, i))
				}
			}
			equal(t, "rows", strs(t, db, "SELECT quote(id) || '|' || quote(name) || '|' || quote(printf('%.2f', amount)) FROM items ORDER BY id"), want)
			if n := one[int](t, db, "SELECT count(*) FROM oneway_ledger_items WHERE id = ?", tt.wantKey); n != 0 {
				t.Errorf("the rejected key has a ledger row")
			}
			// A corrected, newer version of the rejected record goes through.
			apply(t, tg, it(9, up(tt.wantKey, "fixed", "0.00", "1")))
			if got := one[string](t, db, "SELECT name FROM items WHERE id = ?", tt.wantKey); got != "fixed" {
				t.Errorf("corrected record: name = %q", got)
			}
		})
	}
}

// A table dropped under the cached plan fails the batch ("no such table");
// Apply checks the table again (creating it) before isolating changes.
func TestTableDroppedUnderCachedPlan(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	db := inspect(t, path)
	tg := openTarget(t, defaultSpec(path))
	apply(t, tg, item(1, cdc, up("1", "a", "1.00")))
	exec(t, db, "DROP TABLE items")
	res := apply(t, tg, item(2, cdc, up("2", "b", "2.00"), up("3", "c", "3.00")))
	if res.Written != 2 {
		t.Errorf("result %+v, want 2 written", res)
	}
	equal(t, "rows", itemRows(t, db), []string{"2|'b'|'2.00'", "3|'c'|'3.00'"})
}

// ---- 7. awkward identifiers and values ---------------------------------------

func TestAwkwardIdentifiersAndValues(t *testing.T) {
	t.Parallel()
	table, ledger := `Mixed "Case"; tbl`, `led "x"; y`
	cols := []*onewayv1.Column{
		{Name: `Région "k"`, Type: "text", Key: true},
		{Name: "n°", Type: "integer", Key: true},
		{Name: "val;ue", Type: "text"},
		{Name: "Note", Type: "text"},
	}
	type rec struct{ k, n, v, note any }
	load := []rec{
		{"zürich\t1", "1", "tab\there", nil},
		{"日本", "2", "line1\nline2\r\nline3", `back\slash \N \. end`},
		{`a\b`, "3", "", "NULL"},
		{"emoji 😀", "-4", `quote ' and " and ;`, `\`},
		{"\n", "5", `\N`, ""},
		{"same", "1", "\\.\n", "x\ty\nz"},
		{"same", "2", nil, nil},
		{"", "0", "empty key text", "'); DROP TABLE x; --"},
	}
	update := make([]rec, len(load))
	for i, r := range load {
		update[i] = rec{r.k, r.n, r.note, r.v} // value and note swapped
	}
	update[6] = rec{"same", "2", "ünïcødé\u00a0\u2028", "\\\\"}
	toChanges := func(rs []rec) []*onewayv1.Change {
		var cs []*onewayv1.Change
		for _, r := range rs {
			cs = append(cs, up(r.k, r.n, r.v, r.note))
		}
		return cs
	}
	show := func(v any) string {
		if v == nil {
			return "NULL"
		}
		return fmt.Sprintf("%q", v)
	}
	render := func(rs []rec) []string {
		var out []string
		for _, r := range rs {
			out = append(out, fmt.Sprintf("%q|%v|%s|%s", r.k, r.n, show(r.v), show(r.note)))
		}
		return out
	}
	path := dbPath(t)
	db := inspect(t, path)
	read := func(t *testing.T) []string {
		t.Helper()
		rows, err := db.QueryContext(testCtx(t), fmt.Sprintf("SELECT %s, %s, typeof(%[2]s), %s, %s FROM %s",
			quote(`Région "k"`), quote("n°"), quote("val;ue"), quote("Note"), quote(table)))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		got := map[string]string{}
		for rows.Next() {
			var k, typ string
			var n int64
			var v, note sql.NullString
			if err := rows.Scan(&k, &n, &typ, &v, &note); err != nil {
				t.Fatal(err)
			}
			if typ != "integer" {
				t.Errorf("n° stored as %s", typ)
			}
			sv, snote := "NULL", "NULL"
			if v.Valid {
				sv = fmt.Sprintf("%q", v.String)
			}
			if note.Valid {
				snote = fmt.Sprintf("%q", note.String)
			}
			got[fmt.Sprint(k, "\x00", n)] = fmt.Sprintf("%q|%d|%s|%s", k, n, sv, snote)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range load { // in load order
			id := fmt.Sprint(r.k, "\x00", r.n)
			if s, ok := got[id]; ok {
				out = append(out, s)
				delete(got, id)
			}
		}
		for _, s := range got {
			out = append(out, "unexpected "+s)
		}
		return out
	}
	spec := defaultSpec(path)
	spec.Table, spec.LedgerTable = table, ledger
	tg := openTarget(t, spec)
	batch := func(seq uint64, cs ...*onewayv1.Change) Item { return Item{Seq: seq, Batch: mkBatch(cdc, cols, cs...)} }

	if res := apply(t, tg, batch(2, toChanges(load)...)); res.Written != len(load) {
		t.Errorf("load wrote %d rows, want %d", res.Written, len(load))
	}
	equal(t, "after load", read(t), render(load))
	equal(t, "primary key", strs(t, db, "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", table), []string{`Région "k"`, "n°"})

	if res := apply(t, tg, batch(3, toChanges(update)...)); res.Written != len(update) {
		t.Errorf("update wrote %d rows, want %d", res.Written, len(update))
	}
	equal(t, "after update", read(t), render(update))

	// Redelivering the load changes nothing; a delete of one composite key
	// leaves its sibling alone.
	if res := apply(t, tg, batch(2, toChanges(load)...)); res.Written != 0 || res.Newer != 0 {
		t.Errorf("redelivered load: %+v", res)
	}
	delRow := &onewayv1.Change{Op: onewayv1.Op_OP_DELETE, Row: packVals("same", "1", nil, nil)}
	if res := apply(t, tg, batch(4, delRow)); res.Deleted != 1 {
		t.Errorf("delete: %+v", res)
	}
	want := render(update)
	want = append(want[:5:5], want[6:]...) // ("same", 1)
	equal(t, "after delete", read(t), want)

	// Every ledger key is a key that was sent, byte for byte, as text.
	keys := strs(t, db, fmt.Sprintf("SELECT typeof(%[1]s) || typeof(%[2]s) || ':' || %[1]s || '|' || %[2]s FROM %[3]s ORDER BY 1",
		quote(`Région "k"`), quote("n°"), quote(ledger)))
	sent := map[string]bool{}
	for _, r := range load {
		sent[fmt.Sprintf("texttext:%s|%s", r.k, r.n)] = true
	}
	if len(keys) != len(load) {
		t.Errorf("ledger rows = %d, want %d", len(keys), len(load))
	}
	for _, k := range keys {
		if !sent[k] {
			t.Errorf("ledger key %q was never sent", k)
		}
	}
}

// ---- 8. concurrency -------------------------------------------------------------

// TestConcurrentWriters: scale-out is safe. Four writers, each with its own
// Target (its own connection) on one file, apply shuffled items
// concurrently; every key ends at its highest version.
func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	const (
		workers = 4
		nItems  = 200
		nKeys   = 20
	)
	path := dbPath(t)
	db := inspect(t, path)
	rng := rand.New(rand.NewSource(1))
	type want struct {
		v         int64
		name, amt string
		deleted   bool
	}
	expect := map[int]*want{}
	all := make([]Item, nItems)
	for i, s := range rng.Perm(nItems) { // seq unique per item, shuffled
		seq := uint64(s + 1)
		var cs []*onewayv1.Change
		for j := range 1 + rng.Intn(4) {
			k := 1 + rng.Intn(nKeys)
			w := &want{v: version(seq, j), name: fmt.Sprintf("s%d.%d", seq, j), amt: fmt.Sprintf("%d.%02d", rng.Intn(1000), rng.Intn(100))}
			if rng.Intn(5) == 0 {
				w.deleted = true
				cs = append(cs, del(fmt.Sprint(k)))
			} else {
				cs = append(cs, up(fmt.Sprint(k), w.name, w.amt))
			}
			if e := expect[k]; e == nil || w.v > e.v {
				expect[k] = w
			}
		}
		all[i] = item(seq, cdc, cs...)
	}
	// Deal the items to the workers and group each worker's share into
	// applies of 1-3 items.
	groups := make([][][]Item, workers)
	for w := range workers {
		var mine []Item
		for i := w; i < nItems; i += workers {
			mine = append(mine, all[i])
		}
		for len(mine) > 0 {
			n := min(1+rng.Intn(3), len(mine))
			groups[w] = append(groups[w], mine[:n])
			mine = mine[n:]
		}
	}
	targets := make([]*Target, workers)
	for w := range targets {
		targets[w] = openTarget(t, defaultSpec(path))
	}
	ctx := testCtx(t)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			<-start
			for _, g := range groups[w] {
				for attempt := 0; ; attempt++ {
					res, err := targets[w].Apply(ctx, g)
					if err == nil {
						if len(res.Failed) > 0 {
							t.Errorf("worker %d: failures %+v", w, res.Failed)
						}
						break
					}
					if errs.IsPermanent(err) || attempt == 10 || ctx.Err() != nil {
						t.Errorf("worker %d: apply: %v", w, err)
						return
					}
					t.Logf("worker %d: transient error, retrying: %v", w, err)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	var wantRows, wantLedger []string
	for k := 1; k <= nKeys; k++ {
		w := expect[k]
		if w == nil {
			continue
		}
		if !w.deleted {
			wantRows = append(wantRows, fmt.Sprintf("%d|'%s'|'%s'", k, w.name, w.amt))
		}
		hash := 16
		if w.deleted {
			hash = 0
		}
		wantLedger = append(wantLedger, fmt.Sprintf("%d v=%d hash=%d", k, w.v, hash))
	}
	equal(t, "rows", itemRows(t, db), wantRows)
	equal(t, "ledger", strs(t, db, "SELECT id || ' v=' || oneway_version || ' hash=' || length(oneway_hash) FROM oneway_ledger_items ORDER BY CAST(id AS INTEGER)"), wantLedger)
}

// A writer that cannot get the write lock within the busy timeout fails
// with a transient error (neither permanent nor an outage), and a cancelled
// ctx ends the wait early; once the lock is free the same apply succeeds.
func TestBusyIsTransient(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	db := inspect(t, path)
	quick, err := open(testCtx(t), defaultSpec(path), slog.New(slog.DiscardHandler), 50)
	if err != nil {
		t.Fatal(err)
	}
	defer quick.Close()
	apply(t, quick, item(1, cdc, up("1", "a", "1.00"))) // creates the table, caches the plan
	slow := openTarget(t, defaultSpec(path))            // busy timeout 10 s
	apply(t, slow, item(1, cdc, up("1", "a", "1.00")))

	conn, err := db.Conn(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(testCtx(t), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	next := item(2, cdc, up("1", "b", "2.00"))
	_, err = quick.Apply(testCtx(t), []Item{next})
	if err == nil || errs.IsPermanent(err) || errs.IsUnavailable(err) || !strings.Contains(err.Error(), "busy timeout") {
		t.Errorf("apply against a held write lock: %v, want a transient busy error", err)
	}

	ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err = slow.Apply(ctx, []Item{next})
	if err == nil || errs.IsPermanent(err) || !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "interrupt") {
		t.Errorf("apply with a cancelled ctx: %v", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("cancelled apply returned after %v", d)
	}

	if _, err := conn.ExecContext(testCtx(t), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	conn.Close() // db has one connection
	if res := apply(t, quick, next); res.Written != 1 {
		t.Errorf("after the lock was released: %+v", res)
	}
	// The cancelled writer's connection is usable again.
	if res := apply(t, slow, item(3, cdc, up("1", "c", "3.00"))); res.Written != 1 {
		t.Errorf("cancelled writer after the lock was released: %+v", res)
	}
	equal(t, "rows", itemRows(t, db), []string{"1|'c'|'3.00'"})
}

func TestOpenRefusesBadSpecs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec func(*Spec)
		want string
	}{
		{"no path", func(s *Spec) { s.Path = "" }, "no database path"},
		{"no table", func(s *Spec) { s.Table = "" }, "no table"},
		{"unknown delete", func(s *Spec) { s.Delete = "purge" }, `got "purge"`},
		{"soft without column", func(s *Spec) { s.Delete = DeleteSoft }, "no soft_delete_column"},
		{"column without soft", func(s *Spec) { s.SoftDeleteColumn = "x" }, `delete is "hard"`},
		{"ledger is the table", func(s *Spec) { s.LedgerTable = "ITEMS" }, "is the target table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spec := defaultSpec(dbPath(t))
			tt.spec(&spec)
			tg, err := Open(testCtx(t), spec, nil)
			if err == nil {
				tg.Close()
				t.Fatal("Open succeeded")
			}
			if !errs.IsPermanent(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want a permanent error containing %q", err, tt.want)
			}
		})
	}
}
