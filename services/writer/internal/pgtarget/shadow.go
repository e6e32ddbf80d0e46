package pgtarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/services/writer/internal/ledgerdb"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// A Shadow builds a replacement for a live target table beside it and
// swaps it in atomically, so that readers never see a half-built table
// (`oneway replay --shadow`).
//
// OpenShadow creates <table>_oneway_shadow LIKE the live table (INCLUDING
// ALL: columns, defaults, NOT NULL and CHECK constraints, indexes,
// identity, comments) and gives it a ledger of its own,
// <ledger_schema>.ledger_<scope>_shadow, created on the first batch. The
// caller applies the pipeline's history to Target (like any Target: from
// any number of goroutines), while the live writers keep applying to the
// live table and its ledger. Then Swap, in one transaction:
//
//  1. locks the live ledger, then the live table, ACCESS EXCLUSIVE: the
//     order in which every writer's transaction takes them (ledger
//     statement first, rows second), so a writer in the middle of a
//     transaction finishes it and no writer deadlocks with the swap.
//     From here on no live change lands and readers of the table wait;
//  2. calls catchUp, which must apply to Target every change the live
//     writers may have applied (every message on the stream up to its
//     current end) and stop applying to Target before it returns;
//  3. carries over what the replay cannot know: the rows of keys the
//     shadow's ledger has never seen (orphans, keys whose history the
//     stream no longer holds) with their ledger rows, the rows a soft or
//     none delete policy keeps when the shadow saw only their delete,
//     and, for keys in both tables, the values of the target-only columns
//     (those no replayed batch owns, bar the soft-delete column);
//  4. renames live → <table>_oneway_old, shadow → live (likewise the
//     ledgers), hands the old table's serial sequences to the new one and
//     moves identity sequences on, renames the shadow's indexes after the
//     table, drops the old table and ledger, and commits.
//
// Readers that queued on the lock then read the new table by name. Live
// writers' statements name the tables, so PostgreSQL resolves them again
// after the rename: the next live change lands in the new table and is
// fenced by the new ledger. The old table's privileges (GRANTs) and owner
// are carried over. Objects that point at the old table by OID — views,
// foreign keys from other tables, triggers, publications, row-level
// policies, column privileges — are not: a view or foreign key makes
// the swap fail (the old table cannot be dropped) and nothing changes; the
// table's own foreign keys are not copied by LIKE and are not carried over.
// One shadow per table at a time; OpenShadow drops a leftover one.
type Shadow struct {
	// LockTimeout bounds each wait for the live table's lock (see Swap);
	// OpenShadow sets 10s.
	LockTimeout time.Duration

	pool       *pgxpool.Pool
	log        *slog.Logger
	live       pgconn.Table
	liveLedger pgconn.Table
	shadow     pgconn.Table
	t          *Target
}

// SwapStats says what Swap carried over from the live table.
type SwapStats struct {
	// Empty: no batch reached the shadow; it was dropped and nothing
	// swapped.
	Empty bool
	// CarriedRows are rows of keys the replay never saw (orphans, keys
	// whose history was gone), copied as they were; CarriedLedger their
	// ledger rows.
	CarriedRows, CarriedLedger int64
	// TargetOnlyRows are rows whose target-only columns were copied.
	TargetOnlyRows int64
	// TargetOnlyColumns names those columns.
	TargetOnlyColumns []string
}

const (
	shadowSuffix = "_oneway_shadow"
	oldSuffix    = "_oneway_old"
)

// suffixed appends suffix to name, cutting name so the result fits
// PostgreSQL's 63-byte identifiers.
func suffixed(name, suffix string) string {
	if len(name)+len(suffix) > 63 {
		name = name[:63-len(suffix)]
	}
	return name + suffix
}

