package pgtarget

import (
	"strconv"
	"testing"

	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/event"
)

func stagedSpec(del DeletePolicy, softCol string) Spec {
	s := defaultSpec()
	s.Staged, s.Delete, s.SoftDeleteColumn = true, del, softCol
	return s
}

// appliedRows renders Result.Applied as "item.index v=<version> <row>|deleted".
func appliedRows(t *testing.T, res Result) []string {
	t.Helper()
	var out []string
	for _, a := range res.Applied {
		s := ""
		if a.Deleted {
			s = "deleted"
		} else {
			vals, err := event.Row(a.Row, nil)
			if err != nil {
				t.Fatal(err)
			}
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
		}
		out = append(out, s)
	}
	return out
}

// In staged mode a push is written where the row differs from it, also when
// its hash equals the one last applied (the row was edited by hand), and
// not written where the row already holds it; applies count real writes.
func TestStagedRepairsAHandEditAndSkipsEqualRows(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	tg := openTarget(t, pool, stagedSpec(DeleteHard, ""))
	res := apply(t, tg, item(10, cdc, up("1", "one", "1.50"), up("2", "two", "2.00")))
	equal(t, "applied", appliedRows(t, res), []string{"1|one|1.50", "2|two|2.00"})
	if res.Written != 2 {
		t.Fatalf("written %d, want 2", res.Written)
	}

	exec(t, pool, "UPDATE public.items SET name = 'edited' WHERE id = 1")
	// The differ pushes the same content again, at a newer version.
	res = apply(t, tg, item(11, cdc, up("1", "one", "1.5"), up("2", "two", "2.00")))
	equal(t, "rows", itemRows(t, pool), []string{"1|'one'|'1.50'", "2|'two'|'2.00'"})
	if res.Written != 1 || res.Newer != 2 {
		t.Fatalf("written %d newer %d, want 1 and 2", res.Written, res.Newer)
	}
	equal(t, "applied", appliedRows(t, res), []string{"1|one|1.50", "2|two|2.00"})
	equal(t, "ledger", ledgerRows(t, pool, tg), []string{
		"1 v=" + itoa(version(11, 0)) + " applies=2 hash=16",
		"2 v=" + itoa(version(11, 1)) + " applies=1 hash=16",
	})

	// A redelivery is fenced: nothing applied, nothing reported.
	res = apply(t, tg, item(11, cdc, up("1", "one", "1.5")))
	if res.Newer != 0 || len(res.Applied) != 0 {
		t.Fatalf("redelivery: newer %d applied %v", res.Newer, res.Applied)
	}
}

// RETURNING reports what the table stored: a trigger that trims is seen.
func TestStagedReportsWhatTheTableStored(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	exec(t, pool, itemsDDL,
		`CREATE FUNCTION trim_name() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.name := btrim(NEW.name); RETURN NEW; END $$`,
		`CREATE TRIGGER trim_name BEFORE INSERT OR UPDATE ON public.items FOR EACH ROW EXECUTE FUNCTION trim_name()`)
	tg := openTarget(t, pool, stagedSpec(DeleteHard, ""))
	// A snapshot batch of new keys, which would take the bulk path (COPY,
	// no RETURNING) but for the trigger.
	res := apply(t, tg, item(10, snapshot, up("1", "  padded ", nil)))
	equal(t, "applied", appliedRows(t, res), []string{"1|padded|NULL"})
	// Pushed again: the trigger makes the push equal to the row, so
	// nothing is written, and the report still says what the row holds:
	// the differ sees the target differ from the source, and its push cap
	// is what ends this.
	res = apply(t, tg, item(11, cdc, up("1", "  padded ", nil)))
	if res.Written != 0 {
		t.Fatalf("written %d, want 0", res.Written)
	}
	equal(t, "applied", appliedRows(t, res), []string{"1|padded|NULL"})
	equal(t, "ledger", ledgerRows(t, pool, tg), []string{"1 v=" + itoa(version(11, 0)) + " applies=1 hash=16"})
	// A trigger that keeps a row out: reported absent.
	exec(t, pool, `CREATE FUNCTION no_sevens() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.id = 7 THEN RETURN NULL; END IF; RETURN NEW; END $$`,
		`CREATE TRIGGER no_sevens BEFORE INSERT ON public.items FOR EACH ROW EXECUTE FUNCTION no_sevens()`)
	res = apply(t, tg, item(12, cdc, up("7", "seven", nil)))
	equal(t, "applied", appliedRows(t, res), []string{"deleted"})
}

