package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// sliceStream is a subject's messages (Published): batch i at stream
// sequence 3i+2, other subjects' messages in between.
type sliceStream struct{ batches []*onewayv1.Batch }

func (s *sliceStream) LastSeq(context.Context) (uint64, error) {
	if len(s.batches) == 0 {
		return 0, nil
	}
	return uint64(3*(len(s.batches)-1) + 2), nil
}

func (s *sliceStream) At(_ context.Context, seq uint64) (*onewayv1.Batch, uint64, bool, error) {
	for i, b := range s.batches {
		if q := uint64(3*i + 2); q >= seq {
			return b, q, true, nil
		}
	}
	return nil, 0, false, nil
}

// runUntil runs c from pos, "publishing" every page to st, and kills it
// (cancels) once a published batch holds a change matching killAt. It
// returns the position saved (as the reader would have) and the last
// batch published.
func runUntil(t *testing.T, c *Cycle, pos Position, st *sliceStream, killAt string) (Position, *onewayv1.Batch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var last *onewayv1.Batch
	killed := false
	err := c.Run(ctx, pos, nil, func(p Page) error {
		if p.Batch != nil {
			st.batches = append(st.batches, p.Batch)
			last = p.Batch
			if strings.Contains(describe([]*onewayv1.Batch{p.Batch}), killAt) {
				killed = true
				cancel()
				return ctx.Err()
			}
		}
		if p.Commit != nil {
			if err := p.Commit(ctx); err != nil {
				return err
			}
		}
		if p.Save {
			pos = p.Next
		}
		if p.CaughtUp {
			t.Fatalf("the cycle completed before %q was published", killAt)
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("run: %v", err)
	}
	if !killed {
		t.Fatalf("%q was never published", killAt)
	}
	return pos, last
}

// An interrupted cycle's inserts are found again after a restart, read back
// from the stream: published keys deleted before the restart get deletes,
// in a first cycle (no list at all) and in a later one (the list lacks the
// keys the cycle inserted), for the synthetic and the window pattern. Keys
// deleted that were never published get nothing. The following cycle sees
// nothing left to do.
func TestCycleKilledFindsPublishedDeletes(t *testing.T) {
	tests := []struct {
		name   string
		window time.Duration
		// before runs before the killed cycle, whose first cycle is
		// complete when first is false.
		first  bool
		before []string
		killAt string
		del    string // ids deleted while the reader is down
		want   string // deletes of the resumed cycle
	}{
		{name: "synthetic first cycle", first: true, killAt: "upsert 17=", del: "3, 9, 15, 16, 30, 31",
			want: "delete 3, delete 9, delete 15, delete 16"},
		{name: "window first cycle", window: 24 * time.Hour, first: true, killAt: "upsert 17=", del: "2, 3, 16, 30, 31",
			want: "delete 2, delete 3, delete 16"},
		{name: "synthetic later cycle",
			before: []string{"INSERT INTO public.t SELECT g, 'new' || g, now() FROM generate_series(101, 130) g"},
			killAt: "insert 117=", del: "5, 103, 110, 129",
			want: "delete 5, delete 103, delete 110"},
		{name: "window later cycle", window: 24 * time.Hour,
			before: []string{"INSERT INTO public.t SELECT g, 'new' || g, now() FROM generate_series(101, 130) g"},
			killAt: "insert 117=", del: "4, 103, 110, 129",
			want: "delete 4, delete 103, delete 110"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			// Odd keys lie outside the window.
			e.exec(t, "CREATE TABLE public.t (id integer PRIMARY KEY, v text, day timestamptz NOT NULL)",
				`INSERT INTO public.t SELECT g, 'v' || g, CASE WHEN g % 2 = 1 THEN now() - interval '30 days' ELSE now() END
				 FROM generate_series(1, 40) g`)
			spec := Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}}
			pattern := "synthetic"
			if tt.window > 0 {
				spec.WindowColumn, pattern = "day", "window"
			}
			c := e.cycle(t, spec, tt.window)
			st := &sliceStream{}
			c.Published = st
			pos, _, err := Transition(Position{}, Setup{Pattern: pattern, Source: "public.t(id)"})
			if err != nil {
				t.Fatal(err)
			}
			if !tt.first {
				var batches []*onewayv1.Batch
				pos, batches = run(t, c, pos, nil, 1)
				st.batches = append(st.batches, batches...)
			}
			e.exec(t, tt.before...)
			saved, last := runUntil(t, c, pos, st, tt.killAt)
			e.exec(t, "DELETE FROM public.t WHERE id IN ("+tt.del+")")

			pos, batches := run(t, c, saved, last, 1)
			var deletes []string
			for _, ch := range strings.Split(describe(batches), ", ") {
				if strings.HasPrefix(ch, "delete ") {
					deletes = append(deletes, ch)
				}
			}
			if got := strings.Join(deletes, ", "); !sameSet(got, tt.want) {
				t.Fatalf("deletes of the resumed cycle:\n got: %s\nwant: %s\n(all: %s)", got, tt.want, describe(batches))
			}
			if _, batches = run(t, c, pos, nil, 1); len(batches) != 0 {
				t.Fatalf("the next cycle: %s", describe(batches))
			}
		})
	}
}

