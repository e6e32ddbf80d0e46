package pgstage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/stagetest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

func ctxOf(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// randomSchema names a fresh schema; mixed case and $ prove quoting.
func randomSchema() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "Stage$" + hex.EncodeToString(b[:])
}

// storageOn gives each test of the suite its own schema in one database.
func storageOn(dbURL string) stagetest.Storage {
	return func(t testing.TB) stagetest.Opener {
		schema := randomSchema()
		return func(t testing.TB, pipeline string) stage.Store {
			s, err := Open(ctxOf(t), Config{URL: dbURL, Schema: schema, Pipeline: pipeline})
			require.NoError(t, err)
			t.Cleanup(func() { s.Close() })
			return s
		}
	}
}

func TestConformance(t *testing.T) {
	stagetest.Run(t, storageOn(pgtest.NewDatabase(t)))
}

func BenchmarkApply(b *testing.B) {
	stagetest.BenchmarkApply(b, storageOn(pgtest.NewDatabase(b)))
}

func schemaVersion(t *testing.T, dbURL, schema string) int64 {
	t.Helper()
	return pgtest.QueryInt(t, dbURL, "SELECT coalesce(max(version), 0) FROM "+pgconn.Quote(schema)+".schema_migrations")
}

func TestMigrations(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	ctx := ctxOf(t)

	t.Run("opening twice migrates once", func(t *testing.T) {
		schema := randomSchema()
		for range 2 {
			s, err := Open(ctx, Config{URL: dbURL, Schema: schema, Pipeline: "p"})
			require.NoError(t, err)
			require.NoError(t, s.Close())
		}
		assert.Equal(t, int64(len(migrations)), schemaVersion(t, dbURL, schema))
		assert.Equal(t, int64(len(migrations)), pgtest.QueryInt(t, dbURL, "SELECT count(*) FROM "+pgconn.Quote(schema)+".schema_migrations"))
	})

	t.Run("concurrent opens migrate once", func(t *testing.T) {
		schema := randomSchema()
		errc := make(chan error, 4)
		for range 4 {
			go func() {
				s, err := Open(ctx, Config{URL: dbURL, Schema: schema, Pipeline: "p"})
				if err == nil {
					err = s.Close()
				}
				errc <- err
			}()
		}
		for range 4 {
			require.NoError(t, <-errc)
		}
		assert.Equal(t, int64(len(migrations)), schemaVersion(t, dbURL, schema))
	})

	t.Run("an older schema is migrated and keeps its data", func(t *testing.T) {
		schema := randomSchema()
		cfg := Config{URL: dbURL, Schema: schema, Pipeline: "p"}
		pool, err := pgconn.Open(ctx, dbURL, "pgstage test", 2)
		require.NoError(t, err)
		old, err := open(ctx, pool, cfg, 1)
		require.NoError(t, err)
		_, err = old.Apply(ctx, stage.SourceSide, []stage.Record{stagetest.Live("a", 7, "kept")})
		require.NoError(t, err)
		require.NoError(t, old.Close())
		require.Equal(t, int64(1), schemaVersion(t, dbURL, schema))

		s, err := Open(ctx, cfg)
		require.NoError(t, err)
		defer s.Close()
		assert.Equal(t, int64(len(migrations)), schemaVersion(t, dbURL, schema))
		pairs, err := s.Join(ctx, "t", []string{"a"})
		require.NoError(t, err)
		require.NotNil(t, pairs[0].Source)
		assert.Equal(t, int64(7), pairs[0].Source.Version)
		_, err = s.Hold(ctx, "t", stage.HoldCounts{Deletes: 1, Total: 1})
		require.NoError(t, err, "tables of the later migration exist")
	})

	t.Run("a push log of version 2 keeps its counts, without positions or reports", func(t *testing.T) {
		schema := randomSchema()
		cfg := Config{URL: dbURL, Schema: schema, Pipeline: "p"}
		pool, err := pgconn.Open(ctx, dbURL, "pgstage test", 2)
		require.NoError(t, err)
		old, err := open(ctx, pool, cfg, 2)
		require.NoError(t, err)
		scope, _, err := old.targetScope(ctx, "t")
		require.NoError(t, err)
		_, err = pool.Exec(ctx, "INSERT INTO "+pgconn.Quote(schema)+".pushes (scope, key, version, push_count, first_at, last_at) VALUES ($1, 'a', 5, 2, now(), now())", scope)
		require.NoError(t, err)
		require.NoError(t, old.Close())

		s, err := Open(ctx, cfg)
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

	t.Run("a schema newer than this build is refused", func(t *testing.T) {
		schema := randomSchema()
		s, err := Open(ctx, Config{URL: dbURL, Schema: schema, Pipeline: "p"})
		require.NoError(t, err)
		require.NoError(t, s.Close())
		pgtest.Exec(t, dbURL, "INSERT INTO "+pgconn.Quote(schema)+".schema_migrations (version, description) VALUES (999, 'from the future')")
		_, err = Open(ctx, Config{URL: dbURL, Schema: schema, Pipeline: "p"})
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
		{"schema with a quote", Config{URL: "postgres://127.0.0.1:1/x", Schema: `st"age`, Pipeline: "p"}},
		{"schema with a dot", Config{URL: "postgres://127.0.0.1:1/x", Schema: "a.b", Pipeline: "p"}},
		{"schema with SQL", Config{URL: "postgres://127.0.0.1:1/x", Schema: "x; DROP TABLE y", Pipeline: "p"}},
		{"schema too long", Config{URL: "postgres://127.0.0.1:1/x", Schema: "s234567890123456789012345678901234567890123456789012345678901234", Pipeline: "p"}},
		{"no pipeline", Config{URL: "postgres://127.0.0.1:1/x"}},
		{"bad pipeline", Config{URL: "postgres://127.0.0.1:1/x", Pipeline: "Orders"}},
		{"bad URL", Config{URL: "postgres://user:secret@[bad", Pipeline: "p"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(ctx, tc.cfg)
			require.Error(t, err)
			assert.True(t, errs.IsPermanent(err), "want permanent, got %v", err)
			assert.NotContains(t, err.Error(), "secret", "a password never shows in an error")
		})
	}
}

func TestUnreachableIsUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Nothing listens on port 1.
	_, err := Open(ctx, Config{URL: "postgres://postgres:secret@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=5", Pipeline: "p"})
	require.Error(t, err)
	assert.True(t, errs.IsUnavailable(err), "want unavailable, got %v", err)
	assert.NotContains(t, err.Error(), "secret")
}

// A store whose server goes away fails with Unavailable, then works again
// once the server is back (the pool reconnects).
func TestConnectionLossIsUnavailable(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	ctx := ctxOf(t)
	s, err := Open(ctx, Config{URL: dbURL, Schema: randomSchema(), Pipeline: "p"})
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Apply(ctx, stage.SourceSide, []stage.Record{stagetest.Live("a", 1, "x")})
	require.NoError(t, err)

	// Kill the store's sessions; the pool's idle connections are now dead.
	pgtest.Exec(t, dbURL, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'oneway stage p'")
	_, err = s.Count(ctx, stage.SourceSide)
	if err != nil {
		assert.True(t, errs.IsUnavailable(err), "a lost connection is an outage, got %v", err)
	}
	require.Eventually(t, func() bool {
		_, err := s.Count(ctx, stage.SourceSide)
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "the store recovers")
}
