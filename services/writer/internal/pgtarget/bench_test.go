package pgtarget

import (
	"fmt"
	"log/slog"
	"testing"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// BenchmarkFencedUpdates measures the fenced path (ledger statement, then
// row statement) on updates of an invoices-like table, 1,000 changes per
// Apply over 20,000 rows: the path cdc and incremental changes take.
func BenchmarkFencedUpdates(b *testing.B) {
	pool, err := pgconn.Open(b.Context(), pgtest.NewDatabase(b), "pgtarget-bench", 4)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	cols := []*onewayv1.Column{
		{Name: "id", Type: "bigint", Key: true},
		{Name: "customer", Type: "text"},
		{Name: "amount", Type: "numeric(12,2)"},
		{Name: "status", Type: "text"},
		{Name: "note", Type: "text"},
		{Name: "updated_at", Type: "timestamp with time zone"},
	}
	spec := Spec{Pipeline: "p", Target: "pg", Table: pgconn.Table{Schema: "public", Name: "invoices"}, CreateTable: true,
		Delete: DeleteHard, LedgerSchema: "oneway"}
	tg, err := Open(b.Context(), pool, spec, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	const rows, per = 20_000, 1_000
	batch := func(seq uint64, from, round int) Item {
		changes := make([]*onewayv1.Change, 0, per)
		for id := from; id < from+per; id++ {
			changes = append(changes, up(fmt.Sprint(id), fmt.Sprintf("customer %d", id%5000), fmt.Sprintf("%d.%02d", id+round, id%100),
				"paid", fmt.Sprintf("note for invoice %d, round %d", id, round), fmt.Sprintf("2026-11-27 17:40:%02d.%06d+00", round%60, id)))
		}
		b := mkBatch(cdc, cols, changes...)
		b.Table = "public.invoices"
		return Item{Seq: seq, Batch: b}
	}
	seq := uint64(0)
	for from := 1; from <= rows; from += per { // the rows exist; every Apply below updates
		seq++
		if _, err := tg.Apply(b.Context(), []Item{batch(seq, from, 0)}); err != nil {
			b.Fatal(err)
		}
	}
	round := 0
	b.ResetTimer()
	for b.Loop() {
		round++
		for from := 1; from <= rows; from += per {
			seq++
			res, err := tg.Apply(b.Context(), []Item{batch(seq, from, round)})
			if err != nil {
				b.Fatal(err)
			}
			if res.Written != per {
				b.Fatalf("wrote %d of %d", res.Written, per)
			}
		}
	}
	b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "changes/s")
}
