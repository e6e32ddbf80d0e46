package config

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRecordSourceExampleFiles(t *testing.T) {
	env := envOf(map[string]string{
		"ONEWAY_TARGET_URL": "postgres://oneway:tgtsecret@target:5432/reporting",
		"FAKESAAS_TOKEN":    "tok-123",
	})
	for _, tt := range []struct {
		path, kind, pattern string
	}{
		{"../../deploy/examples/invoices-http-source.yaml", KindHTTP, PatternWatermarkCDC},
		{"../../deploy/examples/invoices-csv.yaml", KindCSV, PatternSynthetic},
	} {
		t.Run(tt.kind, func(t *testing.T) {
			data, err := os.ReadFile(tt.path)
			require.NoError(t, err)
			p, err := Parse(tt.path, data, env)
			require.NoError(t, err)
			require.Equal(t, tt.kind, p.Source.Kind)
			require.Equal(t, tt.pattern, p.Source.Capture.Pattern)
			names, types := p.Source.RecordColumns()
			require.Equal(t, []string{"id", "customer", "amount", "status", "modified_at"}, names)
			require.Equal(t, []string{"bigint", "text", "numeric(12,2)", "text", "timestamp with time zone"}, types)
			var out strings.Builder
			require.NoError(t, p.Print(&out))
			require.NotContains(t, out.String(), "tok-123")
			if tt.kind == KindHTTP {
				require.Equal(t, "Bearer tok-123", p.Source.HTTP.Headers[0].Value.Value())
				require.Equal(t, 500, p.Source.HTTP.PageSize)
				require.Equal(t, "data", p.Source.HTTP.RecordsField)
				require.Equal(t, "modified_since", p.Source.HTTP.ModifiedSinceParam)
			}
		})
	}
}

func TestRecordSourceValidation(t *testing.T) {
	const src = `pipeline: inv
source:
  kind: %KIND%
  url: %URL%
  table: public.invoices
  key: [id]
  columns: [id, v, at]
  types: {id: bigint, at: timestamptz}
%EXTRA%targets:
  - name: pg
    kind: postgres
    url: postgres://u:p@h2/db
`
	tests := []struct {
		name, kind, url, extra string
		wantField, wantMsg     string
	}{
		{"csv ok", "csv", "/tmp/x.csv", "", "", ""},
		{"jsonl ok", "jsonl", "/tmp/x.jsonl", "", "", ""},
		{"http ok", "http", "https://api.example.com/invoices", "  capture: {pattern: watermark, column: at}\n", "", ""},
		{"csv watermark", "csv", "/tmp/x.csv", "  capture: {pattern: watermark, column: at}\n", "source.capture.pattern", "supports only synthetic"},
		{"http window", "http", "https://api.example.com/x", "  capture: {pattern: window, column: at, window: 1h}\n", "source.capture.pattern", "supports synthetic"},
		{"http bad url", "http", "ftp://x/y", "", "source.url", "http:// or https://"},
		{"http section on a file", "csv", "/tmp/x.csv", "  http: {page_size: 5}\n", "source.http", "only allowed when kind is \"http\""},
		{"bad page size", "http", "https://a/b", "  http: {page_size: 0}\n", "source.http.page_size", "between 1 and 100000"},
		{"bad header", "http", "https://a/b", "  http: {headers: [{name: 'a b', value: x}]}\n", "source.http.headers[0].name", "not a valid header name"},
		{"unsupported type", "csv", "/tmp/x.csv", "  types: {id: bigint, v: bytea}\n", "source.types.v", "not supported"},
		{"delete feed", "http", "https://a/b", "  capture: {pattern: watermark, column: at, delete_feed: {soft_delete_column: v}}\n", "source.capture.delete_feed", "not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.NewReplacer("%KIND%", tt.kind, "%URL%", tt.url, "%EXTRA%", tt.extra).Replace(src)
			if strings.Contains(tt.extra, "types:") {
				doc = strings.Replace(doc, "  types: {id: bigint, at: timestamptz}\n", "", 1)
			}
			_, err := Parse("p.yaml", []byte(doc), noEnv)
			if tt.wantField == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			var found bool
			for _, fe := range fieldErrors(t, err) {
				if fe.Field == tt.wantField && strings.Contains(fe.Msg, tt.wantMsg) {
					found = true
				}
			}
			require.True(t, found, "want %s: %s in %v", tt.wantField, tt.wantMsg, err)
		})
	}
}
