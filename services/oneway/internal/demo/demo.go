// Package demo is oneway's self-contained demo, what `oneway up` runs when
// it is given no config: a System of Record (a SQLite file with an
// invoices table, seeded once and then changed continuously by a small
// simulator) kept in step with a target (another SQLite file that a person
// may edit, to watch the pipeline repair it), in staged mode, under one data
// directory. Nothing but the oneway binary is needed.
//
// The demo is an ordinary pipeline: Prepare writes its config file, and
// `oneway up` loads and runs it like any other. What the demo adds is the
// seeded SoR, the simulator, a direct comparison of both files for the
// status page, and Tamper (`oneway demo tamper`) to edit the target.
package demo

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// Files and names of the demo under its directory (<data-dir>/demo).
const (
	ConfigFile = "oneway.yaml"
	SourceFile = "sor.db"
	TargetFile = "target.db"
	// Pipeline and TargetName name the demo pipeline and its one target.
	Pipeline   = "demo"
	TargetName = "target"
	// Table is the demo's table, in both files.
	Table = "invoices"
	// SeedRows is how many invoices the SoR starts with.
	SeedRows = 2000
)

// columns are the owned columns, in the order the pipeline lists them.
var columns = []string{"id", "customer", "amount", "status", "updated_at"}

// Demo is one prepared demo directory.
type Demo struct {
	// Dir holds the demo's files; ConfigPath, SourcePath and TargetPath
	// are its config, SoR and target (absolute paths).
	Dir, ConfigPath, SourcePath, TargetPath string
	// Seeded is true when Prepare created and seeded the SoR (a first
	// start); false when it found one (a restart, which resumes).
	Seeded bool
}

// Prepare makes the demo directory under dataDir ready to run: it writes
// the config (at every start: it is generated, and names absolute paths),
// and creates and seeds the SoR and the target table when they do not exist
// yet. A restart finds them and changes nothing but the config. Not safe to
// call concurrently on one directory.
func Prepare(ctx context.Context, dataDir string) (*Demo, error) {
	dir, err := filepath.Abs(filepath.Join(dataDir, "demo"))
	if err != nil {
		return nil, fmt.Errorf("demo directory under %s: %w", dataDir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create the demo directory: %w", err)
	}
	d := &Demo{
		Dir:        dir,
		ConfigPath: filepath.Join(dir, ConfigFile),
		SourcePath: filepath.Join(dir, SourceFile),
		TargetPath: filepath.Join(dir, TargetFile),
	}
	if err := writeFileAtomic(d.ConfigPath, []byte(d.Config())); err != nil {
		return nil, fmt.Errorf("write the demo config: %w", err)
	}
	if d.Seeded, err = seedSource(ctx, d.SourcePath); err != nil {
		return nil, err
	}
	if err := createTarget(ctx, d.TargetPath); err != nil {
		return nil, err
	}
	return d, nil
}

// Config is the demo pipeline's config file. The SoR is read with the
// synthetic pattern (full reads compared by hash: it sees deletes) every
// second; the target is read back the same way every 2 s, so hand edits,
// deletions and rows added by hand are seen and repaired (recreate_deleted,
// orphans: delete).
func (d *Demo) Config() string {
	return `# The oneway demo: what ` + "`oneway up`" + ` runs when given no config.
# Written by oneway at every start of the demo; to change it, copy it and
# run ` + "`oneway up --config <your copy>`" + `.
pipeline: ` + Pipeline + `
mode: staged
source:
  kind: sqlite
  url: ` + yamlString(d.SourcePath) + `
  table: ` + Table + `
  key: [id]
  columns: [` + strings.Join(columns, ", ") + `]
  capture:
    pattern: synthetic
    poll_interval: 1s
stage:
  scan_interval: 30s
targets:
  - name: ` + TargetName + `
    kind: sqlite
    url: ` + yamlString(d.TargetPath) + `
    table: ` + Table + `
    delete: hard
    orphans: delete
    recreate_deleted: true
    breaker:
      max_delete_share: 0.2
      window: 1m
    readback:
      pattern: synthetic
      poll_interval: 2s
`
}

// yamlString quotes s for a YAML scalar that the config loader does not
// expand ($ doubled).
func yamlString(s string) string {
	return strconv.Quote(strings.ReplaceAll(s, "$", "$$"))
}

// writeFileAtomic writes data to path through a temporary file and a rename.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Banner is what `oneway up` prints when it starts the demo: what runs,
// where its files are, the status page, and how to edit the target.
func (d *Demo) Banner(w io.Writer, statusURL string) {
	rel := func(p string) string {
		if wd, err := os.Getwd(); err == nil {
			if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
				return "./" + r
			}
		}
		return p
	}
	start := "Resuming the demo where it stopped (nothing is seeded again)."
	if d.Seeded {
		start = fmt.Sprintf("A first start: the SoR was just seeded with %d invoices.", SeedRows)
	}
	dataDir := filepath.Dir(d.Dir)
	fmt.Fprintf(w, `
  oneway demo — no config given, so oneway runs its built-in demo.
  %s

    System of Record  %s   (table %s, changed every few seconds by a simulator)
    target            %s   (kept in step in staged mode; edit it and watch it repaired)
    config            %s
    NATS and stage    embedded, under %s

  Status page: %s
  Edit the target:  oneway demo tamper --data-dir %s     (deletes and changes a few rows)
              or:   sqlite3 %s "DELETE FROM %s WHERE id = 1"
  Ctrl-C stops; running it again resumes. Delete %s to start afresh.

`, start, rel(d.SourcePath), Table, rel(d.TargetPath), rel(d.ConfigPath), rel(dataDir),
		statusURL, rel(dataDir), rel(d.TargetPath), Table, rel(dataDir))
}

