package capture

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/pgcdc"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// These tests run the cdc pattern against a real PostgreSQL (logical
// replication) with a publisher that plays the target: it applies each
// page to a map from key to value, as a writer would, then runs the page's
// Commit and takes its position, as the reader does after JetStream's ack.

// cdcEnv is a source database with a table t(id int primary key, v text)
// and a capture of it with a slot of its own (dropped in Cleanup: a
// leftover slot pins WAL and keeps the database from being dropped).
type cdcEnv struct {
	url  string
	pool *pgxpool.Pool
	slot string
}

func newCDCEnv(t *testing.T) *cdcEnv {
	t.Helper()
	url := pgtest.NewDatabase(t)
	pool, err := pgconn.Open(t.Context(), url, "cdc-capture-test", 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var b [5]byte
	_, _ = rand.Read(b[:])
	e := &cdcEnv{url: url, pool: pool, slot: "oneway_capture_test_" + hex.EncodeToString(b[:])}
	t.Cleanup(func() { dropTestSlot(t, e.slot) })
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	return e
}

// dropTestSlot drops the slot, ending a connection that still holds it.
func dropTestSlot(t *testing.T, slot string) {
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
			_, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
			if err == nil {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("drop slot %s: still there", slot)
}

func (e *cdcEnv) exec(t *testing.T, sql ...string) {
	t.Helper()
	for _, s := range sql {
		if _, err := e.pool.Exec(context.Background(), s); err != nil {
			t.Errorf("exec %q: %v", s, err)
		}
	}
}

// open opens a capture of t; budget is the slot's WAL budget.
func (e *cdcEnv) open(t *testing.T, budget int64) *CDC {
	t.Helper()
	c, err := pgcdc.Open(t.Context(), pgcdc.Config{URL: e.url, Application: "cdc-capture-test", Slot: e.slot, Publication: "pub_t",
		Tables:    []pgcdc.TableSpec{{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}}},
		WALBudget: budget, ChunkChanges: 5, StatusInterval: 200 * time.Millisecond}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &CDC{Source: c, Layout: Layout{Pipeline: "p", Table: "public.t", Budget: 64 << 10}, BatchSize: 7,
		Idle: 100 * time.Millisecond, SlotInterval: 100 * time.Millisecond, Slot: e.slot,
		Log: slog.New(slog.DiscardHandler), Retry: testRetry}
}

// source reads t as key → value ("NULL" for NULL).
func (e *cdcEnv) source(t *testing.T) map[string]string {
	t.Helper()
	rows, err := e.pool.Query(t.Context(), "SELECT id::text, coalesce(v, 'NULL') FROM t")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		m[k] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// target plays JetStream and a writer for one capture run.
type target struct {
	mu       sync.Mutex
	rows     map[string]string
	pos      Position
	pages    []Page // every page with a batch, in order
	caught   int
	noCommit bool // a crash between publish and ack: neither Commit nor position
}

func newTarget() *target { return &target{rows: map[string]string{}} }

func (tg *target) emit(ctx context.Context, p Page) error {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if p.Batch != nil {
		tg.pages = append(tg.pages, p)
		for _, c := range p.Batch.GetChanges() {
			vals, err := event.Row(c.GetRow(), nil)
			if err != nil {
				return err
			}
			k := string(vals[0])
			if c.GetOp() == onewayv1.Op_OP_DELETE {
				delete(tg.rows, k)
				continue
			}
			v := "NULL"
			if vals[1] != nil {
				v = string(vals[1])
			}
			tg.rows[k] = v
		}
	}
	if tg.noCommit {
		return ctx.Err()
	}
	if p.Commit != nil {
		if err := p.Commit(ctx); err != nil {
			return err
		}
	}
	tg.pos = p.Next
	if p.CaughtUp {
		tg.caught++
	}
	return ctx.Err()
}

func (tg *target) snapshot() (map[string]string, Position, int) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return maps.Clone(tg.rows), tg.pos, tg.caught
}

// running is a capture run in the background.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, c *CDC, pos Position, tg *target) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx, pos, nil, func(p Page) error { return tg.emit(ctx, p) }) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop ends the run and returns its error (nil after a clean stop).
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("capture did not stop")
		return nil
	}
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// converged waits until the target equals the source and the capture is
// caught up past that point.
func converged(t *testing.T, e *cdcEnv, tg *target) Position {
	t.Helper()
	want := e.source(t)
	var pos Position
	eventually(t, "target equals source", func() (bool, string) {
		got, p, _ := tg.snapshot()
		pos = p
		return maps.Equal(got, want), fmt.Sprintf("target %d rows, source %d rows; diff %s", len(got), len(want), diff(got, want))
	})
	return pos
}

func diff(got, want map[string]string) string {
	var out []string
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			out = append(out, fmt.Sprintf("%s: %q want %q", k, got[k], v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			out = append(out, k+": extra")
		}
	}
	if len(out) > 5 {
		out = append(out[:5], "…")
	}
	return strings.Join(out, "; ")
}

func firstCDC(t *testing.T, slot string) Position {
	t.Helper()
	p, _, err := Transition(Position{}, Setup{Pattern: config.PatternCDC, Source: "public.t(id)", Slot: slot})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The snapshot then the stream: inserts, updates, deletes and a key update
// reach the target; snapshot pages are SNAPSHOT batches, stream pages CDC.
func TestCDCSnapshotThenStream(t *testing.T) {
	e := newCDCEnv(t)
	e.exec(t, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 30) g")
	c := e.open(t, 0)
	tg := newTarget()
	start(t, c, firstCDC(t, e.slot), tg)
	pos := converged(t, e, tg)
	if pos.Phase != PhaseStream || pos.LSN == "" {
		t.Fatalf("after the snapshot: position %+v", pos)
	}
	e.exec(t,
		"INSERT INTO t VALUES (31, 'new'), (32, NULL)",
		"UPDATE t SET v = 'changed' WHERE id IN (2, 3)",
		"DELETE FROM t WHERE id = 4",
		"UPDATE t SET id = 100 WHERE id = 5", // a key update: delete 5, upsert 100
		"BEGIN; INSERT INTO t SELECT g, 'big' FROM generate_series(200, 240) g; DELETE FROM t WHERE id BETWEEN 10 AND 20; COMMIT")
	converged(t, e, tg)
	tg.mu.Lock()
	defer tg.mu.Unlock()
	var snap, stream int
	ids := map[string]bool{}
	for _, p := range tg.pages {
		switch p.Batch.GetPattern() {
		case onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT:
			snap += len(p.Batch.GetChanges())
		case onewayv1.CapturePattern_CAPTURE_PATTERN_CDC:
			stream += len(p.Batch.GetChanges())
			if p.ID == "" || ids[p.ID] {
				t.Errorf("stream page with Msg-Id %q (empty or repeated)", p.ID)
			}
			ids[p.ID] = true
		}
	}
	if snap != 30 {
		t.Errorf("snapshot sent %d rows, want 30", snap)
	}
	// 2 inserts, 2 updates, 1 delete, 2 for the key update, 41 + 11.
	if stream != 59 {
		t.Errorf("stream sent %d changes, want 59", stream)
	}
}

// Caught up means the slot's backlog was published: after a restart, the
// transactions that committed while no reader ran take a while to decode
// (here behind 200,000 rows of another table's WAL), and a quiet moment
// before they arrive is not "caught up" (`oneway up --exit-when-synced`
// would exit without them).
func TestCDCCaughtUpOnlyAfterTheBacklog(t *testing.T) {
	e := newCDCEnv(t)
	e.exec(t, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 30) g", "CREATE TABLE other (id int, pad text)")
	c := e.open(t, 0)
	tg := newTarget()
	r := start(t, c, firstCDC(t, e.slot), tg)
	pos := converged(t, e, tg)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "INSERT INTO other SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g",
		"UPDATE t SET v = 'last' WHERE id = 1")

	c.Idle = time.Millisecond
	var mu sync.Mutex
	sawLast, caught, early := false, false, false
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, pos, nil, func(p Page) error {
			mu.Lock()
			defer mu.Unlock()
			for _, ch := range p.Batch.GetChanges() {
				if vals, err := event.Row(ch.GetRow(), nil); err == nil && len(vals) > 1 && string(vals[1]) == "last" {
					sawLast = true
				}
			}
			if p.CaughtUp && !caught {
				caught, early = true, !sawLast
			}
			return nil
		})
	}()
	eventually(t, "caught up", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return caught, "no caught-up page yet"
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if early {
		t.Fatal("caught up before the backlog's last transaction was published")
	}
}

