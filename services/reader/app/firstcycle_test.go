package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// directPipeline is a direct pipeline reading public.invoices of srcURL
// with the given capture (YAML flow map entries), its stream limited to
// maxBytes.
func directPipeline(t *testing.T, natsURL, srcURL, capture string, maxBytes int64) *config.Pipeline {
	t.Helper()
	body := fmt.Sprintf(`pipeline: inv
nats: {url: %q, max_bytes: %d}
source:
  kind: postgres
  url: %q
  table: public.invoices
  key: [id]
  columns: [id, customer, amount, updated_at]
  capture: {%s}
targets:
  - name: pg
    kind: postgres
    url: "postgres://unused@127.0.0.1/none"
`, natsURL, maxBytes, srcURL, capture)
	cfg, err := config.Parse("pipeline.yaml", []byte(body), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// subjectChanges reads every batch on the pipeline's source subject.
func subjectChanges(t *testing.T, js jetstream.JetStream) []*onewayv1.Batch {
	t.Helper()
	ctx := t.Context()
	st, err := js.Stream(ctx, bus.StreamName("inv"))
	if err != nil {
		t.Fatal(err)
	}
	var out []*onewayv1.Batch
	for seq := uint64(1); ; seq++ {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(bus.SourceSubject("inv")))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := event.Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
		seq = m.Sequence
	}
}

// sourceRows reads public.invoices as "customer|amount" by id.
func sourceRows(t *testing.T, url string) map[string]string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(t.Context(), "SELECT id::text, customer, amount::text FROM public.invoices")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var id, customer, amount string
		if err := rows.Scan(&id, &customer, &amount); err != nil {
			t.Fatal(err)
		}
		out[id] = customer + "|" + amount
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// A synthetic or window reader killed during its very first cycle (no
// hash list stored yet) after it published part of the table: rows it had
// published and rows it had not read yet are deleted before it starts
// again. The resumed cycle has no list to compare with; it reads back what
// the cycle published and deletes exactly the published keys that are
// gone, so a target fed by the stream ends equal to the source. The stream
// limit (max_bytes) holds the first reader mid-cycle: its publishes are
// refused once the stream is full.
func TestFirstCycleKilledFindsDeletes(t *testing.T) {
	tests := []struct {
		name    string
		capture string
		// seed sets the rows' dates: for window, odd keys lie outside
		// the window (the first cycle reads the whole table anyway).
		seed string
	}{
		{name: "synthetic", capture: "pattern: synthetic, poll_interval: 100ms, batch_size: 10",
			seed: "now()"},
		{name: "window", capture: "pattern: window, column: updated_at, window: 24h, poll_interval: 100ms, batch_size: 10",
			seed: "CASE WHEN g % 2 = 1 THEN now() - interval '10 days' ELSE now() END"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const rows = 3000
			srcURL := pgtest.NewDatabase(t)
			pgtest.Exec(t, srcURL, invoicesDDL, fmt.Sprintf(
				`INSERT INTO public.invoices (id, customer, amount, updated_at) SELECT g, 'c' || g, g, %s FROM generate_series(1, %d) g`, tt.seed, rows))
			_, natsURL := bustest.StartJetStream(t)
			nc, err := nats.Connect(natsURL)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
			b, err := natsbus.New(nc, log)
			if err != nil {
				t.Fatal(err)
			}

			// The first reader fills the small stream and is killed there.
			cfg := directPipeline(t, natsURL, srcURL, tt.capture, 40<<10)
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- New(cfg, b, log, nil).Run(ctx) }()
			waitFor(t, 30*time.Second, func() error {
				if !strings.Contains(logs.String(), "stream full") {
					return errors.New("the stream is not full yet")
				}
				return nil
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("first reader: %v", err)
			}
			published := map[int]bool{}
			for _, b := range subjectChanges(t, b.JS) {
				for _, ch := range b.GetChanges() {
					var id int
					fmt.Sscan(event.Key(ch, event.KeyIndexes(b)), &id)
					if ch.GetOp() != onewayv1.Op_OP_UPSERT {
						t.Fatalf("the first cycle published %s %d", ch.GetOp(), id)
					}
					published[id] = true
				}
			}
			ids := slices.Sorted(maps.Keys(published))
			if len(ids) < 50 || ids[len(ids)-1] >= rows-10 {
				t.Fatalf("the first reader published keys %d..%d (%d): not stopped mid-cycle", ids[0], ids[len(ids)-1], len(ids))
			}

			// Deleted: published keys (the first, the last, every 7th),
			// and keys never read.
			var deleted, unread []string
			for i, id := range ids {
				if i == 0 || i == len(ids)-1 || i%7 == 3 {
					deleted = append(deleted, fmt.Sprint(id))
				}
			}
			for id := rows - 5; id <= rows; id++ {
				unread = append(unread, fmt.Sprint(id))
			}
			pgtest.Exec(t, srcURL, "DELETE FROM public.invoices WHERE id IN ("+strings.Join(append(slices.Clone(deleted), unread...), ", ")+")")

			// Restarted with room in the stream, it completes the cycle.
			cfg = directPipeline(t, natsURL, srcURL, tt.capture, 1<<30)
			r := New(cfg, b, log, nil)
			cycles := make(chan struct{}, 1)
			r.OnCaughtUp = func(uint64) {
				select {
				case cycles <- struct{}{}:
				default:
				}
			}
			ctx, cancel = context.WithCancel(t.Context())
			go func() { done <- r.Run(ctx) }()
			select {
			case <-cycles:
			case err := <-done:
				t.Fatalf("second reader stopped: %v\n%s", err, logs.String())
			case <-time.After(60 * time.Second):
				t.Fatal("the resumed first cycle did not complete")
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("second reader: %v", err)
			}
			if !strings.Contains(logs.String(), "read back what it published") {
				t.Errorf("the resumed cycle did not read back what it published:\n%s", logs.String())
			}

			// A target fed by the stream equals the source, and the stream
			// deleted exactly the published keys that were deleted.
			target := map[string]string{}
			deletes := map[string]bool{}
			for _, b := range subjectChanges(t, b.JS) {
				for _, ch := range b.GetChanges() {
					vals, err := event.Row(ch.GetRow(), nil)
					if err != nil {
						t.Fatal(err)
					}
					id := string(vals[0])
					if ch.GetOp() == onewayv1.Op_OP_DELETE {
						delete(target, id)
						deletes[id] = true
						continue
					}
					target[id] = string(vals[1]) + "|" + string(vals[2])
				}
			}
			if got, want := slices.Sorted(maps.Keys(deletes)), slices.Sorted(slices.Values(deleted)); !slices.Equal(got, want) {
				t.Errorf("deletes in the stream: %v, want the deleted published keys %v", got, want)
			}
			src := sourceRows(t, srcURL)
			if len(src) != rows-len(deleted)-len(unread) {
				t.Fatalf("source holds %d rows", len(src))
			}
			if !maps.Equal(target, src) {
				for id, v := range target {
					if src[id] != v {
						t.Errorf("key %s: target %q, source %q", id, v, src[id])
					}
				}
				for id, v := range src {
					if _, ok := target[id]; !ok {
						t.Errorf("key %s (%q) missing at the target", id, v)
					}
				}
			}
		})
	}
}
