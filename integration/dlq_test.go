package integration

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
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

// dlqEntry is one row of `oneway dlq list`.
type dlqEntry struct {
	seq, orig uint64
	target    string
	key       string
	err       string
}

// dlqCmd runs `oneway dlq VERB --config cfg ARGS...`; dataDir is passed as
// --data-dir when not empty (embedded NATS).
func dlqCmd(t *testing.T, cfg, dataDir, verb string, args ...string) testenv.Result {
	t.Helper()
	a := append([]string{"dlq", verb, "--config", cfg, "--log-level", "warn"}, args...)
	if dataDir != "" {
		a = append(a, "--data-dir", dataDir)
	}
	return testenv.Run(t, 2*time.Minute, "oneway", a...)
}

func mustDLQ(t *testing.T, cfg, dataDir, verb string, args ...string) string {
	t.Helper()
	r := dlqCmd(t, cfg, dataDir, verb, args...)
	if r.Code != 0 {
		t.Fatalf("oneway dlq %s %v: exit %d\nstdout:\n%s\nstderr:\n%s", verb, args, r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

var dlqRow = regexp.MustCompile(`^(\d+)\s+(\S+)\s+(\S+)\s+(\d+|-)\s+\S+\s+\S+\s+(.*)$`)

// dlqList runs `dlq list` and parses its rows; it checks the per-target
// total against them.
func dlqList(t *testing.T, cfg, dataDir string) []dlqEntry {
	t.Helper()
	out := mustDLQ(t, cfg, dataDir, "list")
	var rows []dlqEntry
	for _, line := range strings.Split(out, "\n") {
		m := dlqRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		seq, _ := strconv.ParseUint(m[1], 10, 64)
		orig, _ := strconv.ParseUint(m[4], 10, 64)
		rows = append(rows, dlqEntry{seq: seq, target: m[2], key: m[3], orig: orig, err: m[5]})
	}
	if want := fmt.Sprintf("target pg: %d dead letter(s)", len(rows)); !strings.Contains(out, want) {
		t.Fatalf("dlq list: no %q line:\n%s", want, out)
	}
	if len(rows) == 0 && !strings.Contains(out, "no dead letters") {
		t.Fatalf("dlq list: unexpected output:\n%s", out)
	}
	return rows
}

// dlqSetup makes a source of 2,000 invoices where the given keys have a
// negative amount, and a target that rejects negative amounts.
func dlqSetup(t *testing.T, badKeys ...int) (src, dst *testenv.DB) {
	t.Helper()
	src = testenv.Connect(t, pgtest.NewDatabase(t))
	dst = testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 2000)
	for _, k := range badKeys {
		src.Exec(t, fmt.Sprintf("UPDATE public.invoices SET amount = -5 WHERE id = %d", k))
	}
	dst.Exec(t, `CREATE TABLE public.invoices (id bigint PRIMARY KEY, customer text, amount numeric(12,2) CHECK (amount >= 0),
  status text, note text, updated_at timestamptz)`)
	return src, dst
}

func upWithDeadLetters(t *testing.T, cfg, dataDir string) {
	t.Helper()
	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, dataDir, "--exit-when-synced")...)
	if r.Code != 1 || !strings.Contains(r.Stderr, "dead-lettered") {
		t.Fatalf("oneway up: exit %d, want 1 naming dead letters\n%s", r.Code, r.Stderr)
	}
}

