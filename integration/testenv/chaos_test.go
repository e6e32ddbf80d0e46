package testenv

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

func TestBehind(t *testing.T) {
	state := map[int64]int64{1: 3, 2: 1, 3: 5}
	tests := []struct {
		name   string
		target map[int64]int64
		want   int64
	}{
		{"empty target", map[int64]int64{}, 9},
		{"caught up", map[int64]int64{1: 3, 2: 1, 3: 5}, 0},
		{"partly", map[int64]int64{1: 1, 3: 5}, 3},
		{"ahead counts as nothing", map[int64]int64{1: 4, 2: 1, 3: 5}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Behind(state, tt.target); got != tt.want {
				t.Fatalf("Behind = %d, want %d", got, tt.want)
			}
		})
	}
}

// fakeTarget is a ChaosTarget held in memory.
type fakeTarget struct {
	rows    map[int64]ChaosRow
	writes  []ChaosWrite
	applies map[int64]int64
}

func (f fakeTarget) Versions(context.Context) (map[int64]int64, error) {
	out := map[int64]int64{}
	for k, r := range f.rows {
		out[k] = r.Version
	}
	return out, nil
}
func (f fakeTarget) Rows(context.Context) (map[int64]ChaosRow, error) { return f.rows, nil }
func (f fakeTarget) Writes(context.Context) ([]ChaosWrite, error)     { return f.writes, nil }
func (f fakeTarget) Applies(context.Context) (map[int64]int64, error) { return f.applies, nil }
func (f fakeTarget) Foreign(context.Context) (int64, error)           { return 0, nil }

func wr(id, v int64) ChaosWrite { return ChaosWrite{ID: id, Version: v} }

func del(id, v int64) ChaosWrite { return ChaosWrite{ID: id, Version: v, Deleted: true} }

func TestCheckChaos(t *testing.T) {
	row := func(v int64) ChaosRow {
		return ChaosRow{Version: v, Payload: "p", UpdatedAt: "2026-01-01 00:00:00.000000"}
	}
	source := map[int64]ChaosRow{1: row(2), 2: row(1), 3: row(3)}
	good := fakeTarget{
		rows:    map[int64]ChaosRow{1: row(2), 2: row(1), 3: row(3)},
		writes:  []ChaosWrite{wr(1, 1), wr(2, 1), wr(1, 2), wr(3, 1), wr(3, 3)},
		applies: map[int64]int64{1: 2, 2: 1, 3: 2},
	}
	tests := []struct {
		name  string
		tgt   fakeTarget
		check func(c ChaosCheck) bool
	}{
		{"converged", good, func(c ChaosCheck) bool { return c.Lost() == 0 && c.AppliedTwice() == 0 && c.Backwards == 0 }},
		{"missing and different", fakeTarget{rows: map[int64]ChaosRow{1: row(1), 3: row(3), 9: row(1)}, applies: map[int64]int64{}},
			func(c ChaosCheck) bool { return c.Missing == 1 && c.Different == 1 && c.Extra == 1 && c.Lost() == 3 }},
		{"written twice", fakeTarget{rows: good.rows, writes: []ChaosWrite{wr(1, 2), wr(2, 1), wr(1, 2), wr(3, 3)}, applies: good.applies},
			func(c ChaosCheck) bool { return c.DuplicateWrites == 1 && c.AppliedTwice() == 1 && c.Backwards == 0 }},
		{"backwards", fakeTarget{rows: good.rows, writes: []ChaosWrite{wr(1, 2), wr(1, 1), wr(1, 2), wr(2, 1), wr(3, 3)}, applies: good.applies},
			func(c ChaosCheck) bool { return c.Backwards == 1 && c.DuplicateWrites == 1 }},
		{"ledger beyond states", fakeTarget{rows: good.rows, writes: good.writes, applies: map[int64]int64{1: 2, 2: 3, 3: 1}},
			func(c ChaosCheck) bool { return c.LedgerExcess == 2 && c.AppliedTwice() == 2 }},
		{"deleted", fakeTarget{rows: good.rows, writes: append(slices.Clone(good.writes), wr(4, 1), del(4, 2)),
			applies: map[int64]int64{1: 2, 2: 1, 3: 2, 4: 3}},
			func(c ChaosCheck) bool { return c.Lost() == 0 && c.AppliedTwice() == 0 && c.Backwards == 0 }},
		{"not deleted", fakeTarget{rows: map[int64]ChaosRow{1: row(2), 2: row(1), 3: row(3), 4: row(2)}, applies: map[int64]int64{}},
			func(c ChaosCheck) bool { return c.Extra == 1 && c.Lost() == 1 }},
		{"resurrected", fakeTarget{rows: good.rows, writes: append(slices.Clone(good.writes), del(4, 2), wr(4, 1)), applies: map[int64]int64{}},
			func(c ChaosCheck) bool { return c.Backwards == 1 }},
		{"deleted key applied beyond its states", fakeTarget{rows: good.rows, writes: good.writes, applies: map[int64]int64{4: 4}},
			func(c ChaosCheck) bool { return c.LedgerExcess == 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := CheckChaos(context.Background(), source, map[int64]int64{4: 2}, tt.tgt)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("unexpected check: %+v", c)
			}
		})
	}
}

