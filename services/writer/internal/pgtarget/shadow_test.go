package pgtarget

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/shared/pgconn"
)

// TestShadowSwap builds a shadow of a target that lost a row, while a live
// writer keeps applying, and swaps it in: the lost row is back, the
// target-only column and the orphan survive, a key whose history the
// replay did not cover is carried over with its ledger row, a live write
// that came during the swap waits for it and lands in the new table, the
// swapped ledger fences, and a reader waiting on the lock counts the new
// table, which keeps the old one's privileges.
func TestShadowSwap(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	livePool := openPool(t, dbURL)
	exec(t, pool, "CREATE TABLE public.items (id integer PRIMARY KEY, name text, amount numeric(12,2), crm_notes text DEFAULT 'fresh', seq_no serial, ident int GENERATED ALWAYS AS IDENTITY)")
	live := openTarget(t, livePool, defaultSpec())
	apply(t, live, item(1, cdc, up("1", "one", "1.00"), up("3", "three", "3.00")))
	apply(t, live, item(2, cdc, up("2", "two", "2.00")))
	exec(t, pool,
		"UPDATE public.items SET crm_notes = 'keep me' WHERE id = 1",
		"INSERT INTO public.items (id, name, amount, crm_notes) VALUES (99, 'orphan', 9, 'orphan note')",
		"DELETE FROM public.items WHERE id = 2") // a lost row
	before := one[int64](t, pool, "SELECT count(*) FROM public.items")
	role := fmt.Sprintf("shadow_reader_%d", time.Now().UnixNano())
	exec(t, pool, "CREATE ROLE "+role, "GRANT SELECT ON public.items TO "+role)
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = pool.Exec(context.Background(), "DROP ROLE "+role)
	})

	sh, err := OpenShadow(testCtx(t), pool, defaultSpec(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open shadow: %v", err)
	}
	// The replay starts at seq 2 (seq 1 aged out of the stream), while the
	// live writer applies seq 3.
	apply(t, sh.Target(), item(2, cdc, up("2", "two", "2.00")))
	apply(t, live, item(3, cdc, up("1", "uno", "1.00")))

	liveDone := make(chan error, 1)
	counted := make(chan int64, 1)
	st, err := sh.Swap(testCtx(t), func(ctx context.Context) error {
		go func() {
			_, err := live.Apply(context.Background(), []Item{item(4, cdc, up("5", "five", "5.00"))})
			liveDone <- err
		}()
		go func() {
			var n int64
			_ = livePool.QueryRow(context.Background(), "SELECT count(*) FROM public.items").Scan(&n)
			counted <- n
		}()
		waitFor(t, pool, "the live writer and the reader to wait for the swap's lock",
			"SELECT count(*) = 2 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
		apply(t, sh.Target(), item(3, cdc, up("1", "uno", "1.00")))
		return nil
	})
	if err != nil {
		t.Fatalf("swap: %v", err)
	}
	if err := <-liveDone; err != nil {
		t.Fatalf("live apply during the swap: %v", err)
	}
	if n := <-counted; n < before {
		t.Errorf("a reader waiting on the swap counted %d rows, fewer than the %d before", n, before)
	}
	if st.CarriedRows != 2 || st.CarriedLedger != 1 || st.TargetOnlyRows != 1 {
		t.Errorf("stats = %+v, want 2 carried rows (3 and the orphan), 1 ledger row (3), 1 target-only row (1)", st)
	}
	equal(t, "target-only columns", st.TargetOnlyColumns, []string{"crm_notes", "seq_no", "ident"})
	equal(t, "rows", itemRows(t, pool, "crm_notes"), []string{
		"1|'uno'|'1.00'|'keep me'",
		"2|'two'|'2.00'|'fresh'",
		"3|'three'|'3.00'|'fresh'",
		"5|'five'|'5.00'|'fresh'",
		"99|'orphan'|'9.00'|'orphan note'",
	})
	if !one[bool](t, pool, "SELECT has_table_privilege($1, 'public.items', 'SELECT')", role) {
		t.Error("the reader role lost SELECT on the rebuilt table")
	}
	equal(t, "ledger keys", strs(t, pool, "SELECT id::text FROM "+live.Ledger().Quoted()+" ORDER BY id"), []string{"1", "2", "3", "5"})
	if n := one[int64](t, pool, "SELECT count(DISTINCT seq_no) FROM public.items"); n != 5 {
		t.Errorf("%d distinct serial values in 5 rows: the sequence did not move with the table", n)
	}
	exec(t, pool, "INSERT INTO public.items (id, name) VALUES (100, 'after the swap')")
	if n := one[int64](t, pool, "SELECT count(DISTINCT ident) FROM public.items"); n != 6 {
		t.Errorf("%d distinct identities in 6 rows: %v", n, strs(t, pool, "SELECT format('%s:%s', id, ident) FROM public.items ORDER BY id"))
	}
	exec(t, pool, "DELETE FROM public.items WHERE id = 100")
	equal(t, "tables left", strs(t, pool, `SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('public', 'oneway') AND c.relkind IN ('r', 'i') ORDER BY 1`),
		[]string{"items", "items_pkey", "ledger_1", "ledger_1_pkey", "ledger_scopes", "ledger_scopes_pipeline_target_table_name_key", "ledger_scopes_pkey"})

	// The swapped-in ledger fences: an old change is skipped, a new one
	// written, by the live writer's cached statements.
	apply(t, live, item(2, cdc, up("1", "stale", "1.00")))
	apply(t, live, item(5, cdc, up("2", "deux", "2.00")))
	equal(t, "after the swap", itemRows(t, pool)[:2], []string{"1|'uno'|'1.00'", "2|'deux'|'2.00'"})

	// A second shadow build and swap finds its names free.
	sh2, err := OpenShadow(testCtx(t), pool, defaultSpec(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open second shadow: %v", err)
	}
	apply(t, sh2.Target(), item(5, cdc, up("2", "deux", "2.00")))
	if _, err := sh2.Swap(testCtx(t), func(context.Context) error { return nil }); err != nil {
		t.Fatalf("second swap: %v", err)
	}
	if n := one[int64](t, pool, "SELECT count(*) FROM public.items"); n != 5 {
		t.Errorf("%d rows after the second swap, want 5", n)
	}

	// An empty shadow swaps nothing and is dropped.
	sh3, err := OpenShadow(testCtx(t), pool, defaultSpec(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open third shadow: %v", err)
	}
	if st, err := sh3.Swap(testCtx(t), func(context.Context) error { return nil }); err != nil || !st.Empty {
		t.Fatalf("empty swap: %+v, %v", st, err)
	}
	if one[bool](t, pool, "SELECT to_regclass('public.items_oneway_shadow') IS NOT NULL") {
		t.Error("the empty shadow was not dropped")
	}
}

// TestShadowRefusesStagedAndMissingTable: a shadow needs a live table, and
// is for direct mode.
func TestShadowRefusesStagedAndMissingTable(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	spec := defaultSpec()
	if _, err := OpenShadow(testCtx(t), pool, spec, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a shadow of a missing table was opened")
	}
	spec.Staged = true
	spec.Table = pgconn.Table{Schema: "public", Name: "x"}
	if _, err := OpenShadow(testCtx(t), pool, spec, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a shadow of a staged target was opened")
	}
}

// lockedBuffer is a log sink safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestShadowSwapWaitsOutABusyTable: while a long transaction holds the
// live table, the swap gives its lock up after LockTimeout (so readers do
// not queue behind it for long), warns, and asks again until it gets it.
func TestShadowSwapWaitsOutABusyTable(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	exec(t, pool, itemsDDL)
	live := openTarget(t, pool, defaultSpec())
	apply(t, live, item(1, cdc, up("1", "one", "1.00")))
	var logs lockedBuffer
	sh, err := OpenShadow(testCtx(t), pool, defaultSpec(), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("open shadow: %v", err)
	}
	sh.LockTimeout = 50 * time.Millisecond
	apply(t, sh.Target(), item(1, cdc, up("1", "one", "1.00")))

	holder, err := pool.Begin(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(context.Background())
	if _, err := holder.Exec(testCtx(t), "SELECT count(*) FROM public.items"); err != nil {
		t.Fatal(err)
	}
	swapped := make(chan error, 1)
	go func() {
		_, err := sh.Swap(testCtx(t), func(context.Context) error { return nil })
		swapped <- err
	}()
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(logs.String(), "the live table is busy") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no second lock attempt; log:\n%s", logs.String())
		}
		select {
		case err := <-swapped:
			t.Fatalf("swap ended while the table was held: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := holder.Commit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-swapped; err != nil {
		t.Fatalf("swap after the holder committed: %v", err)
	}
	equal(t, "rows", itemRows(t, pool), []string{"1|'one'|'1.00'"})
}

// TestShadowKeepsWhatTheDeletePolicyKeeps: with delete policy none or soft
// a source delete leaves the row in the target. A replay that sees only
// the delete of a key (its insert aged out of the stream) has no row for
// it; the swap carries the live row over as it is.
func TestShadowKeepsWhatTheDeletePolicyKeeps(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec func(*Spec)
		want []string
	}{
		{"hard", func(*Spec) {}, []string{"2|'two'|'2.00'|NULL"}},
		{"none", func(s *Spec) { s.Delete = DeleteNone }, []string{"1|'one'|'1.00'|NULL", "2|'two'|'2.00'|NULL"}},
		{"soft", func(s *Spec) { s.Delete, s.SoftDeleteColumn = DeleteSoft, "deleted" }, []string{"1|'one'|'1.00'|'t'", "2|'two'|'2.00'|'f'"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, pool := newDB(t)
			exec(t, pool, "CREATE TABLE public.items (id integer PRIMARY KEY, name text, amount numeric(12,2), deleted boolean)")
			spec := defaultSpec()
			tt.spec(&spec)
			live := openTarget(t, pool, spec)
			apply(t, live, item(1, cdc, up("1", "one", "1.00"), up("2", "two", "2.00")))
			apply(t, live, item(2, cdc, del("1")))
			sh, err := OpenShadow(testCtx(t), pool, spec, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatalf("open shadow: %v", err)
			}
			apply(t, sh.Target(), item(2, cdc, del("1"))) // seq 1 aged out
			if _, err := sh.Swap(testCtx(t), func(context.Context) error { return nil }); err != nil {
				t.Fatalf("swap: %v", err)
			}
			equal(t, "rows", itemRows(t, pool, "deleted"), tt.want)
		})
	}
}
