package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// base is a minimal valid pipeline; tests derive variants from it with
// strings.Replace. Line numbers matter: see the comments.
const base = `pipeline: inv
source:
  kind: postgres
  url: postgres://u:srcpass@h/db
  table: invoices
  key: [id]
  capture:
    column: updated_at
targets:
  - name: pg
    kind: postgres
    url: postgres://u:tgtpass@h2/db
`

// Lines of base:
//  1 pipeline
//  2 source:
//  3 kind            (source mapping starts here)
//  4 url
//  5 table
//  6 key
//  7 capture:
//  8 column          (capture mapping starts here)
//  9 targets:
// 10 - name          (targets[0] mapping starts here)
// 11 kind
// 12 url

// noEnv is an environment without any variables.
func noEnv(string) (string, bool) { return "", false }

// envOf returns an environment holding vars.
func envOf(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// fieldErrors flattens err into its *FieldError values; it fails the test
// when err holds anything else.
func fieldErrors(t testing.TB, err error) []*FieldError {
	t.Helper()
	var out []*FieldError
	var walk func(error)
	walk = func(err error) {
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range joined.Unwrap() {
				walk(e)
			}
			return
		}
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Fatalf("error %q (%T) is not a *FieldError", err, err)
		}
		out = append(out, fe)
	}
	walk(err)
	return out
}

