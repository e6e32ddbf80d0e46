package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/integration/testenv"
	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// Staged push end to end, with each target read back by the real
// read-back (a reader on the target, synthetic pattern, polling every
// readbackPoll): `oneway up` runs one per target that configures it, and
// TestStagedServicesKilled runs it as its own process (`reader run
// --readback`). Source deletes, which the watermark reader cannot see, are
// published on the source subject while the reader is stopped (it fences
// its subject), as a CDC reader would publish them.

// readbackPoll is the read-back's poll interval in these tests.
const readbackPoll = "200ms"

// invoiceColumns is the source layout as the reader publishes it.
var invoiceColumns = []*onewayv1.Column{
	{Name: "id", Type: "bigint", Key: true}, {Name: "customer", Type: "text"}, {Name: "amount", Type: "numeric(12,2)"},
	{Name: "status", Type: "text"}, {Name: "note", Type: "text"}, {Name: "updated_at", Type: "timestamp with time zone"},
}

const ownedColumns = "id::text, customer, amount::text, status, note, updated_at::text"

// stagedConfig writes a staged pipeline file for the invoices table;
// stageURL "" is the embedded stage. targets is the YAML list of targets.
func stagedConfig(t *testing.T, natsURL, sourceURL, stageURL, scanInterval, targets string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pipeline.yaml")
	body := fmt.Sprintf(`pipeline: invoices
mode: staged
nats:
  url: %q
stage:
  url: %q
  scan_interval: %s
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
%s`, natsURL, stageURL, scanInterval, sourceURL, targets)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// stagedTarget is a postgres target read back every poll (no read-back
// when poll is "").
func stagedTarget(name, url, poll, extra string) string {
	rb := ""
	if poll != "" {
		rb = "    readback:\n      pattern: synthetic\n      poll_interval: " + poll + "\n"
	}
	return fmt.Sprintf("  - name: %s\n    kind: postgres\n    url: %q\n    writer:\n      ack_wait: 5s\n%s%s", name, url, rb, extra)
}

func jetStream(t *testing.T, natsURL string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func deleteChange(key string) *onewayv1.Change {
	vals := make([][]byte, len(invoiceColumns))
	vals[0] = []byte(key)
	return &onewayv1.Change{Op: onewayv1.Op_OP_DELETE, Row: event.PackRow(vals)}
}

func publishBatch(t *testing.T, js jetstream.JetStream, subject string, b *onewayv1.Batch) {
	t.Helper()
	data, err := event.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), subject, data); err != nil {
		t.Errorf("publish to %s: %v", subject, err)
	}
}

// publishSourceDeletes publishes the deletes of keys on the source subject,
// as a CDC reader would (the reader must not be running).
func publishSourceDeletes(t *testing.T, js jetstream.JetStream, keys ...int) {
	t.Helper()
	b := &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: "invoices", Origin: "source",
		Pattern: onewayv1.CapturePattern_CAPTURE_PATTERN_CDC, Table: "public.invoices", Columns: invoiceColumns}
	for _, k := range keys {
		b.Changes = append(b.Changes, deleteChange(fmt.Sprint(k)))
	}
	publishBatch(t, js, bus.SourceSubject("invoices"), b)
}

func upSynced(t *testing.T, cfg, data string, wantCode int) testenv.Result {
	t.Helper()
	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != wantCode {
		t.Fatalf("oneway up: exit %d, want %d\n%s", r.Code, wantCode, r.Stderr)
	}
	return r
}