// OpenShadow creates the shadow of spec's table (dropping a leftover one)
// and returns it. The live table must exist. Staged targets have no
// shadow: their differ repairs the live table itself.
func OpenShadow(ctx context.Context, pool *pgxpool.Pool, spec Spec, log *slog.Logger) (*Shadow, error) {
	if spec.Staged {
		return nil, errs.Permanentf("target table %s: a shadow rebuild is for direct mode; in staged mode the differ repairs the table", spec.Table)
	}
	t, err := Open(ctx, pool, spec, log)
	if err != nil {
		return nil, err
	}
	s := &Shadow{LockTimeout: 10 * time.Second, pool: pool, log: log, live: spec.Table, liveLedger: t.ledger,
		shadow: pgconn.Table{Schema: spec.Table.Schema, Name: suffixed(spec.Table.Name, shadowSuffix)}}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", spec.Table.Quoted()).Scan(&exists); err != nil {
		return nil, pgconn.Classify(fmt.Errorf("look up target table %s: %w", spec.Table, err))
	}
	if !exists {
		return nil, errs.Permanentf("target table %s does not exist: nothing to swap a shadow with; replay without --shadow", spec.Table)
	}
	shadowLedger := pgconn.Table{Schema: t.ledger.Schema, Name: t.ledger.Name + "_shadow"}
	err = ledgerdb.WithDDLLock(ctx, pool, func(tx pgx.Tx) error {
		for _, sql := range []string{
			"DROP TABLE IF EXISTS " + s.shadow.Quoted(),
			"DROP TABLE IF EXISTS " + shadowLedger.Quoted(),
			fmt.Sprintf("CREATE TABLE %s (LIKE %s INCLUDING ALL)", s.shadow.Quoted(), spec.Table.Quoted()),
		} {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("create shadow table %s of %s: %w", s.shadow, spec.Table, err))
	}
	t.spec.Table, t.spec.CreateTable, t.ledger = s.shadow, false, shadowLedger
	s.t = t
	log.Info("shadow table created", "table", spec.Table.String(), "shadow", s.shadow.String(), "shadow_ledger", shadowLedger.String())
	return s, nil
}

// Target applies changes to the shadow table and its ledger.
func (s *Shadow) Target() *Target { return s.t }

// Table is the shadow table.
func (s *Shadow) Table() pgconn.Table { return s.shadow }

// Discard drops the shadow table and ledger (after a failed or cancelled
// build). Idempotent.
func (s *Shadow) Discard(ctx context.Context) error {
	err := ledgerdb.WithDDLLock(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+s.shadow.Quoted()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+s.t.ledger.Quoted())
		return err
	})
	if err != nil {
		return pgconn.Classify(fmt.Errorf("drop shadow table %s: %w", s.shadow, err))
	}
	return nil
}

// Swap replaces the live table and ledger with the shadow ones in one
// transaction (see Shadow). catchUp runs while the live table is locked;
// it must leave nothing more to apply to Target and stop applying to it.
// On any error nothing is swapped and the live table is as it was; the
// shadow is left for Discard.
//
// While the lock waits, every new reader and writer of the table queues
// behind it; so a lock not granted within LockTimeout (a long transaction
// holds the table) is given up and asked for again after a pause, until ctx
// ends, with a warning each time.
func (s *Shadow) Swap(ctx context.Context, catchUp func(ctx context.Context) error) (SwapStats, error) {
	for {
		st, err := s.swap(ctx, catchUp)
		if !errors.Is(err, errLockBusy) {
			return st, err
		}
		s.log.Warn("the live table is busy; asking for the swap's lock again", "table", s.live.String(),
			"lock_timeout", s.LockTimeout.String(), "hint", "a long transaction on the table holds it: see pg_stat_activity")
		select {
		case <-ctx.Done():
			return SwapStats{}, fmt.Errorf("swap shadow %s into %s: %w", s.shadow, s.live, ctx.Err())
		case <-time.After(s.LockTimeout):
		}
	}
}

// errLockBusy: the live table's lock was not granted within LockTimeout.
var errLockBusy = errors.New("lock not granted in time")

func (s *Shadow) swap(ctx context.Context, catchUp func(ctx context.Context) error) (SwapStats, error) {
	var st SwapStats
	started := time.Now()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		liveLedger, err := regclass(ctx, tx, s.liveLedger)
		if err != nil {
			return err
		}
		lock := s.live.Quoted()
		if liveLedger {
			lock = s.liveLedger.Quoted() + ", " + lock
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", s.LockTimeout.Milliseconds())); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "LOCK TABLE "+lock+" IN ACCESS EXCLUSIVE MODE"); err != nil {
			if pgconn.Code(err) == "55P03" { // lock_not_available
				return errLockBusy
			}
			return fmt.Errorf("lock %s: %w", lock, err)
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = 0"); err != nil {
			return err
		}
		s.log.Info("live table locked for the swap", "table", s.live.String())
		if err := catchUp(ctx); err != nil {
			return fmt.Errorf("catch up with the live writers: %w", err)
		}
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('oneway.ledger.ddl'))"); err != nil {
			return err
		}
		if !liveLedger {
			// A live writer may have created it since (its first batch).
			if liveLedger, err = regclass(ctx, tx, s.liveLedger); err != nil {
				return err
			}
			if liveLedger {
				if _, err := tx.Exec(ctx, "LOCK TABLE "+s.liveLedger.Quoted()+" IN ACCESS EXCLUSIVE MODE"); err != nil {
					return fmt.Errorf("lock %s: %w", s.liveLedger, err)
				}
			}
		}
		s.t.mu.Lock()
		keys, owned := s.t.keyNames, s.t.owned
		s.t.mu.Unlock()
		if len(keys) == 0 {
			st.Empty = true
			return nil
		}
		if err := s.carryOver(ctx, tx, keys, owned, liveLedger, &st); err != nil {
			return err
		}
		return s.rename(ctx, tx, liveLedger, keys)
	})
	if errors.Is(err, errLockBusy) {
		return SwapStats{}, err
	}
	if err != nil {
		return SwapStats{}, pgconn.Classify(fmt.Errorf("swap shadow %s into %s: %w", s.shadow, s.live, err))
	}
	if st.Empty {
		s.log.Warn("no change reached the shadow table; nothing swapped", "table", s.live.String())
		return st, s.Discard(ctx)
	}
	s.log.Info("shadow table swapped in", "table", s.live.String(), "carried_rows", st.CarriedRows,
		"carried_ledger", st.CarriedLedger, "target_only_rows", st.TargetOnlyRows,
		"target_only_columns", strings.Join(st.TargetOnlyColumns, ","), "locked_for", time.Since(started).Round(time.Millisecond).String())
	return st, nil
}