func TestChaosReportMarkdown(t *testing.T) {
	var r ChaosReport
	r.Add(ChaosResult{Row: "12", Fault: "cut", InFlight: 10, Recovery: 1500 * time.Millisecond, Result: "ok"})
	r.Add(ChaosResult{Row: "1–2", Fault: "kill", InFlight: 5, Lost: 1, Recovery: -1, Result: "FAIL"})
	r.Add(ChaosResult{Row: "4", Fault: "stager", Result: "pending: staged push"})
	md := r.Markdown()
	lines := strings.Split(strings.TrimSpace(md), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines:\n%s", len(lines), md)
	}
	for i, want := range []string{"| 1–2 | kill | 5 | 1 | 0 | 0 | – | FAIL |", "| 4 | stager |  |  |  |  |  | pending: staged push |", "| 12 | cut | 10 | 0 | 0 | 0 | 1.5 | ok |"} {
		if !strings.HasPrefix(lines[2+i], want) {
			t.Errorf("line %d = %q, want prefix %q", 2+i, lines[2+i], want)
		}
	}
}

func TestWorkloadRecordsWhatItCommits(t *testing.T) {
	url := pgtest.NewDatabase(t)
	w := NewWorkload(t, url, WorkloadOptions{Keys: 10, Interval: 5 * time.Millisecond, HotKeys: 3, DeleteEvery: 5})
	if got := w.Changes(); got != 10 {
		t.Fatalf("%d changes after seeding 10 keys", got)
	}
	w.Start()
	WaitFor(t, time.Minute, func() error {
		if n := w.Changes(); n < 60 {
			return fmt.Errorf("%d changes so far", n)
		}
		return nil
	})
	w.Stop()
	w.Stop() // idempotent
	rows, err := ChaosRows(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	state, deleted := w.State(), w.Deleted()
	if len(rows) != len(state) || len(state)+len(deleted) <= 10 || len(deleted) == 0 {
		t.Fatalf("source has %d keys, the workload recorded %d live and %d deleted (want some deleted, and more than the 10 seeded)",
			len(rows), len(state), len(deleted))
	}
	var live int64
	for _, v := range state {
		live += v
	}
	var gone int64
	for k := range deleted {
		gone = k
	}
	if b := w.Behind(map[int64]int64{gone: 1}); b != live+1 {
		t.Fatalf("Behind(a deleted key) = %d, want %d", b, live+1)
	}
	sum := int64(len(deleted))
	for k, v := range deleted {
		if _, ok := rows[k]; ok || k <= 3 {
			t.Fatalf("deleted key %d is still at the source, or hot", k)
		}
		sum += v
	}
	for k, v := range state {
		if rows[k].Version != v {
			t.Fatalf("key %d: source v%d, recorded v%d", k, rows[k].Version, v)
		}
		if !strings.HasPrefix(rows[k].Payload, fmt.Sprintf("k%d v%d", k, v)) {
			t.Fatalf("key %d: payload %q does not name its state", k, rows[k].Payload)
		}
		sum += v
	}
	if sum != w.Changes() {
		t.Fatalf("the versions add up to %d, the workload counted %d changes", sum, w.Changes())
	}
}

func TestChaosAPI(t *testing.T) {
	a := StartChaosAPI(t, "")
	put := func(id, idem, body string) int {
		req, _ := http.NewRequest(http.MethodPut, a.Server.URL+"/chaos/"+id, strings.NewReader(body))
		req.Header.Set("Idempotency-Key", idem)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	body := func(v int) string {
		return fmt.Sprintf(`{"id": 7, "version": %d, "payload": "k7 v%d", "updated_at": "2026-11-27 12:01:07.45+00"}`, v, v)
	}
	if c := put("7", "a", body(1)); c != http.StatusNoContent {
		t.Fatalf("PUT: %d", c)
	}
	a.SetDelay(100 * time.Millisecond)
	start := time.Now()
	put("7", "b", body(2))
	if time.Since(start) < 100*time.Millisecond {
		t.Fatal("SetDelay did not slow the request")
	}
	a.SetDelay(0)
	put("7", "b", body(2))
	if c := put("x", "c", body(3)); c != http.StatusBadRequest {
		t.Fatalf("PUT of a bad id: %d", c)
	}
	rows, _ := a.Rows(context.Background())
	if want := (ChaosRow{Version: 2, Payload: "k7 v2", UpdatedAt: "2026-11-27 12:01:07.450000"}); rows[7] != want {
		t.Fatalf("row 7 = %+v, want %+v", rows[7], want)
	}
	writes, _ := a.Writes(context.Background())
	if len(writes) != 3 || a.RepeatedIdempotencyKeys() != 1 || a.Requests() != 4 {
		t.Fatalf("writes %v, repeated keys %d, requests %d", writes, a.RepeatedIdempotencyKeys(), a.Requests())
	}
}
