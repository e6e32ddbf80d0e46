package config

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const multi = `pipeline: shop
source:
  kind: postgres
  url: postgres://u:srcpass@h/db
  capture:
    pattern: cdc
    batch_size: 500
  tables:
    - table: public.album
      key: [album_id]
    - table: playlist_track
      key: [playlist_id, track_id]
      target_table: copy.pt
    - table: sales.InvoiceLine
      name: lines
      key: [invoice_line_id]
      columns: [invoice_line_id, unit_price]
      capture:
        pattern: watermark
        column: unit_price
        poll_interval: 5s
targets:
  - name: pg
    kind: postgres
    url: postgres://u:tgtpass@h2/db
  - name: lite
    kind: sqlite
    url: /tmp/x.db
`

func TestParseAllExpandsTables(t *testing.T) {
	ps, err := ParseAll("multi.yaml", []byte(multi), noEnv)
	require.NoError(t, err)
	require.Equal(t, []string{"shop_album", "shop_playlist_track", "shop_lines"}, Names(ps))
	for _, p := range ps {
		require.Equal(t, "shop", p.Group)
		require.Equal(t, "multi.yaml", p.File)
		require.Nil(t, p.Source.Tables)
		require.Len(t, p.Targets, 2)
	}

	album := ps[0]
	require.Equal(t, "public.album", album.Source.Table)
	require.Equal(t, []string{"album_id"}, album.Source.Key)
	require.Equal(t, PatternCDC, album.Source.Capture.Pattern)
	require.Equal(t, 500, album.Source.Capture.BatchSize)
	require.Equal(t, "oneway_shop_album", album.Source.Capture.Slot, "one slot per table")
	require.Equal(t, "oneway_shop_album", album.Source.Capture.Publication)
	require.Equal(t, "public.album", album.Targets[0].Table)
	require.Equal(t, "public.album", album.Targets[1].Table)

	pt := ps[1]
	require.Equal(t, []string{"playlist_id", "track_id"}, pt.Source.Key, "composite key")
	require.Equal(t, "copy.pt", pt.Targets[0].Table)
	require.Equal(t, "copy.pt", pt.Targets[1].Table)
	require.Equal(t, "oneway_shop_playlist_track", pt.Source.Capture.Slot)

	lines := ps[2]
	require.Equal(t, PatternWatermark, lines.Source.Capture.Pattern, "the table's capture overrides the pipeline's")
	require.Equal(t, "unit_price", lines.Source.Capture.Column)
	require.Equal(t, 5*time.Second, lines.Source.Capture.PollInterval.Duration)
	require.Equal(t, 500, lines.Source.Capture.BatchSize, "fields the table does not give come from the pipeline")
	require.Empty(t, lines.Source.Capture.Slot)
	require.Equal(t, []string{"invoice_line_id", "unit_price"}, lines.Source.Columns)
	require.Equal(t, "sales.InvoiceLine", lines.Targets[0].Table)

	// The copies do not share what defaults or callers change.
	ps[0].Targets[0].Name = "changed"
	require.Equal(t, "pg", ps[1].Targets[0].Name)

	_, err = Parse("multi.yaml", []byte(multi), noEnv)
	require.ErrorContains(t, err, "shop_album, shop_playlist_track, shop_lines")
}

func TestParseAllSingleTable(t *testing.T) {
	ps, err := ParseAll("base.yaml", []byte(base), noEnv)
	require.NoError(t, err)
	require.Len(t, ps, 1)
	require.Equal(t, "inv", ps[0].Pipeline)
	require.Empty(t, ps[0].Group)
}

func TestParseAllTableErrors(t *testing.T) {
	tests := []struct {
		name        string
		old, new    string
		field, text string
	}{
		{"table beside tables", "  capture:\n    pattern: cdc\n", "  table: x\n  capture:\n    pattern: cdc\n", "source.table", "not allowed with source.tables"},
		{"slot for every table", "    batch_size: 500\n", "    batch_size: 500\n    slot: one\n", "source.capture.slot", "each table's pipeline has its own"},
		{"target table", "    url: /tmp/x.db\n", "    url: /tmp/x.db\n    table: t\n", "targets[1].table", "target_table"},
		{"name too long", "      name: lines\n", "      name: a_very_long_suffix_that_does_not_fit_at_all\n", "source.tables[2].name", "is not valid"},
		{"duplicate name", "      name: lines\n", "      name: album\n", "source.tables[2].name", "already that of source.tables[0]"},
		{"bad key in one table", "      key: [album_id]\n", "      key: []\n", "source.tables[0].key", "pipeline shop_album: at least one key column"},
		{"bad override", "        column: unit_price\n", "        column: unit_price\n        window: 1h\n", "source.tables[2].capture.window", "only for the window pattern"},
		{"unknown field", "      target_table: copy.pt\n", "      target_tabel: copy.pt\n", "source.tables[1].target_tabel", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := strings.Replace(multi, tt.old, tt.new, 1)
			require.NotEqual(t, multi, src)
			_, err := ParseAll("multi.yaml", []byte(src), noEnv)
			require.Error(t, err)
			var found bool
			for _, fe := range fieldErrors(t, err) {
				if fe.Field == tt.field && strings.Contains(fe.Msg, tt.text) {
					found = true
					require.NotZero(t, fe.Line, "the error names the line")
				}
			}
			require.True(t, found, "want %s: %s in\n%v", tt.field, tt.text, err)
		})
	}
}

func TestTableSuffix(t *testing.T) {
	for in, want := range map[string]string{
		"album": "album", "public.invoice_line": "invoice_line", "Chinook.InvoiceLine": "invoiceline", "a-b c": "a_b_c",
	} {
		require.Equal(t, want, tableSuffix(in), in)
	}
}