// variant returns base with each pair of replacements applied once.
func variant(t testing.TB, pairs ...string) string {
	t.Helper()
	s := base
	for i := 0; i+1 < len(pairs); i += 2 {
		require.Contains(t, s, pairs[i], "variant: %q not in base", pairs[i])
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

func TestDefaults(t *testing.T) {
	p, err := Parse("t.yaml", []byte(base), noEnv)
	require.NoError(t, err)

	require.Equal(t, "t.yaml", p.File)
	require.Equal(t, "inv", p.Pipeline)
	require.Equal(t, Secret(""), p.NATS.URL)
	require.Equal(t, int64(1<<30), p.NATS.MaxBytes)
	require.Equal(t, 168*time.Hour, p.NATS.MaxAge.Duration)
	require.Equal(t, 1, p.NATS.Replicas)
	require.Equal(t, 2*time.Minute, p.NATS.DuplicateWindow.Duration)
	require.Equal(t, "", p.Admin.Addr)

	require.Equal(t, "postgres", p.Source.Kind)
	require.Equal(t, "postgres://u:srcpass@h/db", p.Source.URL.Value())
	require.Equal(t, []string{"id"}, p.Source.Key)
	require.Empty(t, p.Source.Columns)
	require.Equal(t, Capture{
		Pattern:      "watermark",
		Column:       "updated_at",
		BatchSize:    1000,
		PollInterval: Duration{time.Second},
	}, p.Source.Capture)

	require.Len(t, p.Targets, 1)
	tg := p.Targets[0]
	require.Equal(t, "invoices", tg.Table, "target table defaults to the source table")
	require.True(t, tg.CreatesTable())
	require.NotNil(t, tg.CreateTable)
	require.Equal(t, "hard", tg.Delete)
	require.Equal(t, "", tg.SoftDeleteColumn)
	require.Equal(t, "keep", tg.Orphans)
	require.Equal(t, "oneway", tg.LedgerSchema)
	require.Equal(t, WriterOptions{
		Workers:     2,
		MaxAttempts: 5,
		AckWait:     Duration{10 * time.Second},
		FetchBatch:  8,
	}, tg.Writer)

	got, ok := p.Target("pg")
	require.True(t, ok)
	require.Same(t, &p.Targets[0], got)
	_, ok = p.Target("nope")
	require.False(t, ok)

	require.NoError(t, p.Validate())
}

func TestExplicitValuesOverrideDefaults(t *testing.T) {
	src := base + `    table: other.inv_copy
    create_table: false
    delete: soft
    soft_delete_column: deleted_at
    orphans: report
    ledger_schema: Ledger
    writer:
      workers: 64
      max_attempts: 1
      ack_wait: 1s
      fetch_batch: 1000
nats:
  url: nats://h:4222
  max_bytes: 1024
  max_age: 0s
  replicas: 3
  duplicate_window: 30s
admin:
  addr: 127.0.0.1:9090
`
	p, err := Parse("t.yaml", []byte(src), noEnv)
	require.NoError(t, err)
	require.Equal(t, NATS{
		URL:             "nats://h:4222",
		MaxBytes:        1024,
		MaxAge:          Duration{0},
		Replicas:        3,
		DuplicateWindow: Duration{30 * time.Second},
	}, p.NATS, "an explicit max_age of 0 means unlimited and is kept")
	tg := p.Targets[0]
	require.Equal(t, "other.inv_copy", tg.Table)
	require.False(t, tg.CreatesTable())
	require.Equal(t, "soft", tg.Delete)
	require.Equal(t, "deleted_at", tg.SoftDeleteColumn)
	require.Equal(t, "report", tg.Orphans)
	require.Equal(t, "Ledger", tg.LedgerSchema)
	require.Equal(t, WriterOptions{Workers: 64, MaxAttempts: 1, AckWait: Duration{time.Second}, FetchBatch: 1000}, tg.Writer)
	require.Equal(t, "127.0.0.1:9090", p.Admin.Addr)
}

func TestEnvExpansion(t *testing.T) {
	env := envOf(map[string]string{
		"SRC":   "postgres://u:envpass@h/db",
		"EMPTY": "",
		"BATCH": "250",
		"TABLE": "public.invoices",
	})
	tests := []struct {
		name   string
		src    string
		check  func(t *testing.T, p *Pipeline)
		errMsg string // exact error when non-empty
	}{
		{
			name: "set",
			src:  variant(t, "url: postgres://u:srcpass@h/db", "url: ${SRC}"),
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, "postgres://u:envpass@h/db", p.Source.URL.Value())
			},
		},
		{
			name: "embedded in text",
			src:  variant(t, "table: invoices", "table: ${SCHEMA:-public}.invoices"),
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, "public.invoices", p.Source.Table)
			},
		},
		{
			name: "unset with default",
			src:  variant(t, "table: invoices", "table: ${NOPE:-fallback}"),
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, "fallback", p.Source.Table)
			},
		},
		{
			name: "empty with default",
			src:  variant(t, "table: invoices", "table: ${EMPTY:-fallback}"),
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, "fallback", p.Source.Table)
			},
		},
		{
			name: "empty default is null",
			src:  base + "nats:\n  url: ${NOPE:-}\n  replicas: ${NOPE:-}\n",
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, Secret(""), p.NATS.URL)
				require.Equal(t, 1, p.NATS.Replicas, "a value expanding to nothing gets the default")
			},
		},
		{
			name: "set but empty without default",
			src:  base + "admin:\n  addr: ${EMPTY}\n",
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, "", p.Admin.Addr)
			},
		},
		{
			name: "integer from variable",
			src:  variant(t, "column: updated_at", "column: updated_at\n    batch_size: ${BATCH}\n    poll_interval: ${NOPE:-250ms}"),
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, 250, p.Source.Capture.BatchSize)
				require.Equal(t, 250*time.Millisecond, p.Source.Capture.PollInterval.Duration)
			},
		},
		{
			name: "dollar escapes",
			src:  variant(t, "url: postgres://u:srcpass@h/db", "url: postgres://u:pa$$${NOPE:-x}$$w$d$@h/db"),
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, "postgres://u:pa$x$w$d$@h/db", p.Source.URL.Value())
			},
		},
		{
			name: "double dollar is not re-expanded",
			src:  variant(t, "url: postgres://u:srcpass@h/db", "url: postgres://u:$${SRC}@h/db"),
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, "postgres://u:${SRC}@h/db", p.Source.URL.Value())
			},
		},
		{
			name: "quoted value stays a string",
			src:  variant(t, "table: invoices", `table: "${TABLE}"`),
			check: func(t *testing.T, p *Pipeline) {
				require.Equal(t, "public.invoices", p.Source.Table)
			},
		},
		{
			name:   "keys are not expanded",
			src:    base + "${NOPE:-admin}: {}\n",
			errMsg: `t.yaml:13: ${NOPE:-admin}: unknown field "${NOPE:-admin}"`,
		},
		{
			name:   "unset without default",
			src:    variant(t, "url: postgres://u:srcpass@h/db", "url: ${ONEWAY_SOURCE_URL}"),
			errMsg: "t.yaml:4: source.url: environment variable ONEWAY_SOURCE_URL is not set",
		},
		{
			name: "every unset variable is reported",
			src: variant(t,
				"url: postgres://u:srcpass@h/db", "url: ${A}${B}",
				"url: postgres://u:tgtpass@h2/db", "url: ${C}"),
			errMsg: "t.yaml:4: source.url: environment variable A is not set\n" +
				"t.yaml:4: source.url: environment variable B is not set\n" +
				"t.yaml:12: targets[0].url: environment variable C is not set",
		},
		{
			name:   "unset variable in an integer is reported once",
			src:    variant(t, "column: updated_at", "column: updated_at\n    batch_size: ${NOPE}"),
			errMsg: "t.yaml:9: source.capture.batch_size: environment variable NOPE is not set",
		},
		{
			name:   "unterminated reference",
			src:    variant(t, "table: invoices", "table: ${NOPE"),
			errMsg: `t.yaml:5: source.table: unterminated variable reference "${NOPE" (want ${NAME} or ${NAME:-default}; write $$ for a literal $)`,
		},
		{
			name:   "invalid name",
			src:    variant(t, "table: invoices", "table: ${1X}"),
			errMsg: `t.yaml:5: source.table: invalid variable reference "${1X}" (want ${NAME} or ${NAME:-default}; write $$ for a literal $)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("t.yaml", []byte(tt.src), env)
			if tt.errMsg != "" {
				require.EqualError(t, err, tt.errMsg)
				require.Nil(t, p)
				fieldErrors(t, err)
				return
			}
			require.NoError(t, err)
			tt.check(t, p)
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // exact messages, in order
	}{
		{
			name: "unknown top-level field",
			src:  base + "pipline: x\n",
			want: []string{`t.yaml:13: pipline: unknown field "pipline"`},
		},
		{
			name: "unknown nested field",
			src:  base + "    writr:\n      workers: 3\n",
			want: []string{`t.yaml:13: targets[0].writr: unknown field "writr"`},
		},
		{
			name: "all unknown fields are reported",
			src:  variant(t, "column: updated_at", "colum: updated_at\n    batchsize: 3") + "nats:\n  urls: x\n",
			want: []string{
				`t.yaml:8: source.capture.colum: unknown field "colum"`,
				`t.yaml:9: source.capture.batchsize: unknown field "batchsize"`,
				`t.yaml:15: nats.urls: unknown field "urls"`,
			},
		},
		{
			name: "file is not a field",
			src:  base + "file: x.yaml\n",
			want: []string{`t.yaml:13: file: unknown field "file"`},
		},
		{
			name: "integer expected",
			src:  variant(t, "column: updated_at", "column: updated_at\n    batch_size: abc"),
			want: []string{`t.yaml:9: source.capture.batch_size: expected an integer, got "abc"`},
		},
		{
			name: "integer out of range",
			src:  base + "    writer:\n      workers: 99999999999999999999\n",
			want: []string{`t.yaml:14: targets[0].writer.workers: expected an integer, got "99999999999999999999"`},
		},
		{
			name: "quoted integer",
			src:  base + "nats:\n  replicas: \"3\"\n",
			want: []string{`t.yaml:14: nats.replicas: expected an integer, got "3"`},
		},
		{
			name: "duration expected",
			src:  variant(t, "column: updated_at", "column: updated_at\n    poll_interval: 5"),
			want: []string{`t.yaml:9: source.capture.poll_interval: expected a duration such as "1s" or "2m30s", got "5"`},
		},
		{
			name: "boolean expected",
			src:  base + "    create_table: maybe\n",
			want: []string{`t.yaml:13: targets[0].create_table: expected true or false, got "maybe"`},
		},
		{
			name: "list expected",
			src:  variant(t, "key: [id]", "key: id"),
			want: []string{`t.yaml:6: source.key: expected a list, got "id"`},
		},
		{
			name: "string expected",
			src:  variant(t, "table: invoices", "table: {name: invoices}"),
			want: []string{`t.yaml:5: source.table: expected a string, got a mapping`},
		},
		{
			name: "mapping expected",
			src:  variant(t, "targets:\n  - name: pg\n    kind: postgres\n    url: postgres://u:tgtpass@h2/db\n", "targets: pg\n"),
			want: []string{`t.yaml:9: targets: expected a list, got "pg"`},
		},
		{
			name: "top level must be a mapping",
			src:  "- a\n- b\n",
			want: []string{`t.yaml:1: expected a mapping, got a list`},
		},
		{
			name: "duplicate key",
			src:  variant(t, "table: invoices", "table: invoices\n  table: other"),
			want: []string{`t.yaml:6: source.table: field "table" is already set on line 5`},
		},
		{
			name: "syntax error",
			src:  "pipeline: inv\nsource: [\n",
			want: []string{`t.yaml:2: invalid YAML: did not find expected node content`},
		},
		{
			name: "empty file",
			src:  "# nothing here\n",
			want: []string{`t.yaml: file is empty`},
		},
		{
			name: "two documents",
			src:  base + "---\npipeline: other\n",
			want: []string{`t.yaml:13: a pipeline file must contain exactly one YAML document`},
		},
		{
			name: "bad merge",
			src:  variant(t, "capture:\n", "capture:\n    <<: [x]\n"),
			want: []string{`t.yaml:8: source.capture: a merge key (<<) needs a mapping or a list of mappings, got "x"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("t.yaml", []byte(tt.src), noEnv)
			require.Error(t, err)
			require.Nil(t, p)
			var got []string
			for _, fe := range fieldErrors(t, err) {
				got = append(got, fe.Error())
			}
			require.Equal(t, tt.want, got)
		})
	}
}

func TestAliasesAndMergeKeys(t *testing.T) {
	src := `pipeline: inv
x_defaults: &defaults
  kind: postgres
  writer: {workers: 4}
source:
  kind: postgres
  url: postgres://u:p@h/db
  table: invoices
  key: &key [id]
  columns: [id, updated_at]
  capture: {column: updated_at}
targets:
  - <<: *defaults
    name: a
    url: postgres://u:p@a/db
  - <<: *defaults
    name: b
    url: postgres://u:p@b/db
    writer: {workers: 8}
`
	_, err := Parse("t.yaml", []byte(src), noEnv)
	require.EqualError(t, err, `t.yaml:2: x_defaults: unknown field "x_defaults"`,
		"anchors must live under known fields")

	src = strings.Replace(src, "x_defaults: &defaults\n  kind: postgres\n  writer: {workers: 4}\n", "", 1)
	src = strings.Replace(src, "  kind: postgres\n  url: postgres://u:p@h/db", "  kind: &kind postgres\n  url: postgres://u:p@h/db", 1)
	src = strings.Replace(src, "  - <<: *defaults\n    name: a", "  - &defaults\n    kind: *kind\n    writer: {workers: 4}\n    name: a", 1)
	p, err := Parse("t.yaml", []byte(src), noEnv)
	require.NoError(t, err)
	require.Len(t, p.Targets, 2)
	require.Equal(t, "postgres", p.Targets[0].Kind)
	require.Equal(t, 4, p.Targets[0].Writer.Workers)
	require.Equal(t, "b", p.Targets[1].Name, "explicit keys win over merged ones")
	require.Equal(t, "postgres", p.Targets[1].Kind)
	require.Equal(t, 8, p.Targets[1].Writer.Workers)
}

