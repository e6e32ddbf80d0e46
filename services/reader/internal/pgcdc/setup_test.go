package pgcdc

import (
	"net/url"
	"strings"
	"testing"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

func TestCheckWALLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		level string
		want  string // "" = no error
	}{
		{"logical", ""},
		{"replica", "wal_level=replica; logical replication needs wal_level=logical: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"},
		{"minimal", "wal_level=minimal"},
	}
	for _, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			err := checkWALLevel(tt.level)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errs.IsPermanent(err) {
				t.Fatalf("got %v, want a permanent error containing %q", err, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := func() Config {
		return Config{Slot: "s", Publication: "p", Tables: []TableSpec{spec("public.t", "id")}}
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"defaults", func(*Config) {}, ""},
		{"slot with upper case", func(c *Config) { c.Slot = "Slot" }, `cdc slot name "Slot" is not valid`},
		{"slot with a quote", func(c *Config) { c.Slot = `s"; DROP` }, "cdc slot name"},
		{"slot too long", func(c *Config) { c.Slot = strings.Repeat("s", 64) }, "cdc slot name"},
		{"publication with a space", func(c *Config) { c.Publication = "my pub" }, `cdc publication name "my pub" is not valid`},
		{"no tables", func(c *Config) { c.Tables = nil }, "no tables"},
		{"table twice", func(c *Config) { c.Tables = append(c.Tables, c.Tables[0]) }, "public.t is listed twice"},
		{"no key", func(c *Config) { c.Tables[0].Key = nil }, "public.t has no key columns"},
		{"negative budget", func(c *Config) { c.WALBudget = -1 }, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok()
			tt.change(&cfg)
			err := cfg.validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.StatusInterval <= 0 || cfg.ChunkChanges != 1000 || cfg.ChunkBytes != 4<<20 {
					t.Fatalf("defaults not applied: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errs.IsPermanent(err) {
				t.Fatalf("got %v, want a permanent error containing %q", err, tt.want)
			}
		})
	}
}

func TestOpenChecksTables(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup []string
		spec  TableSpec
		want  string // "" = opens
	}{
		{
			name:  "primary key",
			setup: []string{"CREATE TABLE public.t (id int PRIMARY KEY, v text)"},
			spec:  spec("public.t", "id"),
		},
		{
			name:  "composite primary key, key in another order",
			setup: []string{"CREATE TABLE public.t (a int, b text, v text, PRIMARY KEY (a, b))"},
			spec:  spec("public.t", "b", "a"),
		},
		{
			name:  "replica identity full without a primary key",
			setup: []string{"CREATE TABLE public.t (id int NOT NULL, v text)", "ALTER TABLE public.t REPLICA IDENTITY FULL"},
			spec:  spec("public.t", "id"),
		},
		{
			name: "replica identity using a unique index",
			setup: []string{"CREATE TABLE public.t (id int NOT NULL, v text)", "CREATE UNIQUE INDEX t_id ON public.t (id)",
				"ALTER TABLE public.t REPLICA IDENTITY USING INDEX t_id"},
			spec: spec("public.t", "id"),
		},
		{
			name:  "no primary key",
			setup: []string{"CREATE TABLE public.t (id int, v text)"},
			spec:  spec("public.t", "id"),
			want:  `table public.t has no primary key, so its default REPLICA IDENTITY gives deletes no key: add a primary key on "id", or run ALTER TABLE "public"."t" REPLICA IDENTITY FULL`,
		},
		{
			name:  "replica identity nothing",
			setup: []string{"CREATE TABLE public.t (id int PRIMARY KEY, v text)", "ALTER TABLE public.t REPLICA IDENTITY NOTHING"},
			spec:  spec("public.t", "id"),
			want:  `table public.t has REPLICA IDENTITY NOTHING, so deletes carry no key: run ALTER TABLE "public"."t" REPLICA IDENTITY DEFAULT`,
		},
		{
			name:  "key outside the primary key",
			setup: []string{"CREATE TABLE public.t (id int PRIMARY KEY, code text UNIQUE NOT NULL)"},
			spec:  spec("public.t", "code"),
			want:  `key column "code" of table public.t is not part of its primary key ("id")`,
		},
		{
			name: "key outside the replica identity index",
			setup: []string{"CREATE TABLE public.t (id int NOT NULL, code text NOT NULL)", "CREATE UNIQUE INDEX t_id ON public.t (id)",
				"ALTER TABLE public.t REPLICA IDENTITY USING INDEX t_id"},
			spec: spec("public.t", "code"),
			want: `key column "code" of table public.t is not part of its REPLICA IDENTITY index ("id")`,
		},
		{
			name:  "missing table",
			setup: nil,
			spec:  spec("public.nope", "id"),
			want:  "source table public.nope does not exist",
		},
		{
			name:  "missing key column",
			setup: []string{"CREATE TABLE public.t (id int PRIMARY KEY)"},
			spec:  spec("public.t", "idd"),
			want:  `key column "idd" is not among the owned columns`,
		},
		{
			name:  "generated owned column",
			setup: []string{"CREATE TABLE public.t (id int PRIMARY KEY, v int, twice int GENERATED ALWAYS AS (v * 2) STORED)"},
			spec:  spec("public.t", "id"),
			want:  `column "twice" of public.t is GENERATED`,
		},
		{
			name:  "generated column left out",
			setup: []string{"CREATE TABLE public.t (id int PRIMARY KEY, v int, twice int GENERATED ALWAYS AS (v * 2) STORED)"},
			spec:  TableSpec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}, Columns: []string{"id", "v"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dbURL, pool := newDB(t)
			exec(t, pool, tt.setup...)
			cfg := newConfig(t, dbURL, tt.spec)
			c, err := Open(testCtx(t), cfg, testLog(t))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("open succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !errs.IsPermanent(err) {
				t.Fatalf("got %v\nwant a permanent error containing %q", err, tt.want)
			}
			// Nothing was published: the application's writes keep working.
			var n int
			if err := pool.QueryRow(testCtx(t), "SELECT count(*) FROM pg_publication WHERE pubname = $1", cfg.Publication).Scan(&n); err != nil || n != 0 {
				t.Fatalf("publication created despite the error (n=%d, err=%v)", n, err)
			}
		})
	}
}

