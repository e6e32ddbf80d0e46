package pgcdc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// workload runs writers on public.acct (id, v): updates add 1 to v,
// inserts take new ids with v = 1, deletes remove rows; ids are never
// reused. So for every key the changes a capture hands over must count v
// up by exactly one.
type workload struct {
	t       *testing.T
	pool    *pgxpool.Pool
	commits atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup
}

const initialRows = 400

func startWorkload(t *testing.T, pool *pgxpool.Pool, writers int) *workload {
	t.Helper()
	exec(t, pool,
		"CREATE TABLE public.acct (id bigint PRIMARY KEY, v int NOT NULL, pad text)",
		"CREATE SEQUENCE public.acct_ids START 100001",
		fmt.Sprintf("INSERT INTO public.acct SELECT i, 1, 'p' FROM generate_series(1, %d) i", initialRows))
	w := &workload{t: t, pool: pool, stop: make(chan struct{})}
	for i := range writers {
		w.wg.Add(1)
		go w.write(uint64(i))
	}
	t.Cleanup(w.halt)
	return w
}

func (w *workload) write(seed uint64) {
	defer w.wg.Done()
	rnd := rand.New(rand.NewPCG(seed, 42))
	ctx := context.Background()
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		tx, err := w.pool.Begin(ctx)
		if err != nil {
			w.t.Errorf("writer: %v", err)
			return
		}
		for range 1 + rnd.IntN(3) {
			var err error
			switch p := rnd.IntN(100); {
			case p < 60:
				_, err = tx.Exec(ctx, "UPDATE public.acct SET v = v + 1 WHERE id = $1", w.randomID(rnd))
			case p < 85:
				_, err = tx.Exec(ctx, "INSERT INTO public.acct SELECT nextval('public.acct_ids'), 1, 'p'")
			default:
				_, err = tx.Exec(ctx, "DELETE FROM public.acct WHERE id = $1", w.randomID(rnd))
			}
			if err != nil {
				break // a deadlock between the writers: roll back
			}
		}
		if err := tx.Commit(ctx); err == nil {
			w.commits.Add(1)
		}
		time.Sleep(time.Millisecond) // pacing on a small machine, not synchronisation
	}
}

// randomID picks an initial id or one of the most recent inserts.
func (w *workload) randomID(rnd *rand.Rand) int64 {
	if rnd.IntN(3) == 0 {
		return 100001 + rnd.Int64N(max(1, w.commits.Load()))
	}
	return 1 + rnd.Int64N(initialRows)
}

// waitCommits waits until n more transactions committed.
func (w *workload) waitCommits(n int64) {
	w.t.Helper()
	target := w.commits.Load() + n
	eventually(w.t, "writer commits", 60*time.Second, func() (bool, error) { return w.commits.Load() >= target, nil })
}

func (w *workload) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
}

// published is what a reader would have published, in order, with the
// checks of the hand-off: per key, changes count v up by exactly one, a
// snapshot row repeats at most the last change before it, nothing comes
// after a delete, and the end state equals the table.
type published struct {
	t     *testing.T
	state map[int64]int64 // alive keys → v
	gone  map[int64]bool
	// phase: "bridge" allows first sightings of any key (the bridge
	// replays changes of keys whose rows come later); "stream" allows only
	// new keys.
	phase   string
	changes int
}

func newPublished(t *testing.T) *published {
	return &published{t: t, state: map[int64]int64{}, gone: map[int64]bool{}, phase: "bridge"}
}

func idV(t *testing.T, tb *Table, r Row) (int64, int64) {
	t.Helper()
	id, err := strconv.ParseInt(string(r[0]), 10, 64)
	if err != nil {
		t.Fatalf("id %q: %v", r[0], err)
	}
	if r[1] == nil {
		return id, -1
	}
	v, err := strconv.ParseInt(string(r[1]), 10, 64)
	if err != nil {
		t.Fatalf("v %q: %v", r[1], err)
	}
	return id, v
}

