package app

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	_ "modernc.org/sqlite"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
)

// A SQLite target is read back like a SQLite source: its owned columns,
// on the target's subject; a row deleted by hand is seen as a delete. The
// read-back waits for a target file and table that do not exist yet.
func TestReadbackOfSQLiteTarget(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "sor.db"), filepath.Join(dir, "target.db")
	create := func(path string) {
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		for _, q := range []string{
			"CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, notes TEXT)",
			"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 10) INSERT INTO invoices (id, customer, amount) SELECT n, 'c' || n, n * 1.5 FROM g",
		} {
			if _, err := db.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
	}
	create(src)
	_, natsURL := bustest.StartJetStream(t)
	body := fmt.Sprintf(`pipeline: inv
mode: staged
nats: {url: %q}
source:
  kind: sqlite
  url: %q
  table: invoices
  key: [id]
  columns: [id, customer, amount]
  capture: {pattern: synthetic, poll_interval: 200ms}
targets:
  - name: lite
    kind: sqlite
    url: %q
    readback: {poll_interval: 200ms}
`, natsURL, src, dst)
	cfg, err := config.Parse("pipeline.yaml", []byte(body), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := natsbus.New(nc, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureStream(context.Background(), natsbus.PipelineStream(cfg)); err != nil {
		t.Fatal(err)
	}
	target := collect(t, nc, bus.TargetSubject("inv", "lite"))
	rb, err := NewReadback(cfg, "lite", b, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- rb.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("read-back: %v", err)
		}
	}()
	// The target's file does not exist yet; its table then appears later.
	waitFor(t, 30*time.Second, func() error {
		if !strings.Contains(logs.String(), "table does not exist yet") {
			return errors.New("the read-back has not said it waits for the table")
		}
		return nil
	})
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the read-back created the target file (%v)", err)
	}
	create(dst)
	waitFor(t, 30*time.Second, func() error {
		if n := len(target.changes()); n < 10 {
			return fmt.Errorf("%d read-back changes, want 10", n)
		}
		return nil
	})
	for _, batch := range target.all() {
		if batch.GetOrigin() != "target.lite" || len(batch.GetColumns()) != 3 {
			t.Fatalf("read-back batch origin %q, %d columns; want target.lite and the 3 owned", batch.GetOrigin(), len(batch.GetColumns()))
		}
	}
	db, err := sql.Open("sqlite", dst+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("DELETE FROM invoices WHERE id = 4"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error {
		ch := target.changes()
		if ch[len(ch)-1] != "DELETE 4" {
			return fmt.Errorf("read-back changes %v, want a last DELETE 4", ch)
		}
		return nil
	})
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