func regclass(ctx context.Context, tx pgx.Tx, t pgconn.Table) (bool, error) {
	var ok bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", t.Quoted()).Scan(&ok); err != nil {
		return false, fmt.Errorf("look up %s: %w", t, err)
	}
	return ok, nil
}

// carryOver copies into the shadow what only the live table knows.
func (s *Shadow) carryOver(ctx context.Context, tx pgx.Tx, keys []string, owned map[string]bool, liveLedger bool, st *SwapStats) (err error) {
	rows, err := tx.Query(ctx, `
SELECT a.attname, a.attidentity = 'a' FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum`, s.live.Quoted())
	if err != nil {
		return fmt.Errorf("read columns of %s: %w", s.live, err)
	}
	var cols []string
	always := map[string]bool{} // GENERATED ALWAYS AS IDENTITY
	var name string
	var isAlways bool
	_, err = pgx.ForEachRow(rows, []any{&name, &isAlways}, func() error {
		cols = append(cols, name)
		always[name] = isAlways
		return nil
	})
	if err != nil {
		return fmt.Errorf("read columns of %s: %w", s.live, err)
	}
	isKey := map[string]bool{}
	var match, ledgerMatch []string
	for _, k := range keys {
		isKey[k] = true
		q := pgconn.Quote(k)
		match = append(match, fmt.Sprintf("s.%s = l.%s", q, q))
		ledgerMatch = append(ledgerMatch, fmt.Sprintf("k.%s = l.%s", q, q))
	}
	var set, identity []string
	for _, c := range cols {
		if owned[c] || isKey[c] || (s.t.spec.Delete == DeleteSoft && c == s.t.spec.SoftDeleteColumn) {
			continue
		}
		st.TargetOnlyColumns = append(st.TargetOnlyColumns, c)
		q := pgconn.Quote(c)
		set = append(set, fmt.Sprintf("%s = l.%s", q, q))
		if always[c] {
			identity = append(identity, q)
		}
	}
	// An identity GENERATED ALWAYS takes no value but its default: it is
	// BY DEFAULT while the old values are copied.
	for _, q := range identity {
		if _, err := tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s SET GENERATED BY DEFAULT", s.shadow.Quoted(), q)); err != nil {
			return fmt.Errorf("open identity column %s for the copy: %w", q, err)
		}
		defer func(q string) {
			if err == nil {
				_, err = tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s SET GENERATED ALWAYS", s.shadow.Quoted(), q))
			}
		}(q)
	}
	// Target-only values first, so only keys in both tables count.
	if len(set) > 0 {
		tag, err := tx.Exec(ctx, fmt.Sprintf("UPDATE %s s SET %s FROM %s l WHERE %s",
			s.shadow.Quoted(), strings.Join(set, ", "), s.live.Quoted(), strings.Join(match, " AND ")))
		if err != nil {
			return fmt.Errorf("carry over target-only columns: %w", err)
		}
		st.TargetOnlyRows = tag.RowsAffected()
	}
	notSeen := fmt.Sprintf("NOT EXISTS (SELECT 1 FROM %s k WHERE %s)", s.t.ledger.Quoted(), strings.Join(ledgerMatch, " AND "))
	// A row is carried when the replay did not leave its key: the key is
	// not in the shadow's ledger (an orphan, history not replayed), or,
	// where a delete keeps the row (delete: soft or none), the shadow's
	// last change of it is a delete (a tombstone: an empty hash) it had no
	// row for. Keys in the shadow table already are kept as the replay left
	// them (ON CONFLICT DO NOTHING).
	carry := notSeen
	if s.t.spec.Delete != DeleteHard {
		carry = fmt.Sprintf("NOT EXISTS (SELECT 1 FROM %s k WHERE %s AND octet_length(k.oneway_hash) > 0)",
			s.t.ledger.Quoted(), strings.Join(ledgerMatch, " AND "))
	}
	tag, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %s AS s (%s) OVERRIDING SYSTEM VALUE