func (p *published) page(tb *Table, rows []Row) {
	p.t.Helper()
	for _, r := range rows {
		id, v := idV(p.t, tb, r)
		if p.gone[id] {
			p.t.Errorf("key %d: snapshot row v=%d after its delete (a regression)", id, v)
		}
		if last, ok := p.state[id]; ok && last != v {
			p.t.Errorf("key %d: snapshot row v=%d after a change to v=%d (lost or duplicated changes)", id, v, last)
		}
		p.state[id] = v
	}
}

func (p *published) chunk(ch *Chunk) {
	p.t.Helper()
	for _, c := range ch.Changes {
		p.changes++
		id, v := idV(p.t, c.Table, c.Row)
		last, alive := p.state[id]
		switch c.Op {
		case OpUpsert:
			switch {
			case p.gone[id]:
				p.t.Errorf("key %d: upsert v=%d after its delete", id, v)
			case alive && v != last+1:
				p.t.Errorf("key %d: upsert v=%d after v=%d (a change lost or seen twice)", id, v, last)
			case !alive && p.phase == "stream" && v != 1:
				p.t.Errorf("key %d: first seen in the stream with v=%d, want an insert (v=1): its snapshot row is missing", id, v)
			}
			p.state[id] = v
		case OpDelete:
			switch {
			case p.gone[id]:
				p.t.Errorf("key %d: deleted twice", id)
			case !alive && p.phase == "stream":
				p.t.Errorf("key %d: delete of a key never seen", id)
			}
			delete(p.state, id)
			p.gone[id] = true
		default:
			p.t.Errorf("unexpected %s", c.Op)
		}
	}
}

// check compares the published end state with the table.
func (p *published) check(pool *pgxpool.Pool) {
	p.t.Helper()
	rows, err := pool.Query(testCtx(p.t), "SELECT id, v FROM public.acct")
	if err != nil {
		p.t.Fatal(err)
	}
	want := map[int64]int64{}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			p.t.Fatal(err)
		}
		want[id] = v
	}
	if err := rows.Err(); err != nil {
		p.t.Fatal(err)
	}
	bad := 0
	for id, v := range want {
		if got, ok := p.state[id]; !ok || got != v {
			if bad++; bad <= 10 {
				p.t.Errorf("key %d: published v=%d (present %v), table has v=%d", id, got, ok, v)
			}
		}
	}
	for id, v := range p.state {
		if _, ok := want[id]; !ok {
			if bad++; bad <= 10 {
				p.t.Errorf("key %d: published v=%d, not in the table", id, v)
			}
		}
	}
	if bad > 0 {
		p.t.Fatalf("%d keys differ", bad)
	}
}

// readPages publishes pages of the snapshot from after, waiting for the
// writers between pages, and returns the last key; stopAfter > 0 stops
// after that many pages (a crash).
func readPages(t *testing.T, snap *Snapshot, tb *Table, after []string, w *workload, pub *published, stopAfter int) []string {
	t.Helper()
	for n := 1; ; n++ {
		rows, err := snap.Page(testCtx(t), tb, after, 25)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 {
			return after
		}
		pub.page(tb, rows)
		after = tb.KeyOf(rows[len(rows)-1])
		if n == stopAfter {
			return after
		}
		w.waitCommits(1) // the snapshot is read while the table changes
	}
}

// drain publishes a stream's chunks until stop says so or io.EOF (a
// bridge's end), confirming each transaction, and returns the position to
// save.
func drain(t *testing.T, s *Stream, pub *published, pos LSN, stop func(*Chunk) bool) LSN {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for {
		ch, err := s.Next(ctx)
		if isEOF(err) {
			return pos
		}
		if err != nil {
			t.Fatalf("next chunk: %v", err)
		}
		pub.chunk(ch)
		if ch.Last {
			pos = ch.EndLSN
			s.Confirm(pos)
		}
		if stop != nil && stop(ch) {
			return pos
		}
	}
}

