package pgcdc

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/services/reader/internal/pgsource"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// pgsourceRows reads a table with pgsource, the snapshot/watermark reader:
// the oracle of the text form of every value.
func pgsourceRows(t *testing.T, pool *pgxpool.Pool, ts TableSpec) map[string]Row {
	t.Helper()
	src, err := pgsource.Open(testCtx(t), pool, pgsource.Spec{Table: ts.Table, Key: ts.Key, Columns: ts.Columns}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := src.SnapshotPage(testCtx(t), nil, 100000)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Row{}
	for _, r := range rows {
		out[strings.Join(src.KeyOf(r), "|")] = r
	}
	return out
}

func keyText(ch Change) string { return strings.Join(ch.Table.KeyOf(ch.Row), "|") }

// wantUpsert renders the upsert of key as pgsource reads it now.
func wantUpsert(t *testing.T, oracle map[string]Row, table, key string) string {
	t.Helper()
	r, ok := oracle[key]
	if !ok {
		t.Fatalf("oracle has no row %s", key)
	}
	return render(Change{Op: OpUpsert, Table: &Table{Name: pgconn.Table{Name: table}}, Row: r})
}

func TestStreamDecodesLikePgsource(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	// Settings that change the text form of values: both the pool and the
	// replication connection must override them.
	db := dbName(t, dbURL)
	exec(t, pool,
		fmt.Sprintf(`ALTER DATABASE %s SET TimeZone = 'America/New_York'`, db),
		fmt.Sprintf(`ALTER DATABASE %s SET DateStyle = 'SQL, DMY'`, db),
		fmt.Sprintf(`ALTER DATABASE %s SET IntervalStyle = 'sql_standard'`, db),
		fmt.Sprintf(`ALTER DATABASE %s SET extra_float_digits = 0`, db),
		fmt.Sprintf(`ALTER DATABASE %s SET bytea_output = 'escape'`, db),
		`CREATE TABLE public.typed (
			id int, region text,
			big bigint, n numeric(14,4), txt text, flag boolean, at timestamptz, day date, doc jsonb, raw bytea, uid uuid,
			ints int[], tags text[], f double precision, dur interval, local timestamp, r real, sm smallint,
			PRIMARY KEY (region, id))`,
		`CREATE TABLE public.other (code text PRIMARY KEY, v int)`)
	typed := TableSpec{Table: pgconn.Table{Schema: "public", Name: "typed"}, Key: []string{"region", "id"}}
	other := spec("public.other", "code")
	c := open(t, newConfig(t, dbURL, typed, other))
	s := startStream(t, c)

	check := func(what string, got []Change, want []string) {
		t.Helper()
		equal(t, what, renderAll(got), want)
	}

	// Inserts.
	exec(t, pool, `INSERT INTO public.typed VALUES
		(1, 'eu', 9007199254740993, 12345.6789, e'Grüße, "quotes", \'apostrophes\'\nand a newline\t日本', true,
		 '2024-02-29 23:59:59.123456+05:30', '2024-02-29', '{"b": [1, 2.50], "a": "x", "n": null}', '\x00ff10',
		 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}', '{"a b","c,d","",NULL}', 1.0/3, '1 day 02:03:04.5',
		 '2024-01-01 10:00:00.5', 3.14159, -32768),
		(2, 'eu', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
		(1, 'us', 9223372036854775807, 'NaN', '', false, 'infinity', '0044-03-15 BC', 'null', '', '00000000-0000-0000-0000-000000000000',
		 '{}', '{NULL}', '-Infinity', '-1 year -2 mons +3 days -04:05:06', '-infinity', 1e-30, 0)`)
	got, last := nextTx(t, s)
	o := pgsourceRows(t, pool, typed)
	check("inserts", got, []string{
		wantUpsert(t, o, "typed", "eu|1"), wantUpsert(t, o, "typed", "eu|2"), wantUpsert(t, o, "typed", "us|1")})
	if !last.Last || last.EndLSN <= last.CommitLSN || last.Seq != 0 {
		t.Fatalf("last chunk %+v: want Last, EndLSN after CommitLSN, Seq 0", last)
	}
	for _, ch := range got {
		if ch.Table != c.Tables()[0] {
			t.Fatalf("change table %p is not the capture's table %p", ch.Table, c.Tables()[0])
		}
	}
	if !slices.Equal(c.Tables()[0].KeyIdx, []int{1, 0}) || c.Tables()[0].Columns[6].Type != "timestamp with time zone" || c.Tables()[0].Columns[3].Type != "numeric(14,4)" {
		t.Fatalf("table layout: key %v, columns %v", c.Tables()[0].KeyIdx, c.Tables()[0].Columns)
	}

	// Updates, one of them changing the key.
	exec(t, pool, `BEGIN;
		UPDATE public.typed SET n = -0.0001, txt = 'changed', ints = '{{1,2},{3,4}}' WHERE region = 'eu' AND id = 1;
		UPDATE public.typed SET region = 'asia' WHERE region = 'us' AND id = 1;
		COMMIT`)
	got, _ = nextTx(t, s)
	o = pgsourceRows(t, pool, typed)
	check("updates", got, []string{
		wantUpsert(t, o, "typed", "eu|1"),
		`delete typed "1" "us" ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅`,
		wantUpsert(t, o, "typed", "asia|1")})
	// A delete's row has the key only, in the owned columns' order.
	if k := got[1].Table.KeyOf(got[1].Row); !slices.Equal(k, []string{"us", "1"}) {
		t.Fatalf("delete key %q", k)
	}

	// Delete.
	exec(t, pool, `DELETE FROM public.typed WHERE region = 'eu' AND id = 2`)
	got, _ = nextTx(t, s)
	check("delete", got, []string{`delete typed "2" "eu" ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅ ∅`})

	// Two tables in one transaction keep their order.
	exec(t, pool, `BEGIN;
		INSERT INTO public.other VALUES ('x', 1);
		UPDATE public.typed SET flag = NOT flag WHERE region = 'eu';
		INSERT INTO public.other VALUES ('y', NULL);
		DELETE FROM public.other WHERE code = 'x';
		COMMIT`)
	got, _ = nextTx(t, s)
	o = pgsourceRows(t, pool, typed)
	check("two tables", got, []string{`upsert other "x" "1"`, wantUpsert(t, o, "typed", "eu|1"), `upsert other "y" ∅`, `delete other "x" ∅`})
	if got[0].Table != c.Tables()[1] || got[0].Table.Index != 1 {
		t.Fatalf("other's table: %+v", got[0].Table)
	}

	// A transaction that touches no captured table is not handed over.
	exec(t, pool, "CREATE TABLE public.unrelated (id int PRIMARY KEY)", "INSERT INTO public.unrelated VALUES (1)")

	// Truncate is reported.
	exec(t, pool, "TRUNCATE public.typed, public.other")
	got, _ = nextTx(t, s)
	check("truncate", got, []string{"truncate typed", "truncate other"})
}

func TestStreamChunksLargeTransactions(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.t (id int PRIMARY KEY, v text)")
	cfg := newConfig(t, dbURL, spec("public.t", "id"))
	cfg.ChunkChanges = 10
	cfg.ChunkBytes = 2000
	c := open(t, cfg)
	s := startStream(t, c)

	exec(t, pool, "INSERT INTO public.t SELECT i, 'v' || i FROM generate_series(1, 35) i",
		// 10 rows of 300 bytes: the byte bound splits them into chunks of 6 and 4.
		"UPDATE public.t SET v = repeat('x', 300) WHERE id <= 10",
		"INSERT INTO public.t VALUES (100, 'one')")
	type shape struct {
		seq, n int
		last   bool
	}
	read := func() []shape {
		t.Helper()
		var out []shape
		var commit LSN
		for {
			ch, err := s.Next(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			if commit == 0 {
				commit = ch.CommitLSN
			}
			if ch.CommitLSN != commit {
				t.Fatalf("chunk of commit %s inside the transaction of %s", ch.CommitLSN, commit)
			}
			if ch.Last != (ch.EndLSN != 0) {
				t.Fatalf("chunk %d: Last %v with EndLSN %s", ch.Seq, ch.Last, ch.EndLSN)
			}
			out = append(out, shape{ch.Seq, len(ch.Changes), ch.Last})
			if ch.Last {
				return out
			}
		}
	}
	tests := []struct {
		name string
		want []shape
	}{
		{"by count", []shape{{0, 10, false}, {1, 10, false}, {2, 10, false}, {3, 5, true}}},
		{"by bytes", []shape{{0, 6, false}, {1, 4, true}}},
		{"small", []shape{{0, 1, true}}},
	}
	for _, tt := range tests {
		if got := read(); !slices.Equal(got, tt.want) {
			t.Errorf("%s: chunks %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestStreamRestartAfterConfirm: a restart from the confirmed position
// resumes with the next transaction; what was handed over but not
// confirmed comes again.
func TestStreamRestartAfterConfirm(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.t (id int PRIMARY KEY, v int)")
	c := open(t, newConfig(t, dbURL, spec("public.t", "id")))
	s := startStream(t, c)
	for i := 1; i <= 5; i++ {
		exec(t, pool, fmt.Sprintf("INSERT INTO public.t VALUES (%d, 0)", i))
	}
	var ends []LSN
	for range 5 {
		_, last := nextTx(t, s)
		ends = append(ends, last.EndLSN)
	}
	s.Confirm(ends[2])
	s.Confirm(ends[1]) // an older confirmation is ignored
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	st, err := c.SlotState(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.ConfirmedFlushLSN != ends[2] || st.Active {
		t.Fatalf("slot after close: confirmed %s active %v, want %s, inactive", st.ConfirmedFlushLSN, st.Active, ends[2])
	}

	for _, from := range []LSN{ends[2], 0, ends[0]} { // the server never goes back before its confirmed LSN
		t.Run("from "+from.String(), func(t *testing.T) {
			s := openStream(t, c, from)
			for want := 4; want <= 5; want++ {
				got, _ := nextTx(t, s)
				equal(t, "replayed", renderAll(got), []string{fmt.Sprintf(`upsert t "%d" "0"`, want)})
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestStreamIdleHeartbeat: with nothing of ours pending, the slot follows
// the server's WAL, written by other tables, so it does not pin WAL.
func TestStreamIdleHeartbeat(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.t (id int PRIMARY KEY)", "CREATE TABLE public.busy (id serial PRIMARY KEY, pad text)")
	c := open(t, newConfig(t, dbURL, spec("public.t", "id")))
	s := startStream(t, c)

	// One change of ours, handed over and not yet confirmed: the slot
	// must not move past it, whatever else is written.
	exec(t, pool, "INSERT INTO public.t VALUES (1)")
	_, last := nextTx(t, s)
	before, err := c.SlotState(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	var walNow LSN
	for range 5 {
		exec(t, pool, "INSERT INTO public.busy (pad) SELECT repeat('x', 1000) FROM generate_series(1, 100)")
	}
	if err := pool.QueryRow(testCtx(t), "SELECT pg_current_wal_lsn()::text").Scan(&walNow); err != nil {
		t.Fatal(err)
	}
	// Status updates go on for a second; the slot stays below our change.
	var t0 time.Time
	if err := pool.QueryRow(testCtx(t), "SELECT now()").Scan(&t0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "status updates", 10*time.Second, func() (bool, error) {
		var replied bool
		err := pool.QueryRow(testCtx(t), `
SELECT coalesce(bool_or(r.reply_time > $2::timestamptz + interval '1 s'), false)
FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1`, c.cfg.Slot, t0).Scan(&replied)
		return replied, err
	})
	st, err := c.SlotState(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.ConfirmedFlushLSN >= last.EndLSN {
		t.Fatalf("slot confirmed %s, past the unconfirmed transaction ending at %s", st.ConfirmedFlushLSN, last.EndLSN)
	}
	if st.ConfirmedFlushLSN < before.ConfirmedFlushLSN {
		t.Fatalf("slot went back from %s to %s", before.ConfirmedFlushLSN, st.ConfirmedFlushLSN)
	}

	// Once confirmed, the slot follows the WAL written to other tables.
	s.Confirm(last.EndLSN)
	eventually(t, "slot follows the WAL", 20*time.Second, func() (bool, error) {
		st, err := c.SlotState(testCtx(t))
		return st.ConfirmedFlushLSN >= walNow, err
	})
}

// TestStreamSlowConsumer: while the caller does not take chunks, status
// updates keep the connection alive past wal_sender_timeout.
func TestStreamSlowConsumer(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	db := dbName(t, dbURL)
	exec(t, pool, "ALTER DATABASE "+db+" SET wal_sender_timeout = '1s'", "CREATE TABLE public.t (id int PRIMARY KEY)")
	c := open(t, newConfig(t, dbURL, spec("public.t", "id")))
	s := startStream(t, c)
	for i := range 4 {
		exec(t, pool, fmt.Sprintf("INSERT INTO public.t VALUES (%d)", i))
	}
	var pid int
	eventually(t, "walsender", 10*time.Second, func() (bool, error) {
		err := pool.QueryRow(testCtx(t), "SELECT coalesce(max(active_pid), 0) FROM pg_replication_slots WHERE slot_name = $1", c.cfg.Slot).Scan(&pid)
		return pid != 0, err
	})
	// Three timeouts long, the caller takes nothing.
	timer := time.NewTimer(3 * time.Second)
	<-timer.C
	for i := range 4 {
		got, _ := nextTx(t, s)
		equal(t, "after the pause", renderAll(got), []string{fmt.Sprintf(`upsert t "%d"`, i)})
	}
	var same int
	if err := pool.QueryRow(testCtx(t), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid = $2", c.cfg.Slot, pid).Scan(&same); err != nil || same != 1 {
		t.Fatalf("the walsender changed or went away (err %v): the connection timed out", err)
	}
}

func TestStreamToastUnchanged(t *testing.T) {
	t.Parallel()
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("replica identity full %v", full), func(t *testing.T) {
			t.Parallel()
			dbURL, pool := newDB(t)
			exec(t, pool, "CREATE TABLE public.t (id int PRIMARY KEY, v int, big text)",
				"ALTER TABLE public.t ALTER COLUMN big SET STORAGE EXTERNAL") // stored out of line, uncompressed
			if full {
				exec(t, pool, "ALTER TABLE public.t REPLICA IDENTITY FULL")
			}
			c := open(t, newConfig(t, dbURL, spec("public.t", "id")))
			s := startStream(t, c)
			big1, big2 := strings.Repeat("a", 9000), strings.Repeat("b", 9000)
			exec(t, pool, "INSERT INTO public.t VALUES (1, 0, '"+big1+"'), (2, 0, '"+big1+"')")
			_, last := nextTx(t, s)
			s.Confirm(last.EndLSN)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			// tx1 leaves big as it was; tx2 changes it; tx3 deletes row 2
			// after an update that left big unchanged. All of them are
			// decoded after the last one committed.
			exec(t, pool, "UPDATE public.t SET v = 1 WHERE id = 1",
				"UPDATE public.t SET big = '"+big2+"' WHERE id = 1",
				"UPDATE public.t SET v = 1 WHERE id = 2",
				"DELETE FROM public.t WHERE id = 2")
			s = openStream(t, c, 0)
			var seen []string
			for len(seen) == 0 || !strings.HasPrefix(seen[len(seen)-1], "delete") {
				got, _ := nextTx(t, s)
				for _, ch := range got {
					seen = append(seen, fmt.Sprintf("%s %s v=%s big=%.1s×%d", ch.Op, ch.Row[0], ch.Row[1], ch.Row[2], len(ch.Row[2])))
				}
			}
			want := []string{
				"upsert 1 v=1 big=a×9000", // FULL: the value of that moment
				"upsert 1 v=1 big=b×9000",
				"upsert 2 v=1 big=a×9000",
				"delete 2 v= big=×0",
			}
			if !full {
				want = []string{
					"upsert 1 v=1 big=b×9000", // read again: the current value
					"upsert 1 v=1 big=b×9000",
					// row 2 is gone when tx3 is decoded: skipped, its delete follows
					"delete 2 v= big=×0",
				}
			}
			equal(t, "changes", seen, want)
		})
	}
}

func TestStreamSchemaChanges(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.t (id int PRIMARY KEY, n int, gone text, extra text)")
	c := open(t, newConfig(t, dbURL, TableSpec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}, Columns: []string{"id", "n", "gone"}}))
	s := startStream(t, c)

	exec(t, pool, "INSERT INTO public.t VALUES (1, 1, 'g', 'e')",
		"ALTER TABLE public.t ALTER COLUMN n TYPE numeric(10,2)",
		"INSERT INTO public.t VALUES (2, 2, 'g', 'e')",
		"ALTER TABLE public.t DROP COLUMN extra", // not owned: nothing to say
		"INSERT INTO public.t VALUES (3, 3, 'g')")
	got, _ := nextTx(t, s)
	if got[0].Table != c.Tables()[0] || got[0].Table.Columns[1].Type != "integer" {
		t.Fatalf("before the change: table %+v", got[0].Table)
	}
	for _, want := range []string{`upsert t "2" "2.00" "g"`, `upsert t "3" "3.00" "g"`} {
		got, _ = nextTx(t, s)
		equal(t, "after the type change", renderAll(got), []string{want})
		if tb := got[0].Table; tb == c.Tables()[0] || tb.Columns[1].Type != "numeric(10,2)" || tb.Columns[0].Type != "integer" || !tb.Columns[0].Key {
			t.Fatalf("after the type change: table %+v", tb.Columns)
		}
	}

	exec(t, pool, "ALTER TABLE public.t DROP COLUMN gone", "INSERT INTO public.t VALUES (4, 4)")
	_, err := s.Next(testCtx(t))
	want := `owned column "gone" of table public.t is not in the replication stream`
	if err == nil || !strings.Contains(err.Error(), want) || !errs.IsPermanent(err) {
		t.Fatalf("got %v, want a permanent error containing %q", err, want)
	}
}

func TestSlotStateBudgetAndDrop(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.t (id int PRIMARY KEY, pad text)")
	cfg := newConfig(t, dbURL, spec("public.t", "id"))
	cfg.WALBudget = 2 << 20
	logs := &logRecorder{}
	c, err := Open(testCtx(t), cfg, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	const overBudget = "WARN replication slot retains more WAL than its budget: the reader is behind or stopped, and the source's disk fills"

	st, err := c.SlotState(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Exists || st.OverBudget || st.CurrentLSN == 0 {
		t.Fatalf("before the slot: %+v", st)
	}
	_, err = c.Stream(testCtx(t), 0)
	if !errors.Is(err, ErrSlotLost) {
		t.Fatalf("stream without a slot: %v, want ErrSlotLost", err)
	}
	snap, err := c.StartSnapshot(testCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	lsn := snap.LSN()
	if err := snap.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = c.SlotState(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	// (How much WAL a fresh slot retains depends on the transactions
	// running anywhere in the cluster when it was created.)
	if !st.Exists || st.Active || st.ConfirmedFlushLSN != lsn || st.RestartLSN > lsn || st.WALStatus != "reserved" {
		t.Fatalf("fresh slot: %+v (snapshot at %s)", st, lsn)
	}
	// Nobody streams; writes pile up behind the slot.
	exec(t, pool, "INSERT INTO public.t SELECT i, repeat(md5(i::text), 16) FROM generate_series(1, 6000) i")
	var written LSN
	if err := pool.QueryRow(testCtx(t), "SELECT pg_current_wal_lsn()::text").Scan(&written); err != nil {
		t.Fatal(err)
	}
	st, err = c.SlotState(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.LagBytes < 3<<20 || st.RetainedBytes < st.LagBytes || !st.OverBudget || st.Active {
		t.Fatalf("behind: %+v, want lag ≥ 3 MiB and over the budget of %d", st, cfg.WALBudget)
	}
	if st.LagBytes != int64(st.CurrentLSN-st.ConfirmedFlushLSN) || st.RetainedBytes != int64(st.CurrentLSN-st.RestartLSN) {
		t.Fatalf("lag %d or retained %d do not match the positions %+v", st.LagBytes, st.RetainedBytes, st)
	}
	if _, err := c.SlotState(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := logs.count(overBudget); n != 1 {
		t.Fatalf("%d over-budget warnings, want one when the slot went over", n)
	}
	// Streaming and confirming catches up: the slot passes the writes.
	s := openStream(t, c, lsn)
	_, last := nextTx(t, s)
	s.Confirm(last.EndLSN)
	eventually(t, "slot caught up", 30*time.Second, func() (bool, error) {
		st, err := c.SlotState(testCtx(t))
		return st.ConfirmedFlushLSN >= written && st.Active, err
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if err := c.Drop(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Drop(testCtx(t)); err != nil {
		t.Fatalf("second drop: %v", err)
	}
	st, err = c.SlotState(testCtx(t))
	if err != nil || st.Exists {
		t.Fatalf("after drop: %+v, %v", st, err)
	}
	_, err = c.StartSnapshot(testCtx(t), lsn)
	if !errors.Is(err, ErrSlotLost) {
		t.Fatalf("resume without the slot: %v, want ErrSlotLost", err)
	}
}