SELECT %s FROM %s l WHERE %s ON CONFLICT DO NOTHING`,
		s.shadow.Quoted(), pgconn.QuoteList("", cols), pgconn.QuoteList("l.", cols), s.live.Quoted(), carry))
	if err != nil {
		return fmt.Errorf("carry over the rows of keys the replay did not see: %w", err)
	}
	st.CarriedRows = tag.RowsAffected()
	if liveLedger {
		ledCols := append(append([]string{}, keys...), "oneway_version", "oneway_hash", "oneway_changed", "oneway_applies", "oneway_applied_at")
		tag, err := tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s l WHERE %s",
			s.t.ledger.Quoted(), pgconn.QuoteList("", ledCols), pgconn.QuoteList("l.", ledCols), s.liveLedger.Quoted(), notSeen))
		if err != nil {
			return fmt.Errorf("carry over the ledger rows of keys the replay did not see: %w", err)
		}
		st.CarriedLedger = tag.RowsAffected()
	}
	return nil
}

// rename swaps the names and drops the old table and ledger.
func (s *Shadow) rename(ctx context.Context, tx pgx.Tx, liveLedger bool, keys []string) error {
	old := pgconn.Table{Schema: s.live.Schema, Name: suffixed(s.live.Name, oldSuffix)}
	oldLedger := pgconn.Table{Schema: s.liveLedger.Schema, Name: s.liveLedger.Name + "_old"}
	exec := func(sql string) error {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		return nil
	}
	for _, sql := range []string{
		"DROP TABLE IF EXISTS " + old.Quoted(),
		fmt.Sprintf("ALTER TABLE %s RENAME TO %s", s.live.Quoted(), pgconn.Quote(old.Name)),
		fmt.Sprintf("ALTER TABLE %s RENAME TO %s", s.shadow.Quoted(), pgconn.Quote(s.live.Name)),
	} {
		if err := exec(sql); err != nil {
			return err
		}
	}
	if err := s.moveSequences(ctx, tx, old, keys); err != nil {
		return err
	}
	if err := s.copyPrivileges(ctx, tx, old); err != nil {
		return err
	}
	if err := exec("DROP TABLE " + old.Quoted()); err != nil {
		return err
	}
	if err := renameIndexes(ctx, tx, s.live, s.shadow.Name); err != nil {
		return err
	}
	if liveLedger {
		if err := exec(fmt.Sprintf("ALTER TABLE %s RENAME TO %s", s.liveLedger.Quoted(), pgconn.Quote(oldLedger.Name))); err != nil {
			return err
		}
	}
	if err := exec(fmt.Sprintf("ALTER TABLE %s RENAME TO %s", s.t.ledger.Quoted(), pgconn.Quote(s.liveLedger.Name))); err != nil {
		return err
	}
	if liveLedger {
		if err := exec("DROP TABLE " + oldLedger.Quoted()); err != nil {
			return err
		}
	}
	return renameIndexes(ctx, tx, s.liveLedger, s.t.ledger.Name)
}

// moveSequences hands the sequences of the old table's serial columns
// (whose defaults the new table copied, so the shadow drew from them too)
// to the new table, so dropping the old one keeps them. An identity column
// has a sequence of its own in the shadow: it is moved to where the old
// one was, and the rows the old table did not have (lost rows, keys new
// during the build), whose identities the shadow's sequence gave from its
// start, get new ones from there; so no identity repeats an old one.
func (s *Shadow) moveSequences(ctx context.Context, tx pgx.Tx, old pgconn.Table, keys []string) error {
	rows, err := tx.Query(ctx, `
