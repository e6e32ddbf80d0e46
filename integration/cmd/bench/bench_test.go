package main

import (
	"path/filepath"
	"testing"

	"github.com/oneway-sync/oneway/shared/config"
)

func TestLibpqConnString(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"postgres://postgres:postgres@127.0.0.1:5432/src?sslmode=disable", "host='127.0.0.1' dbname='src' port='5432' user='postgres' password='postgres'"},
		{"postgres://u@db.example/x", "host='db.example' dbname='x' user='u'"},
		{"postgres://u:it%27s%5C%20x@h:6543/d", `host='h' dbname='d' port='6543' user='u' password='it\'s\\ x'`},
	} {
		if got := libpqConnString(tc.url); got != tc.want {
			t.Errorf("libpqConnString(%q) = %q, want %q", tc.url, got, tc.want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{0.9, 0.1}, 0.9},
	} {
		in := append([]float64(nil), tc.in...)
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Errorf("median reordered its input: %v", tc.in)
			}
		}
	}
}

// The bench's pipeline files load as oneway loads them.
func TestInvoicesConfigLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	writeInvoicesConfig(path, "bench_staged_pg", "mode: staged\nstage:\n  url: \"postgres://x/stage\"\n",
		"postgres://x/src", "    pattern: watermark\n    column: updated_at\n", "postgres://x/dst", "    delete: hard\n")
	p, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if p.Pipeline != "bench_staged_pg" || !p.Staged() || p.Source.Capture.Pattern != "watermark" || p.Targets[0].Delete != "hard" {
		t.Fatalf("loaded %+v", p)
	}
}
