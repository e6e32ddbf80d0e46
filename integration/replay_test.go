package integration

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// TestReplayRebuildsTruncatedTarget: a target table truncated by hand is
// not repaired by a plain replay (every change is fenced: the ledger says
// it was applied), and is rebuilt by `replay --all --rebuild`, and again
// by `replay --all --shadow`.
func TestReplayRebuildsTruncatedTarget(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 5000)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	if r := testenv.Run(t, syncTimeout, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--admin-addr", "off", "--exit-when-synced"); r.Code != 0 {
		t.Fatalf("up: exit %d\n%s", r.Code, r.Stderr)
	}
	src.Exec(t, "UPDATE public.invoices SET status = 'paid', updated_at = now() WHERE id % 10 = 0")
	if r := testenv.Run(t, syncTimeout, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--admin-addr", "off", "--exit-when-synced"); r.Code != 0 {
		t.Fatalf("up: exit %d\n%s", r.Code, r.Stderr)
	}
	mustVerify(t, cfg, 0)
	dst.Exec(t, "TRUNCATE public.invoices")
	mustVerify(t, cfg, 1)

	replay := func(args ...string) testenv.Result {
		t.Helper()
		r := testenv.Run(t, syncTimeout, "oneway", append([]string{"replay", "--config", cfg, "--target", "pg"}, args...)...)
		if r.Code != 0 {
			t.Fatalf("replay %v: exit %d\n%s", args, r.Code, r.Stderr)
		}
		return r
	}
	replay("--all")
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices"); n != 0 {
		t.Fatalf("a plain replay wrote %d rows into the truncated table: the ledger should have fenced them", n)
	}
	r := replay("--all", "--rebuild")
	if !strings.Contains(r.Stdout, "replayed into target pg") {
		t.Fatalf("replay output: %s", r.Stdout)
	}
	mustVerify(t, cfg, 0)
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE status = 'paid'"); n != 500 {
		t.Fatalf("%d paid invoices after the rebuild, want the newest state of 500", n)
	}
	// The same with a shadow: its ledger is new, so nothing is fenced.
	dst.Exec(t, "TRUNCATE public.invoices")
	if r := replay("--all", "--shadow"); !strings.Contains(r.Stdout, "swapped it in") {
		t.Fatalf("replay --shadow output: %s", r.Stdout)
	}
	mustVerify(t, cfg, 0)
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE status = 'paid'"); n != 500 {
		t.Fatalf("%d paid invoices after the shadow rebuild, want the newest state of 500", n)
	}

	for _, bad := range [][]string{{"--all", "--from-seq", "3"}, {}, {"--since", "yesterday"}, {"--all", "--shadow", "--rebuild"}} {
		r := testenv.Run(t, time.Minute, "oneway", append([]string{"replay", "--config", cfg, "--target", "pg"}, bad...)...)
		if r.Code != 2 {
			t.Errorf("replay %v: exit %d, want 2\n%s", bad, r.Code, r.Stderr)
		}
	}
}

// TestReplayWhileLiveWritesContinue rebuilds a truncated target with
// `replay --all --rebuild` while `oneway up` keeps applying a stream of
// updates: the live writer does not wait for the replay, the replay never
// puts an older version over a newer one, and the target ends equal to
// the source.
func TestReplayWhileLiveWritesContinue(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 5000)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	up := testenv.Start(t, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--admin-addr", "off")
	testenv.WaitFor(t, syncTimeout, func() error { return countIs(dst, 5000) })

	var rounds atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := src.Conn.Exec(context.Background(),
				`UPDATE public.invoices SET note = 'round ' || $1::int, updated_at = now() WHERE id % 50 = $2`, i, i%50); err != nil {
				t.Errorf("update: %v", err)
				return
			}
			rounds.Add(1)
		}
	}()
	testenv.WaitFor(t, time.Minute, func() error {
		if rounds.Load() < 10 {
			return fmt.Errorf("%d rounds", rounds.Load())
		}
		return nil
	})
	dst.Exec(t, "TRUNCATE public.invoices")
	r := testenv.Run(t, syncTimeout, "oneway", "replay", "--config", cfg, "--target", "pg", "--all", "--rebuild")
	if r.Code != 0 {
		t.Fatalf("replay: exit %d\n%s", r.Code, r.Stderr)
	}
	close(stop)
	<-done
	if exited, code := up.Exited(); exited {
		t.Fatalf("oneway up exited (%d) during the replay", code)
	}
	testenv.WaitFor(t, syncTimeout, func() error {
		if r := testenv.Run(t, time.Minute, "oneway", "verify", "--config", cfg); r.Code != 0 {
			return fmt.Errorf("verify %d: %s", r.Code, r.Stdout)
		}
		return nil
	})
	t.Logf("%d update rounds during the replay", rounds.Load())
}

