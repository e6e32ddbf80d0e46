package integration

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/oneway-sync/oneway/shared/testkit/mysqltest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// chinookTables is how many tables the Chinook examples sync.
const chinookTables = 11

// The three Chinook examples, as shipped: `oneway up --exit-when-synced`
// into an empty target (oneway creates the tables), `oneway verify` exit 0,
// random inserts, updates and deletes across the tables (children before
// parents, so the source's foreign keys hold), and again up + verify 0.
// Every Chinook column type takes part: integer, varchar, numeric(10,2),
// timestamp (PostgreSQL); INT, NVARCHAR, NUMERIC(10,2), DATETIME (MariaDB).
func TestChinookExamples(t *testing.T) {
	const tamperPG = `UPDATE public.invoice_line SET quantity = quantity + 100 WHERE invoice_line_id = (SELECT min(invoice_line_id) FROM public.invoice_line)`
	tests := []struct {
		name, file string
		mysql      bool
		// tamper changes one row of one target table by hand, which
		// verify must report (in the pipeline of table).
		tamper, table string
	}{
		{name: "cdc", file: "chinook.yaml", tamper: tamperPG, table: "invoice_line"},
		{name: "synthetic", file: "chinook-synthetic.yaml", tamper: tamperPG, table: "invoice_line"},
		{name: "mysql", file: "chinook-mysql.yaml", mysql: true, table: "invoiceline",
			tamper: `UPDATE public."InvoiceLine" SET "Quantity" = "Quantity" + 100 WHERE "InvoiceLineId" = (SELECT min("InvoiceLineId") FROM public."InvoiceLine")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dstURL := pgtest.NewDatabase(t)
			t.Setenv("ONEWAY_TARGET_URL", dstURL)
			t.Setenv("ONEWAY_NATS_URL", "")
			var src *chinookDB
			if tt.mysql {
				dsn := mysqltest.NewDatabase(t)
				t.Setenv("ONEWAY_MYSQL_URL", dsn)
				src = &chinookDB{db: mysqltest.Open(t, dsn), mysql: true}
				loadChinookMySQL(t, dsn)
			} else {
				srcURL := pgtest.NewDatabase(t)
				t.Setenv("ONEWAY_SOURCE_URL", srcURL)
				pgtest.Exec(t, srcURL, chinookScript(t, "Chinook_PostgreSql.sql", "^\\\\c "))
				db, err := sql.Open("pgx", srcURL)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				src = &chinookDB{db: db}
				if tt.name == "cdc" {
					needSlots(t, srcURL, chinookTables)
					dropSlotsOf(t, srcURL)
				}
			}
			cfg := chinookConfig(t, tt.file)
			data := t.TempDir()

			start := time.Now()
			upSynced(t, cfg, data, 0)
			r := mustVerify(t, cfg, 0)
			if n := strings.Count(r.Stdout, ": OK "); n != chinookTables {
				t.Fatalf("verify checked %d tables, want %d:\n%s", n, chinookTables, r.Stdout)
			}
			t.Logf("first sync and verify: %s", time.Since(start).Round(time.Millisecond))

			seed := uint64(time.Now().UnixNano())
			t.Logf("mutation seed %d", seed)
			src.mutate(t, mrand.New(mrand.NewPCG(seed, 1)))

			start = time.Now()
			upSynced(t, cfg, data, 0)
			r = mustVerify(t, cfg, 0)
			if n := strings.Count(r.Stdout, ": OK "); n != chinookTables {
				t.Fatalf("verify after the mutations checked %d tables, want %d:\n%s", n, chinookTables, r.Stdout)
			}
			t.Logf("second sync and verify: %s", time.Since(start).Round(time.Millisecond))

			// One table differs: verify says which, and exits 1.
			pgtest.Exec(t, dstURL, tt.tamper)
			r = mustVerify(t, cfg, 1)
			if n := strings.Count(r.Stdout, ": OK "); n != chinookTables-1 {
				t.Fatalf("verify found %d tables equal, want %d:\n%s", n, chinookTables-1, r.Stdout)
			}
			if !strings.Contains(r.Stderr, "_"+tt.table) || !strings.Contains(r.Stdout, "different=1") {
				t.Fatalf("verify does not name the pipeline of %s:\nstdout:\n%s\nstderr:\n%s", tt.table, r.Stdout, r.Stderr)
			}
		})
	}
}

// chinookConfig copies an example into the test's directory under a
// pipeline name of its own (replication slots are global to the cluster).
func chinookConfig(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "examples", file))
	if err != nil {
		t.Fatal(err)
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	re := regexp.MustCompile(`(?m)^pipeline: (\w+)$`)
	if !re.Match(data) {
		t.Fatalf("%s: no pipeline line", file)
	}
	data = re.ReplaceAll(data, []byte("pipeline: ${1}_"+hex.EncodeToString(b[:])))
	path := filepath.Join(t.TempDir(), file)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// chinookScript is a dataset script without its DROP DATABASE, CREATE
// DATABASE and the line matching switchDB (\c, USE): the rest runs in the
// test's database.
func chinookScript(t *testing.T, file, switchDB string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "examples", "chinook", file))
	if err != nil {
		t.Fatal(err)
	}
	skip := regexp.MustCompile(`^(DROP DATABASE|CREATE DATABASE|` + switchDB + `)`)
	var b strings.Builder
	for line := range strings.Lines(string(data)) {
		if !skip.MatchString(line) {
			b.WriteString(line)
		}
	}
	return b.String()
}

// loadChinookMySQL runs the MySQL script in the database of dsn, one
// statement at a time (the driver runs one per call).
func loadChinookMySQL(t *testing.T, dsn string) {
	t.Helper()
	comments := regexp.MustCompile(`(?s)/\*.*?\*/`)
	var stmts []string
	for s := range strings.SplitSeq(chinookScript(t, "Chinook_MySql.sql", "USE "), ";\n") {
		if s = strings.TrimSpace(comments.ReplaceAllString(s, "")); s != "" {
			stmts = append(stmts, s)
		}
	}
	mysqltest.Exec(t, dsn, stmts...)
}

// needSlots fails the test, naming the setting, when the server cannot
// give every table its replication slot and walsender.
func needSlots(t *testing.T, url string, n int) {
	t.Helper()
	free := pgtest.QueryInt(t, url, `SELECT least(current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots),
		current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication))`)
	if free < int64(n) {
		t.Fatalf("the cdc example needs %d free replication slots and walsenders (one per table), and the test server has %d: raise max_replication_slots and max_wal_senders (ALTER SYSTEM SET …; restart), as .ci/run does", n, free)
	}
}

// dropSlotsOf drops the replication slots of url's database when the test
// ends, before the database goes (a slot keeps a database from being dropped).
func dropSlotsOf(t *testing.T, url string) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(30 * time.Second)
		for {
			pgtest.Exec(t, url, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
				WHERE database = current_database() AND NOT active`)
			if pgtest.QueryInt(t, url, "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()") == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("replication slots of the test database are still active after 30s")
				return
			}
			time.Sleep(200 * time.Millisecond) // a slot's walsender goes away on its own; nothing to poll but the catalog
		}
	})
}