func TestValidationErrors(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		field string
		line  int
		msg   string // substring of the message
	}{
		{"pipeline missing", variant(t, "pipeline: inv\n", ""), "pipeline", 1, "required"},
		{"pipeline upper case", variant(t, "pipeline: inv", "pipeline: Inv"), "pipeline", 1, "not a valid name"},
		{"pipeline too long", variant(t, "pipeline: inv", "pipeline: "+strings.Repeat("a", 41)), "pipeline", 1, "not a valid name"},
		{"pipeline with dash", variant(t, "pipeline: inv", "pipeline: in-v"), "pipeline", 1, "not a valid name"},

		{"max_bytes zero", base + "nats:\n  max_bytes: 0\n", "nats.max_bytes", 14, "must be > 0"},
		{"max_age negative", base + "nats:\n  max_age: -1s\n", "nats.max_age", 14, "must be >= 0"},
		{"replicas zero", base + "nats:\n  replicas: 0\n", "nats.replicas", 14, "between 1 and 5"},
		{"replicas six", base + "nats:\n  replicas: 6\n", "nats.replicas", 14, "between 1 and 5"},
		{"duplicate_window zero", base + "nats:\n  duplicate_window: 0s\n", "nats.duplicate_window", 14, "must be > 0"},
		{"duplicate_window over max_age", base + "nats:\n  max_age: 1m\n  duplicate_window: 2m\n", "nats.duplicate_window", 15, "must not be longer than nats.max_age (1m)"},

		{"source kind missing", variant(t, "  kind: postgres\n  url: postgres://u:srcpass", "  url: postgres://u:srcpass"), "source.kind", 3, "required"},
		{"source kind unsupported", variant(t, "kind: postgres", "kind: oracle"), "source.kind", 3, `unsupported kind "oracle"`},
		{"sqlite source with cdc", variant(t, "kind: postgres\n  url: postgres://u:srcpass@h/db", "kind: sqlite\n  url: /data/sor.db", "column: updated_at", "pattern: cdc"), "source.capture.pattern", 8, `kind "sqlite" has no change feed`},
		{"mysql source with a delete feed table", variant(t, "kind: postgres\n  url: postgres://u:srcpass@h/db", "kind: mysql\n  url: u:p@tcp(h:3306)/db", "column: updated_at", "column: updated_at\n    delete_feed: {table: deleted, column: at}"), "source.capture.delete_feed.table", 9, "not supported for kind \"mysql\""},
		{"source url missing", variant(t, "  url: postgres://u:srcpass@h/db\n", ""), "source.url", 3, "required"},
		{"source url null", variant(t, "url: postgres://u:srcpass@h/db", "url:"), "source.url", 4, "required"},
		{"source table missing", variant(t, "  table: invoices\n", ""), "source.table", 3, "required"},
		{"source table bad", variant(t, "table: invoices", "table: 9invoices"), "source.table", 5, `not a valid identifier: "9invoices"`},
		{"source table two dots", variant(t, "table: invoices", "table: a.b.c"), "source.table", 5, "more than one dot"},
		{"source table bad schema", variant(t, "table: invoices", "table: my-schema.invoices"), "source.table", 5, `schema of "my-schema.invoices": not a valid identifier`},
		{"source table injection", variant(t, "table: invoices", `table: 'inv"; drop table x; --'`), "source.table", 5, "not a valid identifier"},
		{"key missing", variant(t, "  key: [id]\n", ""), "source.key", 3, "at least one key column"},
		{"key empty", variant(t, "key: [id]", "key: []"), "source.key", 6, "at least one key column"},
		{"key bad column", variant(t, "key: [id]", "key: [id, 'a b']"), "source.key[1]", 6, "not a valid identifier"},
		{"key duplicate", variant(t, "key: [id]", "key: [id, id]"), "source.key[1]", 6, `duplicate column "id" (also source.key[0])`},
		{"columns duplicate", variant(t, "key: [id]", "key: [id]\n  columns: [id, updated_at, id]"), "source.columns[2]", 7, "duplicate column"},
		{"columns bad", variant(t, "key: [id]", "key: [id]\n  columns: [id, updated_at, '']"), "source.columns[2]", 7, "not a valid identifier: the name is empty"},
		{"key not in columns", variant(t, "key: [id]", "key: [id, region]\n  columns: [id, updated_at]"), "source.key[1]", 6, `key column "region" is not in source.columns`},
		{"watermark not in columns", variant(t, "key: [id]", "key: [id]\n  columns: [id, amount]"), "source.capture.column", 9, `watermark column "updated_at" is not in source.columns`},

		{"cdc with a column", variant(t, "column: updated_at", "column: updated_at\n    pattern: cdc"), "source.capture.column", 8, "not used by the cdc pattern"},
		{"cdc slot bad", variant(t, "column: updated_at", "pattern: cdc\n    slot: Oneway-Inv"), "source.capture.slot", 9, `a-z, 0-9 and _, not starting with a digit, got "Oneway-Inv"`},
		{"cdc slot too long", variant(t, "column: updated_at", "pattern: cdc\n    slot: "+strings.Repeat("s", 64)), "source.capture.slot", 9, "1 to 63 characters"},
		{"cdc publication bad", variant(t, "column: updated_at", "pattern: cdc\n    publication: 9pub"), "source.capture.publication", 9, `got "9pub"`},
		{"cdc wal_budget negative", variant(t, "column: updated_at", "pattern: cdc\n    wal_budget: -1"), "source.capture.wal_budget", 9, "must be >= 0 bytes"},
		{"cdc soft delete", variant(t, "column: updated_at", "pattern: cdc\n    delete_feed: {soft_delete_column: deleted_at}"), "source.capture.delete_feed.soft_delete_column", 9, "not used by the cdc pattern"},
		{"cdc delete table", variant(t, "column: updated_at", "pattern: cdc\n    delete_feed: {table: gone, column: deleted_at}"), "source.capture.delete_feed.table", 9, "cdc finds deletes itself"},
		{"slot on watermark", variant(t, "column: updated_at", "column: updated_at\n    slot: s"), "source.capture.slot", 9, "only for the cdc pattern"},
		{"wal_budget on synthetic", variant(t, "column: updated_at", "pattern: synthetic\n    wal_budget: 5"), "source.capture.wal_budget", 9, "only for the cdc pattern"},
		{"synthetic with a column", variant(t, "column: updated_at", "column: updated_at\n    pattern: synthetic"), "source.capture.column", 8, "not used by the synthetic pattern"},
		{"window without a span", variant(t, "column: updated_at", "column: updated_at\n    pattern: window"), "source.capture.window", 8, "required for the window pattern"},
		{"window without a column", variant(t, "column: updated_at", "pattern: window\n    window: 720h"), "source.capture.column", 8, "required for the window pattern"},
		{"window span negative", variant(t, "column: updated_at", "column: updated_at\n    pattern: window\n    window: -1h"), "source.capture.window", 10, "a span > 0"},
		{"window span on watermark", variant(t, "column: updated_at", "column: updated_at\n    window: 1h"), "source.capture.window", 9, "only for the window pattern"},
		{"watermark_cdc without a column", variant(t, "column: updated_at", "pattern: watermark_cdc"), "source.capture.column", 8, "required for the watermark_cdc pattern"},
		{"overlap on watermark", variant(t, "column: updated_at", "column: updated_at\n    overlap: 1h"), "source.capture.overlap", 9, "only for the watermark_cdc pattern"},
		{"overlap negative", variant(t, "column: updated_at", "column: updated_at\n    pattern: watermark_cdc\n    overlap: -1s"), "source.capture.overlap", 10, "must be >= 0"},
		{"soft delete column is the key", variant(t, "column: updated_at", "column: updated_at\n    delete_feed: {soft_delete_column: id}"), "source.capture.delete_feed.soft_delete_column", 9, "is a key column"},
		{"soft delete column bad", variant(t, "column: updated_at", "column: updated_at\n    delete_feed:\n      soft_delete_column: 'a b'"), "source.capture.delete_feed.soft_delete_column", 10, "not a valid identifier"},
		{"delete table without pointer", variant(t, "column: updated_at", "column: updated_at\n    delete_feed:\n      table: invoices_deleted"), "source.capture.delete_feed.column", 10, "required with delete_feed.table"},
		{"delete pointer without table", variant(t, "column: updated_at", "column: updated_at\n    delete_feed:\n      column: deleted_at"), "source.capture.delete_feed.column", 10, "only with delete_feed.table"},
		{"delete table is the source", variant(t, "column: updated_at", "column: updated_at\n    delete_feed: {table: invoices, column: deleted_at}"), "source.capture.delete_feed.table", 9, "is the source table"},
		{"delete table bad", variant(t, "column: updated_at", "column: updated_at\n    delete_feed: {table: a.b.c, column: deleted_at}"), "source.capture.delete_feed.table", 9, "more than one dot"},
		{"delete table with synthetic", variant(t, "column: updated_at", "pattern: synthetic\n    delete_feed: {table: gone, column: deleted_at}"), "source.capture.delete_feed.table", 9, "synthetic finds deletes itself"},
		{"pattern unknown", variant(t, "column: updated_at", "column: updated_at\n    pattern: magic"), "source.capture.pattern", 9, `unknown capture pattern "magic"`},
		{"watermark column missing", variant(t, "column: updated_at", "batch_size: 10"), "source.capture.column", 8, "required for the watermark pattern"},
		{"capture missing", variant(t, "  capture:\n    column: updated_at\n", ""), "source.capture.column", 3, "required for the watermark pattern"},
		{"watermark column bad", variant(t, "column: updated_at", "column: updated at"), "source.capture.column", 8, "not a valid identifier"},
		{"batch_size zero", variant(t, "column: updated_at", "column: updated_at\n    batch_size: 0"), "source.capture.batch_size", 9, "between 1 and 100000, got 0"},
		{"batch_size too big", variant(t, "column: updated_at", "column: updated_at\n    batch_size: 100001"), "source.capture.batch_size", 9, "between 1 and 100000"},
		{"poll_interval zero", variant(t, "column: updated_at", "column: updated_at\n    poll_interval: 0s"), "source.capture.poll_interval", 9, "must be > 0"},
		{"lookback negative", variant(t, "column: updated_at", "column: updated_at\n    lookback: -5s"), "source.capture.lookback", 9, "must be >= 0, got -5s"},

		{"targets missing", strings.SplitAfter(base, "column: updated_at\n")[0], "targets", 1, "at least one target"},
		{"targets empty", variant(t, "targets:\n  - name: pg\n    kind: postgres\n    url: postgres://u:tgtpass@h2/db\n", "targets: []\n"), "targets", 9, "at least one target"},
		{"target name missing", variant(t, "  - name: pg\n    kind", "  - kind"), "targets[0].name", 10, "required"},
		{"target name bad", variant(t, "name: pg", "name: PG"), "targets[0].name", 10, "not a valid name"},
		{"target name duplicate", base + "  - name: pg\n    kind: postgres\n    url: postgres://x@y/z\n", "targets[1].name", 13, `duplicate target name "pg" (also used by targets[0])`},
		{"target kind missing", variant(t, "    kind: postgres\n    url: postgres://u:tgt", "    url: postgres://u:tgt"), "targets[0].kind", 10, "required"},
		{"target kind unsupported", variant(t, "    kind: postgres\n    url: postgres://u:tgt", "    kind: mongodb\n    url: postgres://u:tgt"), "targets[0].kind", 11, `unsupported kind "mongodb"`},
		{"target url missing", variant(t, "    url: postgres://u:tgtpass@h2/db\n", ""), "targets[0].url", 10, "required"},
		{"target table empty", base + "    table: ''\n", "targets[0].table", 13, "must not be empty"},
		{"target table bad", base + "    table: x.y.z\n", "targets[0].table", 13, "more than one dot"},
		{"delete unknown", base + "    delete: purge\n", "targets[0].delete", 13, `must be one of hard, soft, none; got "purge"`},
		{"delete empty string", base + "    delete: ''\n", "targets[0].delete", 13, `must be one of hard, soft, none; got ""`},
		{"soft without column", base + "    delete: soft\n", "targets[0].soft_delete_column", 10, `required when delete is "soft"`},
		{"soft column bad", base + "    delete: soft\n    soft_delete_column: 'x;y'\n", "targets[0].soft_delete_column", 14, "not a valid identifier"},
		{"soft column is key", base + "    delete: soft\n    soft_delete_column: id\n", "targets[0].soft_delete_column", 14, "is a source column"},
		{"soft column without soft", base + "    soft_delete_column: deleted_at\n", "targets[0].soft_delete_column", 13, `only allowed when delete is "soft" (delete is "hard")`},
		{"orphans unknown", base + "    orphans: ignore\n", "targets[0].orphans", 13, "must be one of keep, delete, report"},
		{"ledger schema bad", base + "    ledger_schema: 1ledger\n", "targets[0].ledger_schema", 13, "not a valid identifier"},
		{"ledger schema too long", base + "    ledger_schema: " + strings.Repeat("l", 64) + "\n", "targets[0].ledger_schema", 13, "longer than 63 bytes"},
		{"workers zero", base + "    writer:\n      workers: 0\n", "targets[0].writer.workers", 14, "between 1 and 64"},
		{"workers too many", base + "    writer:\n      workers: 65\n", "targets[0].writer.workers", 14, "between 1 and 64"},
		{"max_attempts zero", base + "    writer:\n      max_attempts: 0\n", "targets[0].writer.max_attempts", 14, "must be >= 1"},
		{"ack_wait short", base + "    writer:\n      ack_wait: 500ms\n", "targets[0].writer.ack_wait", 14, "must be >= 1s, got 500ms"},
		{"fetch_batch zero", base + "    writer:\n      fetch_batch: 0\n", "targets[0].writer.fetch_batch", 14, "between 1 and 1000"},
		{"fetch_batch too big", base + "    writer:\n      fetch_batch: 1001\n", "targets[0].writer.fetch_batch", 14, "between 1 and 1000"},
		{"second target line", base + "  - name: b\n    kind: postgres\n    url: postgres://x@y/z\n    delete: nope\n", "targets[1].delete", 16, "must be one of"},

		{"admin addr bad", base + "admin:\n  addr: localhost\n", "admin.addr", 14, "must be host:port"},
		{"admin addr port", base + "admin:\n  addr: localhost:http\n", "admin.addr", 14, "numeric port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("t.yaml", []byte(tt.src), noEnv)
			require.Error(t, err)
			require.Nil(t, p)

			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			for _, fe := range fieldErrors(t, err) {
				if fe.Field == tt.field && strings.Contains(fe.Msg, tt.msg) {
					require.Equal(t, "t.yaml", fe.File)
					require.Equal(t, tt.line, fe.Line, "line of %s", fe)
					require.Equal(t, fmt.Sprintf("t.yaml:%d: %s: %s", tt.line, tt.field, fe.Msg), fe.Error())
					return
				}
			}
			t.Fatalf("no error for %s containing %q in:\n%v", tt.field, tt.msg, err)
		})
	}
}

