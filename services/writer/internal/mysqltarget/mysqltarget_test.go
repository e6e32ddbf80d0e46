package mysqltarget

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/services/writer/internal/target/targettest"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/testkit/mysqltest"
	"github.com/oneway-sync/oneway/shared/testkit/netproxy"
)

// ---- helpers ---------------------------------------------------------------

var cdc = onewayv1.CapturePattern_CAPTURE_PATTERN_CDC

// itemCols is the layout most tests use: items (id, name, amount).
var itemCols = []*onewayv1.Column{
	{Name: "id", Type: "integer", Key: true},
	{Name: "name", Type: "text"},
	{Name: "amount", Type: "numeric(12,2)"},
}

var (
	up      = targettest.Up
	delOf   = targettest.DelOf
	version = target.Version
)

func del(key string) *onewayv1.Change { return delOf(len(itemCols), key) }

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func defaultSpec(dsn string) Spec {
	return Spec{Pipeline: "p", Target: "my", DSN: dsn, Table: "items", CreateTable: true, Delete: DeleteHard}
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

func mkBatch(cols []*onewayv1.Column, changes ...*onewayv1.Change) *onewayv1.Batch {
	return &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: "p", Origin: "source", Pattern: cdc,
		Table: "public.items", Columns: cols, Changes: changes}
}

