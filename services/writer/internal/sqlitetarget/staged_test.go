package sqlitetarget

import (
	"fmt"
	"testing"

	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/event"
)

func stagedSpec(path, del, softCol string) Spec {
	s := defaultSpec(path)
	s.Staged, s.Delete, s.SoftDeleteColumn = true, del, softCol
	return s
}

// appliedRows renders Result.Applied as "<row>" (values joined by |) or
// "deleted".
func appliedRows(t *testing.T, res Result) []string {
	t.Helper()
	var out []string
	for _, a := range res.Applied {
		if a.Deleted {
			out = append(out, "deleted")
			continue
		}
		vals, err := event.Row(a.Row, nil)
		if err != nil {
			t.Fatal(err)
		}
		s := ""
		for i, v := range vals {
			if i > 0 {
				s += "|"
			}
			if v == nil {
				s += "NULL"
			} else {
				s += string(v)
			}
		}
		out = append(out, s)
	}
	return out
}

func TestStagedReports(t *testing.T) {
	t.Parallel()
	tg := openTarget(t, stagedSpec(dbPath(t), DeleteHard, ""))
	var _ target.Reporter = tg
	if !tg.Reports() {
		t.Fatal("a staged target must report")
	}
	if openTarget(t, defaultSpec(dbPath(t))).Reports() {
		t.Fatal("a direct target must not report")
	}
}

// In staged mode a push is written where the row differs from it, also when
// its hash equals the one last applied (the row was edited by hand), and
// not written where the row already holds it; applies count real writes.
func TestStagedRepairsAHandEditAndSkipsEqualRows(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	db := inspect(t, path)
	tg := openTarget(t, stagedSpec(path, DeleteHard, ""))
	res := apply(t, tg, item(10, cdc, up("1", "one", "1.50"), up("2", "two", "2.00")))
	equal(t, "applied", appliedRows(t, res), []string{"1|one|1.50", "2|two|2.00"})
	if res.Written != 2 || res.Newer != 2 {
		t.Fatalf("written %d newer %d, want 2 and 2", res.Written, res.Newer)
	}

	exec(t, db, "UPDATE items SET name = 'edited' WHERE id = 1")
	// The differ pushes the same content again, at a newer version.
	res = apply(t, tg, item(11, cdc, up("1", "one", "1.50"), up("2", "two", "2.00")))
	equal(t, "rows", itemRows(t, db), []string{"1|'one'|'1.50'", "2|'two'|'2.00'"})
	if res.Written != 1 || res.Newer != 2 {
		t.Fatalf("written %d newer %d, want 1 and 2", res.Written, res.Newer)
	}
	equal(t, "applied", appliedRows(t, res), []string{"1|one|1.50", "2|two|2.00"})
	equal(t, "ledger", ledgerRows(t, db, tg), []string{
		fmt.Sprintf("1 v=%d applies=2 hash=16", version(11, 0)),
		fmt.Sprintf("2 v=%d applies=1 hash=16", version(11, 1)),
	})

	// A redelivery is fenced: nothing applied, nothing reported.
	res = apply(t, tg, item(11, cdc, up("1", "one", "1.50")))
	if res.Newer != 0 || len(res.Applied) != 0 {
		t.Fatalf("redelivery: newer %d applied %v", res.Newer, res.Applied)
	}

	// A row deleted by hand is inserted again by the next push.
	exec(t, db, "DELETE FROM items WHERE id = 2")
	res = apply(t, tg, item(12, cdc, up("2", "two", "2.00")))
	if res.Written != 1 {
		t.Fatalf("re-insert: written %d, want 1", res.Written)
	}
	equal(t, "rows after re-insert", itemRows(t, db), []string{"1|'one'|'1.50'", "2|'two'|'2.00'"})
}

// What the table stored is reported: a trigger that trims is seen, and
// typed columns come back in their stored form.
func TestStagedReportsWhatTheTableStored(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	db := inspect(t, path)
	exec(t, db,
		"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount REAL)",
		"CREATE TRIGGER trim_name AFTER INSERT ON items BEGIN UPDATE items SET name = substr(NEW.name, 1, 3) WHERE id = NEW.id; END",
	)
	tg := openTarget(t, stagedSpec(path, DeleteHard, ""))
	res := apply(t, tg, item(5, cdc, up("1", "longname", "2.50"), up("2", "ab", nil)))
	equal(t, "applied", appliedRows(t, res), []string{"1|lon|2.5", "2|ab|NULL"})
}

func TestStagedDeletes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, policy, soft, extra string
		setup                     []string
		deleted                   int
		after                     []string
	}{
		{name: "hard", policy: DeleteHard, deleted: 1, after: []string{"2|'B'|'2.00'"}},
		{name: "none", policy: DeleteNone, deleted: 0, after: []string{"1|'A'|'1.00'", "2|'B'|'2.00'"}},
		{name: "soft", policy: DeleteSoft, soft: "deleted", extra: "deleted", deleted: 1,
			setup: []string{"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount TEXT, deleted BOOLEAN)"},
			after: []string{"1|'A'|'1.00'|1", "2|'B'|'2.00'|0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := dbPath(t)
			db := inspect(t, path)
			exec(t, db, tt.setup...)
			tg := openTarget(t, stagedSpec(path, tt.policy, tt.soft))
			var extra []string
			if tt.extra != "" {
				extra = []string{tt.extra}
			}
			apply(t, tg, item(1, snapshot, up("1", "A", "1.00"), up("2", "B", "2.00")))
			res := apply(t, tg, item(2, cdc, del("1")))
			if res.Newer != 1 || res.Deleted != tt.deleted {
				t.Errorf("delete: %+v, want Newer=1 Deleted=%d", res, tt.deleted)
			}
			equal(t, "applied", appliedRows(t, res), []string{"deleted"})
			equal(t, "rows", itemRows(t, db, extra...), tt.after)
			// A second delete of a deleted key writes nothing.
			if res := apply(t, tg, item(3, cdc, del("1"))); res.Deleted != 0 || res.Newer != 1 {
				t.Errorf("second delete: %+v, want Newer=1 Deleted=0", res)
			}
			// A newer upsert revives it.
			apply(t, tg, item(4, cdc, up("1", "C", "3.00")))
			revived := "1|'C'|'3.00'"
			if tt.extra != "" {
				revived += "|0"
			}
			equal(t, "revived", itemRows(t, db, extra...)[:1], []string{revived})
		})
	}
}
