package integration

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/testkit/mysqltest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// mysqlRows renders a query's rows as values joined by "|", NULL as "NULL".
func mysqlRows(t *testing.T, db *sql.DB, q string) []string {
	t.Helper()
	rows, err := db.QueryContext(context.Background(), q)
	if err != nil {
		t.Fatalf("query %.80q: %v", q, err)
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
			t.Fatal(err)
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
		t.Fatal(err)
	}
	return out
}

// pgRows is mysqlRows for the source.
func pgRows(t *testing.T, d *testenv.DB, q string) []string {
	t.Helper()
	rows, err := d.Conn.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("query %.80q: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = "NULL"
			if v != nil {
				parts[i] = fmt.Sprint(v)
			}
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// A MySQL (MariaDB) target whose table was made by hand with a column too
// narrow for one source row: that row is dead-lettered with MySQL's error
// 1406 and its key, every other row arrives, and the target-only column is
// left alone. After the column is widened, `oneway dlq retry` applies it
// and the MySQL table equals the source.
func TestMySQLDataTooLongRetriedAfterFix(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 2000)
	src.Exec(t, "UPDATE public.invoices SET customer = 'customer 1234 with a name far too long' WHERE id = 1234")
	dsn := mysqltest.NewDatabase(t)
	my := mysqltest.Open(t, dsn)
	mysqltest.Exec(t, dsn, `CREATE TABLE invoices (id BIGINT PRIMARY KEY, customer VARCHAR(20), amount DECIMAL(12,2),
  status TEXT, note TEXT, updated_at DATETIME(6) NOT NULL, crm_notes TEXT DEFAULT ('from the CRM')) ENGINE=InnoDB`)

	// The table is left out: it defaults to the source's public.invoices,
	// which on MySQL is invoices in the DSN's database.
	cfg := filepath.Join(t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`pipeline: invoices
source:
  kind: postgres
  url: %q
  table: public.invoices
  key: [id]
  columns: [id, customer, amount, status, note, updated_at]
  capture:
    pattern: watermark
    column: updated_at
    batch_size: 500
    poll_interval: 100ms
targets:
  - name: my
    kind: mysql
    url: %q
    create_table: false
    writer:
      ack_wait: 5s
`, src.URL, dsn)), 0o600); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()

	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != 1 || !strings.Contains(r.Stderr, "dead-lettered") {
		t.Fatalf("oneway up: exit %d, want 1 naming dead letters\n%s", r.Code, r.Stderr)
	}
	if pw := mustParsePassword(t, dsn); len(pw) >= 8 && strings.Contains(r.Stderr, pw) {
		t.Fatal("oneway up printed the MySQL password")
	}
	if got := mysqlRows(t, my, "SELECT COUNT(*), SUM(id = 1234) FROM invoices"); got[0] != "1999|0" {
		t.Fatalf("MySQL target: count, has 1234 = %s, want 1999|0", got[0])
	}
	list := mustDLQ(t, cfg, data, "list")
	var line string
	for _, l := range strings.Split(list, "\n") {
		if m := dlqRow.FindStringSubmatch(l); m != nil {
			if line != "" || m[2] != "my" || m[3] != "1234" {
				t.Fatalf("dlq list: want one dead letter, of key 1234 of target my:\n%s", list)
			}
			line = l
		}
	}
	if line == "" || !strings.Contains(line, "1406") || !strings.Contains(line, "Data too long") {
		t.Fatalf("dlq list does not show key 1234 with MySQL's 1406 data too long:\n%s", list)
	}
	t.Logf("dead letter: %s", line)
	if r := mustVerify(t, cfg, 1); !strings.Contains(r.Stdout, "missing=1") || !strings.Contains(r.Stdout, "1234") {
		t.Fatalf("verify before the fix should name the missing key 1234:\n%s", r.Stdout)
	}

	mysqltest.Exec(t, dsn, "ALTER TABLE invoices MODIFY customer VARCHAR(100)")
	mustDLQ(t, cfg, data, "retry", "--all", "--target", "my")
	r = testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != 0 {
		t.Fatalf("oneway up after the retry: exit %d\n%s", r.Code, r.Stderr)
	}
	if out := mustDLQ(t, cfg, data, "list"); !strings.Contains(out, "no dead letters") {
		t.Fatalf("dead letters left after the retry:\n%s", out)
	}
	want := pgRows(t, src, `SELECT id, customer, amount::text, status, note,
  to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM public.invoices ORDER BY id`)
	got := mysqlRows(t, my, `SELECT id, customer, amount, status, note, DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f')
FROM invoices ORDER BY id`)
	if len(got) != len(want) {
		t.Fatalf("MySQL has %d rows, the source %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("row %d differs:\n MySQL: %q\nsource: %q", i, got[i], want[i])
		}
	}
	if got := mysqlRows(t, my, "SELECT COUNT(*) FROM invoices WHERE crm_notes = 'from the CRM'"); got[0] != "2000" {
		t.Fatalf("target-only column kept in %s rows, want 2000", got[0])
	}
	if got := mysqlRows(t, my, "SELECT MAX(oneway_applies), COUNT(*) FROM oneway_ledger_1"); got[0] != "1|2000" {
		t.Fatalf("ledger max applies, keys = %s, want 1|2000", got[0])
	}
	mustVerify(t, cfg, 0)
	// A hand edit of an owned column is found.
	mysqltest.Exec(t, dsn, "UPDATE invoices SET updated_at = updated_at + INTERVAL 1 SECOND WHERE id = 77")
	if r := mustVerify(t, cfg, 1); !strings.Contains(r.Stdout, "different=1") || !strings.Contains(r.Stdout, "77") {
		t.Fatalf("verify after a hand edit should name key 77:\n%s", r.Stdout)
	}
}

func mustParsePassword(t *testing.T, dsn string) string {
	t.Helper()
	i := strings.IndexByte(dsn, ':')
	j := strings.LastIndexByte(dsn, '@')
	if i < 0 || j < i {
		return ""
	}
	return dsn[i+1 : j]
}