SELECT seq.oid::regclass::text, a.attname, d.deptype::text
FROM pg_depend d
JOIN pg_class seq ON seq.oid = d.objid AND seq.relkind = 'S'
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = to_regclass($1) AND d.deptype IN ('a', 'i')`, old.Quoted())
	if err != nil {
		return fmt.Errorf("read the sequences of %s: %w", old, err)
	}
	type seq struct{ name, column, dep string }
	seqs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (seq, error) {
		var q seq
		err := r.Scan(&q.name, &q.column, &q.dep)
		return q, err
	})
	if err != nil {
		return fmt.Errorf("read the sequences of %s: %w", old, err)
	}
	for _, q := range seqs {
		var sql string
		if q.dep == "a" {
			sql = fmt.Sprintf("ALTER SEQUENCE %s OWNED BY %s.%s", q.name, s.live.Quoted(), pgconn.Quote(q.column))
		} else {
			sql = fmt.Sprintf("SELECT setval(pg_get_serial_sequence(%s, %s), last_value, is_called) FROM %s",
				ledgerdb.QuoteLiteral(s.live.Quoted()), ledgerdb.QuoteLiteral(q.column), q.name)
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("move sequence %s of column %s: %w", q.name, q.column, err)
		}
		if q.dep == "i" {
			var match []string
			for _, k := range keys {
				match = append(match, fmt.Sprintf("o.%s = n.%s", pgconn.Quote(k), pgconn.Quote(k)))
			}
			sql = fmt.Sprintf("UPDATE %s n SET %s = DEFAULT WHERE NOT EXISTS (SELECT 1 FROM %s o WHERE %s)",
				s.live.Quoted(), pgconn.Quote(q.column), old.Quoted(), strings.Join(match, " AND "))
			if _, err := tx.Exec(ctx, sql); err != nil {
				return fmt.Errorf("new identities in column %s for the rows the old table did not have: %w", q.column, err)
			}
		}
	}
	return nil
}

// copyPrivileges gives the new table the old one's table privileges
// (GRANTs, to roles and PUBLIC) and, when the replaying role may, its
// owner: readers that could read the table still can.
func (s *Shadow) copyPrivileges(ctx context.Context, tx pgx.Tx, old pgconn.Table) error {
	rows, err := tx.Query(ctx, `
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type, a.is_grantable
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner`, old.Quoted())
	if err != nil {
		return fmt.Errorf("read the privileges of %s: %w", old, err)
	}
	type grant struct {
		grantee, privilege string
		grantable          bool
	}
	grants, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (grant, error) {
		var g grant
		err := r.Scan(&g.grantee, &g.privilege, &g.grantable)
		return g, err
	})
	if err != nil {
		return fmt.Errorf("read the privileges of %s: %w", old, err)
	}
	for _, g := range grants {
		sql := fmt.Sprintf("GRANT %s ON %s TO %s", g.privilege, s.live.Quoted(), g.grantee)
		if g.grantable {
			sql += " WITH GRANT OPTION"
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("copy privilege %s of %s to the new table: %w", g.privilege, g.grantee, err)
		}
	}
	var owner string
	var may bool
	err = tx.QueryRow(ctx, `
SELECT o.relowner::regrole::text, pg_has_role(current_user, o.relowner, 'MEMBER')
FROM pg_class o, pg_class n
WHERE o.oid = to_regclass($1) AND n.oid = to_regclass($2) AND o.relowner <> n.relowner`, old.Quoted(), s.live.Quoted()).Scan(&owner, &may)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("read the owner of %s: %w", old, err)
	case !may:
		s.log.Warn("the rebuilt table is owned by the replaying role, not the old owner (not a member of it)", "table", s.live.String(), "old_owner", owner)
		return nil
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s OWNER TO %s", s.live.Quoted(), owner)); err != nil {
		return fmt.Errorf("give the new table %s's owner %s: %w", s.live, owner, err)
	}
	return nil
}

// renameIndexes gives the indexes of table t whose names start with from
// (named after the shadow it was) names after t, so the next shadow's are
// free (their constraints follow).
func renameIndexes(ctx context.Context, tx pgx.Tx, t pgconn.Table, from string) error {
	rows, err := tx.Query(ctx, `
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = to_regclass($1) AND starts_with(c.relname, $2)`, t.Quoted(), from)
	if err != nil {
		return fmt.Errorf("read the indexes of %s: %w", t, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read the indexes of %s: %w", t, err)
	}
	for _, n := range names {
		to := t.Name + strings.TrimPrefix(n, from)
		if len(to) > 63 {
			continue
		}
		var taken bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgconn.Table{Schema: t.Schema, Name: to}.Quoted()).Scan(&taken); err != nil {
			return err
		}
		if taken {
			continue
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("ALTER INDEX %s RENAME TO %s", pgconn.Table{Schema: t.Schema, Name: n}.Quoted(), pgconn.Quote(to))); err != nil {
			return fmt.Errorf("rename index %s: %w", n, err)
		}
	}
	return nil
}
