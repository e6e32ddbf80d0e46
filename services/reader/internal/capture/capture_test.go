package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/pgsource"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/retry"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// These tests run captures against a real PostgreSQL and keep their state
// in a real JetStream Object Store. The publisher is a function that
// "acknowledges" every page at once: it runs the page's Commit and takes
// its position, as the reader does after JetStream's ack.

type env struct {
	pool  *pgxpool.Pool
	store *Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool, err := pgconn.Open(t.Context(), pgtest.NewDatabase(t), "capture-test", 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	_, url := bustest.StartJetStream(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b, err := natsbus.New(nc, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := b.CaptureStore(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	return &env{pool: pool, store: NewStore(b.JS, obj)}
}

func (e *env) exec(t *testing.T, sql ...string) {
	t.Helper()
	for _, s := range sql {
		if _, err := e.pool.Exec(t.Context(), s); err != nil {
			t.Fatalf("exec %q: %v", s, err)
		}
	}
}

func (e *env) source(t *testing.T, spec Spec) (*pgsource.Source, Layout) {
	t.Helper()
	src, err := pgsource.Open(t.Context(), e.pool, spec, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return src, Layout{Pipeline: "p", Table: spec.Table.String(), Columns: src.Columns(), KeyIdx: src.KeyIndexes(), Budget: 64 << 10}
}

// Spec is pgsource.Spec, shorter.
type Spec = pgsource.Spec

var _ Source = (*pgsource.Source)(nil)

var testRetry = retry.Policy{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, Attempts: 3}

// run runs capt from pos until it reported being caught up polls times,
// and returns the position it reached (as the reader would have saved it)
// and the batches it published.
func run(t *testing.T, capt Capture, pos Position, last *onewayv1.Batch, polls int) (Position, []*onewayv1.Batch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var batches []*onewayv1.Batch
	caught := 0
	err := capt.Run(ctx, pos, last, func(p Page) error {
		if p.Batch != nil {
			batches = append(batches, p.Batch)
		}
		if p.Commit != nil {
			if err := p.Commit(ctx); err != nil {
				return err
			}
		}
		pos = p.Next
		if p.CaughtUp {
			caught++
			if caught == polls {
				cancel()
			}
		}
		return ctx.Err()
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("capture: %v", err)
	}
	if caught < polls {
		t.Fatalf("caught up %d times, want %d", caught, polls)
	}
	return pos, batches
}

// describe renders batches as "op key=value" lines (value of column 1).
func describe(batches []*onewayv1.Batch) string {
	var out []string
	for _, b := range batches {
		for _, c := range b.GetChanges() {
			vals, _ := event.Row(c.GetRow(), nil)
			op := strings.ToLower(strings.TrimPrefix(c.GetOp().String(), "OP_"))
			if c.GetOp() == onewayv1.Op_OP_DELETE {
				out = append(out, fmt.Sprintf("%s %s", op, vals[0]))
			} else {
				out = append(out, fmt.Sprintf("%s %s=%s", op, vals[0], vals[1]))
			}
		}
	}
	return strings.Join(out, ", ")
}

func (e *env) cycle(t *testing.T, spec Spec, window time.Duration) *Cycle {
	src, layout := e.source(t, spec)
	return &Cycle{Source: src, Layout: layout, Store: e.store, ObjectName: "p.reader.source.hashes",
		Window: window, BatchSize: 7, Interval: time.Millisecond, Log: slog.New(slog.DiscardHandler), Retry: testRetry}
}

func firstCycle(t *testing.T) Position {
	p, _, err := Transition(Position{}, Setup{Pattern: "synthetic", Source: "public.t(id)"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSyntheticCycles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, "CREATE TABLE public.t (id integer PRIMARY KEY, v text)",
		"INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 20) g")
	c := e.cycle(t, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}}, 0)

	pos, batches := run(t, c, firstCycle(t), nil, 1)
	if n := strings.Count(describe(batches), "upsert"); n != 20 {
		t.Fatalf("first cycle: %d upserts, want 20: %s", n, describe(batches))
	}
	if batches[0].GetPattern() != onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT {
		t.Errorf("the first cycle is not sent as a snapshot: %v", batches[0].GetPattern())
	}
	if pos.Cycle != 2 || pos.DoneBound == "" {
		t.Fatalf("after one cycle: %+v", pos)
	}

	// Nothing changed: several cycles emit nothing.
	pos, batches = run(t, c, pos, nil, 3)
	if len(batches) != 0 {
		t.Fatalf("unchanged table: %s", describe(batches))
	}

	e.exec(t, "UPDATE public.t SET v = 'changed' WHERE id IN (3, 20)",
		"UPDATE public.t SET v = v WHERE id = 4", // a write that changes nothing
		"DELETE FROM public.t WHERE id IN (1, 7, 8)",
		"INSERT INTO public.t VALUES (0, 'new zero'), (21, 'new')")
	pos, batches = run(t, c, pos, nil, 1)
	if got, want := describe(batches), "delete 1, insert 0=new zero, update 3=changed, delete 7, delete 8, update 20=changed, insert 21=new"; !sameSet(got, want) {
		t.Fatalf("changes:\n got: %s\nwant: %s", got, want)
	}
	_, batches = run(t, c, pos, nil, 2)
	if len(batches) != 0 {
		t.Fatalf("after the changes: %s", describe(batches))
	}
}

func sameSet(a, b string) bool {
	x, y := strings.Split(a, ", "), strings.Split(b, ", ")
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// TestSyntheticResumesAfterCrash: a cycle publishes an update of key 10
// and the reader dies before the cycle's list is stored; the key changes
// back before the restart. Compared with the old list the key looks
// unchanged, yet the targets hold the published update: the resumed cycle
// must send the key's state again (it does, for every key up to the last
// one published, taken from the last batch on the subject).
func TestSyntheticResumesAfterCrash(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, "CREATE TABLE public.t (id integer PRIMARY KEY, v text)",
		"INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 30) g")
	c := e.cycle(t, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}}, 0)
	pos, _ := run(t, c, firstCycle(t), nil, 1)
	saved := pos

	e.exec(t, "UPDATE public.t SET v = 'x' WHERE id IN (10, 25)")
	// Cycle 2 dies right after publishing the batch with key 10.
	var last *onewayv1.Batch
	errCrash := errors.New("crash")
	err := c.Run(t.Context(), pos, nil, func(p Page) error {
		if p.Batch != nil {
			last = p.Batch
			if strings.Contains(describe([]*onewayv1.Batch{p.Batch}), "update 10=x") {
				return errCrash
			}
		}
		if p.Save {
			saved = p.Next
		}
		return nil
	})
	if !errors.Is(err, errCrash) {
		t.Fatalf("run: %v", err)
	}
	if last == nil {
		t.Fatal("nothing was published")
	}
	e.exec(t, "UPDATE public.t SET v = 'v10' WHERE id = 10") // back to what the old list holds

	pos, batches := run(t, c, saved, last, 1)
	got := describe(batches)
	if !strings.Contains(got, "update 10=v10") {
		t.Fatalf("the resumed cycle did not send key 10 again: %s", got)
	}
	if !strings.Contains(got, "update 25=x") {
		t.Fatalf("the resumed cycle lost key 25: %s", got)
	}
	// The crashed batch held 10 and 25 (the cycle's only changes): keys up
	// to 25 are sent again, the others are compared.
	for _, k := range []int{26, 30} {
		if strings.Contains(got, fmt.Sprintf(" %d=", k)) {
			t.Errorf("key %d, past what was published, was sent again: %s", k, got)
		}
	}
	if _, batches = run(t, c, pos, nil, 1); len(batches) != 0 {
		t.Fatalf("the next cycle: %s", describe(batches))
	}
}

// TestWindow: the first cycle reads the whole table; later cycles only the
// window. A key deleted inside the window is a delete; a key whose date
// moved out of the window is dropped from the list and its new state sent
// (no delete); a row outside the window that changes is not seen.
func TestWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, "CREATE TABLE public.t (id integer PRIMARY KEY, v text, day timestamptz NOT NULL)",
		`INSERT INTO public.t SELECT g, 'v' || g, CASE WHEN g <= 5 THEN now() - interval '30 days' ELSE now() - interval '1 hour' END
		 FROM generate_series(1, 12) g`)
	c := e.cycle(t, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}, WindowColumn: "day"}, 24*time.Hour)
	p0, _, _ := Transition(Position{}, Setup{Pattern: "window", Source: "public.t(id)"})
	pos, batches := run(t, c, p0, nil, 1)
	if n := strings.Count(describe(batches), "upsert"); n != 12 {
		t.Fatalf("first cycle: %d upserts, want all 12: %s", n, describe(batches))
	}
	pos, batches = run(t, c, pos, nil, 2)
	if len(batches) != 0 {
		t.Fatalf("unchanged: %s", describe(batches))
	}
	e.exec(t,
		"DELETE FROM public.t WHERE id IN (6, 2)",                                            // inside, outside the window
		"UPDATE public.t SET v = 'moved out', day = now() - interval '40 days' WHERE id = 7", // leaves the window
		"UPDATE public.t SET day = now() - interval '40 days' WHERE id = 8",                  // leaves the window; only its date changed
		"UPDATE public.t SET v = 'changed outside' WHERE id = 3",
		"UPDATE public.t SET v = 'changed inside' WHERE id = 9",
		"INSERT INTO public.t VALUES (13, 'new', now())")
	pos, batches = run(t, c, pos, nil, 1)
	got := describe(batches)
	want := "delete 6, update 7=moved out, update 8=v8, update 9=changed inside, insert 13=new"
	if !sameSet(got, want) {
		t.Fatalf("changes:\n got: %s\nwant: %s", got, want)
	}
	// 7 and 8 left the list: changing them now is not seen; nor is 3.
	e.exec(t, "UPDATE public.t SET v = 'unseen' WHERE id IN (3, 7, 8)")
	if _, batches = run(t, c, pos, nil, 1); len(batches) != 0 {
		t.Fatalf("rows outside the window were seen: %s", describe(batches))
	}
}

