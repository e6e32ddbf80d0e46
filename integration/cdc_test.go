package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oneway-sync/oneway/integration/testenv"
	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// End-to-end tests of the cdc pattern (PostgreSQL logical replication).

// cdcSlot is a replication slot name of this test alone (slot names are
// global to the cluster), dropped when the test ends: a leftover slot pins
// WAL on the shared server and keeps its database from being dropped.
func cdcSlot(t *testing.T) string {
	t.Helper()
	var b [5]byte
	_, _ = rand.Read(b[:])
	slot := "oneway_it_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pgtest.ServerURL(t))
		if err != nil {
			t.Errorf("drop slot %s: %v", slot, err)
			return
		}
		defer conn.Close(ctx)
		for ctx.Err() == nil {
			var pid *int32
			err := conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid)
			if errors.Is(err, pgx.ErrNoRows) {
				return
			}
			if err == nil && pid != nil {
				_, _ = conn.Exec(ctx, "SELECT pg_terminate_backend($1)", *pid)
			} else if err == nil {
				if _, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err == nil {
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("drop slot %s: still there", slot)
	})
	return slot
}

// patternCounts counts the changes published on the source subject after
// stream sequence seq, by capture pattern of their batch and op, e.g.
// "snapshot upsert", "cdc delete"; and per key for the cdc ones.
func (l *sourceLog) patternCounts(t *testing.T, seq uint64) (map[string]int, map[string]int) {
	t.Helper()
	st, err := l.js.Stream(context.Background(), bus.StreamName(l.pipeline))
	if err != nil {
		t.Fatal(err)
	}
	counts, perKey := map[string]int{}, map[string]int{}
	last := l.last(t)
	for s := seq + 1; s <= last; s++ {
		m, err := st.GetMsg(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != bus.SourceSubject(l.pipeline) {
			continue
		}
		b, err := event.Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		pattern := strings.ToLower(strings.TrimPrefix(b.GetPattern().String(), "CAPTURE_PATTERN_"))
		keyIdx := event.KeyIndexes(b)
		for _, c := range b.GetChanges() {
			op := strings.ToLower(strings.TrimPrefix(c.GetOp().String(), "OP_"))
			counts[pattern+" "+op]++
			if b.GetPattern() == onewayv1.CapturePattern_CAPTURE_PATTERN_CDC {
				perKey[event.Key(c, keyIdx)]++
			}
		}
	}
	return counts, perKey
}

// waitVerified runs `oneway verify` until it exits 0.
func waitVerified(t *testing.T, cfg string) {
	t.Helper()
	testenv.WaitFor(t, syncTimeout, func() error {
		r := testenv.Run(t, 2*time.Minute, "oneway", "verify", "--config", cfg, "--log-level", "warn")
		if r.Code != 0 {
			return fmt.Errorf("verify exit %d: %s", r.Code, r.Stdout)
		}
		return nil
	})
}

// slotConfirmed is the slot's confirmed_flush_lsn as a number.
func slotConfirmed(t *testing.T, src *testenv.DB, slot string) int64 {
	t.Helper()
	return src.Int(t, "SELECT coalesce((SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = $1), 0)::bigint", slot)
}

// The cdc pattern end to end with `oneway up`: a snapshot with writes
// running at the same time (no loss, nothing sent twice at the hand-off),
// inserts, updates, deletes and a key update, a kill -9 mid-stream, an idle
// slot that keeps confirming (heartbeat), and a TRUNCATE that stops the
// reader until `oneway resync`.
func TestCDCPattern(t *testing.T) {
	const rows = 20000
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, rows)
	slot := cdcSlot(t)
	_, natsURL := bustest.StartJetStream(t)
	cfg := patternConfig(t, natsURL, src.URL, dst.URL, "invoices", "",
		fmt.Sprintf("    pattern: cdc\n    slot: %s\n    publication: %s\n    batch_size: 100\n    poll_interval: 200ms", slot, slot))
	log := openSourceLog(t, natsURL, "invoices")
	data := t.TempDir()

	// Writes while the snapshot runs: every one of them comes from the
	// stream, exactly once, and none is in the snapshot.
	up := testenv.Start(t, "oneway", upArgs(cfg, data)...)
	testenv.WaitFor(t, time.Minute, func() error {
		if !strings.Contains(up.Output(), `"msg":"snapshot starting"`) {
			return errors.New("snapshot not started")
		}
		return nil
	})
	for i := 0; i < 100; i++ {
		if i == 1 && strings.Contains(up.Output(), `"msg":"snapshot done; streaming from the slot"`) {
			t.Fatal("the snapshot ended before the first write: nothing ran concurrently")
		}
		src.Exec(t, fmt.Sprintf("UPDATE public.invoices SET status = 'paid', note = 'during %d' WHERE id IN (%d, %d, %d)", i, 1+i*3, rows-i*3, 5000+i),
			fmt.Sprintf("INSERT INTO public.invoices (id, customer) VALUES (%d, 'new %d')", 100000+i, i),
			fmt.Sprintf("DELETE FROM public.invoices WHERE id = %d", 10000+i))
	}
	waitVerified(t, cfg)
	if !strings.Contains(up.Output(), `"msg":"snapshot done; streaming from the slot"`) {
		t.Fatalf("no hand-off logged:\n%s", up.Output())
	}
	counts, perKey := log.patternCounts(t, 0)
	if counts["snapshot upsert"] != rows || counts["cdc upsert"] != 400 || counts["cdc delete"] != 100 {
		t.Fatalf("published %v; want %d snapshot rows, 400 cdc upserts and 100 cdc deletes", counts, rows)
	}
	for k, n := range perKey {
		if n != 1 { // every key was changed once
			t.Fatalf("key %s was published %d times by the stream", k, n)
		}
	}

	// Inserts, updates, deletes and a key update.
	src.Exec(t,
		"UPDATE public.invoices SET amount = amount + 1 WHERE id % 97 = 0",
		"DELETE FROM public.invoices WHERE id % 89 = 3",
		"INSERT INTO public.invoices (id, customer) SELECT g, 'late' FROM generate_series(200001, 200050) g",
		"UPDATE public.invoices SET id = 300000 WHERE id = 42")
	waitVerified(t, cfg)
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE id IN (42, 300000)"); n != 1 {
		t.Fatalf("after the key update the target has %d of keys 42 and 300000, want 1", n)
	}

	// kill -9 mid-stream, a restart: nothing lost, and nothing published
	// twice (the restarted reader resumes after the last page the stream
	// holds, even when that page merged several transactions).
	writes := testenv.Connect(t, src.URL)
	burstFrom := log.last(t)
	done := make(chan error, 1)
	burstKeys := map[string]bool{} // the rows the burst updated (some ids were deleted above)
	go func() {
		for i := 0; i < 600; i++ {
			id := 1 + (i*31)%rows
			tag, err := writes.Conn.Exec(context.Background(), "UPDATE public.invoices SET note = $1 WHERE id = $2", fmt.Sprintf("burst %d", i), id)
			if err != nil {
				done <- err
				return
			}
			if tag.RowsAffected() == 1 {
				burstKeys[fmt.Sprintf("upsert %d", id)] = true
			}
		}
		done <- nil
	}()
	before := log.last(t)
	testenv.WaitFor(t, time.Minute, func() error {
		if log.last(t) < before+20 {
			return errors.New("the burst is not being published yet")
		}
		return nil
	})
	up.Kill()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	up = testenv.Start(t, "oneway", upArgs(cfg, data)...)
	waitVerified(t, cfg)
	burst := log.changesAfter(t, burstFrom)
	seen := map[string]int{}
	for _, c := range burst {
		seen[c]++
	}
	for c, n := range seen {
		if n != 1 || !burstKeys[c] {
			t.Errorf("the burst published %q %d times", c, n)
		}
	}
	if len(seen) != len(burstKeys) {
		t.Fatalf("the burst updated %d rows and published %d changes of %d keys", len(burstKeys), len(burst), len(seen))
	}

	// Idle: writes elsewhere in the database move WAL, and the slot's
	// confirmed position follows (the heartbeat), so it pins nothing.
	idleFrom := slotConfirmed(t, src, slot)
	src.Exec(t, "CREATE TABLE public.elsewhere (id int)", "INSERT INTO public.elsewhere SELECT generate_series(1, 1000)")
	target := src.Int(t, "SELECT (pg_current_wal_lsn() - '0/0')::bigint")
	testenv.WaitFor(t, time.Minute, func() error {
		if c := slotConfirmed(t, src, slot); c < target {
			return fmt.Errorf("slot confirmed %d (was %d), WAL at %d", c, idleFrom, target)
		}
		return nil
	})

	// TRUNCATE: the reader stops, naming the table and the resync.
	src.Exec(t, "TRUNCATE public.invoices")
	testenv.WaitFor(t, time.Minute, func() error {
		if exited, _ := up.Exited(); !exited {
			return errors.New("oneway up still runs after a truncate")
		}
		return nil
	})
	if out := up.Output(); !strings.Contains(out, "public.invoices was truncated") || !strings.Contains(out, "oneway resync") {
		t.Fatalf("no clear truncate error:\n%s", out)
	}
	r := testenv.Run(t, time.Minute, "oneway", "resync", "--config", cfg)
	if r.Code != 0 || !strings.Contains(r.Stdout, "dropped replication slot "+slot) {
		t.Fatalf("resync: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if n := src.Int(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot); n != 0 {
		t.Fatalf("the slot is still there after resync")
	}
	src.Exec(t, "INSERT INTO public.invoices (id, customer) VALUES (1, 'after truncate'), (2, 'after truncate')")
	up = testenv.Start(t, "oneway", upArgs(cfg, data)...)
	testenv.WaitFor(t, syncTimeout, func() error {
		if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE customer = 'after truncate'"); n != 2 {
			return fmt.Errorf("%d rows after the resync", n)
		}
		return nil
	})
	// The rows the truncate removed stay in the target (orphans: keep).
	mustVerify(t, cfg, 0)
	up.Stop(t, 30*time.Second)
}

