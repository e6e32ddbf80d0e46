package integration

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// envelope is what the NATS and JSONL targets write per change.
type envelope struct {
	Op      string         `json:"op"`
	Key     string         `json:"key"`
	Fields  map[string]any `json:"fields"`
	Version int64          `json:"version"`
}

// One pipeline, four more target kinds: a SQLite file, a JSONL file and a
// NATS JetStream subject (the last two fenced by a side ledger), next to
// PostgreSQL. Each converges on the source's owned fields, after a load and
// after updates, with every key's last record at its newest state.
func TestSQLiteJSONLAndNATSTargets(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	ledger := pgtest.NewDatabase(t)
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 2000)
	_, natsURL := bustest.StartJetStream(t)
	dir := t.TempDir()
	sqlitePath, jsonlPath := filepath.Join(dir, "target.db"), filepath.Join(dir, "changes.jsonl")

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	out, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OUT", Subjects: []string{"out.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}

	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, fmt.Sprintf(`  - name: lite
    kind: sqlite
    url: %q
  - name: lines
    kind: jsonl
    url: %q
    ledger_url: %q
  - name: bus
    kind: nats
    url: %q
    ledger_url: %q
    nats: {subject: "out.invoices.{{.Key | token}}", jetstream: true}
`, sqlitePath, jsonlPath, ledger, natsURL, ledger))
	reader := testenv.Start(t, "reader", "run", "--config", cfg)
	writer := testenv.Start(t, "writer", "run", "--config", cfg)

	drained := func() error {
		for _, tg := range []string{"pg", "lite", "lines", "bus"} {
			c, err := js.Consumer(ctx, bus.StreamName("invoices"), bus.WriterConsumer("invoices", tg))
			if err != nil {
				return err
			}
			info, err := c.Info(ctx)
			if err != nil {
				return err
			}
			if n := info.NumPending + uint64(info.NumAckPending); n > 0 || info.Delivered.Stream == 0 {
				return fmt.Errorf("target %s: %d pending", tg, n)
			}
		}
		return nil
	}
	check := func(wantPaid int) {
		t.Helper()
		testenv.WaitFor(t, syncTimeout, func() error {
			// PostgreSQL shows the reader published everything; then every
			// target's consumer must have drained.
			if err := countIs(dst, 2000); err != nil {
				return err
			}
			if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE status = 'paid'"); n != int64(wantPaid) {
				return fmt.Errorf("postgres target has %d paid rows", n)
			}
			return drained()
		})
		// SQLite: the rows themselves.
		db, err := sql.Open("sqlite", sqlitePath)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var n, paid int
		if err := db.QueryRow(`SELECT count(*), count(*) FILTER (WHERE status = 'paid') FROM invoices`).Scan(&n, &paid); err != nil {
			t.Fatal(err)
		}
		if n != 2000 || paid != wantPaid {
			t.Fatalf("sqlite: %d rows, %d paid; want 2000, %d", n, paid, wantPaid)
		}
		var customer, amount string
		if err := db.QueryRow(`SELECT customer, amount FROM invoices WHERE id = 42`).Scan(&customer, &amount); err != nil {
			t.Fatal(err)
		}
		if customer != "customer 42" || amount != "10.50" {
			t.Fatalf("sqlite row 42 = %q, %q", customer, amount)
		}
		// JSONL: the last line of each key is its newest state.
		f, err := os.Open(jsonlPath)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		last := map[string]envelope{}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e envelope
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("jsonl line %q: %v", sc.Text(), err)
			}
			if prev, ok := last[e.Key]; ok && prev.Version >= e.Version {
				t.Fatalf("jsonl: key %s version %d after %d", e.Key, e.Version, prev.Version)
			}
			last[e.Key] = e
		}
		assertEnvelopes(t, "jsonl", last, wantPaid)
		// NATS: the last message of each key's subject.
		msgs := map[string]envelope{}
		info, err := out.Info(ctx, jetstream.WithSubjectFilter("out.>"))
		if err != nil {
			t.Fatal(err)
		}
		for subj := range info.State.Subjects {
			m, err := out.GetLastMsgForSubject(ctx, subj)
			if err != nil {
				t.Fatal(err)
			}
			var e envelope
			if err := json.Unmarshal(m.Data, &e); err != nil {
				t.Fatal(err)
			}
			msgs[e.Key] = e
		}
		assertEnvelopes(t, "nats", msgs, wantPaid)
	}
	check(0)
	src.Exec(t, "UPDATE public.invoices SET status = 'paid', updated_at = now() WHERE id <= 100")
	check(100)
	reader.Stop(t, 30*time.Second)
	writer.Stop(t, 30*time.Second)
	// verify reads every kind back: the tables, the file and the stream.
	report := mustVerify(t, cfg, 0).Stdout
	for _, tg := range []string{"pg", "lite", "lines", "bus"} {
		if !regexp.MustCompile(`target ` + tg + ` \([^)]+\): OK  source_rows=2000 target_rows=2000 `).MatchString(report) {
			t.Fatalf("verify does not compare target %s:\n%s", tg, report)
		}
	}
}

func assertEnvelopes(t *testing.T, what string, byKey map[string]envelope, wantPaid int) {
	t.Helper()
	if len(byKey) != 2000 {
		t.Fatalf("%s: %d keys, want 2000", what, len(byKey))
	}
	paid := 0
	for k, e := range byKey {
		if e.Op != "upsert" {
			t.Fatalf("%s: key %s last op %q", what, k, e.Op)
		}
		if e.Fields["status"] == "paid" {
			paid++
		}
	}
	if paid != wantPaid {
		t.Fatalf("%s: %d keys paid, want %d", what, paid, wantPaid)
	}
	if e := byKey["42"]; e.Fields["customer"] != "customer 42" || fmt.Sprint(e.Fields["amount"]) != "10.5" {
		t.Fatalf("%s: key 42 = %v", what, e.Fields)
	}
}
