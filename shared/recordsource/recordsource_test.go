package recordsource

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
)

var invoiceCols = []Column{
	{Name: "id", Type: "bigint"},
	{Name: "customer", Type: "text"},
	{Name: "amount", Type: "numeric(12,2)"},
	{Name: "paid", Type: "boolean"},
	{Name: "modified_at", Type: "timestamp with time zone"},
}

func openFile(t *testing.T, format, content string) *Source {
	t.Helper()
	path := filepath.Join(t.TempDir(), "invoices."+format)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	dec, err := NewDecoder(invoiceCols, []string{"id"})
	require.NoError(t, err)
	f, err := NewFile(path, format, dec)
	require.NoError(t, err)
	s, err := New(Options{What: "test", Columns: invoiceCols, Key: []string{"id"}, TempDir: t.TempDir()}, f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func scanAll(t *testing.T, s *Source) ([]string, error) {
	t.Helper()
	sc, err := s.Scan(context.Background(), source.ScanOptions{})
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	var out []string
	for {
		r, ok := sc.Next()
		if !ok {
			return out, sc.Err()
		}
		vals := make([]string, len(r))
		for i, v := range r {
			if v == nil {
				vals[i] = "NULL"
			} else {
				vals[i] = string(v)
			}
		}
		out = append(out, strings.Join(vals, "|"))
	}
}

func TestFileScan(t *testing.T) {
	tests := []struct {
		name, format, content string
		want                  []string
		wantErr               string
	}{
		{name: "csv in no order", format: FormatCSV,
			content: "customer,id,amount,paid,modified_at\n\"b, inc\",10,1.5,true,2026-01-02T03:04:05.5Z\nc,-3,7,0,\na,2,,f,2026-01-02 03:04:05\n",
			want:    []string{"-3|c|7.00|f|NULL", "2|a|NULL|f|2026-01-02 03:04:05+00", "10|b, inc|1.50|t|2026-01-02 03:04:05.5+00"}},
		{name: "jsonl in no order", format: FormatJSONL,
			content: "{\"id\": 5, \"customer\": \"x\", \"amount\": 12.345, \"paid\": false, \"modified_at\": \"2026-01-02T03:04:05+02:00\"}\n\n{\"id\": 1, \"customer\": null, \"amount\": \"3\"}\n",
			want:    []string{"1|NULL|3.00|NULL|NULL", "5|x|12.35|f|2026-01-02 01:04:05+00"}},
		{name: "csv bad integer", format: FormatCSV, content: "id,customer,amount,paid,modified_at\n1,a,1,t,\nx,b,1,t,\n",
			wantErr: `line 3: field "id": "x" is not an integer`},
		{name: "csv missing column", format: FormatCSV, content: "id,customer\n1,a\n", wantErr: `line 1: the header has no column "amount"`},
		{name: "csv duplicate key", format: FormatCSV, content: "id,customer,amount,paid,modified_at\n1,a,1,t,\n1,b,1,t,\n",
			wantErr: "line 3: duplicate key"},
		{name: "csv empty key", format: FormatCSV, content: "id,customer,amount,paid,modified_at\n,a,1,t,\n", wantErr: `line 2: field "id": a key column is empty`},
		{name: "csv wrong field count", format: FormatCSV, content: "id,customer,amount,paid,modified_at\n1,a\n", wantErr: "line 2"},
		{name: "jsonl bad boolean", format: FormatJSONL, content: "{\"id\": 1}\n{\"id\": 2, \"paid\": \"maybe\"}\n",
			wantErr: `line 2: field "paid": "maybe" is not a boolean`},
		{name: "jsonl not an object", format: FormatJSONL, content: "{\"id\": 1}\n[1]\n", wantErr: "line 2: not a JSON object"},
		{name: "jsonl missing key", format: FormatJSONL, content: "{\"customer\": \"a\"}\n", wantErr: `line 1: field "id": a key field is missing`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openFile(t, tt.format, tt.content)
			got, err := scanAll(t, s)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.True(t, errs.IsPermanent(err), "a bad row halts with a permanent error: %v", err)
				require.ErrorContains(t, err, "invoices."+tt.format)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestSnapshotPagesAndOrder(t *testing.T) {
	var b strings.Builder
	b.WriteString("id,customer,amount,paid,modified_at\n")
	const n = 2500
	for i := range n {
		id := (i * 7919) % n // every id once, in no order
		fmt.Fprintf(&b, "%d,c%d,%d.25,t,\n", id, id, id)
	}
	s := openFile(t, FormatCSV, b.String())
	got, err := scanAll(t, s)
	require.NoError(t, err)
	require.Len(t, got, n)
	for i, r := range got {
		require.True(t, strings.HasPrefix(r, fmt.Sprintf("%d|", i)), r)
	}
	ctx := context.Background()
	var after []string
	seen := 0
	for {
		rows, err := s.SnapshotPage(ctx, after, 300)
		require.NoError(t, err)
		for _, r := range rows {
			require.Equal(t, fmt.Sprint(seen), string(r[0]))
			seen++
		}
		if len(rows) < 300 {
			break
		}
		after = s.KeyOf(rows[len(rows)-1])
		if seen == 900 {
			// A restart: a fresh source resumes after a key.
			s = openFile(t, FormatCSV, b.String())
		}
	}
	require.Equal(t, n, seen)
}

func TestConvert(t *testing.T) {
	tests := []struct {
		typ, in, want string
	}{
		{"numeric", "+007.50", "7.50"},
		{"numeric", "-0.0", "0.0"},
		{"numeric(5,1)", "2.25", "2.3"},
		{"double precision", "1e20", "1e+20"},
		{"real", "0.1", "0.1"},
		{"uuid", "A0EEBC999C0B4EF8BB6D6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"timestamp(3) without time zone", "2026-01-02T03:04:05.123456Z", "2026-01-02 03:04:05.123"},
		{"date", "2026-01-02", "2026-01-02"},
		{"character varying(10)", " x ", " x "},
	}
	for _, tt := range tests {
		t.Run(tt.typ+" "+tt.in, func(t *testing.T) {
			c, err := converter(tt.typ)
			require.NoError(t, err)
			got, err := c.fromString(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, string(got))
		})
	}
	_, err := converter("bytea")
	require.ErrorContains(t, err, "not supported")
}

// A Scan's memory does not grow with the listing: the rows wait in the
// spill file, not in the heap.
func TestScanMemoryIsBounded(t *testing.T) {
	defer func(n int) { defaultChunkBytes = n }(defaultChunkBytes)
	defaultChunkBytes = 1 << 20
	const n = 60_000
	path := filepath.Join(t.TempDir(), "big.jsonl")
	f, err := os.Create(path)
	require.NoError(t, err)
	pad := strings.Repeat("x", 300)
	for i := range n {
		id := (i * 7919) % n
		_, err := fmt.Fprintf(f, "{\"id\": %d, \"customer\": \"%s%d\", \"amount\": \"1.5\"}\n", id, pad, id)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
	dec, err := NewDecoder(invoiceCols, []string{"id"})
	require.NoError(t, err)
	l, err := NewFile(path, FormatJSONL, dec)
	require.NoError(t, err)
	s, err := New(Options{What: "big", Columns: invoiceCols, Key: []string{"id"}, TempDir: t.TempDir()}, l, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := heap()
	sc, err := s.Scan(context.Background(), source.ScanOptions{})
	require.NoError(t, err)
	defer sc.Close()
	var peak uint64
	count := 0
	for {
		r, ok := sc.Next()
		if !ok {
			break
		}
		require.Equal(t, fmt.Sprint(count), string(r[0]))
		count++
		if count%10_000 == 0 {
			peak = max(peak, heap())
		}
	}
	require.NoError(t, sc.Err())
	require.Equal(t, n, count)
	const limit = 8 << 20 // the listing is over 18 MB; a chunk 1 MB
	require.Less(t, int64(peak)-int64(base), int64(limit), "heap grew by %d MB while scanning", (int64(peak)-int64(base))>>20)
}