// Switching to cdc starts with a snapshot through the new slot and writes
// no unchanged row again; cdc then resumes from its slot across restarts;
// switching away is refused until `oneway resync`, which drops the slot.
func TestSwitchToAndFromCDC(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 2000)
	slot := cdcSlot(t)
	cfg := filepath.Join(t.TempDir(), "pipeline.yaml")
	data := t.TempDir()
	cdc := fmt.Sprintf("    pattern: cdc\n    slot: %s\n    publication: %s\n    poll_interval: 300ms", slot, slot)

	writePatternConfig(t, cfg, "", src.URL, dst.URL, "invoices", "", "    pattern: synthetic\n    poll_interval: 100ms")
	upSynced(t, cfg, data, 0)
	mustVerify(t, cfg, 0)

	writePatternConfig(t, cfg, "", src.URL, dst.URL, "invoices", "", cdc)
	src.Exec(t, "UPDATE public.invoices SET status = 'paid' WHERE id % 50 = 0")
	upSynced(t, cfg, data, 0) // the snapshot through the slot
	mustVerify(t, cfg, 0)
	// Changes while the reader is stopped wait in the slot.
	src.Exec(t, "UPDATE public.invoices SET status = 'late' WHERE id % 50 = 1", "DELETE FROM public.invoices WHERE id % 50 = 2")
	upSynced(t, cfg, data, 0)
	mustVerify(t, cfg, 0)
	if n := dst.Int(t, `SELECT count(*) FROM oneway.ledger_1 l JOIN public.invoices i USING (id)
		WHERE i.status = 'open' AND l.oneway_applies <> 1`); n != 0 {
		t.Fatalf("%d unchanged rows were written more than once", n)
	}

	writePatternConfig(t, cfg, "", src.URL, dst.URL, "invoices", "", "    column: updated_at\n    poll_interval: 100ms")
	r := testenv.Run(t, time.Minute, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code == 0 || !strings.Contains(r.Stderr, "run `oneway resync` first (it drops the slot)") || !strings.Contains(r.Stderr, slot) {
		t.Fatalf("a switch from cdc: exit %d, want a refusal naming the slot and oneway resync\n%s", r.Code, r.Stderr)
	}
	r = testenv.Run(t, time.Minute, "oneway", "resync", "--config", cfg, "--data-dir", data)
	if r.Code != 0 || !strings.Contains(r.Stdout, "dropped replication slot "+slot) {
		t.Fatalf("resync: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if n := src.Int(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot); n != 0 {
		t.Fatal("the slot is still there after resync")
	}
	src.Exec(t, "UPDATE public.invoices SET status = 'watermark' WHERE id % 50 = 3")
	upSynced(t, cfg, data, 0)
	mustVerify(t, cfg, 0)
}