func dryRun(t *testing.T, cfg, data string, args ...string) string {
	t.Helper()
	r := testenv.Run(t, time.Minute, "oneway", append([]string{"diff", "--dry-run", "--config", cfg, "--data-dir", data, "--log-level", "warn"}, args...)...)
	if r.Code != 0 {
		t.Fatalf("oneway diff --dry-run: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

const targetDDL = `CREATE TABLE public.invoices (id bigint PRIMARY KEY, customer text, amount numeric(12,2),
  status text, note text, updated_at timestamptz, crm_notes text, deleted_at timestamptz)`

// Three targets, three policies. After a first sync, each target is edited
// by hand (a row deleted, an owned column changed, a target-only column
// changed, an orphan added) and the source deletes a row. The next sync
// repairs what the source owns, keeps what the target owns, and treats
// deletes and orphans per policy; nothing is written more than it changed.
func TestStagedPoliciesAndRepairs(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 200)
	dbs := map[string]*testenv.DB{}
	for _, name := range []string{"a", "b", "c"} {
		dbs[name] = testenv.Connect(t, pgtest.NewDatabase(t))
		dbs[name].Exec(t, targetDDL)
	}
	_, natsURL := bustest.StartJetStream(t)
	js := jetStream(t, natsURL)
	cfg := stagedConfig(t, natsURL, src.URL, "", "1h",
		stagedTarget("a", dbs["a"].URL, readbackPoll, "    delete: hard\n    orphans: keep\n    recreate_deleted: true\n")+
			stagedTarget("b", dbs["b"].URL, readbackPoll, "    delete: soft\n    soft_delete_column: deleted_at\n    orphans: delete\n")+
			stagedTarget("c", dbs["c"].URL, readbackPoll, "    delete: none\n    orphans: report\n    recreate_deleted: true\n"))
	data := t.TempDir()
	start := time.Now()
	upSynced(t, cfg, data, 0)
	t.Logf("first sync: %s", time.Since(start))
	mustVerify(t, cfg, 0)

	// Hand edits while nothing runs: the read-backs see them on the next
	// start, against the hash lists of their last cycles.
	for _, db := range dbs {
		db.Exec(t,
			"DELETE FROM public.invoices WHERE id = 5",
			"UPDATE public.invoices SET amount = 0.01, crm_notes = 'keep me' WHERE id = 6",
			"UPDATE public.invoices SET crm_notes = 'crm eight' WHERE id = 8",
			"INSERT INTO public.invoices (id, customer, crm_notes) VALUES (999999, 'orphan', 'hand-made')")
	}
	src.Exec(t, "DELETE FROM public.invoices WHERE id = 10")
	publishSourceDeletes(t, js, 10)

	start = time.Now()
	r := upSynced(t, cfg, data, 0)
	t.Logf("second sync: %s", time.Since(start))
	if !strings.Contains(r.Stderr, `"msg":"orphans reported"`) || !strings.Contains(r.Stderr, `"target":"c"`) {
		t.Fatalf("the orphan of target c was not reported:\n%s", r.Stderr)
	}

	row := func(db *testenv.DB, id int) string {
		return db.String(t, fmt.Sprintf("SELECT format('%%s|%%s|%%s|%%s', customer, amount, crm_notes, deleted_at IS NOT NULL) FROM public.invoices WHERE id = %d", id))
	}
	count := func(db *testenv.DB, id int) int64 {
		return db.Int(t, fmt.Sprintf("SELECT count(*) FROM public.invoices WHERE id = %d", id))
	}
	for name, db := range dbs {
		// An owned column edited by hand is repaired; the target's own
		// columns keep their values, also on the repaired row.
		if got := row(db, 6); got != "customer 6|1.50|keep me|f" {
			t.Errorf("target %s row 6 = %q, want repaired with crm_notes kept", name, got)
		}
		if got := row(db, 8); got != "customer 8|2.00|crm eight|f" {
			t.Errorf("target %s row 8 = %q", name, got)
		}
	}
	// A row deleted by hand: recreated where recreate_deleted is on.
	if count(dbs["a"], 5) != 1 || count(dbs["c"], 5) != 1 || count(dbs["b"], 5) != 0 {
		t.Errorf("row 5 (deleted by hand): a=%d b=%d c=%d, want 1 0 1", count(dbs["a"], 5), count(dbs["b"], 5), count(dbs["c"], 5))
	}
	// Orphans: kept (a), deleted by the delete policy (b: soft), reported
	// and kept (c).
	if got := row(dbs["a"], 999999); got != "orphan||hand-made|f" {
		t.Errorf("target a orphan = %q, want kept", got)
	}
	if got := row(dbs["b"], 999999); got != "orphan||hand-made|t" {
		t.Errorf("target b orphan = %q, want soft-deleted", got)
	}
	if got := row(dbs["c"], 999999); got != "orphan||hand-made|f" {
		t.Errorf("target c orphan = %q, want kept", got)
	}
	out := dryRun(t, cfg, data, "--target", "c")
	if !strings.Contains(out, "orphan_report=1") || !strings.Contains(out, "orphan_report keys (sample): 999999") {
		t.Errorf("dry run does not report target c's orphan:\n%s", out)
	}
	// A source delete: hard (a), soft (b), not at all (c).
	if count(dbs["a"], 10) != 0 {
		t.Error("target a kept row 10, deleted at the source (delete: hard)")
	}
	if got := row(dbs["b"], 10); got != "customer 10|2.50||t" {
		t.Errorf("target b row 10 = %q, want soft-deleted", got)
	}
	if got := row(dbs["c"], 10); got != "customer 10|2.50||f" {
		t.Errorf("target c row 10 = %q, want untouched (delete: none)", got)
	}
	for _, name := range []string{"a", "c"} {
		r := testenv.Run(t, time.Minute, "oneway", "verify", "--config", cfg, "--target", name, "--log-level", "warn")
		if r.Code != 0 {
			t.Errorf("verify %s: exit %d\n%s", name, r.Code, r.Stdout)
		}
	}
	// Each key was written as often as it changed: once by the load, and
	// once more for a repair (6), a recreation (5 in a and c) and a delete
	// (10 in a, soft in b). b's orphan got its first (soft-delete) write.
	want := map[string]string{"a": "5=2,6=2,10=2", "b": "6=2,10=2", "c": "5=2,6=2"}
	for name, db := range dbs {
		got := db.String(t, `SELECT coalesce(string_agg(id || '=' || oneway_applies, ',' ORDER BY id), '') FROM oneway.ledger_1 WHERE oneway_applies <> 1`)
		if got != want[name] {
			t.Errorf("target %s: keys written other than once: %q, want %q", name, got, want[name])
		}
	}
}

// A row that a push inserted and that is deleted by hand before the
// target's read-back reads the table again is recreated: the read-back's
// list never held it, so only the writer's applied report, which the
// read-back merges into its next cycle, tells it the row is gone.
func TestStagedRowDeletedBeforeReadBackSawIt(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 200)
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	dst.Exec(t, targetDDL)
	_, natsURL := bustest.StartJetStream(t)
	// A read-back every 4 s: the delete below lands long before its next
	// read.
	cfg := stagedConfig(t, natsURL, src.URL, "", "1h",
		stagedTarget("a", dst.URL, "4s", "    recreate_deleted: true\n"))
	testenv.Start(t, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--admin-addr", "off")
	testenv.WaitFor(t, time.Minute, func() error { return countIs(dst, 200) })
	for _, id := range []int{201, 202} {
		testenv.SeedInvoices(t, src, id, id)
		testenv.WaitFor(t, time.Minute, func() error { return countIs(dst, int64(id)) })
		dst.Exec(t, fmt.Sprintf("DELETE FROM public.invoices WHERE id = %d", id))
		if id == 201 {
			// 201 is recreated before 202 is pushed: 202's delete is
			// found by a later cycle, against a list of the loaded rows.
			testenv.WaitFor(t, time.Minute, func() error { return countIs(dst, 201) })
		}
	}
	testenv.WaitFor(t, time.Minute, func() error {
		if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE id IN (201, 202)"); n != 2 {
			return fmt.Errorf("%d of the rows 201 and 202 recreated", n)
		}
		return nil
	})
	mustVerify(t, cfg, 0)
}

// A target whose trigger trims a string never converges to the source's
// padded value: the differ pushes that version max_pushes_per_version
// times, then dead-letters the key naming the column, and pushes it no
// more; the other rows sync, and nothing loops.
func TestStagedTrimmingTargetDoesNotLoop(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 50)
	src.Exec(t, "UPDATE public.invoices SET note = '  padded  ' WHERE id = 3")
	dst.Exec(t, targetDDL,
		`CREATE FUNCTION trim_note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.note := btrim(NEW.note); RETURN NEW; END $$`,
		`CREATE TRIGGER trim_note BEFORE INSERT OR UPDATE ON public.invoices FOR EACH ROW EXECUTE FUNCTION trim_note()`)
	_, natsURL := bustest.StartJetStream(t)
	js := jetStream(t, natsURL)
	cfg := stagedConfig(t, natsURL, src.URL, "", "1h", stagedTarget("pg", dst.URL, readbackPoll, "    max_pushes_per_version: 3\n"))
	data := t.TempDir()

	r := upSynced(t, cfg, data, 1) // synced, except one dead letter
	if !strings.Contains(r.Stderr, "dead-lettered") {
		t.Fatalf("no dead letter reported:\n%s", r.Stderr)
	}
	letters := dlqList(t, cfg, "")
	if len(letters) != 1 || letters[0].key != "3" || !strings.Contains(letters[0].err, "still differs in note") {
		t.Fatalf("dead letters %+v, want key 3 naming note", letters)
	}
	if got := dst.String(t, "SELECT note FROM public.invoices WHERE id = 3"); got != "padded" {
		t.Fatalf("note = %q", got)
	}
	if got := dst.Int(t, "SELECT count(*) FROM public.invoices"); got != 50 {
		t.Fatalf("%d rows in the target, want 50", got)
	}
	// The trimmed row was written once: the later pushes met a row the
	// trigger makes equal, and wrote nothing.
	if got := dst.Int(t, "SELECT oneway_applies FROM oneway.ledger_1 WHERE id = 3"); got != 1 {
		t.Fatalf("key 3 applied %d times", got)
	}
	out := dryRun(t, cfg, data)
	if !strings.Contains(out, "stuck=1") || !strings.Contains(out, "stuck keys (sample): 3") {
		t.Fatalf("dry run does not show key 3 stuck:\n%s", out)
	}
	pushes := func() uint64 {
		st, err := js.Stream(context.Background(), bus.StreamName("invoices"))
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(bus.PushSubject("invoices", "pg")))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[bus.PushSubject("invoices", "pg")]
	}
	before := pushes()
	// Running again (a scan at start looks at every key) pushes nothing.
	upSynced(t, cfg, data, 1)
	if after := pushes(); after != before {
		t.Fatalf("%d more push messages after the key was reported", after-before)
	}
}