// TestWatermarkCDCNoNoOp: a date watermark (every row of a day shares its
// value) read with an overlap: polls read the same rows again and again,
// and emit only real changes, also across a restart.
func TestWatermarkCDCNoNoOp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, "CREATE TABLE public.t (id integer PRIMARY KEY, v text, day date NOT NULL DEFAULT current_date)",
		"INSERT INTO public.t (id, v) SELECT g, 'v' || g FROM generate_series(1, 30) g",
		"INSERT INTO public.t (id, v, day) VALUES (100, 'yesterday', current_date - 1)")
	src, layout := e.source(t, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"},
		WatermarkColumn: "day", Marks: pgsource.MarksCoarse, Epoch: true})
	w := &Watermark{Source: src, Layout: layout, BatchSize: 7, Interval: time.Millisecond, CDC: true, Overlap: 24 * time.Hour,
		Store: e.store, ObjectName: "p.reader.source.overlap", Log: slog.New(slog.DiscardHandler), Retry: testRetry}
	p0, _, _ := Transition(Position{}, Setup{Pattern: "watermark_cdc", Source: "public.t(id)", Column: "day"})
	pos, batches := run(t, w, p0, nil, 1)
	// The snapshot sends all 31; the first poll sends the overlap zone once
	// more (the snapshot does not fill the overlap state).
	if n := strings.Count(describe(batches), "upsert"); n < 31 {
		t.Fatalf("snapshot and first poll: %d upserts", n)
	}
	pos, batches = run(t, w, pos, nil, 10)
	if len(batches) != 0 {
		t.Fatalf("polls without changes emitted: %s", describe(batches))
	}
	e.exec(t, "UPDATE public.t SET v = 'changed' WHERE id = 5",
		"UPDATE public.t SET v = v WHERE id = 6",
		"UPDATE public.t SET v = 'yesterday, changed' WHERE id = 100",
		"INSERT INTO public.t (id, v) VALUES (31, 'new')")
	pos, batches = run(t, w, pos, nil, 5)
	if got, want := describe(batches), "upsert 100=yesterday, changed, upsert 5=changed, upsert 31=new"; !sameSet(got, want) {
		t.Fatalf("changes:\n got: %s\nwant: %s", got, want)
	}
	// A restart (a new capture, the state from JetStream) emits nothing.
	src2, _ := e.source(t, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"},
		WatermarkColumn: "day", Marks: pgsource.MarksCoarse, Epoch: true})
	w2 := *w
	w2.Source = src2
	if _, batches = run(t, &w2, pos, nil, 5); len(batches) != 0 {
		t.Fatalf("after a restart: %s", describe(batches))
	}
}