// open opens a SQLite file for the demo's own use: WAL (so the pipeline
// reads while the simulator writes), waiting for locks up to 10 s.
func open(path string, create bool) (*sql.DB, error) {
	if !create {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Set("_txlock", "immediate")
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	db, err := sql.Open("sqlite", "file:"+r.Replace(filepath.ToSlash(path))+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

const sourceDDL = `CREATE TABLE invoices (
  id INTEGER PRIMARY KEY,
  customer TEXT NOT NULL,
  amount REAL NOT NULL,
  status TEXT NOT NULL,
  updated_at TEXT NOT NULL
)`

// targetDDL has one column more than the SoR: notes belongs to the target,
// and oneway never writes it.
const targetDDL = `CREATE TABLE invoices (
  id INTEGER PRIMARY KEY,
  customer TEXT,
  amount REAL,
  status TEXT,
  updated_at TEXT,
  notes TEXT
)`

var (
	customers = []string{
		"Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries", "Wayne Enterprises",
		"Müller & Söhne GmbH", "Société Générale de Café", "Ørsted Møbler", "東京商事", "Zażółć Sp. z o.o.",
		"O'Brien Ltd", "Vandelay Industries", "Soylent", "Tyrell", "Cyberdyne", "Wonka", "Gringotts", "Aperture",
	}
	statuses = []string{"draft", "sent", "paid", "overdue"}
)

// timestamp renders t as the demo stores times: UTC, ISO 8601, milliseconds.
func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// amount is a random amount in cents, as a number with two decimals.
func amount(r *rand.Rand) float64 { return float64(r.IntN(500_000)+100) / 100 }

// seedSource creates and fills the SoR's table unless it exists, in one
// transaction (a crash leaves no half-seeded table). It reports whether it
// seeded.
func seedSource(ctx context.Context, path string) (bool, error) {
	db, err := open(path, true)
	if err != nil {
		return false, fmt.Errorf("demo SoR: %w", err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("demo SoR %s: begin: %w", path, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?", Table).Scan(&n); err != nil {
		return false, fmt.Errorf("demo SoR %s: %w", path, err)
	}
	if n > 0 {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, sourceDDL); err != nil {
		return false, fmt.Errorf("demo SoR %s: create table: %w", path, err)
	}
	ins, err := tx.PrepareContext(ctx, "INSERT INTO invoices (id, customer, amount, status, updated_at) VALUES (?, ?, ?, ?, ?)")
	if err != nil {
		return false, fmt.Errorf("demo SoR %s: %w", path, err)
	}
	defer ins.Close()
	r := rand.New(rand.NewPCG(1, 2))
	start := time.Now().Add(-30 * 24 * time.Hour)
	for i := 1; i <= SeedRows; i++ {
		at := start.Add(time.Duration(i) * 20 * time.Minute)
		if _, err := ins.ExecContext(ctx, i, customers[r.IntN(len(customers))], amount(r), statuses[r.IntN(len(statuses))], timestamp(at)); err != nil {
			return false, fmt.Errorf("demo SoR %s: seed row %d: %w", path, i, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("demo SoR %s: commit the seed: %w", path, err)
	}
	return true, nil
}

// createTarget creates the target's table (with its own notes column)
// unless it exists.
func createTarget(ctx context.Context, path string) error {
	db, err := open(path, true)
	if err != nil {
		return fmt.Errorf("demo target: %w", err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?", Table).Scan(&n); err != nil {
		return fmt.Errorf("demo target %s: %w", path, err)
	}
	if n > 0 {
		return nil
	}
	if _, err := db.ExecContext(ctx, targetDDL); err != nil {
		return fmt.Errorf("demo target %s: create table: %w", path, err)
	}
	return nil
}

// Comparison is the two files compared directly, by key: every owned
// column equal counts as in step.
type Comparison struct {
	SourceRows int64
	TargetRows int64
	// OutOfStep counts keys missing from the target, extra in it, or with
	// any owned value different.
	OutOfStep int64
}

// Compare reads both files in one read transaction of the SoR (the target
// attached). Cheap at the demo's size; safe to call concurrently.
func (d *Demo) Compare(ctx context.Context) (Comparison, error) {
	db, err := open(d.SourcePath, false)
	if err != nil {
		return Comparison{}, fmt.Errorf("compare the demo: %w", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return Comparison{}, fmt.Errorf("compare the demo: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "ATTACH DATABASE ? AS tgt", d.TargetPath); err != nil {
		return Comparison{}, fmt.Errorf("compare the demo: attach %s: %w", d.TargetPath, err)
	}
	cols := strings.Join(columns, ", ")
	q := `SELECT
  (SELECT count(*) FROM main.invoices),
  (SELECT count(*) FROM tgt.invoices),
  (SELECT count(DISTINCT id) FROM (
     SELECT * FROM (SELECT ` + cols + ` FROM main.invoices EXCEPT SELECT ` + cols + ` FROM tgt.invoices)
     UNION ALL
     SELECT * FROM (SELECT ` + cols + ` FROM tgt.invoices EXCEPT SELECT ` + cols + ` FROM main.invoices)))`
	var c Comparison
	if err := conn.QueryRowContext(ctx, q).Scan(&c.SourceRows, &c.TargetRows, &c.OutOfStep); err != nil {
		return Comparison{}, fmt.Errorf("compare the demo: %w", err)
	}
	return c, nil
}

// Tampered lists what Tamper did to the target.
type Tampered struct {
	Deleted, Changed []int64
}

// Tamper edits the target as a person might: it deletes n random rows and
// changes the customer of n others. The pipeline, when running, repairs
// both within seconds. The ids are returned.
func Tamper(ctx context.Context, dataDir string, n int) (Tampered, error) {
	path, err := filepath.Abs(filepath.Join(dataDir, "demo", TargetFile))
	if err != nil {
		return Tampered{}, err
	}
	db, err := open(path, false)
	if err != nil {
		return Tampered{}, fmt.Errorf("tamper with the demo target (is the demo set up under %s?): %w", dataDir, err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return Tampered{}, fmt.Errorf("tamper with %s: %w", path, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	ids, err := randomIDs(ctx, tx, 2*n)
	if err != nil {
		return Tampered{}, fmt.Errorf("tamper with %s: %w", path, err)
	}
	if len(ids) == 0 {
		return Tampered{}, fmt.Errorf("tamper with %s: the target has no rows yet", path)
	}
	var t Tampered
	for i, id := range ids {
		if i%2 == 0 {
			if _, err := tx.ExecContext(ctx, "DELETE FROM invoices WHERE id = ?", id); err != nil {
				return Tampered{}, fmt.Errorf("tamper with %s: delete %d: %w", path, id, err)
			}
			t.Deleted = append(t.Deleted, id)
			continue
		}
		if _, err := tx.ExecContext(ctx, "UPDATE invoices SET customer = 'tampered by hand' WHERE id = ?", id); err != nil {
			return Tampered{}, fmt.Errorf("tamper with %s: update %d: %w", path, id, err)
		}
		t.Changed = append(t.Changed, id)
	}
	if err := tx.Commit(); err != nil {
		return Tampered{}, fmt.Errorf("tamper with %s: commit: %w", path, err)
	}
	return t, nil
}

func randomIDs(ctx context.Context, tx *sql.Tx, n int) ([]int64, error) {
	rows, err := tx.QueryContext(ctx, "SELECT id FROM invoices ORDER BY random() LIMIT ?", n)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}