// A source that deletes half its rows trips the mass-delete breaker: the
// deletes wait (and `up --exit-when-synced` says so) until `oneway
// approve`, then they go through.
func TestStagedBreakerHoldsMassDelete(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 1000)
	_, natsURL := bustest.StartJetStream(t)
	js := jetStream(t, natsURL)
	cfg := stagedConfig(t, natsURL, src.URL, "", "1h", stagedTarget("pg", dst.URL, readbackPoll, ""))
	data := t.TempDir()
	upSynced(t, cfg, data, 0)

	keys := make([]int, 0, 500)
	for id := 1; id <= 500; id++ {
		keys = append(keys, id)
	}
	src.Exec(t, "DELETE FROM public.invoices WHERE id <= 500")
	publishSourceDeletes(t, js, keys...)
	r := upSynced(t, cfg, data, 1)
	if !strings.Contains(r.Stderr, "holds the deletes of target pg (500 of 1000 records)") {
		t.Fatalf("up did not name the held deletes:\n%s", r.Stderr)
	}
	if got := dst.Int(t, "SELECT count(*) FROM public.invoices"); got != 1000 {
		t.Fatalf("%d rows in the target while held, want 1000", got)
	}
	out := dryRun(t, cfg, data)
	if !strings.Contains(out, "delete=500") || !strings.Contains(out, "breaker: HELD") || !strings.Contains(out, "oneway approve --config") {
		t.Fatalf("dry run does not show the hold:\n%s", out)
	}

	ar := testenv.Run(t, time.Minute, "oneway", "approve", "--config", cfg, "--data-dir", data, "--target", "pg", "--by", "tester")
	if ar.Code != 0 || !strings.Contains(ar.Stdout, "approved by tester: 500 deletes of 1000 records") {
		t.Fatalf("approve: exit %d\n%s%s", ar.Code, ar.Stdout, ar.Stderr)
	}
	upSynced(t, cfg, data, 0)
	if got := dst.Int(t, "SELECT count(*) FROM public.invoices"); got != 500 {
		t.Fatalf("%d rows in the target after approval, want 500", got)
	}
	mustVerify(t, cfg, 0)
	if out := dryRun(t, cfg, data); !strings.Contains(out, "breaker: ok") {
		t.Fatalf("the hold was not released:\n%s", out)
	}
	ar = testenv.Run(t, time.Minute, "oneway", "approve", "--config", cfg, "--data-dir", data, "--target", "pg")
	if ar.Code != 1 || !strings.Contains(ar.Stderr, "has no held deletes") {
		t.Fatalf("approve without a hold: exit %d\n%s", ar.Code, ar.Stderr)
	}
}