func item(seq uint64, changes ...*onewayv1.Change) Item {
	return Item{Seq: seq, Batch: mkBatch(itemCols, changes...)}
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

// strs runs a query and renders each row as its values joined by "|",
// NULL as "NULL".
func strs(t *testing.T, db *sql.DB, q string, args ...any) []string {
	t.Helper()
	rows, err := db.QueryContext(testCtx(t), q, args...)
	if err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatalf("query %q: %v", q, err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = "NULL"
			if v.Valid {
				parts[i] = v.String
			}
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	return out
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got: %q\nwant: %q", what, got, want)
	}
}

func itemRows(t *testing.T, db *sql.DB) []string {
	t.Helper()
	return strs(t, db, "SELECT id, name, amount FROM items ORDER BY id")
}

// ledgerRows renders the ledger as "id v=<version> applies=<n> hash=<len>".
func ledgerRows(t *testing.T, db *sql.DB, tg *Target) []string {
	t.Helper()
	return strs(t, db, "SELECT CONCAT(id, ' v=', oneway_version, ' applies=', oneway_applies, ' hash=', LENGTH(oneway_hash)) FROM "+
		quote(tg.Ledger())+" ORDER BY id")
}

// ---- preparing the target --------------------------------------------------

func TestPrepareTarget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		setup       []string
		createTable bool
		wantErr     []string // substrings of a permanent error; nil = success
	}{
		{name: "creates missing table and ledger", createTable: true},
		{name: "missing table, create_table false",
			wantErr: []string{"`items`", "does not exist", "create_table is false"}},
		{name: "existing table with extra columns", createTable: true,
			setup: []string{"CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50), amount DECIMAL(12,2), notes TEXT) ENGINE=InnoDB"}},
		{name: "unique index instead of a primary key", createTable: true,
			setup: []string{"CREATE TABLE items (rid INT AUTO_INCREMENT PRIMARY KEY, id INT NOT NULL, name TEXT, amount DECIMAL(12,2), UNIQUE KEY (id)) ENGINE=InnoDB"}},
		{name: "owned column missing", createTable: true,
			setup:   []string{"CREATE TABLE items (id INT PRIMARY KEY, name TEXT) ENGINE=InnoDB"},
			wantErr: []string{"`items`", `no column "amount"`}},
		{name: "no unique index on the key", createTable: true,
			setup:   []string{"CREATE TABLE items (id INT, name TEXT, amount DECIMAL(12,2)) ENGINE=InnoDB"},
			wantErr: []string{"no primary key or unique index", "(id)"}},
		{name: "unique index on a superset of the key", createTable: true,
			setup:   []string{"CREATE TABLE items (id INT, name VARCHAR(20), amount DECIMAL(12,2), UNIQUE KEY (id, name)) ENGINE=InnoDB"},
			wantErr: []string{"no primary key or unique index"}},
		{name: "prefix index on a text key", createTable: true,
			setup:   []string{"CREATE TABLE items (id VARCHAR(100), name TEXT, amount DECIMAL(12,2), UNIQUE KEY (id(10))) ENGINE=InnoDB"},
			wantErr: []string{"no primary key or unique index"}},
		{name: "not transactional", createTable: true,
			setup:   []string{"CREATE TABLE items (id INT PRIMARY KEY, name TEXT, amount DECIMAL(12,2)) ENGINE=MyISAM"},
			wantErr: []string{"engine MyISAM", "InnoDB"}},
		{name: "a view", createTable: true,
			setup:   []string{"CREATE TABLE base (id INT PRIMARY KEY, name TEXT, amount DECIMAL(12,2))", "CREATE VIEW items AS SELECT * FROM base"},
			wantErr: []string{"is a view, not a table"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dsn := mysqltest.NewDatabase(t)
			mysqltest.Exec(t, dsn, tt.setup...)
			spec := defaultSpec(dsn)
			spec.CreateTable = tt.createTable
			tg := openTarget(t, spec)
			_, err := tg.Apply(testCtx(t), []Item{item(1, up("1", "a", "1.50"))})
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("apply: %v", err)
				}
				equal(t, "rows", itemRows(t, mysqltest.Open(t, dsn)), []string{"1|a|1.50"})
				return
			}
			if err == nil || !errs.IsPermanent(err) {
				t.Fatalf("want a permanent error, got %v", err)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// A ledger whose key no longer matches the table (the table was rebuilt
// with another key type) is refused, naming both.
func TestLedgerMismatch(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	tg := openTarget(t, defaultSpec(dsn))
	apply(t, tg, item(1, up("1", "a", "1.00")))
	mysqltest.Exec(t, dsn, "DROP TABLE items", "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, amount DECIMAL(12,2))")
	tg2 := openTarget(t, defaultSpec(dsn))
	_, err := tg2.Apply(testCtx(t), []Item{item(2, up("1", "a", "1.00"))})
	if err == nil || !errs.IsPermanent(err) || !strings.Contains(err.Error(), "drop the ledger to rebuild it") || !strings.Contains(err.Error(), "bigint") {
		t.Fatalf("want a permanent ledger mismatch naming the types, got %v", err)
	}
}

// Open refuses bad specs and never echoes the DSN's password.
func TestOpenRefusesBadSpecs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"no table", Spec{Target: "my", DSN: "u:p@tcp(127.0.0.1:1)/db"}, "no table"},
		{"bad delete", Spec{Target: "my", DSN: "u:p@tcp(127.0.0.1:1)/db", Table: "t", Delete: "maybe"}, "delete must be"},
		{"soft without column", Spec{Target: "my", DSN: "u:p@tcp(127.0.0.1:1)/db", Table: "t", Delete: DeleteSoft}, "no soft_delete_column"},
		{"name too long", Spec{Target: "my", DSN: "u:p@tcp(127.0.0.1:1)/db", Table: strings.Repeat("x", 65)}, "1 to 64 characters"},
		{"bad DSN", Spec{Target: "my", DSN: "u:s3cret@tcp(127.0.0.1:1/db", Table: "t"}, "invalid DSN"},
		{"bad DSN param", Spec{Target: "my", DSN: "u:s3cret@tcp(127.0.0.1:1)/db?timeout=s3cret", Table: "t"}, "invalid DSN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(testCtx(t), tt.spec, nil)
			if err == nil || !errs.IsPermanent(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want a permanent error with %q, got %v", tt.want, err)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}

// ---- types -----------------------------------------------------------------

func TestCreatedTableTypes(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	db := mysqltest.Open(t, dsn)
	cols := []*onewayv1.Column{
		{Name: "id", Type: "bigint", Key: true},
		{Name: "code", Type: "text", Key: true},
		{Name: "i", Type: "integer"},
		{Name: "n", Type: "numeric(12,2)"},
		{Name: "n_any", Type: "numeric"},
		{Name: "txt", Type: "text"},
		{Name: "vc", Type: "character varying(20)"},
		{Name: "b", Type: "boolean"},
		{Name: "ts", Type: "timestamp with time zone"},
		{Name: "ts3", Type: "timestamp(3) without time zone"},
		{Name: "d", Type: "date"},
		{Name: "j", Type: "jsonb"},
		{Name: "bin", Type: "bytea"},
		{Name: "u", Type: "uuid"},
		{Name: "f", Type: "double precision"},
	}
	tg := openTarget(t, Spec{Pipeline: "p", Target: "my", DSN: dsn, Table: "typed", CreateTable: true})
	row := func(vals ...any) *onewayv1.Change { return up(vals...) }
	_, err := tg.Apply(testCtx(t), []Item{{Seq: 1, Batch: mkBatch(cols,
		row("9007199254740993", "a", "-7", "1234567890.12", "3.141592653589793238462643383279", "héllo 🎉 'q' \\", "short",
			"t", "2024-05-01 10:00:00.123456+02", "2024-05-01 10:00:00.123", "2024-02-29", `{"a": [1, 2]}`, `\x00ff10`,
			"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "1.5e-10"),
		row("9007199254740993", "A", nil, nil, nil, "", nil, "f", nil, nil, nil, nil, `\x`, nil, nil),
		row("9007199254740993", "a ", nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil),
	)}})
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "column types", strs(t, db, `SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'typed' ORDER BY ORDINAL_POSITION`), []string{
		"id|bigint(20)", "code|varchar(255)", "i|int(11)", "n|decimal(12,2)", "n_any|decimal(65,30)", "txt|longtext",
		"vc|varchar(20)", "b|tinyint(1)", "ts|datetime(6)", "ts3|datetime(3)", "d|date", "j|longtext", "bin|longblob",
		"u|char(36)", "f|double",
	})
	// The three text keys differ only in case and a trailing space: three rows.
	equal(t, "rows", strs(t, db, `SELECT CONCAT('[', code, ']'), i, n, n_any, txt, vc, b, ts, ts3, d, j, HEX(bin), u, f FROM typed ORDER BY code`), []string{
		"[A]|NULL|NULL|NULL||NULL|0|NULL|NULL|NULL|NULL||NULL|NULL",
		"[a]|-7|1234567890.12|3.141592653589793238462643383279|héllo 🎉 'q' \\|short|1|2024-05-01 08:00:00.123456|2024-05-01 10:00:00.123|2024-02-29|{\"a\": [1, 2]}|00FF10|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|1.5e-10",
		"[a ]|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL",
	})
	if got := strs(t, db, "SELECT COUNT(*) FROM "+quote(tg.Ledger())); got[0] != "3" {
		t.Errorf("ledger rows = %s, want 3", got[0])
	}
}

func TestMysqlType(t *testing.T) {
	tests := []struct {
		pg   string
		key  bool
		want string
	}{
		{"smallint", false, "SMALLINT"},
		{"numeric(70,2)", false, "DECIMAL(65,30)"},
		{"numeric(10)", false, "DECIMAL(10,0)"},
		{"character varying", false, "LONGTEXT"},
		{"character varying(5000)", false, "LONGTEXT"},
		{"character varying(5000)", true, "VARCHAR(768)"},
		{"character(3)", false, "CHAR(3)"},
		{"text", true, "VARCHAR(255)"},
		{"integer[]", false, "LONGTEXT"},
		{"time(3) without time zone", false, "TIME(3)"},
		{"timestamp(0) with time zone", false, "DATETIME(0)"},
		{"bytea", true, "VARBINARY(255)"},
		{"jsonb", true, "VARCHAR(255)"},
		{"interval", false, "LONGTEXT"},
	}
	for _, tt := range tests {
		if got, _, _ := mysqlType(tt.pg, tt.key); got != tt.want {
			t.Errorf("mysqlType(%q, key=%v) = %s, want %s", tt.pg, tt.key, got, tt.want)
		}
	}
}

func TestUTCTimestamp(t *testing.T) {
	tests := []struct{ in, want string }{
		{"2024-05-01 10:00:00+02", "2024-05-01 08:00:00"},
		{"2024-05-01 10:00:00.5-03:30", "2024-05-01 13:30:00.5"},
		{"1900-01-01 00:00:00+00:19:32", "1899-12-31 23:40:28"},
		{"2024-05-01T10:00:00Z", "2024-05-01 10:00:00"},
		{"infinity", ""},
		{"0044-03-15 00:00:00+00 BC", ""},
	}
	for _, tt := range tests {
		got, err := utcTimestamp(tt.in)
		if (err != nil) != (tt.want == "") || got != tt.want {
			t.Errorf("utcTimestamp(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// ---- effect once -----------------------------------------------------------

func TestEffectOnce(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	db := mysqltest.Open(t, dsn)
	tg := openTarget(t, defaultSpec(dsn))
	steps := []struct {
		name       string
		items      []Item
		want       Result
		wantRows   []string
		wantLedger []string
	}{
		{"insert", []Item{item(10, up("1", "a", "1.00"), up("2", "b", "2.00"))},
			Result{Changes: 2, Newer: 2, Written: 2},
			[]string{"1|a|1.00", "2|b|2.00"}, []string{"1 v=10485760 applies=1 hash=16", "2 v=10485761 applies=1 hash=16"}},
		{"redelivery changes nothing", []Item{item(10, up("1", "a", "1.00"), up("2", "b", "2.00"))},
			Result{Changes: 2},
			[]string{"1|a|1.00", "2|b|2.00"}, []string{"1 v=10485760 applies=1 hash=16", "2 v=10485761 applies=1 hash=16"}},
		{"update", []Item{item(20, up("1", "a2", "1.50"))},
			Result{Changes: 1, Newer: 1, Written: 1},
			[]string{"1|a2|1.50", "2|b|2.00"}, []string{"1 v=20971520 applies=2 hash=16", "2 v=10485761 applies=1 hash=16"}},
		{"older after newer does nothing", []Item{item(15, up("1", "stale", "9.99"))},
			Result{Changes: 1},
			[]string{"1|a2|1.50", "2|b|2.00"}, []string{"1 v=20971520 applies=2 hash=16", "2 v=10485761 applies=1 hash=16"}},
		{"same content advances the version only", []Item{item(30, up("2", "b", "2.00"))},
			Result{Changes: 1, Newer: 1},
			[]string{"1|a2|1.50", "2|b|2.00"}, []string{"1 v=20971520 applies=2 hash=16", "2 v=31457280 applies=1 hash=16"}},
		{"newest of a key across items wins", []Item{item(41, up("3", "c2", "3.00")), item(40, up("3", "c1", "3.00"), up("3", "c0", "0"))},
			Result{Changes: 1, Newer: 1, Written: 1},
			[]string{"1|a2|1.50", "2|b|2.00", "3|c2|3.00"}, []string{"1 v=20971520 applies=2 hash=16", "2 v=31457280 applies=1 hash=16", "3 v=42991616 applies=1 hash=16"}},
	}
	for _, s := range steps {
		got := apply(t, tg, s.items...)
		if got.Changes != s.want.Changes || got.Newer != s.want.Newer || got.Written != s.want.Written || got.Deleted != s.want.Deleted {
			t.Errorf("%s: result %+v, want %+v", s.name, got, s.want)
		}
		equal(t, s.name+": rows", itemRows(t, db), s.wantRows)
		equal(t, s.name+": ledger", ledgerRows(t, db, tg), s.wantLedger)
	}
}

func TestTargetOnlyColumnsAndOrphansSurvive(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	db := mysqltest.Open(t, dsn)
	mysqltest.Exec(t, dsn,
		"CREATE TABLE items (id INT PRIMARY KEY, name TEXT, amount DECIMAL(12,2), notes VARCHAR(50) DEFAULT 'new', touched INT NOT NULL DEFAULT 0)",
		"INSERT INTO items VALUES (1, 'old', 0, 'keep me', 7), (99, 'orphan', 9, 'mine', 1)")
	tg := openTarget(t, defaultSpec(dsn))
	apply(t, tg, item(1, up("1", "a", "1.00"), up("2", "b", "2.00")))
	apply(t, tg, item(2, up("1", "a2", "1.00"), del("2")))
	equal(t, "rows", strs(t, db, "SELECT id, name, amount, notes, touched FROM items ORDER BY id"),
		[]string{"1|a2|1.00|keep me|7", "99|orphan|9.00|mine|1"})
}

func TestDeletes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		setup    []string
		spec     func(*Spec)
		query    string
		wantRows []string
		deleted  int
	}{
		{name: "hard", query: "SELECT id, name FROM items ORDER BY id",
			wantRows: []string{"2|b"}, deleted: 1},
		{name: "none", spec: func(s *Spec) { s.Delete = DeleteNone }, query: "SELECT id, name FROM items ORDER BY id",
			wantRows: []string{"1|a", "2|b"}},
		{name: "soft, created as a timestamp", spec: func(s *Spec) { s.Delete, s.SoftDeleteColumn = DeleteSoft, "deleted_at" },
			query:    "SELECT id, name, deleted_at IS NOT NULL, deleted_at > UTC_TIMESTAMP() - INTERVAL 1 HOUR FROM items ORDER BY id",
			wantRows: []string{"1|a|1|1", "2|b|0|NULL"}, deleted: 1},
		{name: "soft, boolean column",
			setup: []string{"CREATE TABLE items (id INT PRIMARY KEY, name TEXT, amount DECIMAL(12,2), gone BOOLEAN NOT NULL DEFAULT 0)"},
			spec:  func(s *Spec) { s.Delete, s.SoftDeleteColumn = DeleteSoft, "gone" },
			query: "SELECT id, name, gone FROM items ORDER BY id", wantRows: []string{"1|a|1", "2|b|0"}, deleted: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dsn := mysqltest.NewDatabase(t)
			db := mysqltest.Open(t, dsn)
			mysqltest.Exec(t, dsn, tt.setup...)
			spec := defaultSpec(dsn)
			if tt.spec != nil {
				tt.spec(&spec)
			}
			tg := openTarget(t, spec)
			apply(t, tg, item(1, up("1", "a", "1.00"), up("2", "b", "2.00")))
			res := apply(t, tg, item(2, del("1"), del("3")))
			if res.Deleted != tt.deleted || res.Newer != 2 {
				t.Errorf("result %+v, want deleted %d, newer 2", res, tt.deleted)
			}
			// An older upsert after the delete is fenced; a redelivered delete is a no-op.
			apply(t, tg, item(1, up("1", "a", "1.00")), item(2, del("1")))
			equal(t, "rows", strs(t, db, tt.query), tt.wantRows)
			// A newer upsert revives the key.
			apply(t, tg, item(3, up("1", "back", "1.00")))
			if got := strs(t, db, "SELECT name FROM items WHERE id = 1"); len(got) != 1 || got[0] != "back" {
				t.Errorf("revived row: %q", got)
			}
			if tt.spec != nil && spec.Delete == DeleteSoft {
				equal(t, "mark cleared", strs(t, db, "SELECT COUNT(*) FROM items WHERE "+quote(spec.SoftDeleteColumn)+" IS NULL OR "+quote(spec.SoftDeleteColumn)+" = 0"), []string{"2"})
			}
		})
	}
}

// ---- poison isolation ------------------------------------------------------

func TestPoisonIsolation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		setup   []string
		bad     *onewayv1.Change
		wantErr []string
	}{
		{name: "data too long",
			setup:   []string{"CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(5), amount DECIMAL(12,2))"},
			bad:     up("3", "much too long", "1.00"),
			wantErr: []string{"1406", "Data too long", "key 3"}},
		{name: "null into not null",
			setup:   []string{"CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, amount DECIMAL(12,2))"},
			bad:     up("3", nil, "1.00"),
			wantErr: []string{"1048", "key 3"}},
		{name: "foreign key",
			setup: []string{"CREATE TABLE names (name VARCHAR(50) PRIMARY KEY)", "INSERT INTO names VALUES ('a'), ('b'), ('c'), ('d')",
				"CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50), amount DECIMAL(12,2), FOREIGN KEY (name) REFERENCES names (name))"},
			bad:     up("3", "nobody", "1.00"),
			wantErr: []string{"1452", "key 3"}},
		{name: "bad value for the column",
			bad:     up("3", "c", "not a number"),
			wantErr: []string{"1366", "key 3"}},
		{name: "out of range",
			setup:   []string{"CREATE TABLE items (id INT PRIMARY KEY, name TEXT, amount DECIMAL(4,2))"},
			bad:     up("3", "c", "12345.00"),
			wantErr: []string{"1264", "key 3"}},
		{name: "decimal that would be rounded",
			setup:   []string{"CREATE TABLE items (id INT PRIMARY KEY, name TEXT, amount DECIMAL(12,1))"},
			bad:     up("3", "c", "1.25"),
			wantErr: []string{"would be rounded", "key 3"}},
		{name: "control: nothing rejected",
			bad:     up("3", strings.Repeat("x", 10), "1.00"),
			wantErr: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dsn := mysqltest.NewDatabase(t)
			db := mysqltest.Open(t, dsn)
			mysqltest.Exec(t, dsn, tt.setup...)
			tg := openTarget(t, defaultSpec(dsn))
			res, err := tg.Apply(testCtx(t), []Item{
				item(1, up("1", "a", "1.00"), up("2", "b", "2.00")),
				item(2, tt.bad, up("4", "d", "4.00")),
			})
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if tt.wantErr == nil {
				if len(res.Failed) != 0 {
					t.Fatalf("failures: %+v", res.Failed)
				}
				return
			}
			if len(res.Failed) != 1 {
				t.Fatalf("want one failure, got %+v", res.Failed)
			}
			f := res.Failed[0]
			if f.Item != 1 || f.Index != 0 || f.Key != "3" || !errs.IsPermanent(f.Err) {
				t.Errorf("failure %+v (permanent %v)", f, errs.IsPermanent(f.Err))
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(f.Err.Error(), s) {
					t.Errorf("error %q does not mention %q", f.Err, s)
				}
			}
			if res.Written != 3 || res.Changes != 4 {
				t.Errorf("result %+v, want 3 written of 4", res)
			}
			equal(t, "keys", strs(t, db, "SELECT id FROM items ORDER BY id"), []string{"1", "2", "4"})
			// The rejected key has no ledger entry, so a retry after the fix applies it.
			equal(t, "ledger keys", strs(t, db, "SELECT id FROM "+quote(tg.Ledger())+" ORDER BY id"), []string{"1", "2", "4"})
		})
	}
}

// A table with a unique index besides the key's: a new key whose value
// clashes there fails alone (1062), rather than updating the other key's row.
func TestOtherUniqueIndex(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	db := mysqltest.Open(t, dsn)
	mysqltest.Exec(t, dsn, "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) UNIQUE, amount DECIMAL(12,2), extra INT DEFAULT 5)")
	tg := openTarget(t, defaultSpec(dsn))
	apply(t, tg, item(1, up("1", "a", "1.00"), up("2", "b", "2.00")))
	res, err := tg.Apply(testCtx(t), []Item{item(2, up("1", "a1", "1.10"), up("3", "b", "3.00"))})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failed) != 1 || res.Failed[0].Key != "3" || !strings.Contains(res.Failed[0].Err.Error(), "1062") {
		t.Fatalf("want key 3 rejected with 1062, got %+v", res.Failed)
	}
	equal(t, "rows", strs(t, db, "SELECT id, name, amount, extra FROM items ORDER BY id"), []string{"1|a1|1.10|5", "2|b|2.00|5"})
}