// Deletes report tombstones; a soft delete marks once and is undone by a
// later upsert.
func TestStagedDeletes(t *testing.T) {
	t.Parallel()
	t.Run("hard", func(t *testing.T) {
		t.Parallel()
		_, pool := newDB(t)
		tg := openTarget(t, pool, stagedSpec(DeleteHard, ""))
		apply(t, tg, item(10, cdc, up("1", "one", "1.00")))
		res := apply(t, tg, item(11, cdc, del("1"), del("7")))
		equal(t, "applied", appliedRows(t, res), []string{"deleted", "deleted"})
		if res.Deleted != 1 {
			t.Fatalf("deleted %d, want 1 (7 was never there)", res.Deleted)
		}
		equal(t, "rows", itemRows(t, pool), nil)
	})
	t.Run("soft", func(t *testing.T) {
		t.Parallel()
		_, pool := newDB(t)
		exec(t, pool, "CREATE TABLE public.items (id integer PRIMARY KEY, name text, amount numeric(12,2), gone boolean)")
		tg := openTarget(t, pool, stagedSpec(DeleteSoft, "gone"))
		apply(t, tg, item(10, cdc, up("1", "one", "1.00")))
		res := apply(t, tg, item(11, cdc, del("1")))
		if res.Deleted != 1 {
			t.Fatalf("deleted %d, want 1", res.Deleted)
		}
		res = apply(t, tg, item(12, cdc, del("1")))
		if res.Deleted != 0 || len(res.Applied) != 1 || !res.Applied[0].Deleted {
			t.Fatalf("a second soft delete: deleted %d applied %+v", res.Deleted, res.Applied)
		}
		equal(t, "rows", itemRows(t, pool, "gone"), []string{"1|'one'|'1.00'|'t'"})
		apply(t, tg, item(13, cdc, up("1", "one", "1.00")))
		equal(t, "rows", itemRows(t, pool, "gone"), []string{"1|'one'|'1.00'|'f'"})
		equal(t, "ledger", ledgerRows(t, pool, tg), []string{"1 v=" + itoa(version(13, 0)) + " applies=3 hash=16"})
	})
}

// The bulk path reports the rows it copied.
func TestStagedBulkPathReports(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	tg := openTarget(t, pool, stagedSpec(DeleteHard, ""))
	res := apply(t, tg, item(10, snapshot, up("1", "one", "1.00"), up("2", "two", "2.00")))
	equal(t, "applied", appliedRows(t, res), []string{"1|one|1.00", "2|two|2.00"})
	for i, a := range res.Applied {
		if a.Item != 0 || a.Index != i || a.Version != target.Version(10, i) {
			t.Fatalf("applied[%d] = %+v", i, a)
		}
	}
}

// A json column (no equality operator) is compared as text.
func TestStagedJSONColumn(t *testing.T) {
	t.Parallel()
	_, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.items (id integer PRIMARY KEY, name json, amount numeric(12,2))")
	tg := openTarget(t, pool, stagedSpec(DeleteHard, ""))
	apply(t, tg, item(10, cdc, up("1", `{"a":1}`, "1.00")))
	res := apply(t, tg, item(11, cdc, up("1", `{"a":1}`, "1.00")))
	if res.Written != 0 || len(res.Applied) != 1 {
		t.Fatalf("equal json: written %d applied %d", res.Written, len(res.Applied))
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