func TestOpenPublication(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	exec(t, pool,
		"CREATE TABLE public.a (id int PRIMARY KEY)", "CREATE TABLE public.b (id int PRIMARY KEY)", "CREATE TABLE public.other (id int PRIMARY KEY)")
	cfg := newConfig(t, dbURL, spec("public.a", "id"))
	tables := func() string {
		t.Helper()
		var s string
		err := pool.QueryRow(testCtx(t), "SELECT coalesce(string_agg(tablename, ',' ORDER BY tablename), '') FROM pg_publication_tables WHERE pubname = $1", cfg.Publication).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	open(t, cfg).Close()
	if got := tables(); got != "a" {
		t.Fatalf("created publication has %q, want a", got)
	}
	// Reused, and a configured table that is missing is added; the other
	// tables of a reused publication stay.
	exec(t, pool, "ALTER PUBLICATION "+cfg.Publication+" ADD TABLE public.other")
	cfg.Tables = append(cfg.Tables, spec("public.b", "id"))
	open(t, cfg).Close()
	if got := tables(); got != "a,b,other" {
		t.Fatalf("reused publication has %q, want a,b,other", got)
	}
	// A publication that does not publish deletes is refused.
	exec(t, pool, "ALTER PUBLICATION "+cfg.Publication+" SET (publish = 'insert, update')")
	_, err := Open(testCtx(t), cfg, testLog(t))
	if err == nil || !strings.Contains(err.Error(), "does not publish every insert, update and delete") {
		t.Fatalf("got %v, want the publish error", err)
	}
	// Without truncate it opens (with a warning); DropPublication drops it.
	exec(t, pool, "ALTER PUBLICATION "+cfg.Publication+" SET (publish = 'insert, update, delete')")
	c := open(t, cfg)
	if err := c.DropPublication(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := tables(); got != "" {
		t.Fatalf("publication still has %q after DropPublication", got)
	}
}

func TestOpenNeedsReplicationRole(t *testing.T) {
	t.Parallel()
	dbURL, pool := newDB(t)
	role := uniqueName("oneway_test_role")
	exec(t, pool, "CREATE TABLE public.t (id int PRIMARY KEY)",
		"CREATE ROLE "+role+" LOGIN PASSWORD 'pw'", "GRANT SELECT ON public.t TO "+role)
	t.Cleanup(func() {
		pgtest.Exec(t, dbURL, "DROP OWNED BY "+role, "DROP ROLE "+role)
	})
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, "pw")
	cfg := newConfig(t, u.String(), spec("public.t", "id"))
	_, err = Open(testCtx(t), cfg, testLog(t))
	want := `role "` + role + `" may not use replication: run ALTER ROLE "` + role + `" REPLICATION`
	if err == nil || !strings.Contains(err.Error(), want) || !errs.IsPermanent(err) {
		t.Fatalf("got %v, want a permanent error containing %q", err, want)
	}
	if strings.Contains(err.Error(), "pw") {
		t.Fatalf("error shows the password: %v", err)
	}
}
