package config

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// stagedBase is base in staged mode: owned columns listed. Lines 1–13 are
// as in base, with line 7 the columns; line 14 is mode.
var stagedBase = strings.Replace(base, "  key: [id]\n", "  key: [id]\n  columns: [id, note, updated_at]\n", 1) + "mode: staged\n"

func TestStagedDefaults(t *testing.T) {
	p, err := Parse("t.yaml", []byte(base), noEnv)
	require.NoError(t, err)
	require.Equal(t, ModeDirect, p.Mode)
	require.False(t, p.Staged())

	p, err = Parse("t.yaml", []byte(stagedBase), noEnv)
	require.NoError(t, err)
	require.True(t, p.Staged())
	require.Equal(t, Secret(""), p.Stage.URL)
	require.Equal(t, "oneway_stage", p.Stage.Schema)
	require.Equal(t, 5*time.Minute, p.Stage.ScanInterval.Duration)
	tg := p.Targets[0]
	require.False(t, tg.RecreateDeleted)
	require.Equal(t, 3, tg.MaxPushesPerVersion)
	require.Equal(t, 0.1, tg.Breaker.MaxDeleteShare)
	require.False(t, tg.Breaker.Allow)
	require.Equal(t, time.Hour, tg.Breaker.Window.Duration)
	require.Nil(t, tg.Readback)

	src := strings.Replace(stagedBase, "    url: postgres://u:tgtpass@h2/db\n", `    url: postgres://u:tgtpass@h2/db
    recreate_deleted: true
    max_pushes_per_version: 5
    breaker: {max_delete_share: 0.5, allow: true, window: 10m}
    readback: {}
`, 1) + "stage:\n  url: postgres://u:stagepass@h3/db\n  schema: my_stage\n  scan_interval: 30s\n"
	p, err = Parse("t.yaml", []byte(src), noEnv)
	require.NoError(t, err)
	require.Equal(t, "postgres://u:stagepass@h3/db", p.Stage.URL.Value())
	require.NotContains(t, fmt.Sprint(p.Stage.URL), "stagepass", "the stage URL is redacted when printed")
	require.Equal(t, "my_stage", p.Stage.Schema)
	require.Equal(t, 30*time.Second, p.Stage.ScanInterval.Duration)
	tg = p.Targets[0]
	require.True(t, tg.RecreateDeleted)
	require.Equal(t, 5, tg.MaxPushesPerVersion)
	require.Equal(t, Breaker{MaxDeleteShare: 0.5, Allow: true, Window: Duration{10 * time.Minute}}, tg.Breaker)
	require.Equal(t, &Readback{Pattern: PatternSynthetic, PollInterval: Duration{30 * time.Second}, BatchSize: 1000}, tg.Readback)

	// Any pattern but cdc; watermark+cdc is spelled watermark_cdc.
	src = strings.Replace(src, "readback: {}", "readback: {pattern: watermark+cdc, column: updated_at}", 1)
	p, err = Parse("t.yaml", []byte(src), noEnv)
	require.NoError(t, err)
	require.Equal(t, &Readback{Pattern: PatternWatermarkCDC, Column: "updated_at", PollInterval: Duration{30 * time.Second}, BatchSize: 1000}, p.Targets[0].Readback)
}

func TestStagedSQLiteTarget(t *testing.T) {
	src := strings.Replace(stagedBase, "kind: postgres\n    url: postgres://u:tgtpass@h2/db", "kind: sqlite\n    url: ./target.db", 1)
	p, err := Parse("t.yaml", []byte(src), noEnv)
	require.NoError(t, err)
	require.True(t, p.Staged())
	require.Equal(t, KindSQLite, p.Targets[0].Kind)
}

