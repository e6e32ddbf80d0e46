package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

const syncTimeout = 3 * time.Minute

// upArgs runs `oneway up` on cfg with an embedded NATS under dataDir.
func upArgs(cfg, dataDir string, extra ...string) []string {
	return append([]string{"up", "--config", cfg, "--data-dir", dataDir, "--log-format", "json"}, extra...)
}

func mustVerify(t *testing.T, cfg string, wantCode int) testenv.Result {
	t.Helper()
	r := testenv.Run(t, 2*time.Minute, "oneway", "verify", "--config", cfg, "--log-level", "warn")
	if r.Code != wantCode {
		t.Fatalf("oneway verify exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.Code, wantCode, r.Stdout, r.Stderr)
	}
	return r
}

func ledgerMaxApplies(t *testing.T, dst *testenv.DB) int64 {
	return dst.Int(t, "SELECT coalesce(max(oneway_applies), 0) FROM oneway.ledger_1")
}

// Snapshot, then incremental changes; target-only columns and orphans
// survive; verify tells equal from different.
func TestSnapshotThenIncremental(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 5000)
	dst.Exec(t, `CREATE TABLE public.invoices (id bigint PRIMARY KEY, customer text, amount numeric(12,2),
  status text, note text, updated_at timestamptz, crm_notes text)`,
		`INSERT INTO public.invoices (id, customer, crm_notes) VALUES (999999, 'orphan', 'hand-made'), (7, 'stale', 'crm seven')`)
	cfg := testenv.Config(t, "", src.URL, dst.URL, "")
	data := t.TempDir()

	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != 0 {
		t.Fatalf("first run: exit %d\n%s", r.Code, r.Stderr)
	}
	mustVerify(t, cfg, 0)
	if got := dst.String(t, "SELECT crm_notes FROM public.invoices WHERE id = 7"); got != "crm seven" {
		t.Fatalf("target-only column was overwritten: crm_notes = %q", got)
	}
	if got := dst.String(t, "SELECT customer FROM public.invoices WHERE id = 7"); got != "customer 7" {
		t.Fatalf("owned column not synced: customer = %q", got)
	}
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE id = 999999 AND crm_notes = 'hand-made'"); n != 1 {
		t.Fatal("orphan row was touched")
	}

	src.Exec(t,
		"UPDATE public.invoices SET status = 'paid', amount = amount + 1, updated_at = now() WHERE id % 5 = 1",
		"UPDATE public.invoices SET note = NULL, updated_at = now() WHERE id BETWEEN 10 AND 20")
	testenv.SeedInvoices(t, src, 5001, 6000)
	r = testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != 0 {
		t.Fatalf("second run: exit %d\n%s", r.Code, r.Stderr)
	}
	mustVerify(t, cfg, 0)
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE status = 'paid'"); n != 1000 {
		t.Fatalf("%d paid invoices in the target, want 1000", n)
	}
	if got := dst.String(t, "SELECT crm_notes FROM public.invoices WHERE id = 7"); got != "crm seven" {
		t.Fatalf("target-only column changed by an update: %q", got)
	}
	// Each updated key was written twice (load + update), no key more.
	if got := ledgerMaxApplies(t, dst); got != 2 {
		t.Fatalf("max applies = %d, want 2", got)
	}

	dst.Exec(t, "UPDATE public.invoices SET amount = 0.01 WHERE id = 42")
	out := mustVerify(t, cfg, 1)
	if !strings.Contains(out.Stdout, "different=1") || !strings.Contains(out.Stdout, "42") {
		t.Fatalf("verify did not report key 42 as different:\n%s", out.Stdout)
	}
}

// A transaction that commits after a later row was read is not skipped
// (RELIABILITY row 17).
func TestLateCommitNotSkipped(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 100)
	cfg := testenv.Config(t, "", src.URL, dst.URL, "")
	up := testenv.Start(t, "oneway", upArgs(cfg, t.TempDir(), "--log-level", "debug")...)
	testenv.WaitFor(t, syncTimeout, func() error { return countIs(dst, 100) })

	// T1 starts (its now() is fixed here), writes a row and stays open.
	ctx := context.Background()
	late := testenv.Connect(t, src.URL)
	tx, err := late.Conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO public.invoices (id, customer) VALUES (1001, 'late')"); err != nil {
		t.Fatal(err)
	}
	// T2 writes a later row and commits.
	src.Exec(t, "INSERT INTO public.invoices (id, customer) VALUES (1002, 'early')")
	// Let the reader poll several times while T1 is open: with a naive
	// watermark it would read 1002 and move past T1's timestamp.
	polls := func() int { return strings.Count(up.Output(), `"msg":"watermark poll"`) }
	before := polls()
	testenv.WaitFor(t, time.Minute, func() error {
		if polls() < before+3 {
			return fmt.Errorf("reader polled %d times since T2 committed", polls()-before)
		}
		return nil
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, time.Minute, func() error { return countIs(dst, 102) })
	if got := dst.String(t, "SELECT customer FROM public.invoices WHERE id = 1001"); got != "late" {
		t.Fatalf("late row = %q", got)
	}
}

