package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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

// stagedPipeline is a staged pipeline whose source and target pg are the
// given databases; target pg reads back with readback (YAML flow map).
func stagedPipeline(t *testing.T, natsURL, srcURL, dstURL, readback string) *config.Pipeline {
	t.Helper()
	body := fmt.Sprintf(`pipeline: inv
mode: staged
nats: {url: %q}
stage: {url: "postgres://unused@127.0.0.1/none"}
source:
  kind: postgres
  url: %q
  table: public.invoices
  key: [id]
  columns: [id, customer, amount, updated_at]
  capture: {pattern: synthetic, poll_interval: 200ms}
targets:
  - name: pg
    kind: postgres
    url: %q
    readback: %s
`, natsURL, srcURL, dstURL, readback)
	cfg, err := config.Parse("pipeline.yaml", []byte(body), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

const invoicesDDL = `CREATE TABLE public.invoices (id bigint PRIMARY KEY, customer text, amount numeric(12,2),
  updated_at timestamptz NOT NULL DEFAULT now(), crm_notes text)`

// collector gathers the batches published on one subject.
type collector struct {
	mu      sync.Mutex
	batches []*onewayv1.Batch
}

func collect(t *testing.T, nc *nats.Conn, subject string) *collector {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cons, err := js.OrderedConsumer(ctx, bus.StreamName("inv"), jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		b, err := event.Decode(m.Data())
		if err != nil {
			t.Errorf("decode a batch on %s: %v", subject, err)
			return
		}
		c.mu.Lock()
		c.batches = append(c.batches, b)
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return c
}

// changes renders every change collected so far, in order, as "op key".
func (c *collector) changes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, b := range c.batches {
		idx := event.KeyIndexes(b)
		for _, ch := range b.GetChanges() {
			out = append(out, fmt.Sprintf("%s %s", strings.TrimPrefix(ch.GetOp().String(), "OP_"), event.Key(ch, idx)))
		}
	}
	return out
}

func (c *collector) all() []*onewayv1.Batch {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.batches)
}

func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not after %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The read-back of a target reads its owned columns (not its own), with
// the origin the stager stages as the target's side, on the target's
// subject; it sees rows deleted, edited and added by hand. It runs beside
// the source reader on the same stream: its lease, position, hash list
// and fencing are its own, so neither fences the other.
func TestReadbackBesideSourceReader(t *testing.T) {
	srcURL, dstURL := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	for _, u := range []string{srcURL, dstURL} {
		pgtest.Exec(t, u, invoicesDDL,
			`INSERT INTO public.invoices (id, customer, amount) SELECT g, 'c' || g, g FROM generate_series(1, 20) g`)
	}
	pgtest.Exec(t, dstURL, `UPDATE public.invoices SET crm_notes = 'target-owned'`)
	_, natsURL := bustest.StartJetStream(t)
	cfg := stagedPipeline(t, natsURL, srcURL, dstURL, "{poll_interval: 200ms, batch_size: 7}")
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, err := natsbus.New(nc, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureStream(context.Background(), natsbus.PipelineStream(cfg)); err != nil {
		t.Fatal(err)
	}
	target := collect(t, nc, bus.TargetSubject("inv", "pg"))
	source := collect(t, nc, bus.SourceSubject("inv"))

	src := New(cfg, b, log, nil)
	rb, err := NewReadback(cfg, "pg", b, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rb.Name() != "readback-pg" {
		t.Errorf("Name() = %q", rb.Name())
	}
	rbCycles := make(chan struct{}, 1)
	rb.OnCaughtUp = func(uint64) {
		select {
		case rbCycles <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	for _, r := range []*Reader{src, rb} {
		go func() { errc <- r.Run(ctx) }()
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		for range 2 {
			if err := <-errc; err != nil {
				t.Errorf("reader: %v", err)
			}
		}
	}
	defer stop()

	count := func(c *collector, want int) func() error {
		return func() error {
			if n := len(c.changes()); n < want {
				return fmt.Errorf("%d changes, want %d", n, want)
			}
			return nil
		}
	}
	waitFor(t, 30*time.Second, count(target, 20))
	waitFor(t, 30*time.Second, count(source, 20))
	for _, batch := range target.all() {
		if batch.GetOrigin() != "target.pg" || batch.GetPipeline() != "inv" || batch.GetTable() != "public.invoices" {
			t.Fatalf("read-back batch origin %q pipeline %q table %q", batch.GetOrigin(), batch.GetPipeline(), batch.GetTable())
		}
		var names []string
		for _, c := range batch.GetColumns() {
			names = append(names, c.GetName())
		}
		if got := strings.Join(names, ","); got != "id,customer,amount,updated_at" {
			t.Fatalf("read-back columns %s, want the owned ones", got)
		}
		if len(batch.GetChanges()) > 7 {
			t.Fatalf("read-back batch of %d changes, batch_size is 7", len(batch.GetChanges()))
		}
	}
	for _, batch := range source.all() {
		if batch.GetOrigin() != "source" {
			t.Fatalf("source batch origin %q", batch.GetOrigin())
		}
	}

	// Hand edits in the target: a row deleted, an owned column changed, a
	// target-only column changed (not seen), an orphan added.
	pgtest.Exec(t, dstURL,
		"DELETE FROM public.invoices WHERE id = 5",
		"UPDATE public.invoices SET amount = 0.01 WHERE id = 6",
		"UPDATE public.invoices SET crm_notes = 'edited' WHERE id = 8",
		"INSERT INTO public.invoices (id, customer) VALUES (999, 'orphan')")
	waitFor(t, 30*time.Second, count(target, 23))
	got := target.changes()[20:]
	slices.Sort(got)
	if want := []string{"DELETE 5", "INSERT 999", "UPDATE 6"}; !slices.Equal(got, want) {
		t.Fatalf("read-back after hand edits: %v, want %v", got, want)
	}
	if n := len(source.changes()); n != 20 {
		t.Fatalf("the source reader published %d changes, want its 20 only", n)
	}
	// Stop after a whole cycle was stored: a cycle interrupted after it
	// published sends every key it may have published again on restart
	// (by design, see capture.Cycle), which the restart below would count.
	select {
	case <-rbCycles:
	default:
	}
	select {
	case <-rbCycles:
	case <-time.After(30 * time.Second):
		t.Fatal("no read-back cycle ended after the hand edits")
	}
	stop()

	// Each side keeps its own state.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), bus.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{bus.ReaderPositionKey("inv", "source"), bus.ReaderPositionKey("inv", "target.pg")} {
		if _, err := kv.Get(context.Background(), key); err != nil {
			t.Errorf("state key %s: %v", key, err)
		}
	}
	obj, err := js.ObjectStore(context.Background(), bus.CaptureBucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bus.CaptureObject("inv", "source", "hashes"), bus.CaptureObject("inv", "target.pg", "hashes")} {
		if _, err := obj.GetInfo(context.Background(), name); err != nil {
			t.Errorf("capture object %s: %v", name, err)
		}
	}

	// A restart resumes from the read-back's own hash list: nothing new.
	rb2, err := NewReadback(cfg, "pg", b, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	cycles := make(chan struct{}, 8)
	rb2.OnCaughtUp = func(uint64) {
		select {
		case cycles <- struct{}{}:
		default:
		}
	}
	done := make(chan error, 1)
	go func() { done <- rb2.Run(ctx2) }()
	for range 2 {
		select {
		case <-cycles:
		case <-time.After(30 * time.Second):
			t.Fatal("no read-back cycle after a restart")
		}
	}
	cancel2()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(target.changes()); n != 23 {
		t.Fatalf("%d read-back changes after a restart, want 23 (nothing new)", n)
	}
}

func TestNewReadbackRefuses(t *testing.T) {
	cfg := stagedPipeline(t, "nats://127.0.0.1:1", "postgres://s@h/db", "postgres://t@h/db", "{}")
	tests := []struct {
		name   string
		mutate func(*config.Pipeline)
		target string
		want   string
	}{
		{"unknown target", func(*config.Pipeline) {}, "nope", `has no target "nope"`},
		{"no readback", func(p *config.Pipeline) { p.Targets[0].Readback = nil }, "pg", "has no readback configured"},
		{"direct mode", func(p *config.Pipeline) { p.Mode = config.ModeDirect }, "pg", "staged mode only"},
		{"mysql target", func(p *config.Pipeline) { p.Targets[0].Kind = config.KindMySQL }, "pg", "PostgreSQL and SQLite targets only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := *cfg
			c.Targets = slices.Clone(cfg.Targets)
			tt.mutate(&c)
			_, err := NewReadback(&c, tt.target, nil, slog.Default(), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewReadback: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