func TestStagedValidationErrors(t *testing.T) {
	target := "    url: postgres://u:tgtpass@h2/db\n"
	tests := []struct {
		name  string
		src   string
		field string
		line  int
		msg   string
	}{
		{"mode unknown", base + "mode: batch\n", "mode", 13, `must be direct or staged, got "batch"`},
		{"staged without columns", base + "mode: staged\n", "source.columns", 3, "required in staged mode"},
		{"stage schema bad", stagedBase + "stage:\n  schema: 'a b'\n", "stage.schema", 16, "not a valid identifier"},
		{"scan interval short", stagedBase + "stage:\n  scan_interval: 10ms\n", "stage.scan_interval", 16, "must be >= 1s"},
		{"staged mysql target", strings.Replace(stagedBase, "kind: postgres\n    url", "kind: mysql\n    url", 1), "targets[0].kind", 12, `staged mode supports postgres and sqlite targets only (yet), got "mysql"`},
		{"orphans delete without deletes", strings.Replace(stagedBase, target, target+"    delete: none\n    orphans: delete\n", 1), "targets[0].orphans", 15, `needs a delete policy that deletes`},
		{"max pushes zero", strings.Replace(stagedBase, target, target+"    max_pushes_per_version: 0\n", 1), "targets[0].max_pushes_per_version", 14, "between 1 and 1000, got 0"},
		{"share zero", strings.Replace(stagedBase, target, target+"    breaker:\n      max_delete_share: 0\n", 1), "targets[0].breaker.max_delete_share", 15, "must be > 0 and <= 1, got 0"},
		{"share over one", strings.Replace(stagedBase, target, target+"    breaker:\n      max_delete_share: 1.5\n", 1), "targets[0].breaker.max_delete_share", 15, "got 1.5"},
		{"share not a number", strings.Replace(stagedBase, target, target+"    breaker:\n      max_delete_share: lots\n", 1), "targets[0].breaker.max_delete_share", 15, "expected a number"},
		{"window zero", strings.Replace(stagedBase, target, target+"    breaker:\n      window: 0s\n", 1), "targets[0].breaker.window", 15, "must be > 0"},
		{"readback pattern cdc", strings.Replace(stagedBase, target, target+"    readback:\n      pattern: cdc\n", 1), "targets[0].readback.pattern", 15, `cdc is not supported for a read-back`},
		{"readback pattern unknown", strings.Replace(stagedBase, target, target+"    readback:\n      pattern: guess\n", 1), "targets[0].readback.pattern", 15, `unknown capture pattern "guess"`},
		{"readback watermark without column", strings.Replace(stagedBase, target, target+"    readback:\n      pattern: watermark\n", 1), "targets[0].readback.column", 15, `required for the watermark pattern`},
		{"readback column not owned", strings.Replace(stagedBase, target, target+"    readback:\n      pattern: watermark\n      column: crm_notes\n", 1), "targets[0].readback.column", 16, `"crm_notes" is not in source.columns`},
		{"readback synthetic with column", strings.Replace(stagedBase, target, target+"    readback:\n      column: updated_at\n", 1), "targets[0].readback.column", 15, `not used by the synthetic pattern`},
		{"readback window without span", strings.Replace(stagedBase, target, target+"    readback:\n      pattern: window\n      column: updated_at\n", 1), "targets[0].readback.window", 15, `required for the window pattern`},
		{"readback window on watermark", strings.Replace(stagedBase, target, target+"    readback:\n      pattern: watermark\n      column: updated_at\n      window: 1h\n", 1), "targets[0].readback.window", 17, `only for the window pattern`},
		{"readback poll", strings.Replace(stagedBase, target, target+"    readback:\n      poll_interval: 0s\n", 1), "targets[0].readback.poll_interval", 15, "must be > 0"},
		{"readback batch", strings.Replace(stagedBase, target, target+"    readback:\n      batch_size: 0\n", 1), "targets[0].readback.batch_size", 15, "between 1 and 100000"},
		{"readback unknown field", strings.Replace(stagedBase, target, target+"    readback:\n      table: x\n", 1), "targets[0].readback.table", 15, `unknown field "table"`},
		{"production embedded stage", stagedBase + "production: true\n", "stage.url", 1, "production mode needs a PostgreSQL stage"},
		{"production plaintext stage", stagedBase + "production: true\nstage:\n  url: postgres://u:p@h/db?sslmode=disable\n", "stage.url", 17, "sslmode=disable is not verified TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("t.yaml", []byte(tt.src), noEnv)
			require.Error(t, err)
			require.Nil(t, p)
			for _, fe := range fieldErrors(t, err) {
				if fe.Field == tt.field && strings.Contains(fe.Msg, tt.msg) {
					require.Equal(t, tt.line, fe.Line, "line of %s", fe)
					return
				}
			}
			t.Fatalf("no error for %s containing %q in:\n%v", tt.field, tt.msg, err)
		})
	}
}

func TestStagedExampleFile(t *testing.T) {
	const path = "../../deploy/examples/invoices-staged.yaml"
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	env := envOf(map[string]string{
		"ONEWAY_SOURCE_URL": "postgres://oneway:srcsecret@source:5432/erp?sslmode=disable",
		"ONEWAY_TARGET_URL": "postgres://oneway:tgtsecret@target:5432/reporting?sslmode=disable",
	})
	p, err := Parse(path, data, env)
	require.NoError(t, err)
	require.True(t, p.Staged())
	require.Equal(t, Secret(""), p.Stage.URL, "ONEWAY_STAGE_URL unset means the embedded stage")
	require.Equal(t, "oneway_stage", p.Stage.Schema)
	tg, ok := p.Target("pg")
	require.True(t, ok)
	require.True(t, tg.RecreateDeleted)
	require.Equal(t, "hard", tg.Delete)
	require.Equal(t, "keep", tg.Orphans)
	require.Equal(t, 3, tg.MaxPushesPerVersion)
	require.Equal(t, 0.1, tg.Breaker.MaxDeleteShare)
	require.NotNil(t, tg.Readback)
	require.Equal(t, PatternSynthetic, tg.Readback.Pattern)

	env = envOf(map[string]string{
		"ONEWAY_SOURCE_URL": "postgres://x@s/db", "ONEWAY_TARGET_URL": "postgres://x@t/db",
		"ONEWAY_STAGE_URL": "postgres://oneway:stagesecret@stage:5432/stage",
	})
	p, err = Parse(path, data, env)
	require.NoError(t, err)
	require.Equal(t, "postgres://oneway:stagesecret@stage:5432/stage", p.Stage.URL.Value())
}