func TestValidationCollectsAllProblems(t *testing.T) {
	src := `pipeline: Bad-Name
nats:
  replicas: 9
source:
  kind: oracle
  table: a.b.c
  key: []
  capture:
    pattern: cdc
    batch_size: 0
    wal_budget: -5
targets:
  - name: pg
    kind: postgres
    url: postgres://h/db
    delete: soft
  - name: pg
    kind: postgres
    url: postgres://h/db
    orphans: nope
`
	_, err := Parse("all.yaml", []byte(src), noEnv)
	require.Error(t, err)
	var got []string
	for _, fe := range fieldErrors(t, err) {
		got = append(got, fmt.Sprintf("%d %s", fe.Line, fe.Field))
	}
	require.Equal(t, []string{
		"1 pipeline",
		"3 nats.replicas",
		"5 source.kind",
		"5 source.url",
		"6 source.table",
		"7 source.key",
		"10 source.capture.batch_size",
		"11 source.capture.wal_budget",
		"13 targets[0].soft_delete_column",
		"20 targets[1].orphans",
		"17 targets[1].name",
	}, got)
}

func TestValidateWithoutPositions(t *testing.T) {
	p, err := Parse("t.yaml", []byte(base), noEnv)
	require.NoError(t, err)
	p.Targets[0].Writer.Workers = 0
	p.File = ""
	err = p.Validate()
	require.EqualError(t, err, "targets[0].writer.workers: must be between 1 and 64, got 0")
}