// ---- concurrency -----------------------------------------------------------

// Random changes and deletes over a few keys, each message delivered once
// or twice, shuffled and dealt to 1–4 writers with targets of their own:
// every key ends at its last version, and the ledger says so.
func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ workers, seed int }{{1, 1}, {2, 2}, {2, 3}, {4, 4}, {4, 5}, {4, 6}} {
		workers := tc.workers
		t.Run(fmt.Sprintf("%d writers seed %d", workers, tc.seed), func(t *testing.T) {
			t.Parallel()
			const (
				nItems = 300
				nKeys  = 3
			)
			dsn := mysqltest.NewDatabase(t)
			db := mysqltest.Open(t, dsn)
			rng := rand.New(rand.NewSource(int64(tc.seed)))
			type want struct {
				v         int64
				name, amt string
				deleted   bool
			}
			expect := map[int]*want{}
			var all []Item
			for seq := uint64(1); seq <= nItems; seq++ {
				var cs []*onewayv1.Change
				for j := range 1 + rng.Intn(3) {
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
				it := item(seq, cs...)
				all = append(all, it)
				if rng.Intn(4) == 0 {
					all = append(all, it) // redelivered
				}
			}
			rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
			groups := make([][][]Item, workers)
			for w := range workers {
				var mine []Item
				for i := w; i < len(all); i += workers {
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
				targets[w] = openTarget(t, defaultSpec(dsn))
			}
			// Create the table and ledger (key 0 is outside the test's keys),
			// then record every version the ledger takes, in order: per key
			// they must only rise (I3), not merely end right.
			apply(t, targets[0], item(1<<30, up("0", "warm-up", "0")))
			led := quote(targets[0].Ledger())
			mysqltest.Exec(t, dsn, "CREATE TABLE hist (seq BIGINT AUTO_INCREMENT PRIMARY KEY, id INT, v BIGINT)",
				"CREATE TRIGGER hist_up AFTER UPDATE ON "+led+" FOR EACH ROW INSERT INTO hist (id, v) SELECT NEW.id, NEW.oneway_version FROM DUAL WHERE NEW.oneway_version <> OLD.oneway_version")
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
									t.Errorf("writer %d: failures %+v", w, res.Failed)
								}
								break
							}
							if errs.IsPermanent(err) || attempt == 10 || ctx.Err() != nil {
								t.Errorf("writer %d: apply: %v", w, err)
								return
							}
							t.Logf("writer %d: transient error, retrying: %v", w, err)
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
					wantRows = append(wantRows, fmt.Sprintf("%d|%s|%s", k, w.name, w.amt))
				}
				hash := 16
				if w.deleted {
					hash = 0
				}
				wantLedger = append(wantLedger, fmt.Sprintf("%d v=%d hash=%d", k, w.v, hash))
			}
			equal(t, "rows", strs(t, db, "SELECT id, name, amount FROM items WHERE id > 0 ORDER BY id"), wantRows)
			equal(t, "ledger", strs(t, db, "SELECT CONCAT(id, ' v=', oneway_version, ' hash=', LENGTH(oneway_hash)) FROM "+
				led+" WHERE id > 0 ORDER BY id"), wantLedger)
			last := map[string]int64{}
			for _, h := range strs(t, db, "SELECT id, v FROM hist WHERE v > 0 ORDER BY seq") {
				var k string
				var v int64
				if _, err := fmt.Sscanf(strings.Replace(h, "|", " ", 1), "%s %d", &k, &v); err != nil {
					t.Fatal(err)
				}
				if v <= last[k] {
					t.Errorf("key %s: ledger went from version %d to %d", k, last[k], v)
				}
				last[k] = v
			}
		})
	}
}