// finish stops the writers, commits a marker row and streams until it.
func finish(t *testing.T, w *workload, s *Stream, pub *published, pos LSN) {
	t.Helper()
	w.halt()
	exec(t, w.pool, "INSERT INTO public.acct VALUES (-1, 1, 'marker')")
	drain(t, s, pub, pos, func(ch *Chunk) bool {
		for _, c := range ch.Changes {
			if string(c.Row[0]) == "-1" {
				return true
			}
		}
		return false
	})
}

// TestSnapshotHandoff: a snapshot taken and read while writers change the
// table, then the stream from its LSN: every change after the snapshot
// comes exactly once, none before it, and the end state is the table's.
func TestSnapshotHandoff(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	w := startWorkload(t, pool, 2)
	c := open(t, newConfig(t, dbURL, spec("public.acct", "id")))
	tb := c.Tables()[0]
	w.waitCommits(20)

	start := time.Now()
	snap, err := c.StartSnapshot(testCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("slot created with its snapshot in %s, at %s", time.Since(start), snap.LSN())
	pub := newPublished(t)
	bridge, err := snap.Bridge(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bridge.Next(testCtx(t)); !isEOF(err) {
		t.Fatalf("bridge of a fresh slot: %v, want io.EOF", err)
	}
	if err := bridge.Close(); err != nil {
		t.Fatal(err)
	}
	readPages(t, snap, tb, nil, w, pub, 0)
	if err := snap.Close(); err != nil {
		t.Fatal(err)
	}
	pub.phase = "stream"
	s := openStream(t, c, snap.LSN())
	w.waitCommits(20)
	finish(t, w, s, pub, snap.LSN())
	pub.check(pool)
	t.Logf("%d keys, %d changes streamed, %d writer commits", len(pub.state), pub.changes, w.commits.Load())
	if pub.changes < 20 {
		t.Fatalf("only %d changes streamed: the writers did not overlap", pub.changes)
	}
}

// TestSnapshotResume: the process dies mid-snapshot, then again in the
// bridge; each attempt resumes from the saved position. Nothing is lost,
// no key goes back, and the end state is the table's.
func TestSnapshotResume(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	w := startWorkload(t, pool, 2)
	c := open(t, newConfig(t, dbURL, spec("public.acct", "id")))
	tb := c.Tables()[0]
	w.waitCommits(20)
	pub := newPublished(t)

	// Attempt 1: the slot's own snapshot; five pages, then death.
	snap, err := c.StartSnapshot(testCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	pos := snap.LSN() // saved: the stream position
	key := readPages(t, snap, tb, nil, w, pub, 5)
	_ = snap.Close() // the process dies: its snapshot with it
	w.waitCommits(40)

	// Attempt 2: a bridge from the saved position; five transactions of it
	// published, then death.
	snap, err = c.StartSnapshot(testCtx(t), pos)
	if err != nil {
		t.Fatal(err)
	}
	if snap.LSN() <= pos {
		t.Fatalf("resumed snapshot at %s, not after the saved position %s", snap.LSN(), pos)
	}
	bridge, err := snap.Bridge(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	txs := 0
	pos = drain(t, bridge, pub, pos, func(ch *Chunk) bool {
		if ch.Last {
			txs++
		}
		return txs == 5
	})
	if txs != 5 {
		t.Fatalf("the bridge ended after %d transactions; the writers did not overlap", txs)
	}
	_ = bridge.Close()
	_ = snap.Close()
	w.waitCommits(40)

	// Attempt 3 runs to the end.
	snap, err = c.StartSnapshot(testCtx(t), pos)
	if err != nil {
		t.Fatal(err)
	}
	bridge, err = snap.Bridge(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	drain(t, bridge, pub, pos, nil)
	if err := bridge.Close(); err != nil {
		t.Fatal(err)
	}
	pos = snap.LSN()
	readPages(t, snap, tb, key, w, pub, 0)
	if err := snap.Close(); err != nil {
		t.Fatal(err)
	}
	pub.phase = "stream"
	s := openStream(t, c, pos)
	w.waitCommits(20)
	finish(t, w, s, pub, pos)
	pub.check(pool)
	t.Logf("%d keys, %d changes published, %d writer commits", len(pub.state), pub.changes, w.commits.Load())
}