func TestFieldErrorFormat(t *testing.T) {
	tests := []struct {
		err  FieldError
		want string
	}{
		{FieldError{File: "f.yaml", Line: 3, Field: "a.b", Msg: "bad"}, "f.yaml:3: a.b: bad"},
		{FieldError{File: "f.yaml", Field: "a.b", Msg: "bad"}, "f.yaml: a.b: bad"},
		{FieldError{File: "f.yaml", Line: 3, Msg: "bad"}, "f.yaml:3: bad"},
		{FieldError{Line: 3, Field: "a", Msg: "bad"}, "line 3: a: bad"},
		{FieldError{Field: "a", Msg: "bad"}, "a: bad"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, tt.err.Error())
	}
}

func TestValidIdentifier(t *testing.T) {
	valid := []string{"id", "_x", "Invoices", "updated_at", "a$b", "ünïcødé", "t1", "日本", strings.Repeat("a", 63)}
	for _, s := range valid {
		require.NoError(t, ValidIdentifier(s), s)
	}
	invalid := []string{"", "1a", "$a", "a b", "a-b", "a.b", `a"b`, "a;b", "a\x00b", "\xff", strings.Repeat("a", 64), strings.Repeat("ü", 32)}
	for _, s := range invalid {
		err := ValidIdentifier(s)
		require.Error(t, err, "%q", s)
		require.ErrorIs(t, err, ErrInvalidIdentifier)
		require.Contains(t, err.Error(), "not a valid identifier: ")
	}
}

func TestSplitTable(t *testing.T) {
	tests := []struct {
		in, schema, table string
		err               string
	}{
		{in: "invoices", schema: "public", table: "invoices"},
		{in: "billing.invoices", schema: "billing", table: "invoices"},
		{in: "Billing.Invoices", schema: "Billing", table: "Invoices"},
		{in: "", err: "not a valid identifier: the name is empty"},
		{in: ".invoices", err: `schema of ".invoices": not a valid identifier`},
		{in: "billing.", err: `table of "billing.": not a valid identifier`},
		{in: "a.b.c", err: "more than one dot"},
		{in: "a b", err: "not a valid identifier"},
	}
	for _, tt := range tests {
		schema, table, err := SplitTable(tt.in)
		if tt.err != "" {
			require.ErrorContains(t, err, tt.err, tt.in)
			require.ErrorIs(t, err, ErrInvalidIdentifier)
			continue
		}
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.schema, schema)
		require.Equal(t, tt.table, table)
	}
}

func TestSecretRedaction(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", ""},
		{"postgres://user:secret@host:5432/db?sslmode=disable", "postgres://user:xxxxx@host:5432/db?sslmode=disable"},
		{"postgresql://user:secret@host/db", "postgresql://user:xxxxx@host/db"},
		{"nats://tok@host", "nats://xxxxx@host"},
		{"nats://host:4222", "nats://host:4222"},
		{"postgres://host/db?user=u&password=secret&sslmode=require", "postgres://host/db?user=u&password=xxxxx&sslmode=require"},
		{"postgres://u:secret@h/db?sslpassword=secret", "postgres://u:xxxxx@h/db?sslpassword=xxxxx"},
		{"postgres://u:se/cr@et@h/db", "postgres://u:xxxxx@h/db"},
		{"nats://a:secret@h1:4222,nats://b:secret@h2:4222", "nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222"},
		{"nats://a:sec,ret@h1:4222, nats://tok@h2", "nats://a:xxxxx@h1:4222, nats://xxxxx@h2"},
		{"host=a password=secret user=b", "host=a password=xxxxx user=b"},
		{"host=a PASSWORD = secret user=b", "host=a PASSWORD = xxxxx user=b"},
		{"host=a password='sec ret' user=b", "host=a password=xxxxx user=b"},
		{`password='it\'s secret'`, "password=xxxxx"},
		{"host=a sslpassword=secret", "host=a sslpassword=xxxxx"},
		{"user:secret@localhost:4222", "user:xxxxx@localhost:4222"},
		{"localhost:4222", "localhost:4222"},
		{"u:secret@tcp(127.0.0.1:3306)/db", "u:xxxxx@tcp(127.0.0.1:3306)/db"},
		{"u:secret@tcp(h:3306)/db?parseTime=true&loc=UTC", "u:xxxxx@tcp(h:3306)/db?parseTime=true&loc=UTC"},
		{"u:se@c/r?e=t@unix(/run/mysqld/mysqld.sock)/db", "u:xxxxx@unix(/run/mysqld/mysqld.sock)/db"},
		{"u:secret@/db", "u:xxxxx@/db"},
		{"u@tcp(h)/db", "u@tcp(h)/db"},
	}
	for _, tt := range tests {
		s := Secret(tt.in)
		require.Equal(t, tt.in, s.Value())
		require.Equal(t, tt.want, s.String(), tt.in)
		require.Equal(t, tt.want, fmt.Sprint(s))
		require.Equal(t, tt.want, fmt.Sprintf("%s", s))
		require.NotContains(t, fmt.Sprintf("%v %+v %#v", s, struct{ S Secret }{s}, s), "secret")

		y, err := s.MarshalYAML()
		require.NoError(t, err)
		require.Equal(t, tt.want, y)
		j, err := s.MarshalJSON()
		require.NoError(t, err)
		require.NotContains(t, string(j), "secret")
		require.Equal(t, tt.want, s.LogValue().String())
	}
}