// Writers starting at once all create the same table and ledger.
func TestConcurrentFirstBatchesCreateTheTable(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	var wg sync.WaitGroup
	for i := range 4 {
		tg := openTarget(t, defaultSpec(dsn))
		wg.Go(func() {
			if _, err := tg.Apply(testCtx(t), []Item{item(uint64(i+1), up(fmt.Sprint(i), "x", "1.00"))}); err != nil {
				t.Errorf("apply %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	equal(t, "rows", strs(t, mysqltest.Open(t, dsn), "SELECT COUNT(*) FROM items"), []string{"4"})
}

// ---- outages ---------------------------------------------------------------

func TestOutageIsUnavailable(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	// Closing the proxy cuts the connections in flight, as a crashed
	// server or a cut network would, and refuses new ones.
	p := netproxy.Start(t, cfg.Addr)
	cfg.Addr = p.Addr()
	tg := openTarget(t, defaultSpec(cfg.FormatDSN()))
	apply(t, tg, item(1, up("1", "a", "1.00")))
	_ = p.Close()
	_, err = tg.Apply(testCtx(t), []Item{item(2, up("1", "b", "1.00"))})
	if err == nil || !errs.IsUnavailable(err) {
		t.Fatalf("apply with the server gone: want Unavailable, got %v", err)
	}
	// A server that cannot be reached at all.
	cfg.Addr = p.Addr() // closed: connection refused
	cfg.Timeout = 2 * time.Second
	_, err = Open(testCtx(t), defaultSpec(cfg.FormatDSN()), nil)
	if err == nil || !errs.IsUnavailable(err) {
		t.Fatalf("open with no server: want Unavailable, got %v", err)
	}
	if strings.Contains(err.Error(), cfg.Passwd) && cfg.Passwd != "" {
		t.Fatalf("error leaks the password: %v", err)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name                   string
		err                    error
		permanent, unavailable bool
	}{
		{"data too long", &mysql.MySQLError{Number: 1406, SQLState: [5]byte{'2', '2', '0', '0', '1'}}, true, false},
		{"incorrect value", &mysql.MySQLError{Number: 1366, SQLState: [5]byte{'H', 'Y', '0', '0', '0'}}, true, false},
		{"check constraint (MariaDB)", &mysql.MySQLError{Number: 4025, SQLState: [5]byte{'2', '3', '0', '0', '0'}}, true, false},
		{"no such table", &mysql.MySQLError{Number: 1146, SQLState: [5]byte{'4', '2', 'S', '0', '2'}}, true, false},
		{"deadlock", &mysql.MySQLError{Number: 1213, SQLState: [5]byte{'4', '0', '0', '0', '1'}}, false, false},
		{"lock wait timeout", &mysql.MySQLError{Number: 1205, SQLState: [5]byte{'H', 'Y', '0', '0', '0'}}, false, false},
		{"server shutdown", &mysql.MySQLError{Number: 1053, SQLState: [5]byte{'0', '8', 'S', '0', '1'}}, false, true},
		{"too many connections", &mysql.MySQLError{Number: 1040, SQLState: [5]byte{'0', '8', '0', '0', '4'}}, false, true},
		{"read only", &mysql.MySQLError{Number: 1290, SQLState: [5]byte{'H', 'Y', '0', '0', '0'}}, false, true},
		{"invalid connection", fmt.Errorf("exec: %w", mysql.ErrInvalidConn), false, true},
		{"refused", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, false, true},
		{"other", errors.New("boom"), false, false},
		{"cancelled", context.Canceled, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := classify(tt.err)
			if errs.IsPermanent(got) != tt.permanent || errs.IsUnavailable(got) != tt.unavailable {
				t.Fatalf("classify(%v): permanent %v, unavailable %v; want %v, %v", tt.err,
					errs.IsPermanent(got), errs.IsUnavailable(got), tt.permanent, tt.unavailable)
			}
		})
	}
}

// ---- identifiers -----------------------------------------------------------

func TestAwkwardIdentifiersAndValues(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	db := mysqltest.Open(t, dsn)
	cols := []*onewayv1.Column{
		{Name: "Kéy`; DROP TABLE x; --", Type: "text", Key: true},
		{Name: "Value \"q\" 'v'", Type: "text"},
	}
	tbl := "Ta`ble; DROP DATABASE x"
	tg := openTarget(t, Spec{Pipeline: "p", Target: "my", DSN: dsn, Table: tbl, CreateTable: true})
	vals := []string{"'); DROP TABLE items; --", `back\slash`, "?", "émoji 🎉", ""}
	var cs []*onewayv1.Change
	for i, v := range vals {
		cs = append(cs, up(v, fmt.Sprint(i)))
	}
	if _, err := tg.Apply(testCtx(t), []Item{{Seq: 1, Batch: mkBatch(cols, cs...)}}); err != nil {
		t.Fatal(err)
	}
	got := strs(t, db, "SELECT "+quote(cols[0].Name)+", "+quote(cols[1].Name)+" FROM "+quote(tbl)+" ORDER BY "+quote(cols[1].Name))
	var want []string
	for i, v := range vals {
		want = append(want, fmt.Sprintf("%s|%d", v, i))
	}
	equal(t, "rows", got, want)
}

// A key column with a case-insensitive collation (made by hand) holds "a"
// and "A" equal: the two keys share one row, fenced by one ledger row, so
// the newest change of either wins.
func TestCaseInsensitiveKeysShareARow(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	db := mysqltest.Open(t, dsn)
	mysqltest.Exec(t, dsn, "CREATE TABLE items (id VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci PRIMARY KEY, name TEXT, amount DECIMAL(12,2))")
	cols := []*onewayv1.Column{{Name: "id", Type: "text", Key: true}, {Name: "name", Type: "text"}, {Name: "amount", Type: "numeric(12,2)"}}
	tg := openTarget(t, defaultSpec(dsn))
	res, err := tg.Apply(testCtx(t), []Item{
		{Seq: 2, Batch: mkBatch(cols, up("A", "newer", "2.00"))},
		{Seq: 1, Batch: mkBatch(cols, up("a", "older", "1.00"), up("b", "b", "1.00"))},
	})
	if err != nil || len(res.Failed) > 0 {
		t.Fatalf("apply: %+v, %v", res, err)
	}
	equal(t, "rows", strs(t, db, "SELECT id, name FROM items ORDER BY id"), []string{"A|newer", "b|b"})
}

// A decimal with more fractional digits than the column keeps is rejected;
// once the column is widened, the same change applies (the target's types
// are read again, not kept from before).
func TestDecimalScaleRecheckedAfterAlter(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	db := mysqltest.Open(t, dsn)
	mysqltest.Exec(t, dsn, "CREATE TABLE items (id INT PRIMARY KEY, name TEXT, amount DECIMAL(12,1))")
	tg := openTarget(t, defaultSpec(dsn))
	res, err := tg.Apply(testCtx(t), []Item{item(1, up("1", "a", "1.25"))})
	if err != nil || len(res.Failed) != 1 || !strings.Contains(res.Failed[0].Err.Error(), "would be rounded") {
		t.Fatalf("want key 1 rejected as rounded, got %+v, %v", res, err)
	}
	mysqltest.Exec(t, dsn, "ALTER TABLE items MODIFY amount DECIMAL(12,2)")
	apply(t, tg, item(1, up("1", "a", "1.25")))
	equal(t, "rows", itemRows(t, db), []string{"1|a|1.25"})
}

// The session's strict sql_mode is forced, whatever the DSN (or the
// server's default) says: a value too long is an error, never truncated.
func TestStrictModeForced(t *testing.T) {
	t.Parallel()
	dsn := mysqltest.NewDatabase(t)
	db := mysqltest.Open(t, dsn)
	mysqltest.Exec(t, dsn, "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(3), amount DECIMAL(12,2))")
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Params = map[string]string{"sql_mode": "''"}
	tg := openTarget(t, defaultSpec(cfg.FormatDSN()))
	res, err := tg.Apply(testCtx(t), []Item{item(1, up("1", "abcdef", "1.00"), up("2", "ok", "1.00"))})
	if err != nil || len(res.Failed) != 1 || !strings.Contains(res.Failed[0].Err.Error(), "1406") {
		t.Fatalf("want key 1 rejected with 1406, got %+v, %v", res, err)
	}
	equal(t, "rows", itemRows(t, db), []string{"2|ok|1.00"})
}
