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

func TestProcStatParsing(t *testing.T) {
	busy, steal := parseProcStat([]byte("cpu  100 20 30 400 50 6 4 10 0 0\ncpu0 1 2 3\n"))
	if busy != 1.6 || steal != 0.1 {
		t.Errorf("parseProcStat: busy %v steal %v, want 1.6 and 0.1", busy, steal)
	}
	sec, ok := parsePidStat([]byte("42 (postgres: a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0"))
	if !ok || sec != 3 {
		t.Errorf("parsePidStat: %v %v, want 3 true", sec, ok)
	}
	roles := pgRoles(7, map[string]string{"src": "source sessions"})
	for _, tc := range []struct {
		pid  int
		cmd  string
		want string
	}{
		{7, "/bin/oneway up", "oneway"},
		{8, "postgres: 15/main: walsender postgres 127.0.0.1(5) START_REPLICATION", "walsender"},
		{9, "postgres: 15/main: logical replication apply worker for subscription 5", "subscription worker"},
		{10, "postgres: 15/main: postgres src 127.0.0.1(6) idle", "source sessions"},
		{11, "postgres: 15/main: checkpointer", "postgres (other)"},
		{12, "/usr/bin/python3 x", "other"},
	} {
		if got := roles(tc.pid, tc.cmd); got != tc.want {
			t.Errorf("role of %q = %q, want %q", tc.cmd, got, tc.want)
		}
	}
	a := cpuSample{procs: map[int]procCPU{1: {"x", 1}, 2: {"y", 5}}, busy: 10}
	b := cpuSample{procs: map[int]procCPU{1: {"x", 3}, 2: {"z", 0.5}}, busy: 14}
	u := a.until(b, func(pid int, _ string) string { return map[int]string{1: "one", 2: "two"}[pid] })
	if u.ByRole["one"] != 2 || u.ByRole["two"] != 0.5 || u.Busy != 4 {
		t.Errorf("until = %+v, want one 2, two 0.5 (pid reused), busy 4", u)
	}
}