// A rejected change is listed with its key and cause; a retry while the
// target still rejects it dead-letters it again with its original
// sequence; once the target is fixed, a retry applies it, and verify
// passes. Runs on the embedded NATS store of `oneway up` (--data-dir).
func TestDeadLetterRetriedAfterFix(t *testing.T) {
	src, dst := dlqSetup(t, 1234)
	cfg := testenv.Config(t, "", src.URL, dst.URL, "")
	data := t.TempDir()
	upWithDeadLetters(t, cfg, data)

	rows := dlqList(t, cfg, data)
	if len(rows) != 1 || rows[0].key != "1234" || rows[0].target != "pg" || rows[0].orig == 0 ||
		!strings.Contains(rows[0].err, "check constraint") {
		t.Fatalf("dlq list: %+v, want one dead letter of key 1234 naming the check constraint", rows)
	}
	first := rows[0]
	show := mustDLQ(t, cfg, data, "show", "--seq", strconv.FormatUint(first.seq, 10))
	for _, want := range []string{bus.HeaderKey + ": 1234", bus.HeaderSequence + ": " + strconv.FormatUint(first.orig, 10),
		`amount     = "-5.00"`, `note       = "note\t1234"`, "(bigint, key)", "invoices_amount_check"} {
		if !strings.Contains(show, want) {
			t.Fatalf("dlq show lacks %q:\n%s", want, show)
		}
	}

	// Retried too early: rejected again, dead-lettered again under its
	// original sequence (not the retry message's).
	out := mustDLQ(t, cfg, data, "retry", "--all", "--target", "pg")
	if !strings.Contains(out, fmt.Sprintf("retried dead letter %d (target pg, key 1234, original seq %d)", first.seq, first.orig)) {
		t.Fatalf("dlq retry:\n%s", out)
	}
	if rows := dlqList(t, cfg, data); len(rows) != 0 {
		t.Fatalf("dead letters left after retry: %+v", rows)
	}
	upWithDeadLetters(t, cfg, data)
	rows = dlqList(t, cfg, data)
	if len(rows) != 1 || rows[0].key != "1234" || rows[0].orig != first.orig || rows[0].seq <= first.seq {
		t.Fatalf("after a retry into a still-broken target: %+v, want key 1234 again with original seq %d", rows, first.orig)
	}

	// Fixed: the retry applies it.
	dst.Exec(t, "ALTER TABLE public.invoices DROP CONSTRAINT invoices_amount_check")
	mustDLQ(t, cfg, data, "retry", "--all", "--target", "pg")
	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != 0 {
		t.Fatalf("oneway up after the retry: exit %d\n%s", r.Code, r.Stderr)
	}
	mustVerify(t, cfg, 0)
	if rows := dlqList(t, cfg, data); len(rows) != 0 {
		t.Fatalf("dead letters left: %+v", rows)
	}
	if got := dst.String(t, "SELECT amount::text FROM public.invoices WHERE id = 1234"); got != "-5.00" {
		t.Fatalf("amount of 1234 = %s, want -5.00", got)
	}
	if got := dst.Int(t, "SELECT oneway_version >> 20 FROM oneway.ledger_1 WHERE id = 1234"); uint64(got) != first.orig {
		t.Fatalf("ledger version of 1234 is from stream seq %d, want the original %d", got, first.orig)
	}
	if got := ledgerMaxApplies(t, dst); got != 1 {
		t.Fatalf("max applies = %d, want 1", got)
	}

	// A running `oneway up` owns the embedded store: dlq refuses to open it.
	// (nats-server takes no lock; dlq sees the files the server holds open,
	// such as the state bucket the reader's lease writes.)
	up := testenv.Start(t, "oneway", upArgs(cfg, data)...)
	testenv.WaitFor(t, time.Minute, func() error {
		if out := up.Output(); !strings.Contains(out, "writer consuming") || !strings.Contains(out, "reader active") {
			return fmt.Errorf("oneway up not running yet")
		}
		return nil
	})
	if r := dlqCmd(t, cfg, data, "list"); r.Code == 0 || !strings.Contains(r.Stderr, "in use") {
		t.Fatalf("dlq list with `oneway up` running: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}

// The version rule: a dead-lettered change does not hold back later
// changes of its key, and retrying it after the key changed leaves the
// newer state in place.
func TestRetriedDeadLetterKeepsNewerState(t *testing.T) {
	src, dst := dlqSetup(t, 1234)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	reader := testenv.Start(t, "reader", "run", "--config", cfg)
	writer := testenv.Start(t, "writer", "run", "--config", cfg)
	st := dlqStream(t, natsURL)
	testenv.WaitFor(t, syncTimeout, func() error {
		if err := countIs(dst, 1999); err != nil {
			return err
		}
		_, err := st.GetLastMsgForSubject(context.Background(), bus.DLQSubject("invoices", "pg"))
		return err
	})
	rows := dlqList(t, cfg, "")
	if len(rows) != 1 || rows[0].key != "1234" {
		t.Fatalf("dlq list: %+v, want key 1234", rows)
	}

	// A newer, valid state of 1234 arrives although the older is dead-lettered.
	src.Exec(t, "UPDATE public.invoices SET amount = 7, updated_at = now() WHERE id = 1234")
	testenv.WaitFor(t, time.Minute, func() error {
		var got *string
		_ = dst.Conn.QueryRow(context.Background(), "SELECT amount::text FROM public.invoices WHERE id = 1234").Scan(&got)
		if got == nil || *got != "7.00" {
			return fmt.Errorf("1234 not at its newer state yet")
		}
		return nil
	})

	// The target is fixed, so only the version fence can keep the retried
	// old change (amount -5) from overwriting the newer state.
	dst.Exec(t, "ALTER TABLE public.invoices DROP CONSTRAINT invoices_amount_check")
	out := mustDLQ(t, cfg, "", "retry", "--all", "--target", "pg")
	m := regexp.MustCompile(`as stream seq (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dlq retry:\n%s", out)
	}
	retrySeq, _ := strconv.ParseUint(m[1], 10, 64)
	waitConsumed(t, natsURL, retrySeq)

	if got := dst.String(t, "SELECT amount::text FROM public.invoices WHERE id = 1234"); got != "7.00" {
		t.Fatalf("the retried old change overwrote the newer state: amount = %s", got)
	}
	if got := dst.Int(t, "SELECT oneway_applies FROM oneway.ledger_1 WHERE id = 1234"); got != 1 {
		t.Fatalf("1234 written %d times, want 1 (the retry must be a no-op)", got)
	}
	if rows := dlqList(t, cfg, ""); len(rows) != 0 {
		t.Fatalf("dead letters after the retry: %+v", rows)
	}
	reader.Stop(t, 30*time.Second)
	writer.Stop(t, 30*time.Second)
	mustVerify(t, cfg, 0)
}

// drop deletes one dead letter and needs --yes without a terminal; retry
// refuses while the writer consumer does not receive retries (created by
// an older writer), and works once a writer updated it.
func TestDropDeadLetterAndRetryNeedsAnUpdatedConsumer(t *testing.T) {
	src, dst := dlqSetup(t, 1234, 1500)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	upWithDeadLetters(t, cfg, t.TempDir())
	rows := dlqList(t, cfg, "")
	if len(rows) != 2 {
		t.Fatalf("dlq list: %+v, want 2", rows)
	}
	keys := []string{rows[0].key, rows[1].key}
	slices.Sort(keys)
	if keys[0] != "1234" || keys[1] != "1500" {
		t.Fatalf("dead-lettered keys %v, want 1234 and 1500", keys)
	}
	drop, keep := rows[0], rows[1]
	dropSeq := strconv.FormatUint(drop.seq, 10)

	if r := dlqCmd(t, cfg, "", "drop", "--seq", dropSeq); r.Code != 2 || !strings.Contains(r.Stderr, "--yes") {
		t.Fatalf("drop without --yes and without a terminal: exit %d, want 2 asking for --yes\n%s", r.Code, r.Stderr)
	}
	if rows := dlqList(t, cfg, ""); len(rows) != 2 {
		t.Fatalf("refused drop deleted something: %+v", rows)
	}
	out := mustDLQ(t, cfg, "", "drop", "--seq", dropSeq, "--yes")
	if !strings.Contains(out, "dropped dead letter "+dropSeq) {
		t.Fatalf("dlq drop:\n%s", out)
	}
	if rows := dlqList(t, cfg, ""); len(rows) != 1 || rows[0].seq != keep.seq {
		t.Fatalf("after drop: %+v, want only %d", rows, keep.seq)
	}
	if r := dlqCmd(t, cfg, "", "show", "--seq", dropSeq); r.Code != 1 || !strings.Contains(r.Stderr, "no such dead letter") {
		t.Fatalf("show of a dropped dead letter: exit %d\n%s", r.Code, r.Stderr)
	}

	// An older writer's consumer filters on the source subject only.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	cons, err := js.Consumer(ctx, bus.StreamName("invoices"), bus.WriterConsumer("invoices", "pg"))
	if err != nil {
		t.Fatal(err)
	}
	old := cons.CachedInfo().Config
	old.FilterSubjects, old.FilterSubject = nil, bus.SourceSubject("invoices")
	if _, err := js.UpdateConsumer(ctx, bus.StreamName("invoices"), old); err != nil {
		t.Fatalf("set an old-style consumer: %v", err)
	}
	keepSeq := strconv.FormatUint(keep.seq, 10)
	if r := dlqCmd(t, cfg, "", "retry", "--seq", keepSeq); r.Code != 1 || !strings.Contains(r.Stdout, "does not receive") {
		t.Fatalf("retry with an old-style consumer: exit %d, want 1 naming the consumer\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if rows := dlqList(t, cfg, ""); len(rows) != 1 {
		t.Fatalf("refused retry changed the DLQ: %+v", rows)
	}

	// A writer of this version updates the consumer; the retry then goes
	// through (and, the target still rejecting it, comes back under its
	// original sequence).
	writer := testenv.Start(t, "writer", "run", "--config", cfg)
	testenv.WaitFor(t, time.Minute, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if !slices.Contains(info.Config.FilterSubjects, bus.RetrySubject("invoices", "pg")) {
			return fmt.Errorf("consumer filters %v %q", info.Config.FilterSubjects, info.Config.FilterSubject)
		}
		return nil
	})
	mustDLQ(t, cfg, "", "retry", "--seq", keepSeq)
	testenv.WaitFor(t, time.Minute, func() error {
		if rows := dlqList(t, cfg, ""); len(rows) != 1 || rows[0].seq == keep.seq || rows[0].orig != keep.orig {
			return fmt.Errorf("dead letters %+v", rows)
		}
		return nil
	})
	writer.Stop(t, 30*time.Second)
}

func dlqStream(t *testing.T, natsURL string) jetstream.Stream {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	var st jetstream.Stream
	testenv.WaitFor(t, time.Minute, func() error {
		var err error
		st, err = js.Stream(context.Background(), bus.StreamName("invoices"))
		return err
	})
	return st
}

// waitConsumed waits until the writer consumer has handled every message up
// to stream sequence seq.
func waitConsumed(t *testing.T, natsURL string, seq uint64) {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	testenv.WaitFor(t, time.Minute, func() error {
		c, err := js.Consumer(context.Background(), bus.StreamName("invoices"), bus.WriterConsumer("invoices", "pg"))
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.AckFloor.Stream < seq || info.NumPending+uint64(info.NumAckPending) > 0 {
			return fmt.Errorf("consumer ack floor %d, pending %d", info.AckFloor.Stream, info.NumPending+uint64(info.NumAckPending))
		}
		return nil
	})
}
