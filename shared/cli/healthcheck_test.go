package cli

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, tc := range []struct {
		name, url string
		ok        bool
	}{
		{"ready", srv.URL + "/readyz", true},
		{"not ready", srv.URL + "/healthz", false},
		{"nothing listening", closed.URL + "/readyz", false},
		{"bad url", "://", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := probe(context.Background(), tc.url, 2*time.Second)
			if (err == nil) != tc.ok {
				t.Fatalf("probe(%s) = %v, want ok=%v", tc.url, err, tc.ok)
			}
		})
	}
}