func countIs(d *testenv.DB, want int64) error {
	var n int64
	if err := d.Conn.QueryRow(context.Background(), "SELECT count(*) FROM public.invoices").Scan(&n); err != nil {
		return err
	}
	if n != want {
		return fmt.Errorf("target has %d rows, want %d", n, want)
	}
	return nil
}

// The reader and the writer, as separate processes, are each killed with
// SIGKILL mid-stream and restarted: nothing is lost, nothing applied twice.
func TestReaderAndWriterKilledMidStream(t *testing.T) {
	const rows = 60000
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, rows)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	streamMsgs := func() uint64 {
		st, err := js.Stream(context.Background(), bus.StreamName("invoices"))
		if err != nil {
			return 0
		}
		info, err := st.Info(context.Background())
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}

	writer := testenv.Start(t, "writer", "run", "--config", cfg)
	reader := testenv.Start(t, "reader", "run", "--config", cfg)
	testenv.WaitFor(t, time.Minute, func() error {
		if n := streamMsgs(); n < 20 {
			return fmt.Errorf("%d messages published", n)
		}
		return nil
	})
	reader.Kill()
	reader = testenv.Start(t, "reader", "run", "--config", cfg)
	testenv.WaitFor(t, time.Minute, func() error {
		var n int64
		_ = dst.Conn.QueryRow(context.Background(), "SELECT count(*) FROM public.invoices").Scan(&n)
		if n < rows/4 {
			return fmt.Errorf("target has %d rows", n)
		}
		return nil
	})
	writer.Kill()
	src.Exec(t, "UPDATE public.invoices SET status = 'paid', updated_at = now() WHERE id % 10 = 3")
	writer = testenv.Start(t, "writer", "run", "--config", cfg)
	testenv.WaitFor(t, syncTimeout, func() error {
		n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE status = 'paid'")
		if n != rows/10 {
			return fmt.Errorf("%d paid rows in the target", n)
		}
		return countIs(dst, rows)
	})
	reader.Stop(t, 30*time.Second)
	writer.Stop(t, 30*time.Second)
	mustVerify(t, cfg, 0)
	// No key was written more often than it had distinct states: once, or
	// twice for updated keys (once when the update overtook the snapshot).
	if got := dst.Int(t, "SELECT count(*) FROM oneway.ledger_1 WHERE oneway_applies NOT BETWEEN 1 AND CASE WHEN id % 10 = 3 THEN 2 ELSE 1 END"); got != 0 {
		rows, _ := dst.Conn.Query(context.Background(), `SELECT id % 10 = 3, oneway_applies, count(*), min(id), max(id) FROM oneway.ledger_1 GROUP BY 1, 2 ORDER BY 1, 2`)
		for rows.Next() {
			var upd bool
			var applies, n, lo, hi int64
			_ = rows.Scan(&upd, &applies, &n, &lo, &hi)
			t.Logf("updated=%v applies=%d keys=%d ids %d..%d", upd, applies, n, lo, hi)
		}
		rows.Close()
		t.Fatalf("%d keys were applied a wrong number of times", got)
	}
}

// SIGKILL of `oneway up` at a random moment of a load, then a restart:
// verify passes and the ledger shows no change applied twice.
func TestKillUpDuringLoad(t *testing.T) {
	const rows = 150000
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, rows)
	cfg := testenv.Config(t, "", src.URL, dst.URL, "")
	data := t.TempDir()
	for round := 0; round < 2; round++ {
		up := testenv.Start(t, "oneway", upArgs(cfg, data)...)
		// Kill once some rows have landed, after a random extra delay.
		testenv.WaitFor(t, time.Minute, func() error {
			var n int64
			_ = dst.Conn.QueryRow(context.Background(), "SELECT count(*) FROM public.invoices").Scan(&n)
			if n == 0 {
				return fmt.Errorf("nothing applied yet")
			}
			return nil
		})
		time.Sleep(time.Duration(rand.IntN(800)) * time.Millisecond) // a random kill point, not synchronisation
		up.Kill()
	}
	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != 0 {
		t.Fatalf("restart: exit %d\n%s", r.Code, r.Stderr)
	}
	mustVerify(t, cfg, 0)
	if got := ledgerMaxApplies(t, dst); got != 1 {
		t.Fatalf("a change was applied %d times", got)
	}
	if got := dst.Int(t, "SELECT count(*) FROM oneway.ledger_1"); got != rows {
		t.Fatalf("ledger has %d keys, want %d", got, rows)
	}
}