func TestPrint(t *testing.T) {
	src := variant(t,
		"url: postgres://u:srcpass@h/db", "url: ${SRC}",
		"url: postgres://u:tgtpass@h2/db", "url: host=h2 password=tgtpass dbname=x") +
		"nats:\n  url: nats://natstoken@n:4222\n"
	env := envOf(map[string]string{"SRC": "postgres://u:srcpass@h/db"})
	p, err := Parse("t.yaml", []byte(src), env)
	require.NoError(t, err)

	var buf bytes.Buffer
	require.NoError(t, p.Print(&buf))
	out := buf.String()
	for _, secret := range []string{"srcpass", "tgtpass", "natstoken"} {
		require.NotContains(t, out, secret)
	}
	for _, want := range []string{
		"pipeline: inv\n",
		"url: nats://xxxxx@n:4222\n",
		"max_bytes: 1073741824\n",
		"max_age: 168h\n",
		"duplicate_window: 2m\n",
		"url: postgres://u:xxxxx@h/db\n",
		"pattern: watermark\n",
		"poll_interval: 1s\n",
		"lookback: 0s\n",
		"create_table: true\n",
		"ledger_schema: oneway\n",
		"ack_wait: 10s\n",
	} {
		require.Contains(t, out, want)
	}
	require.NotContains(t, out, "file:")

	// The printed configuration is itself a valid pipeline file with the
	// same settings, except for the redacted secrets.
	again, err := Parse("printed.yaml", buf.Bytes(), noEnv)
	require.NoError(t, err, out)
	require.Equal(t, "postgres://u:xxxxx@h/db", again.Source.URL.Value())
	again.File, again.Source.URL, again.Targets[0].URL, again.NATS.URL = p.File, p.Source.URL, p.Targets[0].URL, p.NATS.URL
	require.Empty(t, again.Source.Columns)
	again.Source.Columns = p.Source.Columns
	require.Equal(t, p, again)
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.yaml")
	require.NoError(t, os.WriteFile(path, []byte(variant(t, "url: postgres://u:srcpass@h/db", "url: ${ONEWAY_TEST_SRC}")), 0o600))

	t.Setenv("ONEWAY_TEST_SRC", "postgres://u:p@h/db")
	p, err := Load(path)
	require.NoError(t, err)
	require.Equal(t, path, p.File)
	require.Equal(t, "postgres://u:p@h/db", p.Source.URL.Value())

	require.NoError(t, os.Unsetenv("ONEWAY_TEST_SRC"))
	_, err = Load(path)
	require.EqualError(t, err, path+":4: source.url: environment variable ONEWAY_TEST_SRC is not set")

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestExampleFile(t *testing.T) {
	const path = "../../deploy/examples/invoices.yaml"
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	env := envOf(map[string]string{
		"ONEWAY_SOURCE_URL": "postgres://oneway:srcsecret@source:5432/erp?sslmode=disable",
		"ONEWAY_TARGET_URL": "postgres://oneway:tgtsecret@target:5432/reporting?sslmode=disable",
	})
	p, err := Parse(path, data, env)
	require.NoError(t, err)

	require.Equal(t, "invoices", p.Pipeline)
	require.Equal(t, Secret(""), p.NATS.URL, "ONEWAY_NATS_URL unset means embedded NATS")
	require.Equal(t, "postgres", p.Source.Kind)
	require.Equal(t, "public.invoices", p.Source.Table)
	require.Equal(t, []string{"id"}, p.Source.Key)
	require.Equal(t, []string{"id", "customer", "amount", "status", "note", "updated_at"}, p.Source.Columns)
	require.Equal(t, "watermark", p.Source.Capture.Pattern)
	require.Equal(t, "updated_at", p.Source.Capture.Column)
	require.Equal(t, 1000, p.Source.Capture.BatchSize)
	require.Equal(t, time.Second, p.Source.Capture.PollInterval.Duration)

	tg, ok := p.Target("pg")
	require.True(t, ok)
	require.Equal(t, "postgres", tg.Kind)
	require.Equal(t, "postgres://oneway:tgtsecret@target:5432/reporting?sslmode=disable", tg.URL.Value())
	require.Equal(t, "public.invoices", tg.Table)
	require.Equal(t, "hard", tg.Delete)
	require.Equal(t, "keep", tg.Orphans)
	require.Equal(t, 2, tg.Writer.Workers)
	require.Equal(t, 5, tg.Writer.MaxAttempts)

	// Without the required variables the file names them.
	_, err = Parse(path, data, noEnv)
	require.ErrorContains(t, err, "source.url: environment variable ONEWAY_SOURCE_URL is not set")
	require.ErrorContains(t, err, "targets[0].url: environment variable ONEWAY_TARGET_URL is not set")
}

func TestDurationString(t *testing.T) {
	tests := map[time.Duration]string{
		0:                                     "0s",
		time.Second:                           "1s",
		250 * time.Millisecond:                "250ms",
		2 * time.Minute:                       "2m",
		150 * time.Second:                     "2m30s",
		168 * time.Hour:                       "168h",
		90 * time.Minute:                      "1h30m",
		-2 * time.Minute:                      "-2m",
		time.Hour + time.Second:               "1h0m1s",
		10*time.Minute + 500*time.Millisecond: "10m0.5s",
	}
	for d, want := range tests {
		require.Equal(t, want, Duration{d}.String())
		j, err := Duration{d}.MarshalJSON()
		require.NoError(t, err)
		require.Equal(t, `"`+want+`"`, string(j))
	}
}

func TestAliasBomb(t *testing.T) {
	// Each level merges the previous one ten times: naive expansion would
	// take 10^9 steps.
	var b strings.Builder
	b.WriteString(base)
	b.WriteString("    writer:\n      <<: &l0 {workers: 2}\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&b, "    x%d: &l%d\n      <<: [", i, i)
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*l%d", i-1)
		}
		b.WriteString("]\n")
	}
	b.WriteString("admin:\n  <<: *l9\n")
	_, err := Parse("bomb.yaml", []byte(b.String()), noEnv)
	require.ErrorContains(t, err, "too complex")
}

// FuzzParse feeds arbitrary pipeline files, with an arbitrary value for
// the variable X they may expand, to Parse: it must return a pipeline or
// errors naming fields, never panic or hang, and a pipeline it accepts
// must validate and print. The seeds are every example config of
// deploy/examples and hostile shapes (alias loops, merge keys, nested
// expansions).
func FuzzParse(f *testing.F) {
	examples, err := filepath.Glob("../../deploy/examples/*.yaml")
	require.NoError(f, err)
	require.NotEmpty(f, examples)
	for _, path := range examples {
		example, err := os.ReadFile(path)
		require.NoError(f, err)
		f.Add(example, "x")
	}
	seeds := []string{
		base,
		"",
		"pipeline: ${X:-a}\n",
		"pipeline: ${X:-${Y}}\n",
		"pipeline: $$${\n",
		"pipeline: ${UNSET}\n",
		"a: &a [*a]\n",
		"<<: {pipeline: x}\n",
		"targets: [{<<: [{name: a}, {name: b}]}]\n",
		"source: {url: 'postgres://u:p@h/db', capture: {batch_size: 1e3}}\n",
		"- 1\n- 2\n",
		"pipeline: x\n---\n",
		"nats: {max_age: -1h, replicas: 9999999999999999999999}\n",
		"{pipeline: [p], nats: {url: 7}}",
	}
	for _, s := range seeds {
		f.Add([]byte(s), "x")
	}
	f.Add([]byte(base), "${X}")
	f.Add([]byte("pipeline: p\nsource: {url: \"${X}\"}\n"), "postgres://u:p@h/db?sslmode=verify-full")
	f.Fuzz(func(t *testing.T, data []byte, x string) {
		env := envOf(map[string]string{
			"ONEWAY_SOURCE_URL":   "postgres://u:p@h/db",
			"ONEWAY_TARGET_URL":   "postgres://u:p@h2/db",
			"ONEWAY_STAGE_URL":    "postgres://u:p@h3/db",
			"ONEWAY_LEDGER_URL":   "postgres://u:p@h4/db",
			"ONEWAY_NATS_URL":     "nats://127.0.0.1:4222",
			"ONEWAY_API_URL":      "https://api.example.com/invoices",
			"ONEWAY_API_TOKEN":    "token",
			"ONEWAY_KAFKA_BROKER": "127.0.0.1:9092",
			"X":                   x,
		})
		p, err := Parse("fuzz.yaml", data, env)
		if err != nil {
			require.Nil(t, p)
			fieldErrors(t, err)
			return
		}
		require.NoError(t, p.Validate())
		require.NoError(t, p.Print(io.Discard))
		for _, tg := range p.Targets {
			_, _, err := SplitTable(tg.Table)
			require.NoError(t, err)
		}
	})
}

func TestHTTPTarget(t *testing.T) {
	httpTarget := `  - name: api
    kind: http
    url: https://api.example.com/invoices/{{.Key | path}}
    ledger_url: postgres://u:ledgerpass@h3/db
    http:
      headers:
        - {name: Authorization, value: Bearer s3cr3t-token}
`
	t.Run("valid, with defaults", func(t *testing.T) {
		p, err := Parse("http.yaml", []byte(base+httpTarget), noEnv)
		require.NoError(t, err)
		tg, ok := p.Target("api")
		require.True(t, ok)
		require.Equal(t, "PUT", tg.HTTP.UpsertMethod)
		require.Equal(t, "DELETE", tg.HTTP.DeleteMethod)
		require.Equal(t, 10*time.Second, tg.HTTP.Timeout.Duration)
		require.Equal(t, 5, tg.HTTP.MaxAttempts)
		require.Equal(t, 1, tg.HTTP.Concurrency)
		require.Equal(t, "Bearer s3cr3t-token", tg.HTTP.Headers[0].Value.Value())
		require.Equal(t, "postgres://u:ledgerpass@h3/db", tg.LedgerURL.Value())
		var out strings.Builder
		require.NoError(t, p.Print(&out))
		require.NotContains(t, out.String(), "s3cr3t")
		require.NotContains(t, out.String(), "ledgerpass")
		require.NotContains(t, fmt.Sprintf("%v %+v %#v", tg.HTTP, tg.HTTP, tg.HTTP), "s3cr3t")
	})
	tests := []struct {
		name, yaml, field string
	}{
		{"ledger_url required", strings.Replace(httpTarget, "    ledger_url: postgres://u:ledgerpass@h3/db\n", "", 1), "targets[1].ledger_url"},
		{"ledger_url not for postgres", strings.Replace(strings.Replace(httpTarget, "kind: http", "kind: postgres", 1), "    http:\n      headers:\n        - {name: Authorization, value: Bearer s3cr3t-token}\n", "", 1), "targets[1].ledger_url"},
		{"kafka topic required", strings.Replace(strings.Replace(httpTarget, "kind: http", "kind: kafka", 1), "    http:\n      headers:\n        - {name: Authorization, value: Bearer s3cr3t-token}\n", "", 1), "targets[1].kafka.topic"},
		{"bad method", strings.Replace(httpTarget, "    http:\n", "    http:\n      upsert_method: GET\n", 1), "targets[1].http.upsert_method"},
		{"bad header name", strings.Replace(httpTarget, "{name: Authorization", "{name: \"Bad Name\"", 1), "targets[1].http.headers[0].name"},
		{"http section on a postgres target", strings.Replace(httpTarget, "kind: http", "kind: postgres", 1), "targets[1].http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("http.yaml", []byte(base+tt.yaml), noEnv)
			var fields []string
			for _, fe := range fieldErrors(t, err) {
				fields = append(fields, fe.Field)
			}
			require.Contains(t, fields, tt.field)
		})
	}
}