// TestWatermarkDeleteFeed: soft deletes and a deleted-records table become
// deletes; a key deleted and inserted again ends present, whatever the
// order of the two timestamps.
func TestWatermarkDeleteFeed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t,
		"CREATE TABLE public.t (id integer PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT clock_timestamp(), deleted_at timestamptz)",
		"CREATE TABLE public.t_deleted (id integer NOT NULL, deleted_at timestamptz NOT NULL DEFAULT now())",
		`CREATE FUNCTION public.t_gone() RETURNS trigger LANGUAGE plpgsql AS $$
		 BEGIN INSERT INTO public.t_deleted (id) VALUES (OLD.id); RETURN OLD; END $$`,
		"CREATE TRIGGER t_gone AFTER DELETE ON public.t FOR EACH ROW EXECUTE FUNCTION public.t_gone()",
		"INSERT INTO public.t (id, v) SELECT g, 'v' || g FROM generate_series(1, 10) g")
	src, layout := e.source(t, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"},
		Columns: []string{"id", "v", "updated_at"}, WatermarkColumn: "updated_at", SoftDeleteColumn: "deleted_at",
		DeleteTable: pgconn.Table{Schema: "public", Name: "t_deleted"}, DeletePointer: "deleted_at"})
	w := &Watermark{Source: src, Layout: layout, BatchSize: 3, Interval: time.Millisecond,
		Log: slog.New(slog.DiscardHandler), Retry: testRetry}
	p0, _, _ := Transition(Position{}, Setup{Pattern: "watermark", Source: "public.t(id)", Column: "updated_at"})
	pos, _ := run(t, w, p0, nil, 1)
	e.exec(t,
		"UPDATE public.t SET deleted_at = now(), updated_at = clock_timestamp() WHERE id = 2",
		"DELETE FROM public.t WHERE id = 3",
		"BEGIN; DELETE FROM public.t WHERE id = 4; INSERT INTO public.t (id, v) VALUES (4, 'back'); COMMIT",
		"DELETE FROM public.t WHERE id = 5",
		"INSERT INTO public.t (id, v) VALUES (5, 'back later')")
	_, batches := run(t, w, pos, nil, 1)
	// 4 and 5 are in the table again when read: their deletes are obsolete.
	if got, want := describe(batches), "delete 2, delete 3, upsert 4=back, upsert 5=back later"; got != want {
		t.Fatalf("changes:\n got: %s\nwant: %s", got, want)
	}
}