// Writes while the snapshot runs are neither lost nor applied out of
// order at the hand-off to the stream.
func TestCDCConcurrentWritesDuringSnapshot(t *testing.T) {
	e := newCDCEnv(t)
	e.exec(t, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g")
	c := e.open(t, 0)
	c.BatchSize = 50
	tg := newTarget()
	var once sync.Once
	writes := make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, firstCDC(t, e.slot), nil, func(p Page) error {
			if p.Batch != nil && p.Batch.GetPattern() == onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT {
				once.Do(func() { close(writes) })
				time.Sleep(20 * time.Millisecond) // a slow publisher: the writes overlap the pages
			}
			return tg.emit(ctx, p)
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	<-writes
	for i := range 200 {
		k := 1 + (i*37)%3000
		e.exec(t, fmt.Sprintf("UPDATE t SET v = 'w%d' WHERE id = %d", i, k),
			fmt.Sprintf("INSERT INTO t VALUES (%d, 'i%d')", 5000+i, i),
			fmt.Sprintf("DELETE FROM t WHERE id = %d", 3000-i))
	}
	converged(t, e, tg)
}

// A crash in the middle of the snapshot: the next run resumes with a bridge
// and the remaining pages, and changes made meanwhile to keys published and
// not yet published all arrive.
func TestCDCSnapshotResumesAfterCrash(t *testing.T) {
	e := newCDCEnv(t)
	e.exec(t, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200) g")
	c := e.open(t, 0)
	tg := newTarget()
	var n int
	stopAt := make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, firstCDC(t, e.slot), nil, func(p Page) error {
			if p.Batch != nil {
				if n++; n == 5 {
					close(stopAt)
					<-ctx.Done()
					return ctx.Err()
				}
			}
			return tg.emit(ctx, p)
		})
	}()
	<-stopAt
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_, pos, _ := tg.snapshot()
	if pos.Phase != PhaseSnapshot || len(pos.SnapshotKey) != 1 || pos.LSN == "" {
		t.Fatalf("position after the crash: %+v", pos)
	}
	// Changes to published keys (1..28) and to keys not yet published.
	e.exec(t, "UPDATE t SET v = 'after' WHERE id IN (3, 150)", "DELETE FROM t WHERE id IN (4, 160)",
		"INSERT INTO t VALUES (500, 'late')", "UPDATE t SET id = 600 WHERE id = 7")
	c2 := e.open(t, 0)
	start(t, c2, pos, tg)
	pos = converged(t, e, tg)
	e.exec(t, "UPDATE t SET v = 'streamed' WHERE id = 8")
	pos = converged(t, e, tg)
	if pos.Phase != PhaseStream {
		t.Fatalf("position %+v", pos)
	}
}