// An attempt that fails after publishing inserts is retried in the same
// process: the keys it inserted and that were deleted before the retry
// read them get deletes (recorded by the process, not read back).
func TestCycleRetryFindsPublishedDeletes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, "CREATE TABLE public.t (id integer PRIMARY KEY, v text)",
		"INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 30) g")
	c := e.cycle(t, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}}, 0)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errRead := errors.New("connection reset")
	failed := false
	var batches []*onewayv1.Batch
	err := c.Run(ctx, firstCycle(t), nil, func(p Page) error {
		if p.Batch != nil {
			batches = append(batches, p.Batch)
			if !failed && strings.Contains(describe([]*onewayv1.Batch{p.Batch}), "upsert 10=") {
				failed = true
				e.exec(t, "DELETE FROM public.t WHERE id IN (2, 10, 25)")
				return errRead
			}
		}
		if p.Commit != nil {
			if err := p.Commit(ctx); err != nil {
				return err
			}
		}
		if p.CaughtUp {
			cancel()
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("run: %v", err)
	}
	got := describe(batches)
	for _, want := range []string{"delete 2", "delete 10"} {
		if !strings.Contains(got, want) {
			t.Errorf("the retried attempt did not send %q: %s", want, got)
		}
	}
	if strings.Contains(got, "delete 25") || strings.Contains(got, "upsert 25=") {
		t.Errorf("key 25, deleted before it was read, was sent: %s", got)
	}
	if n := strings.Count(got, "delete"); n != 2 {
		t.Errorf("%d deletes, want 2: %s", n, fmt.Sprint(got))
	}
}

// A published batch's inserted keys are packed as the read packs them (in
// key order), whatever the batch's column order; deletes and updates are
// not inserted keys. Its span comes from the tags of its first and last
// change.
func TestPublishedBatchKeysAndSpan(t *testing.T) {
	layout := &Layout{Columns: []*onewayv1.Column{{Name: "a"}, {Name: "b", Key: true}, {Name: "c", Key: true}}, KeyIdx: []int{2, 1}}
	row := func(vals ...string) []byte {
		var out [][]byte
		for _, v := range vals {
			out = append(out, []byte(v))
		}
		return event.PackRow(out)
	}
	b := &onewayv1.Batch{
		Columns: []*onewayv1.Column{{Name: "b", Key: true}, {Name: "c", Key: true}, {Name: "a"}},
		Changes: []*onewayv1.Change{
			{Op: onewayv1.Op_OP_UPSERT, Row: row("b1", "c1", "a1"), Position: cycleTag("L", 1, ordOf(1))},
			{Op: onewayv1.Op_OP_DELETE, Row: row("b2", "c2", "")},
			{Op: onewayv1.Op_OP_UPDATE, Row: row("b3", "c3", "a3")},
			{Op: onewayv1.Op_OP_INSERT, Row: row("b4", "c4", "a4"), Position: cycleTag("L", 1, ordOf(4))},
		},
	}
	idx, err := batchKeyIdx(layout, b)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pubKeys(idx, b.GetChanges())
	if err != nil {
		t.Fatal(err)
	}
	want := [][]byte{
		layout.packKey([][]byte{[]byte("a1"), []byte("b1"), []byte("c1")}),
		layout.packKey([][]byte{[]byte("a4"), []byte("b4"), []byte("c4")}),
	}
	if len(keys) != 2 || !bytes.Equal(keys[0], want[0]) || !bytes.Equal(keys[1], want[1]) {
		t.Fatalf("keys %q, want %q", keys, want)
	}
	if lo, hi, ok := batchSpan(b, "L", 1); !ok || !bytes.Equal(lo, ordOf(1)) || !bytes.Equal(hi, ordOf(4)) {
		t.Fatalf("span %x..%x ok=%v", lo, hi, ok)
	}
	if _, _, ok := batchSpan(b, "L", 2); ok {
		t.Fatal("a batch of cycle 1 spans cycle 2")
	}
	b.Changes[0].Position = ""
	if _, _, ok := batchSpan(b, "L", 1); ok {
		t.Fatal("a batch whose first change has no tag has a span")
	}
	one := &onewayv1.Batch{Changes: b.Changes[3:]}
	if lo, hi, ok := batchSpan(one, "L", 1); !ok || !bytes.Equal(lo, hi) {
		t.Fatalf("one change: span %x..%x ok=%v", lo, hi, ok)
	}
	b.Columns[1].Name = "z"
	if _, err := batchKeyIdx(layout, b); err == nil {
		t.Fatal("a batch without key column c was accepted")
	}
}