// chinookDB changes a Chinook source, PostgreSQL or MySQL. SQL is written
// with PostgreSQL's names in brackets ([invoice_line]), which MySQL spells
// `InvoiceLine`.
type chinookDB struct {
	db    *sql.DB
	mysql bool
}

var bracketed = regexp.MustCompile(`\[(\w+)\]`)

func (c *chinookDB) sql(q string) string {
	return bracketed.ReplaceAllStringFunc(q, func(m string) string {
		name := m[1 : len(m)-1]
		if !c.mysql {
			return name
		}
		parts := strings.Split(name, "_")
		for i, p := range parts {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
		return "`" + strings.Join(parts, "") + "`"
	})
}

func (c *chinookDB) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	q = c.sql(fmt.Sprintf(q, args...))
	if _, err := c.db.ExecContext(context.Background(), q); err != nil {
		t.Fatalf("exec %s: %v", q, err)
	}
}

// pairs returns the first two columns of a query's rows (the second 0 when
// there is one).
func (c *chinookDB) pairs(t *testing.T, q string) [][2]int64 {
	t.Helper()
	q = c.sql(q)
	rows, err := c.db.QueryContext(context.Background(), q)
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out [][2]int64
	for rows.Next() {
		var p [2]int64
		dest := []any{&p[0], &p[1]}
		if err := rows.Scan(dest[:len(cols)]...); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (c *chinookDB) max(t *testing.T, table, col string) int64 {
	t.Helper()
	return c.pairs(t, fmt.Sprintf("SELECT coalesce(max([%s]), 0) FROM [%s]", col, table))[0][0]
}

// pick returns up to n distinct random elements of xs.
func pick[T any](r *mrand.Rand, xs []T, n int) []T {
	r.Shuffle(len(xs), func(i, j int) { xs[i], xs[j] = xs[j], xs[i] })
	return xs[:min(n, len(xs))]
}

// mutate makes random inserts, updates and deletes in every table,
// respecting the foreign keys.
func (c *chinookDB) mutate(t *testing.T, r *mrand.Rand) {
	t.Helper()
	ts := func() string { // a timestamp, with microseconds where the column keeps them
		s := time.Date(1950+r.IntN(75), time.Month(1+r.IntN(12)), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), 0, time.UTC).Format("2006-01-02 15:04:05")
		if !c.mysql {
			s += fmt.Sprintf(".%06d", r.IntN(1_000_000))
		}
		return s
	}
	money := func() string { return fmt.Sprintf("%d.%02d", r.IntN(100), r.IntN(100)) }

	// Inserts, parents first.
	artist, album, track := c.max(t, "artist", "artist_id")+1, c.max(t, "album", "album_id")+1, c.max(t, "track", "track_id")+1
	genre, media, playlist := c.max(t, "genre", "genre_id")+1, c.max(t, "media_type", "media_type_id")+1, c.max(t, "playlist", "playlist_id")+1
	employee, customer := c.max(t, "employee", "employee_id")+1, c.max(t, "customer", "customer_id")+1
	invoice, line := c.max(t, "invoice", "invoice_id")+1, c.max(t, "invoice_line", "invoice_line_id")+1
	c.exec(t, "INSERT INTO [artist] ([artist_id], [name]) VALUES (%d, 'Añejo & Ünïcode ✓ %d')", artist, r.IntN(1000))
	c.exec(t, "INSERT INTO [genre] ([genre_id], [name]) VALUES (%d, NULL)", genre)
	c.exec(t, "INSERT INTO [media_type] ([media_type_id], [name]) VALUES (%d, 'Vinyl')", media)
	c.exec(t, "INSERT INTO [album] ([album_id], [title], [artist_id]) VALUES (%d, 'It''s \"quoted\"', %d)", album, artist)
	c.exec(t, `INSERT INTO [track] ([track_id], [name], [album_id], [media_type_id], [genre_id], [composer], [milliseconds], [bytes], [unit_price])
		VALUES (%d, 'New track', %d, %d, %d, NULL, %d, %d, %s), (%d, 'Orphan track', NULL, 1, NULL, 'Nobody', 1, NULL, 0.00)`,
		track, album, media, genre, r.IntN(1_000_000), r.IntN(1<<30), money(), track+1)
	c.exec(t, "INSERT INTO [playlist] ([playlist_id], [name]) VALUES (%d, 'Mix')", playlist)
	c.exec(t, "INSERT INTO [playlist_track] ([playlist_id], [track_id]) VALUES (%d, %d), (%d, %d), (1, %d)", playlist, track, playlist, track+1, track)
	c.exec(t, `INSERT INTO [employee] ([employee_id], [last_name], [first_name], [title], [reports_to], [birth_date], [hire_date], [email])
		VALUES (%d, 'New', 'Hire', 'Intern', 1, '%s', '%s', 'new@chinookcorp.com')`, employee, ts(), ts())
	c.exec(t, `INSERT INTO [customer] ([customer_id], [first_name], [last_name], [email], [support_rep_id], [country])
		VALUES (%d, 'Zoë', 'Ørsted', 'zoe@example.com', %d, 'Danmark')`, customer, employee)
	c.exec(t, `INSERT INTO [invoice] ([invoice_id], [customer_id], [invoice_date], [billing_city], [total]) VALUES (%d, %d, '%s', 'Aarhus', %s)`,
		invoice, customer, ts(), money())
	c.exec(t, `INSERT INTO [invoice_line] ([invoice_line_id], [invoice_id], [track_id], [unit_price], [quantity]) VALUES (%d, %d, %d, %s, %d), (%d, %d, %d, 0.99, 1)`,
		line, invoice, track, money(), 1+r.IntN(5), line+1, invoice, 1+r.IntN(100))

	// Updates of every column type in every table.
	ids := func(table, col string) []int64 {
		var out []int64
		for _, p := range c.pairs(t, fmt.Sprintf("SELECT [%s] FROM [%s]", col, table)) {
			out = append(out, p[0])
		}
		return out
	}
	for _, id := range pick(r, ids("track", "track_id"), 25) {
		c.exec(t, "UPDATE [track] SET [unit_price] = %s, [milliseconds] = %d, [composer] = NULL WHERE [track_id] = %d", money(), r.IntN(1_000_000), id)
	}
	for _, id := range pick(r, ids("artist", "artist_id"), 5) {
		c.exec(t, "UPDATE [artist] SET [name] = 'Renamed %d ♫' WHERE [artist_id] = %d", r.IntN(1000), id)
	}
	for _, id := range pick(r, ids("album", "album_id"), 5) {
		c.exec(t, "UPDATE [album] SET [title] = '' WHERE [album_id] = %d", id)
	}
	for _, id := range pick(r, ids("customer", "customer_id"), 5) {
		c.exec(t, "UPDATE [customer] SET [company] = NULL, [phone] = '+49 30 %d' WHERE [customer_id] = %d", r.IntN(1_000_000), id)
	}
	for _, id := range pick(r, ids("employee", "employee_id"), 3) {
		c.exec(t, "UPDATE [employee] SET [birth_date] = '%s', [hire_date] = NULL WHERE [employee_id] = %d", ts(), id)
	}
	for _, id := range pick(r, ids("invoice", "invoice_id"), 10) {
		c.exec(t, "UPDATE [invoice] SET [invoice_date] = '%s', [total] = %s, [billing_state] = NULL WHERE [invoice_id] = %d", ts(), money(), id)
	}
	for _, id := range pick(r, ids("invoice_line", "invoice_line_id"), 10) {
		c.exec(t, "UPDATE [invoice_line] SET [quantity] = %d WHERE [invoice_line_id] = %d", 1+r.IntN(9), id)
	}
	c.exec(t, "UPDATE [genre] SET [name] = 'Genre %d' WHERE [genre_id] = %d", r.IntN(1000), 1+r.IntN(25))
	c.exec(t, "UPDATE [media_type] SET [name] = NULL WHERE [media_type_id] = %d", 1+r.IntN(5))
	c.exec(t, "UPDATE [playlist] SET [name] = 'Playlist %d' WHERE [playlist_id] = %d", r.IntN(1000), 1+r.IntN(18))

	// Deletes, children first: invoice lines, playlist entries (composite
	// key), a whole invoice with its lines, artists without albums.
	for _, id := range pick(r, ids("invoice_line", "invoice_line_id"), 8) {
		c.exec(t, "DELETE FROM [invoice_line] WHERE [invoice_line_id] = %d", id)
	}
	for _, p := range pick(r, c.pairs(t, "SELECT [playlist_id], [track_id] FROM [playlist_track]"), 8) {
		c.exec(t, "DELETE FROM [playlist_track] WHERE [playlist_id] = %d AND [track_id] = %d", p[0], p[1])
	}
	victim := pick(r, ids("invoice", "invoice_id"), 1)[0]
	c.exec(t, "DELETE FROM [invoice_line] WHERE [invoice_id] = %d", victim)
	c.exec(t, "DELETE FROM [invoice] WHERE [invoice_id] = %d", victim)
	for _, p := range pick(r, c.pairs(t, "SELECT [artist_id] FROM [artist] a WHERE NOT EXISTS (SELECT 1 FROM [album] b WHERE b.[artist_id] = a.[artist_id])"), 3) {
		c.exec(t, "DELETE FROM [artist] WHERE [artist_id] = %d", p[0])
	}
}
