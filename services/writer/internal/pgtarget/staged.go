package pgtarget

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// Staged mode. The differ pushes a change because it saw the target's row
// differ from the source, possibly after someone edited the row by hand:
// the hash last applied says nothing about the row any more. So every
// change newer than the ledger's is offered to the table, and written only
// where the row's owned values (and the soft-delete marker) differ from it,
// compared by the table's own types (12.5 = 12.50). A push that meets the
// content it carries (a duplicate push, a race with the read-back) writes
// nothing; oneway_applies still counts real writes only. RETURNING gives
// what the table stored, after its triggers, which the writer reports on
// the applied subject: a target that trims or rounds is seen doing it.

// stagedRowSQL renders the staged row statement over the same arrays as
// ledSQL (with ordinality). It returns one row per change: (ord, what,
// values as text in batch column order), what being 0 for a row written
// (the values RETURNING gave), 1 for a row that already held the change's
// content (its values as they are: a BEFORE trigger may have made the
// change equal to them), 2 for a row deleted. An upsert with no row
// returned left the key absent (a trigger suppressed it).
func (t *Target) stagedRowSQL(cols []*onewayv1.Column, byName map[string]pgconn.Column, keyIdx []int, casts, unnestArgs, unnestCols,
	names, sel, set, keyNames, tgtMatch []string, softIsBool bool) string {
	var retKeys, retVals, wKeys, ledMatch, upsJoin, delJoin, cmpT, cmpX []string
	for i, k := range keyIdx {
		q := pgconn.Quote(cols[k].GetName())
		retKeys = append(retKeys, fmt.Sprintf("t.%s AS k%d", q, i))
		wKeys = append(wKeys, fmt.Sprintf("k%d", i))
		ledMatch = append(ledMatch, fmt.Sprintf("l.%s = w.k%d", keyNames[i], i))
		upsJoin = append(upsJoin, fmt.Sprintf("ups.k%d = inc.c%d", i, k))
		delJoin = append(delJoin, fmt.Sprintf("del.k%d = inc.c%d", i, k))
	}
	isKey := map[int]bool{}
	for _, k := range keyIdx {
		isKey[k] = true
	}
	for i, c := range cols {
		q := pgconn.Quote(c.GetName())
		retVals = append(retVals, fmt.Sprintf("t.%s::text", q))
		if !isKey[i] {
			cast := ""
			if !hasEquality(byName[c.GetName()].Type) {
				cast = "::text"
			}
			cmpT = append(cmpT, "t."+q+cast)
			cmpX = append(cmpX, "excluded."+q+cast)
		}
	}
	var del string
	switch t.spec.Delete {
	case DeleteHard:
		del = fmt.Sprintf("DELETE FROM %s t USING inc WHERE inc.del AND %s RETURNING %s",
			t.spec.Table.Quoted(), strings.Join(tgtMatch, " AND "), strings.Join(retKeys, ", "))
	case DeleteSoft:
		sc := pgconn.Quote(t.spec.SoftDeleteColumn)
		val, unmarked := "now()", "t."+sc+" IS NULL"
		if softIsBool {
			val, unmarked = "true", "t."+sc+" IS NOT TRUE"
		}
		del = fmt.Sprintf("UPDATE %s t SET %s = %s FROM inc WHERE inc.del AND %s AND %s RETURNING %s",
			t.spec.Table.Quoted(), sc, val, strings.Join(tgtMatch, " AND "), unmarked, strings.Join(retKeys, ", "))
		cmpT = append(cmpT, "t."+sc)
		cmpX = append(cmpX, "excluded."+sc)
	default:
		del = fmt.Sprintf("SELECT %s FROM %s t WHERE false", strings.Join(retKeys, ", "), t.spec.Table.Quoted())
	}
	conflict := "DO NOTHING"
	if len(set) > 0 {
		conflict = fmt.Sprintf("DO UPDATE SET %s WHERE (%s) IS DISTINCT FROM (%s)",
			strings.Join(set, ", "), strings.Join(append(cmpT, "NULL"), ", "), strings.Join(append(cmpX, "NULL"), ", "))
	}
	return fmt.Sprintf(`WITH inc AS (
  SELECT u.ord, u.v, u.h, u.del, %s FROM unnest(%s) WITH ORDINALITY AS u(%s, ord)
), del AS (
  %s
), ups AS (
  INSERT INTO %s AS t (%s)
  SELECT %s FROM inc WHERE NOT inc.del
  ON CONFLICT (%s) %s
  RETURNING %s, ARRAY[%s] AS vals
), led AS (
  UPDATE %s l SET oneway_applies = l.oneway_applies + 1
  FROM (SELECT %s FROM ups UNION ALL SELECT %s FROM del) w
  WHERE %s
)
SELECT inc.ord, 0, ups.vals FROM ups JOIN inc ON %s AND NOT inc.del
UNION ALL
SELECT inc.ord, 1, ARRAY[%s] FROM inc JOIN %s t ON %s
  WHERE NOT inc.del AND NOT EXISTS (SELECT 1 FROM ups WHERE %s)
UNION ALL
SELECT inc.ord, 2, NULL::text[] FROM del JOIN inc ON %s AND inc.del`,
		strings.Join(casts, ", "), strings.Join(unnestArgs, ", "), strings.Join(unnestCols, ", "),
		del, t.spec.Table.Quoted(), strings.Join(names, ", "), strings.Join(sel, ", "),
		strings.Join(keyNames, ", "), conflict, strings.Join(retKeys, ", "), strings.Join(retVals, ", "),
		t.ledger.Quoted(), strings.Join(wKeys, ", "), strings.Join(wKeys, ", "), strings.Join(ledMatch, " AND "),
		strings.Join(upsJoin, " AND "), strings.Join(retVals, ", "), t.spec.Table.Quoted(), strings.Join(tgtMatch, " AND "),
		strings.Join(upsJoin, " AND "), strings.Join(delJoin, " AND "))
}

