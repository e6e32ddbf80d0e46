package demo

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/config"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func count(t *testing.T, path, q string) int64 {
	t.Helper()
	db, err := open(path, false)
	require.NoError(t, err)
	defer db.Close()
	var n int64
	require.NoError(t, db.QueryRowContext(testCtx(t), q).Scan(&n))
	return n
}

// copyRows copies the SoR's invoices into the target, as a pipeline that
// caught up would have.
func copyRows(t *testing.T, d *Demo) {
	t.Helper()
	db, err := open(d.TargetPath, false)
	require.NoError(t, err)
	defer db.Close()
	ctx := testCtx(t)
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(ctx, "ATTACH DATABASE ? AS src", d.SourcePath)
	require.NoError(t, err)
	_, err = conn.ExecContext(ctx, "DELETE FROM main.invoices")
	require.NoError(t, err)
	_, err = conn.ExecContext(ctx, "INSERT INTO main.invoices (id, customer, amount, status, updated_at, notes) SELECT id, customer, amount, status, updated_at, 'kept' FROM src.invoices")
	require.NoError(t, err)
}

func TestPrepareSeedsOnceAndResumes(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	d, err := Prepare(testCtx(t), dataDir)
	require.NoError(t, err)
	require.True(t, d.Seeded)
	require.Equal(t, filepath.Join(dataDir, "demo"), d.Dir)
	require.EqualValues(t, SeedRows, count(t, d.SourcePath, "SELECT count(*) FROM invoices"))
	require.EqualValues(t, 0, count(t, d.TargetPath, "SELECT count(*) FROM invoices"))
	require.EqualValues(t, 1, count(t, d.TargetPath, "SELECT count(*) FROM pragma_table_info('invoices') WHERE name = 'notes'"),
		"the target has a column of its own")

	// A change, then a restart: nothing seeded again, the change kept.
	db, err := open(d.SourcePath, false)
	require.NoError(t, err)
	_, err = db.ExecContext(testCtx(t), "DELETE FROM invoices WHERE id <= 10")
	require.NoError(t, err)
	require.NoError(t, db.Close())
	d2, err := Prepare(testCtx(t), dataDir)
	require.NoError(t, err)
	require.False(t, d2.Seeded)
	require.EqualValues(t, SeedRows-10, count(t, d.SourcePath, "SELECT count(*) FROM invoices"))

	cfg, err := os.ReadFile(d.ConfigPath)
	require.NoError(t, err)
	require.Equal(t, d.Config(), string(cfg))
	p, err := config.Load(d.ConfigPath)
	require.NoError(t, err, "the demo's config is a valid pipeline")
	require.True(t, p.Staged())
	require.Equal(t, config.KindSQLite, p.Source.Kind)
	require.Equal(t, d.SourcePath, p.Source.URL.Value())
	require.Len(t, p.Targets, 1)
	require.Equal(t, d.TargetPath, p.Targets[0].URL.Value())
	require.NotNil(t, p.Targets[0].Readback, "hand edits of the target are read back")
}

func TestConfigQuotesPaths(t *testing.T) {
	t.Parallel()
	d := &Demo{SourcePath: `/tmp/a "b" $HOME/sor.db`, TargetPath: "/tmp/x/target.db"}
	require.Contains(t, d.Config(), `url: "/tmp/a \"b\" $$HOME/sor.db"`)
}

func TestCompareAndTamper(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	d, err := Prepare(testCtx(t), dataDir)
	require.NoError(t, err)

	c, err := d.Compare(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, Comparison{SourceRows: SeedRows, TargetRows: 0, OutOfStep: SeedRows}, c)

	copyRows(t, d)
	c, err = d.Compare(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, Comparison{SourceRows: SeedRows, TargetRows: SeedRows, OutOfStep: 0}, c, "the target's own column is not compared")

	tm, err := Tamper(testCtx(t), dataDir, 3)
	require.NoError(t, err)
	require.Len(t, tm.Deleted, 3)
	require.Len(t, tm.Changed, 3)
	c, err = d.Compare(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, Comparison{SourceRows: SeedRows, TargetRows: SeedRows - 3, OutOfStep: 6}, c)

	// A row only the target has is out of step too.
	db, err := open(d.TargetPath, false)
	require.NoError(t, err)
	_, err = db.ExecContext(testCtx(t), "INSERT INTO invoices (id, customer, amount, status, updated_at) VALUES (999999, 'x', 1, 'draft', 'now')")
	require.NoError(t, err)
	require.NoError(t, db.Close())
	c, err = d.Compare(testCtx(t))
	require.NoError(t, err)
	require.EqualValues(t, 7, c.OutOfStep)

	_, err = Tamper(testCtx(t), t.TempDir(), 1)
	require.ErrorContains(t, err, "is the demo set up")
}

func TestSimulatorChangesTheSoR(t *testing.T) {
	t.Parallel()
	d, err := Prepare(testCtx(t), t.TempDir())
	require.NoError(t, err)
	copyRows(t, d)
	sim := d.NewSimulator(20*time.Millisecond, 10, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = sim.Run(ctx) })
	require.Eventually(t, func() bool {
		c, err := d.Compare(testCtx(t))
		return err == nil && c.OutOfStep >= 20
	}, 20*time.Second, 50*time.Millisecond)
	cancel()
	wg.Wait()
	require.NoError(t, runErr)
	changed := count(t, d.SourcePath, "SELECT count(*) FROM invoices WHERE updated_at > '"+timestamp(time.Now().Add(-time.Hour))+"'")
	require.Positive(t, changed, "updates and inserts carry the current time")

	// Burst 0: no simulator, Run waits for ctx.
	idle := d.NewSimulator(time.Millisecond, 0, slog.New(slog.DiscardHandler))
	ctx, cancel = context.WithCancel(testCtx(t))
	cancel()
	require.NoError(t, idle.Run(ctx))
}

func TestBannerNamesTheFiles(t *testing.T) {
	t.Parallel()
	d, err := Prepare(testCtx(t), t.TempDir())
	require.NoError(t, err)
	var b strings.Builder
	d.Banner(&b, "http://127.0.0.1:8080/")
	out := b.String()
	for _, want := range []string{"http://127.0.0.1:8080/", "sor.db", "target.db", "oneway.yaml", "oneway demo tamper", "seeded with 2000"} {
		require.Contains(t, out, want)
	}
}