func TestHTTPExampleFile(t *testing.T) {
	const path = "../../deploy/examples/invoices-http.yaml"
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	env := envOf(map[string]string{
		"ONEWAY_SOURCE_URL": "postgres://oneway:srcsecret@source:5432/erp",
		"ONEWAY_TARGET_URL": "postgres://oneway:tgtsecret@target:5432/reporting",
		"ONEWAY_LEDGER_URL": "postgres://oneway:ledgersecret@stage:5432/oneway",
		"ONEWAY_API_URL":    "https://api.example.com",
		"ONEWAY_API_TOKEN":  "tok-123",
	})
	p, err := Parse(path, data, env)
	require.NoError(t, err)
	api, ok := p.Target("api")
	require.True(t, ok)
	require.Equal(t, KindHTTP, api.Kind)
	require.Equal(t, "https://api.example.com/invoices/{{.Key | path}}", api.URL.Value())
	require.Equal(t, "postgres://oneway:ledgersecret@stage:5432/oneway", api.LedgerURL.Value())
	require.Equal(t, "Bearer tok-123", api.HTTP.Headers[0].Value.Value())
	require.Equal(t, 4, api.HTTP.Concurrency)
	var out strings.Builder
	require.NoError(t, p.Print(&out))
	for _, secret := range []string{"srcsecret", "tgtsecret", "ledgersecret", "tok-123"} {
		require.NotContains(t, out.String(), secret)
	}
}

func TestNestedDefaultIsAnError(t *testing.T) {
	doc := strings.Replace(base, "url: postgres://u:tgtpass@h2/db", "url: ${TGT:-${OTHER}}", 1)
	_, err := Parse("nested.yaml", []byte(doc), noEnv)
	require.ErrorContains(t, err, "nested variable reference")
	require.ErrorContains(t, err, "targets[0].url")
}

func TestReservedPipelineName(t *testing.T) {
	_, err := Parse("out.yaml", []byte(strings.Replace(base, "pipeline: inv", "pipeline: out", 1)), noEnv)
	require.ErrorContains(t, err, `pipeline: "out" is reserved`)
}

// A MySQL target table names its database before the dot; "public" (the
// default inherited from a PostgreSQL source) and no dot mean the DSN's.
func TestSplitMySQLTable(t *testing.T) {
	tests := []struct{ in, db, table string }{
		{"public.invoices", "", "invoices"},
		{"invoices", "", "invoices"},
		{"crm.invoices", "crm", "invoices"},
	}
	for _, tt := range tests {
		db, table, err := SplitMySQLTable(tt.in)
		if err != nil || db != tt.db || table != tt.table {
			t.Errorf("SplitMySQLTable(%q) = %q, %q, %v; want %q, %q", tt.in, db, table, err, tt.db, tt.table)
		}
	}
	if _, _, err := SplitMySQLTable("a.b.c"); err == nil {
		t.Error("SplitMySQLTable(a.b.c): no error")
	}
}