// execStagedRows runs the staged row statement for write (the changes the
// ledger let through) and fills res: counts, and what each change left.
func execStagedRows(ctx context.Context, tx pgx.Tx, sql string, args []any, write []target.Ref, res *Result) error {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	stored := make(map[int64][]byte, len(write))
	var ord int64
	var what int32
	var vals []*string
	_, err = pgx.ForEachRow(rows, []any{&ord, &what, &vals}, func() error {
		switch what {
		case 2:
			res.Deleted++
			return nil
		case 0:
			res.Written++
		}
		row := make([]byte, 0, 64)
		for _, v := range vals {
			if v == nil {
				row = event.AppendValue(row, nil)
			} else {
				row = event.AppendString(row, *v)
			}
		}
		stored[ord] = row
		return nil
	})
	if err != nil {
		return err
	}
	for i, r := range write {
		a := target.Applied{Item: r.Item, Index: r.Index, Version: r.Version}
		if r.Change.GetOp() == onewayv1.Op_OP_DELETE {
			a.Deleted = true
		} else if row, ok := stored[int64(i+1)]; ok {
			a.Row = row
		} else {
			a.Deleted = true // a trigger kept the row out
		}
		res.Applied = append(res.Applied, a)
	}
	return nil
}

// appliedAll reports refs as applied with their own rows (the bulk path
// wrote exactly those).
func appliedAll(refs []target.Ref) []target.Applied {
	out := make([]target.Applied, len(refs))
	for i, r := range refs {
		out[i] = target.Applied{Item: r.Item, Index: r.Index, Version: r.Version, Row: r.Change.GetRow()}
	}
	return out
}

// hasEquality reports whether values of a column type can be compared with
// IS DISTINCT FROM; the others (json, xml, geometric types, arrays of them)
// are compared as text.
func hasEquality(typ string) bool {
	base := strings.TrimSuffix(strings.TrimSpace(strings.ToLower(typ)), "[]")
	switch base {
	case "json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle":
		return false
	}
	return true
}

// hasInsertTriggers reports whether the target table has user BEFORE
// INSERT row triggers (pg_trigger.tgtype bits: 1 row, 2 before, 4 insert).
func (t *Target) hasInsertTriggers(ctx context.Context) (bool, error) {
	var ok bool
	err := t.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_trigger
  WHERE tgrelid = to_regclass($1) AND NOT tgisinternal AND tgenabled <> 'D' AND (tgtype::int & 7) = 7)`,
		t.spec.Table.Quoted()).Scan(&ok)
	if err != nil {
		return false, pgconn.Classify(fmt.Errorf("read triggers of %s: %w", t.spec.Table, err))
	}
	return ok, nil
}
