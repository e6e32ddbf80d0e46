// Package sideledger fences a target that cannot compare versions itself
// (an HTTP API, a NATS subject, a Kafka topic, a file) with a ledger kept
// in PostgreSQL beside the writer.
//
// Each target has one ledger table, <schema>.<kind>_ledger_<scope>, keyed
// by the record key as event.Key renders it (text COLLATE "C") and holding
// the version and content hash last applied to that key, how many times the
// key was really sent (oneway_applies) and when. The scope is the target's
// id in <schema>.ledger_scopes, the catalog pgtarget shares, where it is
// registered as (pipeline, target, "<kind>:<sink>").
//
// Ledger.Apply runs one ledger transaction per call: it collapses the items
// to the newest change of each key, inserts placeholder rows (version -1)
// for keys never seen, locks the keys' rows (SELECT … FOR UPDATE, in key
// order, so concurrent writers cannot deadlock) and classifies each change:
//
//   - stale: its version is not newer than the ledger's. Skipped.
//   - same content: newer, but with the content hash last applied (a delete
//     after a delete, an upsert repeating the content). Only the ledger's
//     version advances.
//   - to send: handed to the target's SendFunc, while the locks are held.
//
// The ledger then advances the keys the target applied (or skipped on
// purpose) and commits. A change the target rejects for good stays at its
// old ledger row and comes back in Result.Failed; any other error from the
// SendFunc rolls the transaction back, so every change of the call is
// redelivered and sent again (targets pass IdempotencyKey along so a sink
// that deduplicates sees it once).
//
// What this guarantees: two writers racing on one key serialise on its row
// lock, and the second sees the first's version, so a key is never sent a
// change older than one already recorded, and a change recorded as applied
// is never sent again. What it cannot guarantee alone: a change sent whose
// ledger transaction is then lost (a crash, a failed commit, a sibling
// change failing the call) is sent again on redelivery — at-least-once,
// in key order, unless the sink deduplicates by idempotency key or version.
//
// When a SendFunc gives up early (ctx ended) while what it handed to a
// client may still reach the sink, it calls Batch.Settle: Apply returns at
// once but the keys stay locked until those messages have landed or failed,
// so another writer cannot slip a newer change in ahead of them.
//
// While the SendFunc runs the ledger transaction is idle: the ledger
// database's idle_in_transaction_session_timeout must exceed the longest
// send.
package sideledger

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/ledgerdb"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// DefaultSchema holds the ledgers when Spec.Schema is empty.
const DefaultSchema = "oneway"

// Spec configures a Ledger.
type Spec struct {
	Pipeline, Target string
	// Kind names the target kind, lower case letters and digits ("http",
	// "nats", "kafka", "jsonl"): the ledger table is <kind>_ledger_<scope>.
	Kind string
	// Sink identifies what the target writes to (a URL template, a subject,
	// a topic, a path); the scope is registered as Kind + ":" + Sink. A
	// target whose Sink changes starts a new ledger.
	Sink string
	// Describe is the sink as the ledger table's comment shows it, e.g.
	// "HTTP endpoint https://api/items/{{.Key}}". No secrets.
	Describe string
	Pool     *pgxpool.Pool // the ledger database
	Schema   string        // default DefaultSchema
}

// Ledger is one target's fencing ledger. Safe for concurrent use.
type Ledger struct {
	spec  Spec
	scope int32
	table pgconn.Table

	placeSQL, lockSQL, advanceSQL string
}

var kindRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// Open registers the target in <schema>.ledger_scopes (creating the schema
// and the catalog if needed) and creates its ledger table.
func Open(ctx context.Context, spec Spec) (*Ledger, error) {
	if spec.Pool == nil {
		return nil, errs.Permanentf("%s target %q: no ledger database", spec.Kind, spec.Target)
	}
	if !kindRE.MatchString(spec.Kind) {
		return nil, errs.Permanentf("ledger of target %q: kind %q is not lower case letters and digits", spec.Target, spec.Kind)
	}
	if spec.Schema == "" {
		spec.Schema = DefaultSchema
	}
	l := &Ledger{spec: spec}
	err := ledgerdb.WithDDLLock(ctx, spec.Pool, func(tx pgx.Tx) error {
		var err error
		if l.scope, err = ledgerdb.RegisterScope(ctx, tx, spec.Schema, spec.Pipeline, spec.Target, spec.Kind+":"+spec.Sink); err != nil {
			return err
		}
		l.table = pgconn.Table{Schema: spec.Schema, Name: fmt.Sprintf("%s_ledger_%d", spec.Kind, l.scope)}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+l.table.Quoted()+` (
  key text COLLATE "C" PRIMARY KEY, oneway_version bigint NOT NULL, oneway_hash bytea NOT NULL,
  oneway_applies int NOT NULL DEFAULT 0, oneway_applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "COMMENT ON TABLE "+l.table.Quoted()+" IS "+ledgerdb.QuoteLiteral(fmt.Sprintf(
			"oneway effect-once ledger of pipeline %s, target %s, %s", spec.Pipeline, spec.Target, spec.Describe)))
		return err
	})
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("prepare %s ledger in schema %s: %w", spec.Kind, spec.Schema, err))
	}
	led := l.table.Quoted()
	l.placeSQL = `INSERT INTO ` + led + ` (key, oneway_version, oneway_hash)
SELECT k, -1, '' FROM unnest($1::text[]) AS u(k) ORDER BY k COLLATE "C"
ON CONFLICT (key) DO NOTHING`
	l.lockSQL = `SELECT key, oneway_version, oneway_hash FROM ` + led + `
WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE`
	l.advanceSQL = `UPDATE ` + led + ` AS l
SET oneway_version = u.v, oneway_hash = u.h, oneway_applies = l.oneway_applies + u.n,
    oneway_applied_at = CASE WHEN u.n > 0 THEN now() ELSE l.oneway_applied_at END
FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::int4[]) AS u(k, v, h, n)
WHERE l.key = u.k AND l.oneway_version < u.v`
	return l, nil
}

// Table is the ledger table.
func (l *Ledger) Table() pgconn.Table { return l.table }

// Scope is the target's id in the ledger catalog.
func (l *Ledger) Scope() int32 { return l.scope }

// Schema is the schema holding the ledger.
func (l *Ledger) Schema() string { return l.spec.Schema }

// IdempotencyKey is the idempotency key of a change of this target: the
// same change gets the same key on every delivery and from every writer.
func (l *Ledger) IdempotencyKey(key string, version int64) string {
	return IdempotencyKey(l.spec.Pipeline, l.spec.Target, key, version)
}

// IdempotencyKey is bus.IdempotencyKey: the first 32 hex digits of
// sha256(pipeline NUL target NUL key NUL version).
func IdempotencyKey(pipeline, tgt, key string, version int64) string {
	return bus.IdempotencyKey(pipeline, tgt, key, version)
}

// Decision is one change the ledger found newer, with new content: the
// target is to send it.
type Decision struct {
	target.Ref
	Delete bool
	// Hash is what the ledger records on success: the content hash of an
	// upsert, empty for a delete.
	Hash []byte
	// Values are the change's values, one per column (nil = NULL), aliasing
	// Change.Row. A delete carries its key values; the others may be NULL.
	Values [][]byte
	// Fresh means the ledger had never recorded this key: the sink may hold
	// it from before (a first delete is sent for that reason).
	Fresh bool
}

// Batch is what a SendFunc gets.
type Batch struct {
	// Tx is the ledger transaction, holding the locks of the batch's keys.
	// A SendFunc may do its own bookkeeping in it (it commits with the
	// ledger); it must not commit or roll it back.
	Tx        pgx.Tx
	Columns   []*onewayv1.Column
	KeyIdx    []int
	Decisions []Decision // in key order

	settle *<-chan struct{}
}

// Settle keeps the batch's keys locked after a failed send until done
// closes. A SendFunc that returns early (ctx ended) while messages it handed
// to a client may still reach the sink calls it, so that no other writer
// sends a newer change of those keys before them: Apply returns at once,
// the ledger transaction is rolled back when done closes.
func (b Batch) Settle(done <-chan struct{}) {
	if b.settle != nil {
		*b.settle = done
	}
}

// Outcome is what the target did with one Decision. The zero Outcome means
// it was applied.
type Outcome struct {
	// Skipped: not sent on purpose (e.g. deletes are not sent). The ledger
	// records the change without counting an apply.
	Skipped bool
	// Err rejects the change for good (it should be errs.Permanent): it is
	// reported in Result.Failed and its ledger row is left as it was.
	Err error
}

// SendFunc delivers a batch. It returns one Outcome per Decision, or nil
// when all were applied. An error means the sink did not take the batch:
// the ledger rolls back and the caller retries (mark outages with
// errs.Unavailable). A SendFunc returning ctx's error is fine.
type SendFunc func(ctx context.Context, b Batch) ([]Outcome, error)

// ledgerRow is a key's state in the ledger.
type ledgerRow struct {
	version int64
	hash    []byte
}

// Apply fences the items' changes by the ledger and hands those to send to
// send, in one ledger transaction; see the package doc. Items must share one
// column layout and have fewer than 2^20 changes each.
func (l *Ledger) Apply(ctx context.Context, items []target.Item, send SendFunc) (target.Result, error) {
	if len(items) == 0 {
		return target.Result{}, nil
	}
	if err := target.CheckItems(items); err != nil {
		return target.Result{}, err
	}
	first := items[0].Batch
	keyIdx := event.KeyIndexes(first)
	if len(keyIdx) == 0 {
		return target.Result{}, errs.Permanentf("apply: batch of %s has no key column", first.GetTable())
	}
	refs := target.Collapse(items, keyIdx)
	res := target.Result{Changes: len(refs)}
	if len(refs) == 0 {
		return res, nil
	}
	keys := make([]string, len(refs))
	for i, r := range refs {
		keys[i] = r.Key
	}

	tx, err := l.spec.Pool.Begin(ctx)
	if err != nil {
		return target.Result{}, l.ledgerErr(ctx, "begin", err)
	}
	var settle <-chan struct{}
	defer func() {
		rollback := func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = tx.Rollback(rctx) // no-op after Commit
		}
		if settle != nil {
			go func() {
				<-settle
				rollback()
			}()
			return
		}
		rollback()
	}()
	if _, err := tx.Exec(ctx, l.placeSQL, keys); err != nil {
		return target.Result{}, l.ledgerErr(ctx, "insert keys into", err)
	}
	rows, err := tx.Query(ctx, l.lockSQL, keys)
	if err != nil {
		return target.Result{}, l.ledgerErr(ctx, "lock keys in", err)
	}
	have := make(map[string]ledgerRow, len(keys))
	var (
		k   string
		row ledgerRow
	)
	_, err = pgx.ForEachRow(rows, []any{&k, &row.version, &row.hash}, func() error {
		have[k] = ledgerRow{version: row.version, hash: append([]byte(nil), row.hash...)}
		return nil
	})
	if err != nil {
		return target.Result{}, l.ledgerErr(ctx, "lock keys in", err)
	}

	var (
		ds          []Decision
		advKeys     []string
		advVersions []int64
		advHashes   [][]byte
		advApplies  []int32
	)
	advance := func(r target.Ref, h []byte, applied bool) {
		advKeys = append(advKeys, r.Key)
		advVersions = append(advVersions, r.Version)
		advHashes = append(advHashes, h)
		n := int32(0)
		if applied {
			n = 1
		}
		advApplies = append(advApplies, n)
	}
	cols := first.GetColumns()
	for _, r := range refs {
		led, ok := have[r.Key]
		if !ok {
			// The placeholder insert guarantees a row; its absence is a bug.
			return target.Result{}, fmt.Errorf("ledger %s: key %q missing after insert", l.table, r.Key)
		}
		if r.Version <= led.version {
			continue // stale: a newer change was applied
		}
		del := r.Change.GetOp() == onewayv1.Op_OP_DELETE
		h := []byte{} // a tombstone: distinct from any content hash
		if !del {
			if h = r.Change.GetHash(); len(h) == 0 {
				h = event.RowHash(r.Change.GetRow())
			}
		}
		// A placeholder (version -1) has never been applied: even a delete
		// is sent, the sink may hold the record from before oneway.
		if led.version >= 0 && bytes.Equal(led.hash, h) {
			res.Newer++
			advance(r, h, false)
			continue
		}
		vals, err := event.Row(r.Change.GetRow(), nil)
		if err == nil && len(vals) != len(cols) {
			err = errs.Permanentf("change has %d values for %d columns", len(vals), len(cols))
		}
		if err != nil {
			res.Failed = append(res.Failed, target.Failure{Item: r.Item, Index: r.Index, Key: r.Key, Err: err})
			continue
		}
		ds = append(ds, Decision{Ref: r, Delete: del, Hash: h, Values: vals, Fresh: led.version < 0})
	}

	if len(ds) > 0 {
		outs, err := send(ctx, Batch{Tx: tx, Columns: cols, KeyIdx: keyIdx, Decisions: ds, settle: &settle})
		if err == nil && ctx.Err() != nil {
			err = ctx.Err()
		}
		if err == nil {
			settle = nil // the batch is done: nothing left to wait for
		}
		if err != nil {
			if ctx.Err() != nil {
				return target.Result{}, fmt.Errorf("apply %d changes to %s: %w", len(refs), l.spec.Target, ctx.Err())
			}
			return target.Result{}, fmt.Errorf("apply %d changes to %s: %w", len(refs), l.spec.Target, err)
		}
		if outs != nil && len(outs) != len(ds) {
			return target.Result{}, fmt.Errorf("apply to %s: %d outcomes for %d changes", l.spec.Target, len(outs), len(ds))
		}
		for i, d := range ds {
			var o Outcome
			if outs != nil {
				o = outs[i]
			}
			switch {
			case o.Err != nil:
				res.Failed = append(res.Failed, target.Failure{Item: d.Item, Index: d.Index, Key: d.Key, Err: o.Err})
			case o.Skipped:
				res.Newer++
				advance(d.Ref, d.Hash, false)
			default:
				res.Newer++
				if d.Delete {
					res.Deleted++
				} else {
					res.Written++
				}
				advance(d.Ref, d.Hash, true)
			}
		}
	}
	if len(advKeys) > 0 {
		if _, err := tx.Exec(ctx, l.advanceSQL, advKeys, advVersions, advHashes, advApplies); err != nil {
			return target.Result{}, l.ledgerErr(ctx, "advance", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return target.Result{}, l.ledgerErr(ctx, "commit", err)
	}
	if len(res.Failed) > 1 {
		// Failures from decoding and from sending: report them in key order.
		sort.SliceStable(res.Failed, func(i, j int) bool { return res.Failed[i].Key < res.Failed[j].Key })
	}
	return res, nil
}

func (l *Ledger) ledgerErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s ledger %s: %w", what, l.table, ctx.Err())
	}
	return pgconn.Classify(fmt.Errorf("%s ledger %s: %w", what, l.table, err))
}
