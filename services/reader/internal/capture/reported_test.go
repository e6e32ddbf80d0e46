package capture

import (
	"fmt"
	"testing"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// reportEnv is a synthetic cycle over public.t (id, v) holding rows 1..n,
// whose applied reports come from reports, run through its first cycle.
func reportEnv(t *testing.T, n int) (*env, *Cycle, *sliceStream, Position) {
	t.Helper()
	e := newEnv(t)
	e.exec(t, "CREATE TABLE public.t (id integer PRIMARY KEY, v text)",
		fmt.Sprintf("INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, %d) g", n))
	c := e.cycle(t, Spec{Table: pgconn.Table{Schema: "public", Name: "t"}, Key: []string{"id"}}, 0)
	reports := &sliceStream{}
	c.Reported = reports
	pos, _ := run(t, c, firstCycle(t), nil, 1)
	return e, c, reports, pos
}

// report is an applied report in c's layout: per change a key and a value,
// an empty value making it a delete.
func report(c *Cycle, changes ...[2]string) *onewayv1.Batch {
	b := &onewayv1.Batch{Pipeline: "p", Origin: "applied.pg", Columns: c.Layout.Columns}
	for _, ch := range changes {
		op := onewayv1.Op_OP_UPSERT
		if ch[1] == "" {
			op = onewayv1.Op_OP_DELETE
		}
		b.Changes = append(b.Changes, &onewayv1.Change{Op: op, Row: event.PackRow([][]byte{[]byte(ch[0]), []byte(ch[1])})})
	}
	return b
}

// A read-back's cycle merges the writers' applied reports: a key a writer
// inserted after the last read and that was deleted before this one is
// gone (without the reports it is in neither the list nor the read, and
// its delete is never sent); a reported key the read returns is an insert,
// a key both reported and in the list is deleted once, and a key whose
// last report is a delete is not looked for. Reports are read once.
func TestCycleMergesAppliedReports(t *testing.T) {
	t.Parallel()
	e, c, reports, pos := reportEnv(t, 5)
	if pos.Reported != 0 {
		t.Fatalf("no report yet, position %+v", pos)
	}
	// The writers inserted 6, 7 and 8 and updated 3; then 8's delete was
	// applied. By hand: 3 and 7 deleted before the read-back reads again.
	reports.batches = append(reports.batches,
		report(c, [2]string{"6", "w6"}, [2]string{"7", "w7"}, [2]string{"3", "w3"}, [2]string{"8", "w8"}),
		report(c, [2]string{"8", ""}))
	e.exec(t, "INSERT INTO public.t VALUES (6, 'w6')", "DELETE FROM public.t WHERE id = 3")

	pos, batches := run(t, c, pos, nil, 1)
	got := describe(batches)
	if want := "delete 3, insert 6=w6, delete 7"; !sameSet(got, want) {
		t.Fatalf("changes (a delete of 8, whose last report is a delete, is wrong too):\n got: %s\nwant: %s", got, want)
	}
	if last, _ := reports.LastSeq(t.Context()); pos.Reported != last {
		t.Fatalf("position reported up to %d, want the subject's last sequence %d", pos.Reported, last)
	}

	// Read once: the next cycles find nothing.
	pos, batches = run(t, c, pos, nil, 2)
	if len(batches) != 0 {
		t.Fatalf("after the reports: %s", describe(batches))
	}
	// A new report of a key the table lacks: gone.
	reports.batches = append(reports.batches, report(c, [2]string{"9", "w9"}))
	_, batches = run(t, c, pos, nil, 1)
	if got := describe(batches); got != "delete 9" {
		t.Fatalf("a later report: %s", got)
	}
}

// A cycle takes the reports of a bounded number of keys; the next cycle
// takes the rest.
func TestCycleBoundsAppliedReports(t *testing.T) {
	t.Parallel()
	_, c, reports, pos := reportEnv(t, 3)
	c.reportKeys = 2
	// Rows the writers inserted, all deleted by hand since: whole messages
	// up to two keys per cycle.
	reports.batches = append(reports.batches, report(c, [2]string{"7", "w7"}, [2]string{"8", "w8"}),
		report(c, [2]string{"9", "w9"}), report(c, [2]string{"10", "w10"}))
	pos, batches := run(t, c, pos, nil, 1)
	if got, want := describe(batches), "delete 7, delete 8"; !sameSet(got, want) {
		t.Fatalf("first cycle: %s, want %s", got, want)
	}
	if pos.Reported != 2 {
		t.Fatalf("first cycle read the reports up to %d, want 2 (the first message's)", pos.Reported)
	}
	pos, batches = run(t, c, pos, nil, 1)
	if got, want := describe(batches), "delete 9, delete 10"; !sameSet(got, want) {
		t.Fatalf("second cycle: %s, want %s", got, want)
	}
	_, batches = run(t, c, pos, nil, 1)
	if len(batches) != 0 {
		t.Fatalf("third cycle: %s", describe(batches))
	}
}
