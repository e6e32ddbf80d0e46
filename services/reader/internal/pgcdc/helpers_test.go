package pgcdc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"))
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testLog(t *testing.T) *slog.Logger {
	if os.Getenv("PGCDC_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// logRecorder is a slog handler that keeps the messages of its records.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Level.String()+" "+r.Message)
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

func (h *logRecorder) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// newDB creates a database and returns its URL and a pool with oneway's
// session parameters.
func newDB(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	pool, err := pgconn.Open(t.Context(), dbURL, "pgcdc-test", 6)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return dbURL, pool
}

func exec(t *testing.T, pool *pgxpool.Pool, sql ...string) {
	t.Helper()
	for _, s := range sql {
		if _, err := pool.Exec(testCtx(t), s); err != nil {
			t.Fatalf("exec %q: %v", s, err)
		}
	}
}

// uniqueName is a slot or publication name no other test uses (slot names
// are global to the cluster).
func uniqueName(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// dropSlots drops every slot whose name starts with prefix, ending the
// connections that hold them. A leftover slot pins WAL and keeps its
// database from being dropped.
func dropSlots(t testing.TB, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.ServerURL(t))
	if err != nil {
		t.Errorf("drop slots %s*: %v", prefix, err)
		return
	}
	defer conn.Close(ctx)
	for {
		rows, err := conn.Query(ctx, "SELECT slot_name, coalesce(active_pid, 0) FROM pg_replication_slots WHERE starts_with(slot_name, $1)", prefix)
		if err != nil {
			t.Errorf("drop slots %s*: %v", prefix, err)
			return
		}
		type slot struct {
			name string
			pid  int32
		}
		slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
			var s slot
			return s, r.Scan(&s.name, &s.pid)
		})
		if err != nil {
			t.Errorf("drop slots %s*: %v", prefix, err)
			return
		}
		if len(slots) == 0 {
			return
		}
		for _, s := range slots {
			if s.pid != 0 {
				_, _ = conn.Exec(ctx, "SELECT pg_terminate_backend($1)", s.pid)
			} else {
				_, _ = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.name)
			}
		}
		select {
		case <-ctx.Done():
			t.Errorf("drop slots %s*: %v", prefix, ctx.Err())
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// newConfig returns a Config with a unique slot and publication whose
// slots are dropped when the test ends.
func newConfig(t *testing.T, dbURL string, tables ...TableSpec) Config {
	t.Helper()
	slot := uniqueName("oneway_test")
	t.Cleanup(func() { dropSlots(t, slot) })
	return Config{URL: dbURL, Application: "pgcdc-test", Slot: slot, Publication: slot + "_pub", Tables: tables,
		StatusInterval: 200 * time.Millisecond}
}

func open(t *testing.T, cfg Config) *Capture {
	t.Helper()
	c, err := Open(testCtx(t), cfg, testLog(t))
	if err != nil {
		t.Fatalf("open capture: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func spec(table string, key ...string) TableSpec {
	schema, name, _ := strings.Cut(table, ".")
	return TableSpec{Table: pgconn.Table{Schema: schema, Name: name}, Key: key}
}

// startStream takes a fresh snapshot (ignoring its pages) and streams from
// its LSN.
func startStream(t *testing.T, c *Capture) *Stream {
	t.Helper()
	ctx := testCtx(t)
	snap, err := c.StartSnapshot(ctx, 0)
	if err != nil {
		t.Fatalf("start snapshot: %v", err)
	}
	lsn := snap.LSN()
	if err := snap.Close(); err != nil {
		t.Fatal(err)
	}
	return openStream(t, c, lsn)
}

func openStream(t *testing.T, c *Capture, from LSN) *Stream {
	t.Helper()
	s, err := c.Stream(t.Context(), from)
	if err != nil {
		t.Fatalf("stream from %s: %v", from, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// nextTx reads chunks until the end of one transaction and returns its
// changes and the last chunk.
func nextTx(t *testing.T, s *Stream) ([]Change, *Chunk) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out []Change
	for {
		ch, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("next chunk: %v", err)
		}
		out = append(out, ch.Changes...)
		if ch.Last {
			return out, ch
		}
	}
}

// render shows a change as op, table and values; NULL is ∅.
func render(ch Change) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", ch.Op, ch.Table.Name.Name)
	for _, v := range ch.Row {
		if v == nil {
			b.WriteString(" ∅")
		} else {
			fmt.Fprintf(&b, " %q", v)
		}
	}
	return b.String()
}

func renderAll(chs []Change) []string {
	out := make([]string, len(chs))
	for i, ch := range chs {
		out[i] = render(ch)
	}
	return out
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got: %q\nwant: %q", what, got, want)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

// dbName is the database a URL names.
func dbName(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return pgx.Identifier{strings.TrimPrefix(u.Path, "/")}.Sanitize()
}
