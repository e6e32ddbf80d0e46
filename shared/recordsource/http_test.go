package recordsource

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
	"github.com/oneway-sync/oneway/shared/testkit/fakesaas"
)

const testToken = "s3cret-token-value"

var apiCols = []Column{
	{Name: "id", Type: "bigint"},
	{Name: "customer", Type: "text"},
	{Name: "amount", Type: "numeric(12,2)"},
	{Name: "status", Type: "text"},
	{Name: "modified_at", Type: "timestamp with time zone"},
}

// syncBuffer is a log sink safe for concurrent writes.
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

func openAPI(t *testing.T, api *fakesaas.Server, token, watermark string, logs *syncBuffer) *Source {
	t.Helper()
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	dec, err := NewDecoder(apiCols, []string{"id"})
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(logs, nil))
	h, err := NewHTTP(HTTPOptions{URL: srv.URL + "/invoices", Headers: []Header{{Name: "Authorization", Value: "Bearer " + token}},
		Timeout: 5 * time.Second, MaxAttempts: 4, PageSize: 7, RecordsField: "data", NextTokenField: "next_page_token",
		PageTokenParam: "page_token", LimitParam: "limit", ModifiedSinceParam: "modified_since", InitialBackoff: 10 * time.Millisecond}, dec, log)
	require.NoError(t, err)
	s, err := New(Options{What: "test api", Columns: apiCols, Key: []string{"id"}, Watermark: watermark, Replace: true, TempDir: t.TempDir()}, h, log)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestHTTPListing(t *testing.T) {
	api := fakesaas.New(testToken, false)
	for i := range 50 {
		api.Create(fakesaas.Invoice{Customer: fmt.Sprintf("c%d", i), Amount: fmt.Sprintf("%d.5", i), Status: "open"})
	}
	var logs syncBuffer
	s := openAPI(t, api, testToken, "", &logs)

	api.InjectFaults(http.StatusTooManyRequests, 1, time.Second)
	api.InjectFaults(http.StatusServiceUnavailable, 2, 0)
	start := time.Now()
	sc, err := s.Scan(context.Background(), source.ScanOptions{})
	require.NoError(t, err)
	var ids []string
	for {
		r, ok := sc.Next()
		if !ok {
			break
		}
		ids = append(ids, string(r[0]))
	}
	require.NoError(t, sc.Err())
	sc.Close()
	require.Len(t, ids, 50)
	for i, id := range ids {
		require.Equal(t, fmt.Sprint(i+1), id, "key order")
	}
	require.Equal(t, 1, api.FaultsServed(http.StatusTooManyRequests))
	require.Equal(t, 2, api.FaultsServed(http.StatusServiceUnavailable))
	require.GreaterOrEqual(t, time.Since(start), time.Second, "Retry-After: 1 was honoured")
	require.Contains(t, logs.String(), "retrying")
	require.NotContains(t, logs.String(), testToken)

	// A wrong token is a permanent error, without the token in it.
	bad := openAPI(t, api, "wrong-"+testToken, "", &logs)
	_, err = bad.Scan(context.Background(), source.ScanOptions{})
	require.Error(t, err)
	require.True(t, errs.IsPermanent(err), "%v", err)
	require.ErrorContains(t, err, "401")
	require.NotContains(t, err.Error(), testToken)

	// Attempts run out: a transient error.
	api.InjectFaults(http.StatusServiceUnavailable, 4, 0)
	_, err = s.Scan(context.Background(), source.ScanOptions{})
	require.Error(t, err)
	require.False(t, errs.IsPermanent(err))
	require.True(t, errs.IsUnavailable(err), "an API that keeps failing is waited out: %v", err)
	require.ErrorContains(t, err, "after 4 attempts")
}

func TestHTTPWatermarkRows(t *testing.T) {
	api := fakesaas.New(testToken, false)
	for i := range 30 {
		api.Create(fakesaas.Invoice{Customer: fmt.Sprintf("c%d", i), Amount: "1", Status: "open"})
	}
	var logs syncBuffer
	s := openAPI(t, api, testToken, "modified_at", &logs)
	ctx := context.Background()
	first := api.IDs()[0]
	inv, _ := api.Update(first, func(inv *fakesaas.Invoice) { inv.Status = "paid" })
	mark := tzText(inv.ModifiedAt.Add(-time.Hour))
	b := source.Bound{Value: tzText(time.Now().Add(time.Hour))}
	c := source.Cursor{Mark: mark}
	var got []string
	for {
		rows, err := s.WatermarkRows(ctx, c, b, 4)
		require.NoError(t, err)
		for _, r := range rows {
			got = append(got, string(r[0]))
		}
		if len(rows) < 4 {
			break
		}
		c = s.CursorOf(rows[len(rows)-1])
	}
	require.Len(t, got, 30)
	require.Equal(t, fmt.Sprint(first), got[len(got)-1], "the updated invoice comes last: (watermark, key) order")

	// Rows at or after the bound are left for a later poll.
	rows, err := s.WatermarkRows(ctx, source.Cursor{Mark: mark}, source.Bound{Value: tzText(inv.ModifiedAt)}, 100)
	require.NoError(t, err)
	for _, r := range rows {
		require.NotEqual(t, fmt.Sprint(first), string(r[0]))
	}
	lower, le, me, err := s.Lower(ctx, "2026-01-02 03:04:05+00", 2)
	require.NoError(t, err)
	require.Equal(t, "2026-01-02 03:04:03+00", lower)
	require.Equal(t, me-2, le)
}
