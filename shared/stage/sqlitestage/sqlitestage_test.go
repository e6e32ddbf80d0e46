package sqlitestage

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/stagetest"
)

func ctxOf(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// storage gives each test of the suite its own data directory.
func storage(t testing.TB) stagetest.Opener {
	dir := t.TempDir()
	return func(t testing.TB, pipeline string) stage.Store {
		s, err := Open(ctxOf(t), Config{Dir: dir, Pipeline: pipeline})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) { stagetest.Run(t, storage) }

func BenchmarkApply(b *testing.B) { stagetest.BenchmarkApply(b, storage) }

func schemaVersion(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	defer db.Close()
	var v int
	require.NoError(t, db.QueryRow("SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&v))
	return v
}

func TestFileAndPragmas(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "nested")
	s, err := Open(ctxOf(t), Config{Dir: dir, Pipeline: "p"})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, filepath.Join(dir, FileName), s.Path())
	_, err = os.Stat(s.Path())
	require.NoError(t, err, "one file under the data directory")
	for _, p := range []struct{ name, want string }{{"journal_mode", "wal"}, {"synchronous", "2"}, {"busy_timeout", "10000"}, {"wal_autocheckpoint", "16384"}} {
		var got string
		require.NoError(t, s.w.QueryRow("PRAGMA "+p.name).Scan(&got))
		assert.Equal(t, p.want, got, "writer %s", p.name)
	}
	var qo string
	require.NoError(t, s.r.QueryRow("PRAGMA query_only").Scan(&qo))
	assert.Equal(t, "1", qo, "readers are query-only")
}

func TestMigrations(t *testing.T) {
	ctx := ctxOf(t)

	t.Run("opening twice migrates once", func(t *testing.T) {
		dir := t.TempDir()
		for range 2 {
			s, err := Open(ctx, Config{Dir: dir, Pipeline: "p"})
			require.NoError(t, err)
			require.NoError(t, s.Close())
		}
		assert.Equal(t, len(migrations), schemaVersion(t, filepath.Join(dir, FileName)))
	})

	t.Run("an older file is migrated and keeps its data", func(t *testing.T) {
		dir := t.TempDir()
		old, err := open(ctx, Config{Dir: dir, Pipeline: "p"}, 1)
		require.NoError(t, err)
		_, err = old.Apply(ctx, stage.SourceSide, []stage.Record{stagetest.Live("a", 7, "kept")})
		require.NoError(t, err)
		require.NoError(t, old.Close())
		require.Equal(t, 1, schemaVersion(t, filepath.Join(dir, FileName)))

		s, err := Open(ctx, Config{Dir: dir, Pipeline: "p"})
		require.NoError(t, err)
		defer s.Close()
		assert.Equal(t, len(migrations), schemaVersion(t, filepath.Join(dir, FileName)))
		pairs, err := s.Join(ctx, "t", []string{"a"})
		require.NoError(t, err)
		require.NotNil(t, pairs[0].Source)
		assert.Equal(t, int64(7), pairs[0].Source.Version)
		_, err = s.Hold(ctx, "t", stage.HoldCounts{Deletes: 1, Total: 1})
		require.NoError(t, err, "tables of the later migration exist")
	})

	t.Run("a push log of version 2 keeps its counts, without positions or reports", func(t *testing.T) {
		dir := t.TempDir()
		old, err := open(ctx, Config{Dir: dir, Pipeline: "p"}, 2)
		require.NoError(t, err)
		scope, _, err := old.targetScope(ctx, "t")
		require.NoError(t, err)
		_, err = old.w.ExecContext(ctx, "INSERT INTO pushes (scope, key, version, push_count, first_at, last_at) VALUES (?, 'a', 5, 2, 1, 2)", scope)
		require.NoError(t, err)
		require.NoError(t, old.Close())

		s, err := Open(ctx, Config{Dir: dir, Pipeline: "p"})
		require.NoError(t, err)
		defer s.Close()
		ps, err := s.Pushes(ctx, "t", []string{"a"})
		require.NoError(t, err)
		require.Len(t, ps, 1)
		assert.Equal(t, 2, ps[0].Count)
		assert.Equal(t, int64(0), ps[0].Position)
		assert.Equal(t, int64(0), ps[0].Reported, "no report staged")
		n, err := s.RecordPushes(ctx, "t", []stage.Push{{Key: "a", Version: 5, Position: 9}})
		require.NoError(t, err)
		assert.Equal(t, []int{3}, n)
	})

	t.Run("a file newer than this build is refused", func(t *testing.T) {
		dir := t.TempDir()
		s, err := Open(ctx, Config{Dir: dir, Pipeline: "p"})
		require.NoError(t, err)
		_, err = s.w.Exec("INSERT INTO schema_migrations (version, description, applied_at) VALUES (999, 'from the future', 0)")
		require.NoError(t, err)
		require.NoError(t, s.Close())
		_, err = Open(ctx, Config{Dir: dir, Pipeline: "p"})
		require.Error(t, err)
		assert.True(t, errs.IsPermanent(err), "want permanent, got %v", err)
		assert.Contains(t, err.Error(), "newer than this build")
	})
}

func TestOpenRejectsBadConfig(t *testing.T) {
	ctx := ctxOf(t)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no directory", Config{Pipeline: "p"}},
		{"no pipeline", Config{Dir: t.TempDir()}},
		{"bad pipeline", Config{Dir: t.TempDir(), Pipeline: "p-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(ctx, tc.cfg)
			require.Error(t, err)
			assert.True(t, errs.IsPermanent(err), "want permanent, got %v", err)
		})
	}
	t.Run("a data directory that is a file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "file")
		require.NoError(t, os.WriteFile(f, nil, 0o644))
		_, err := Open(ctx, Config{Dir: f, Pipeline: "p"})
		require.Error(t, err)
		assert.True(t, errs.IsUnavailable(err), "an unusable directory needs an operator: %v", err)
	})
}

// A write that cannot get the write lock within the busy timeout fails
// with a transient error, cut short by ctx.
func TestHeldWriteLockTimesOut(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(ctxOf(t), Config{Dir: dir, Pipeline: "p"})
	require.NoError(t, err)
	defer s.Close()
	other, err := sql.Open("sqlite", dsn(filepath.Join(dir, FileName), true))
	require.NoError(t, err)
	defer other.Close()
	tx, err := other.Begin() // BEGIN IMMEDIATE: holds the write lock
	require.NoError(t, err)
	defer tx.Rollback()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = s.Apply(ctx, stage.SourceSide, []stage.Record{stagetest.Live("a", 1, "x")})
	require.Error(t, err)
	assert.False(t, errs.IsPermanent(err), "a held lock is not permanent: %v", err)

	require.NoError(t, tx.Rollback())
	_, err = s.Apply(ctxOf(t), stage.SourceSide, []stage.Record{stagetest.Live("a", 1, "x")})
	require.NoError(t, err, "works once the lock is released")
}

func BenchmarkInitialLoad(b *testing.B) { stagetest.BenchmarkInitialLoad(b, storage) }