// TestReplayShadowWhileLiveWritesContinue rebuilds a PostgreSQL target that
// lost rows with `replay --all --shadow` while `oneway up` keeps applying
// updates and inserts: a reader counting the target's rows in a loop never
// sees fewer than before the replay (readers see the old table until the
// swap, then the rebuilt one), the lost rows are back, the target-only
// column and the orphan row are kept, and `verify` ends with exit 0.
func TestReplayShadowWhileLiveWritesContinue(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 5000)
	dst.Exec(t, strings.Replace(testenv.InvoicesDDL, "updated_at timestamptz NOT NULL DEFAULT now())",
		"updated_at timestamptz NOT NULL DEFAULT now(), crm_notes text DEFAULT 'none')", 1),
		"INSERT INTO public.invoices (id, customer, crm_notes) VALUES (-1, 'orphan', 'hand-made')")
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	up := testenv.Start(t, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--admin-addr", "off")
	testenv.WaitFor(t, syncTimeout, func() error { return countIs(dst, 5001) })
	dst.Exec(t, "UPDATE public.invoices SET crm_notes = 'vip' WHERE id % 100 = 0",
		"DELETE FROM public.invoices WHERE id BETWEEN 1 AND 10") // lost rows
	before := dst.Int(t, "SELECT count(*) FROM public.invoices")

	// Writes on the source: updates and inserts, all through the replay.
	var rounds atomic.Int64
	stopWrites, writesDone := make(chan struct{}), make(chan struct{})
	writer := testenv.Connect(t, src.URL)
	go func() {
		defer close(writesDone)
		for i := 1; ; i++ {
			select {
			case <-stopWrites:
				return
			case <-time.After(20 * time.Millisecond):
			}
			_, err := writer.Conn.Exec(context.Background(), `
WITH u AS (UPDATE public.invoices SET note = 'round ' || $1::int, updated_at = now() WHERE id % 50 = $2)
INSERT INTO public.invoices (id, customer, amount, status) VALUES (10000 + $1::int, 'new', 1, 'open')`, i, i%50)
			if err != nil {
				t.Errorf("source write: %v", err)
				return
			}
			rounds.Add(1)
		}
	}()
	// A reader of the target: the row count never drops below before.
	var reads, fewest atomic.Int64
	fewest.Store(before)
	stopReads, readsDone := make(chan struct{}), make(chan struct{})
	reader := testenv.Connect(t, dst.URL)
	go func() {
		defer close(readsDone)
		for {
			select {
			case <-stopReads:
				return
			default:
			}
			var n int64
			if err := reader.Conn.QueryRow(context.Background(), "SELECT count(*) FROM public.invoices").Scan(&n); err != nil {
				t.Errorf("target read: %v", err)
				return
			}
			reads.Add(1)
			if n < fewest.Load() {
				fewest.Store(n)
			}
		}
	}()
	testenv.WaitFor(t, time.Minute, func() error {
		if rounds.Load() < 10 {
			return fmt.Errorf("%d rounds", rounds.Load())
		}
		return nil
	})
	r := testenv.Run(t, syncTimeout, "oneway", "replay", "--config", cfg, "--target", "pg", "--all", "--shadow")
	if r.Code != 0 {
		t.Fatalf("replay --shadow: exit %d\n%s", r.Code, r.Stderr)
	}
	if !strings.Contains(r.Stdout, "swapped it in") || !strings.Contains(r.Stdout, "target-only columns [crm_notes]") {
		t.Errorf("replay output: %s", r.Stdout)
	}
	readsAtSwap := reads.Load()
	testenv.WaitFor(t, time.Minute, func() error { // a few reads of the swapped table too
		if reads.Load() < readsAtSwap+10 {
			return fmt.Errorf("%d reads since the swap", reads.Load()-readsAtSwap)
		}
		return nil
	})
	close(stopWrites)
	<-writesDone
	close(stopReads)
	<-readsDone
	if exited, code := up.Exited(); exited {
		t.Fatalf("oneway up exited (%d) during the replay", code)
	}
	if n := fewest.Load(); n < before {
		t.Errorf("a reader saw %d rows, fewer than the %d before the replay", n, before)
	}
	testenv.WaitFor(t, syncTimeout, func() error {
		if r := testenv.Run(t, time.Minute, "oneway", "verify", "--config", cfg); r.Code != 0 {
			return fmt.Errorf("verify %d: %s", r.Code, r.Stdout)
		}
		return nil
	})
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE id BETWEEN 1 AND 10"); n != 10 {
		t.Errorf("%d of the 10 lost rows are back", n)
	}
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE crm_notes = 'vip'"); n != 50 {
		t.Errorf("%d rows kept crm_notes = 'vip', want 50", n)
	}
	if s := dst.String(t, "SELECT crm_notes FROM public.invoices WHERE id = -1"); s != "hand-made" {
		t.Errorf("orphan row: crm_notes = %q", s)
	}
	if n := dst.Int(t, "SELECT count(*) FROM pg_class WHERE relname LIKE 'invoices_oneway_%'"); n != 0 {
		t.Errorf("%d shadow or old tables left behind", n)
	}
	t.Logf("%d write rounds and %d target reads during the replay", rounds.Load(), reads.Load())
}