// Replaying the whole stream (a recreated consumer) changes nothing: every
// change is older than or equal to what was applied.
func TestReplayChangesNothing(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 3000)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	reader := testenv.Start(t, "reader", "run", "--config", cfg)
	writer := testenv.Start(t, "writer", "run", "--config", cfg)
	testenv.WaitFor(t, syncTimeout, func() error { return countIs(dst, 3000) })
	src.Exec(t, "UPDATE public.invoices SET customer = 'v2', updated_at = now() WHERE id <= 100")
	testenv.WaitFor(t, time.Minute, func() error {
		if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE customer = 'v2'"); n != 100 {
			return fmt.Errorf("%d rows at v2", n)
		}
		return nil
	})
	reader.Stop(t, 30*time.Second)
	writer.Stop(t, 30*time.Second)
	before := dst.Int(t, "SELECT sum(oneway_applies) FROM oneway.ledger_1")

	// An operator deletes the writer's consumer: it is recreated from the
	// config and redelivers the whole stream, snapshot included.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if err := js.DeleteConsumer(context.Background(), bus.StreamName("invoices"), bus.WriterConsumer("invoices", "pg")); err != nil {
		t.Fatal(err)
	}
	writer = testenv.Start(t, "writer", "run", "--config", cfg)
	testenv.WaitFor(t, time.Minute, func() error {
		c, err := js.Consumer(context.Background(), bus.StreamName("invoices"), bus.WriterConsumer("invoices", "pg"))
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending+uint64(info.NumAckPending) > 0 || info.Delivered.Consumer == 0 {
			return fmt.Errorf("replay pending %d", info.NumPending+uint64(info.NumAckPending))
		}
		return nil
	})
	writer.Stop(t, 30*time.Second)
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE customer = 'v2'"); n != 100 {
		t.Fatalf("replay regressed rows: %d at v2, want 100", n)
	}
	if after := dst.Int(t, "SELECT sum(oneway_applies) FROM oneway.ledger_1"); after != before {
		t.Fatalf("replay applied %d changes again", after-before)
	}
	mustVerify(t, cfg, 0)
}

// A record the target rejects is dead-lettered with its key and cause; the
// others arrive; `up --exit-when-synced` reports it with a non-zero exit.
func TestRejectedRecordIsDeadLettered(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 2000)
	src.Exec(t, "UPDATE public.invoices SET amount = -5 WHERE id = 1234")
	dst.Exec(t, `CREATE TABLE public.invoices (id bigint PRIMARY KEY, customer text, amount numeric(12,2) CHECK (amount >= 0),
  status text, note text, updated_at timestamptz)`)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, t.TempDir(), "--exit-when-synced")...)
	if r.Code != 1 || !strings.Contains(r.Stderr, "dead-lettered") {
		t.Fatalf("exit %d, want 1 naming dead letters\n%s", r.Code, r.Stderr)
	}
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices"); n != 1999 {
		t.Fatalf("target has %d rows, want 1999", n)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), bus.StreamName("invoices"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetLastMsgForSubject(context.Background(), bus.DLQSubject("invoices", "pg"))
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	if got := msg.Header.Get(bus.HeaderKey); got != "1234" {
		t.Fatalf("dead letter key = %q, want 1234", got)
	}
	if cause := msg.Header.Get(bus.HeaderError); !strings.Contains(cause, "check constraint") || !strings.Contains(cause, "invoices") {
		t.Fatalf("dead letter cause = %q", cause)
	}
	if got := msg.Header.Get(bus.HeaderPipeline); got != "invoices" {
		t.Fatalf("dead letter pipeline = %q", got)
	}
}

// A bad config exits 2 naming the file, line and field.
func TestBadConfigNamesItsError(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, body, want string
	}{
		{"unknown key", "pipeline: p\nsource:\n  kind: postgres\n  url: x\n  tabel: t\n", "tabel"},
		{"missing key columns", "pipeline: p\nsource:\n  kind: postgres\n  url: postgres://h/db\n  table: t\n  capture: {column: c}\ntargets:\n  - {name: t, kind: postgres, url: postgres://h/db}\n", "source.key"},
		{"wrong type", "pipeline: p\nsource:\n  kind: postgres\n  url: postgres://h/db\n  table: t\n  key: [id]\n  capture: {column: c, batch_size: many}\ntargets:\n  - {name: t, kind: postgres, url: postgres://h/db}\n", "batch_size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".yaml")
			writeFile(t, path, tt.body)
			for _, args := range [][]string{{"config", "validate", "--config", path}, {"up", "--config", path}} {
				r := testenv.Run(t, time.Minute, "oneway", args...)
				if r.Code != 2 {
					t.Fatalf("oneway %s: exit %d, want 2\n%s", args[0], r.Code, r.Stderr)
				}
				if !strings.Contains(r.Stderr, filepath.Base(path)+":") || !strings.Contains(r.Stderr, tt.want) {
					t.Fatalf("oneway %s: error does not name file, line and %q:\n%s", args[0], tt.want, r.Stderr)
				}
			}
		})
	}
}