// Reader, stager, differ and writer as separate processes on a PostgreSQL
// stage; the stager, the differ and the writer are each killed with
// SIGKILL mid-run and restarted, while the source changes and the target
// is read back. The run converges (verify 0), and no key was written more
// than it changed.
func TestStagedServicesKilled(t *testing.T) {
	t.Parallel() // a long test sharing no port, environment or cluster: runs beside the others
	const rows = 20000
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	stageURL := pgtest.NewDatabase(t)
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, rows)
	dst.Exec(t, targetDDL)
	_, natsURL := bustest.StartJetStream(t)
	cfg := stagedConfig(t, natsURL, src.URL, stageURL, "2s", stagedTarget("pg", dst.URL, "500ms", "    recreate_deleted: true\n"))
	count := func() int64 { return dst.Int(t, "SELECT count(*) FROM public.invoices") }
	atLeast := func(n int64) func() error {
		return func() error {
			if c := count(); c < n {
				return fmt.Errorf("target has %d rows, want at least %d", c, n)
			}
			return nil
		}
	}

	run := func(svc string, args ...string) *testenv.Proc {
		return testenv.Start(t, svc, append([]string{"run", "--config", cfg}, args...)...)
	}
	// The read-back runs all along, as its own process.
	readback := run("reader", "--readback", "pg")
	reader, stager, differ, writer := run("reader"), run("stager"), run("differ"), run("writer")
	start := time.Now()
	phase := func(what string) {
		t.Logf("%s after %s (%d rows)", what, time.Since(start).Round(time.Millisecond), count())
	}

	testenv.WaitFor(t, syncTimeout, atLeast(rows/5))
	phase("stager killed")
	stager.Kill()
	stager = run("stager")
	testenv.WaitFor(t, syncTimeout, atLeast(rows/2))
	phase("differ killed")
	differ.Kill()
	differ = run("differ")
	src.Exec(t, "UPDATE public.invoices SET status = 'paid', amount = amount + 1, updated_at = now() WHERE id % 20 = 3")
	testenv.WaitFor(t, syncTimeout, atLeast(rows*3/4))
	phase("writer killed")
	writer.Kill()
	writer = run("writer")

	verified := func() error {
		r := testenv.Run(t, time.Minute, "oneway", "verify", "--config", cfg, "--log-level", "warn")
		if r.Code != 0 {
			return fmt.Errorf("verify exit %d: %s", r.Code, strings.TrimSpace(r.Stdout))
		}
		return nil
	}
	testenv.WaitFor(t, syncTimeout, verified)
	phase("verified")

	// The read-back is killed too, and a row deleted by hand meanwhile:
	// the restarted read-back sees it gone (against its saved hash list),
	// and the row is recreated.
	readback.Kill()
	dst.Exec(t, "DELETE FROM public.invoices WHERE id = 7")
	readback = run("reader", "--readback", "pg")
	testenv.WaitFor(t, syncTimeout, func() error {
		if dst.Int(t, "SELECT count(*) FROM public.invoices WHERE id = 7") != 1 {
			return errors.New("row 7, deleted by hand, is not recreated yet")
		}
		return verified()
	})
	phase("row deleted by hand recreated")
	for _, p := range []*testenv.Proc{readback, reader, stager, differ, writer} {
		p.Stop(t, 30*time.Second)
	}
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE status = 'paid'"); n != rows/20 {
		t.Fatalf("%d paid rows, want %d", n, rows/20)
	}
	// Each key written once, or twice when the update came after its first
	// write or it was recreated (7): never more, and never twice for a key
	// not updated.
	if got := dst.Int(t, "SELECT count(*) FROM oneway.ledger_1 WHERE oneway_applies NOT BETWEEN 1 AND CASE WHEN id % 20 = 3 OR id = 7 THEN 2 ELSE 1 END"); got != 0 {
		t.Fatalf("%d keys were written more often than they changed", got)
	}
	if got := dst.Int(t, "SELECT count(*) FROM oneway.ledger_1"); got != rows {
		t.Fatalf("ledger has %d keys, want %d", got, rows)
	}
	letters := dlqList(t, cfg, "")
	if len(letters) != 0 {
		t.Fatalf("dead letters: %+v", letters)
	}
}

// stageState describes what a PostgreSQL stage (schema oneway_stage) holds
// of key: each side's record and the push log, for a failure message.
func stageState(db *testenv.DB, key string) string {
	rows, err := db.Conn.Query(context.Background(), `
SELECT 'record ' || s.side || ' version=' || r.version || ' changed=' || r.changed_version || ' deleted=' || r.deleted || ' at=' || r.staged_at
  FROM oneway_stage.records r JOIN oneway_stage.scopes s ON s.id = r.scope WHERE r.key = $1
UNION ALL
SELECT 'push ' || s.side || ' ' || row_to_json(p)::text
  FROM oneway_stage.pushes p JOIN oneway_stage.scopes s ON s.id = p.scope WHERE p.key = $1`, key)
	if err != nil {
		return fmt.Sprintf("(stage not readable: %v)", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Sprintf("(stage not readable: %v)", err)
	}
	return "[" + strings.Join(lines, "; ") + "]"
}