// A crash after publishing and before the ack: the restart streams the
// same transactions again as pages with the same Msg-Ids (JetStream drops
// them as duplicates), large transactions split the same way.
func TestCDCRepublishKeepsMsgIDs(t *testing.T) {
	e := newCDCEnv(t)
	e.exec(t, "INSERT INTO t VALUES (1, 'a')")
	c := e.open(t, 0)
	c.Layout.Budget = 400 // a few changes per message
	tg := newTarget()
	r := start(t, c, firstCDC(t, e.slot), tg)
	pos := converged(t, e, tg)
	tg.mu.Lock()
	tg.noCommit = true
	before := len(tg.pages)
	tg.mu.Unlock()
	e.exec(t, "UPDATE t SET v = 'b' WHERE id = 1",
		"INSERT INTO t SELECT g, repeat('x', 40) FROM generate_series(2, 60) g")
	eventually(t, "pages of the two transactions", func() (bool, string) {
		got, _, _ := tg.snapshot()
		return len(got) == 60, fmt.Sprintf("%d rows", len(got))
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	tg.mu.Lock()
	first := tg.pages[before:]
	tg.pages, tg.noCommit = nil, false
	tg.mu.Unlock()
	if len(first) < 4 {
		t.Fatalf("%d pages; want the large transaction split", len(first))
	}
	c.Source.Close() // its stream reported only what was confirmed
	c2 := e.open(t, 0)
	c2.Layout.Budget = 400
	start(t, c2, pos, tg)
	eventually(t, "the same pages again", func() (bool, string) {
		tg.mu.Lock()
		defer tg.mu.Unlock()
		return len(tg.pages) >= len(first), fmt.Sprintf("%d pages of %d", len(tg.pages), len(first))
	})
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for i, p := range first {
		again := tg.pages[i]
		if p.ID != again.ID || describe([]*onewayv1.Batch{p.Batch}) != describe([]*onewayv1.Batch{again.Batch}) {
			t.Fatalf("page %d: %s %q, then %s %q", i, p.ID, describe([]*onewayv1.Batch{p.Batch}), again.ID, describe([]*onewayv1.Batch{again.Batch}))
		}
	}
}

// A TRUNCATE stops the capture with a permanent error that names the table
// and tells the operator to resync; a restart stops there again.
func TestCDCTruncateStops(t *testing.T) {
	e := newCDCEnv(t)
	e.exec(t, "INSERT INTO t VALUES (1, 'a')")
	c := e.open(t, 0)
	tg := newTarget()
	r := start(t, c, firstCDC(t, e.slot), tg)
	converged(t, e, tg)
	e.exec(t, "INSERT INTO t VALUES (2, 'b')", "TRUNCATE t", "INSERT INTO t VALUES (3, 'c')")
	var err error
	select {
	case err = <-r.done:
		r.done <- err
	case <-time.After(30 * time.Second):
		t.Fatal("no stop after a truncate")
	}
	if err == nil || !errs.IsPermanent(err) || !strings.Contains(err.Error(), "public.t was truncated") ||
		!strings.Contains(err.Error(), "oneway resync") || !strings.Contains(err.Error(), e.slot) {
		t.Fatalf("error after a truncate: %v", err)
	}
	got, pos, _ := tg.snapshot()
	if got["2"] != "b" || got["3"] != "" {
		t.Errorf("target %v: want the insert before the truncate only", got)
	}
	c.Source.Close()
	err = e.open(t, 0).Run(t.Context(), pos, nil, func(p Page) error { return tg.emit(t.Context(), p) })
	if err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("restart after a truncate: %v", err)
	}
}

// A slot dropped behind the reader's back: a clear, permanent error naming
// the slot and the resync.
func TestCDCSlotLost(t *testing.T) {
	e := newCDCEnv(t)
	c := e.open(t, 0)
	tg := newTarget()
	r := start(t, c, firstCDC(t, e.slot), tg)
	eventually(t, "streaming", func() (bool, string) {
		_, pos, caught := tg.snapshot()
		return pos.Phase == PhaseStream && caught > 0, fmt.Sprintf("%+v", pos)
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	c.Source.Close()
	dropTestSlot(t, e.slot)
	_, pos, _ := tg.snapshot()
	err := e.open(t, 0).Run(t.Context(), pos, nil, func(p Page) error { return tg.emit(t.Context(), p) })
	if err == nil || !errs.IsPermanent(err) || !errors.Is(err, pgcdc.ErrSlotLost) ||
		!strings.Contains(err.Error(), "replication slot "+e.slot) || !strings.Contains(err.Error(), "oneway resync") {
		t.Fatalf("error with the slot gone: %v", err)
	}
}

// The slot's state reaches OnSlotState; over a budget of 1 byte it is
// over budget.
func TestCDCSlotState(t *testing.T) {
	e := newCDCEnv(t)
	c := e.open(t, 1)
	var mu sync.Mutex
	var last pgcdc.SlotState
	c.OnSlotState = func(s pgcdc.SlotState) {
		mu.Lock()
		defer mu.Unlock()
		last = s
	}
	tg := newTarget()
	start(t, c, firstCDC(t, e.slot), tg)
	e.exec(t, "INSERT INTO t VALUES (1, 'a')")
	eventually(t, "slot state over budget", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return last.Exists && last.OverBudget && last.RetainedBytes > 1, fmt.Sprintf("%+v", last)
	})
}

// gatedRun runs c from a first start with a publisher that can be made
// busy (it waits before taking each page), and waits for the stream phase
// (the table's row 0 is inserted for the snapshot).
type gatedRun struct {
	tg   *target
	mu   sync.Mutex
	gate chan struct{} // closed: the publisher is not busy
	done chan error    // Run's result
}

func startGated(t *testing.T, e *cdcEnv, c *CDC) *gatedRun {
	t.Helper()
	g := &gatedRun{tg: newTarget(), gate: make(chan struct{}), done: make(chan error, 1)}
	close(g.gate)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		g.done <- c.Run(ctx, firstCDC(t, e.slot), nil, func(p Page) error {
			g.mu.Lock()
			gate := g.gate
			g.mu.Unlock()
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
			return g.tg.emit(ctx, p)
		})
	}()
	t.Cleanup(func() {
		cancel()
		err := <-g.done
		g.done <- err
	})
	e.exec(t, "INSERT INTO t VALUES (0, 'snapshot')")
	eventually(t, "the stream phase", func() (bool, string) {
		_, p, _ := g.tg.snapshot()
		return p.Phase == PhaseStream, "phase " + p.Phase
	})
	return g
}

// busy makes the publisher wait (true) or go on (false).
func (g *gatedRun) busy(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if on {
		g.gate = make(chan struct{})
	} else {
		close(g.gate)
	}
}

// currentLSN is the server's WAL position now.
func (e *cdcEnv) currentLSN(t *testing.T) string {
	t.Helper()
	var lsn string
	if err := e.pool.QueryRow(t.Context(), "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	return lsn
}

// waitSent waits until the slot's walsender sent everything up to now.
func (e *cdcEnv) waitSent(t *testing.T) {
	t.Helper()
	after := e.currentLSN(t)
	eventually(t, "the walsender sent every transaction", func() (bool, string) {
		var behind int64
		err := e.pool.QueryRow(t.Context(), `SELECT coalesce(max(pg_wal_lsn_diff($2::pg_lsn, r.sent_lsn)), -1)::int8
FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1`, e.slot, after).Scan(&behind)
		return err == nil && behind <= 0, fmt.Sprintf("%d bytes behind (%v)", behind, err)
	})
	time.Sleep(200 * time.Millisecond) // the stream's goroutine queues what the socket holds
}

// Transactions that wait while the publisher is busy go out as one page:
// its ID names the first and the last, each page's last change carries the
// LSN to resume from, and Recover moves a position saved before such pages
// to after them.
func TestCDCMergesWaitingTransactions(t *testing.T) {
	e := newCDCEnv(t)
	c := e.open(t, 0)
	c.BatchSize = 100
	g := startGated(t, e, c)
	tg := g.tg
	tg.mu.Lock()
	first := len(tg.pages)
	tg.mu.Unlock()

	g.busy(true)
	before := Position{Phase: PhaseStream, LSN: e.currentLSN(t)}
	const txs = 30
	for i := 1; i <= txs; i++ {
		e.exec(t, fmt.Sprintf("INSERT INTO t VALUES (%d, 'v%d')", i, i))
	}
	e.waitSent(t) // every transaction sent by the server before the publisher frees up
	g.busy(false)
	end := converged(t, e, tg)

	tg.mu.Lock()
	pages := append([]Page(nil), tg.pages[first:]...)
	tg.mu.Unlock()
	merged := 0
	for _, p := range pages {
		if strings.Contains(p.ID, "-") {
			merged++
		}
	}
	if len(pages) >= txs || merged == 0 {
		t.Fatalf("%d pages (%d merged) for %d waiting transactions; want them merged", len(pages), merged, txs)
	}
	last := pages[len(pages)-1]
	lastChange := last.Batch.GetChanges()[len(last.Batch.GetChanges())-1]
	if want := endTag(end.LSN); lastChange.GetPosition() != want {
		t.Fatalf("last change tagged %q, want %q", lastChange.GetPosition(), want)
	}

	tests := []struct {
		name  string
		pos   Position
		batch *onewayv1.Batch
		want  string // the LSN after Recover; "" = not moved
	}{
		{"saved before the last page", before, last.Batch, end.LSN},
		{"saved at the last page", end, last.Batch, ""},
		{"snapshot phase", Position{Phase: PhaseSnapshot, LSN: before.LSN}, last.Batch, ""},
		{"another pattern's batch", before, &onewayv1.Batch{Pattern: onewayv1.CapturePattern_CAPTURE_PATTERN_SYNTHETIC, Changes: last.Batch.GetChanges()}, ""},
		{"untagged", before, &onewayv1.Batch{Pattern: onewayv1.CapturePattern_CAPTURE_PATTERN_CDC, Changes: []*onewayv1.Change{{}}}, ""},
	}
	for _, tt := range tests {
		got, moved := c.Recover(tt.pos, tt.batch)
		if moved != (tt.want != "") || (moved && got.LSN != tt.want) {
			t.Errorf("%s: Recover = %q, %v; want %q", tt.name, got.LSN, moved, tt.want)
		}
	}
}

// A TRUNCATE waiting behind other transactions is not merged with them:
// they are published, then the capture stops before the TRUNCATE.
func TestCDCTruncateIsNotMerged(t *testing.T) {
	e := newCDCEnv(t)
	c := e.open(t, 0)
	c.BatchSize = 100
	g := startGated(t, e, c)
	g.busy(true)
	e.exec(t, "INSERT INTO t VALUES (1, 'a')", "INSERT INTO t VALUES (2, 'b')", "TRUNCATE t", "INSERT INTO t VALUES (3, 'c')")
	e.waitSent(t)
	g.busy(false)
	select {
	case err := <-g.done:
		g.done <- err
		if !errs.IsPermanent(err) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("capture ended with %v, want the truncate error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no stop after a truncate")
	}
	got, _, _ := g.tg.snapshot()
	if got["1"] != "a" || got["2"] != "b" || got["3"] != "" {
		t.Fatalf("target %v: want the inserts before the truncate, and nothing after it", got)
	}
}