func TestCapturePatterns(t *testing.T) {
	tests := []struct {
		name, capture string
		want          Capture
	}{
		{"synthetic: a cycle a minute by default", "pattern: synthetic",
			Capture{Pattern: PatternSynthetic, BatchSize: 1000, PollInterval: Duration{time.Minute}}},
		{"window", "pattern: window\n    column: issued_on\n    window: 720h\n    poll_interval: 30s",
			Capture{Pattern: PatternWindow, Column: "issued_on", BatchSize: 1000, PollInterval: Duration{30 * time.Second}, Window: Duration{720 * time.Hour}}},
		{"watermark_cdc", "pattern: watermark_cdc\n    column: updated_on\n    overlap: 24h",
			Capture{Pattern: PatternWatermarkCDC, Column: "updated_on", BatchSize: 1000, PollInterval: Duration{time.Second}, Overlap: Duration{24 * time.Hour}}},
		{"watermark+cdc is watermark_cdc", "pattern: watermark+cdc\n    column: updated_on",
			Capture{Pattern: PatternWatermarkCDC, Column: "updated_on", BatchSize: 1000, PollInterval: Duration{time.Second}}},
		{"cdc: slot and publication from the pipeline, 10 GiB budget", "pattern: cdc",
			Capture{Pattern: PatternCDC, BatchSize: 1000, PollInterval: Duration{time.Second}, Slot: "oneway_inv", Publication: "oneway_inv", WALBudget: 10 << 30}},
		{"cdc with its own names and no budget", "pattern: cdc\n    slot: inv_slot\n    publication: inv_pub\n    wal_budget: 0",
			Capture{Pattern: PatternCDC, BatchSize: 1000, PollInterval: Duration{time.Second}, Slot: "inv_slot", Publication: "inv_pub"}},
		{"watermark with a delete feed", "column: updated_at\n    delete_feed:\n      soft_delete_column: deleted_at\n      table: audit.invoices_deleted\n      column: deleted_at",
			Capture{Pattern: PatternWatermark, Column: "updated_at", BatchSize: 1000, PollInterval: Duration{time.Second},
				DeleteFeed: DeleteFeed{SoftDeleteColumn: "deleted_at", Table: "audit.invoices_deleted", Column: "deleted_at"}}},
		{"synthetic with a soft delete column", "pattern: synthetic\n    delete_feed: {soft_delete_column: deleted}",
			Capture{Pattern: PatternSynthetic, BatchSize: 1000, PollInterval: Duration{time.Minute}, DeleteFeed: DeleteFeed{SoftDeleteColumn: "deleted"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("t.yaml", []byte(variant(t, "column: updated_at", tt.capture)), noEnv)
			require.NoError(t, err)
			require.Equal(t, tt.want, p.Source.Capture)
			var out strings.Builder
			require.NoError(t, p.Print(&out))
			again, err := Parse("printed.yaml", []byte(out.String()), noEnv)
			require.NoError(t, err, "printed config:\n%s", out.String())
			require.Equal(t, tt.want, again.Source.Capture)
		})
	}
}

// Every example config loads; each pattern's example sets its pattern.
func TestPatternExampleFiles(t *testing.T) {
	env := envOf(map[string]string{
		"ONEWAY_SOURCE_URL": "postgres://oneway:srcsecret@source:5432/erp",
		"ONEWAY_TARGET_URL": "postgres://oneway:tgtsecret@target:5432/reporting",
		"ONEWAY_LEDGER_URL": "postgres://oneway:ledgersecret@stage:5432/oneway",
		"ONEWAY_MYSQL_URL":  "oneway:mysqlsecret@tcp(mysql:3306)/Chinook",
	})
	// Files of several tables: how many pipelines they describe.
	tables := map[string]int{"chinook.yaml": 11, "chinook-synthetic.yaml": 11, "chinook-mysql.yaml": 11}
	want := map[string]Capture{
		"invoices-synthetic.yaml": {Pattern: PatternSynthetic, BatchSize: 1000, PollInterval: Duration{30 * time.Second}},
		"invoices-window.yaml": {Pattern: PatternWindow, Column: "updated_at", BatchSize: 1000, PollInterval: Duration{time.Minute},
			Window: Duration{720 * time.Hour}},
		"invoices-cdc.yaml": {Pattern: PatternCDC, BatchSize: 1000, PollInterval: Duration{time.Second},
			Slot: "oneway_invoices_cdc", Publication: "oneway_invoices_cdc", WALBudget: 10 << 30},
		"invoices-watermark-cdc.yaml": {Pattern: PatternWatermarkCDC, Column: "updated_at", BatchSize: 1000, PollInterval: Duration{time.Second},
			Overlap: Duration{5 * time.Second}},
	}
	files, err := filepath.Glob("../../deploy/examples/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			ps, err := ParseAll(path, data, env)
			require.NoError(t, err)
			n, ok := tables[filepath.Base(path)]
			if !ok {
				n = 1
			}
			require.Len(t, ps, n)
			p := ps[0]
			if w, ok := want[filepath.Base(path)]; ok {
				require.Equal(t, w, p.Source.Capture)
			}
		})
	}
	for name := range want {
		require.FileExists(t, filepath.Join("../../deploy/examples", name))
	}
	for name := range tables {
		require.FileExists(t, filepath.Join("../../deploy/examples", name))
	}
	// The delete feed commented out in invoices.yaml is valid once enabled.
	data, err := os.ReadFile("../../deploy/examples/invoices.yaml")
	require.NoError(t, err)
	enabled := strings.NewReplacer(
		"    # delete_feed:\n", "    delete_feed:\n",
		"    #   soft_delete_column: deleted_at\n", "      soft_delete_column: deleted_at\n",
		"    #   table: public.invoices_deleted\n", "      table: public.invoices_deleted\n",
		"    #   column: deleted_at\n", "      column: deleted_at\n").Replace(string(data))
	require.NotEqual(t, string(data), enabled)
	p, err := Parse("invoices.yaml", []byte(enabled), env)
	require.NoError(t, err)
	require.Equal(t, DeleteFeed{SoftDeleteColumn: "deleted_at", Table: "public.invoices_deleted", Column: "deleted_at"}, p.Source.Capture.DeleteFeed)
}

// SQLite and MySQL sources load with the patterns they support.
func TestSQLSources(t *testing.T) {
	tests := []struct{ name, kind, url, capture string }{
		{"sqlite synthetic", "sqlite", "/data/sor.db", "pattern: synthetic"},
		{"sqlite watermark", "sqlite", "/data/sor.db", "column: updated_at"},
		{"mysql window", "mysql", "u:p@tcp(h:3306)/db", "pattern: window\n    column: updated_at\n    window: 24h"},
		{"mysql watermark_cdc", "mysql", "u:p@tcp(h:3306)/db", "pattern: watermark_cdc\n    column: updated_at\n    overlap: 2s\n    delete_feed: {soft_delete_column: gone}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := variant(t, "kind: postgres\n  url: postgres://u:srcpass@h/db", "kind: "+tt.kind+"\n  url: "+tt.url, "column: updated_at", tt.capture)
			p, err := Parse("t.yaml", []byte(src), noEnv)
			require.NoError(t, err)
			require.Equal(t, tt.kind, p.Source.Kind)
		})
	}
}
