package pgtarget

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/event"
)

// The bulk path serves initial loads. A snapshot batch of keys the target
// has never seen can be written with two COPYs (rows and ledger) instead of
// the fenced upsert: if any key already exists in the target table or the
// ledger, a unique violation aborts the transaction and the batch takes the
// fenced path instead. So the bulk path only ever writes keys that had no
// row and no applied version, where there is nothing to fence against, and
// effect-once holds either way.

// After bulkConflictLimit groups in a row met existing keys (a reload over
// a full target), the bulk path pauses for bulkPause. Fewer conflicts are
// normal after a restart: the groups applied but not acked before a crash
// come back first.
const (
	bulkConflictLimit = 3
	bulkPause         = 30 * time.Second
)

func (t *Target) bulkEligible(items []Item, refs []target.Ref) bool {
	if time.Now().UnixNano() < t.bulkOffUntil.Load() {
		return false
	}
	n := 0
	for _, it := range items {
		if it.Batch.GetPattern() != onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT {
			return false
		}
		n += len(it.Batch.GetChanges())
	}
	if n != len(refs) { // a key repeats
		return false
	}
	for _, r := range refs {
		if r.Change.GetOp() == onewayv1.Op_OP_DELETE {
			return false
		}
	}
	return true
}

// bulkInsert tries the bulk path; ok is false when the batch must take the
// fenced path (any error: the fenced path classifies errors properly).
func (t *Target) bulkInsert(ctx context.Context, p *plan, refs []target.Ref, layout *onewayv1.Batch) (Result, bool) {
	var rows, ledger bytes.Buffer
	size := 0
	for _, r := range refs {
		size += len(r.Change.GetRow())
	}
	rows.Grow(size + size/8 + 64)
	ledger.Grow(len(refs) * (48 + 2*event.HashSize))
	var vals [][]byte
	for _, r := range refs {
		c := r.Change
		var err error
		if vals, err = event.Row(c.GetRow(), vals); err != nil {
			return Result{}, false
		}
		for j, v := range vals {
			if j > 0 {
				rows.WriteByte('\t')
			}
			if v != nil {
				copyEscape(&rows, v)
			} else {
				rows.WriteString(`\N`)
			}
		}
		if p.copySoft != "" {
			rows.WriteByte('\t')
			rows.WriteString(p.copySoft)
		}
		rows.WriteByte('\n')
		h := c.GetHash()
		if len(h) == 0 {
			h = event.RowHash(c.GetRow())
		}
		for _, k := range p.keyIdx {
			copyEscape(&ledger, vals[k])
			ledger.WriteByte('\t')
		}
		ledger.WriteString(strconv.FormatInt(r.Version, 10))
		ledger.WriteString("\t\\\\x")
		ledger.WriteString(hex.EncodeToString(h))
		ledger.WriteString("\tt\t1\n")
	}
	err := pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		pc := tx.Conn().PgConn()
		if _, err := pc.CopyFrom(ctx, &ledger, p.copyLedger); err != nil {
			return err
		}
		_, err := pc.CopyFrom(ctx, &rows, p.copyTarget)
		return err
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			if t.bulkConflicts.Add(1) >= bulkConflictLimit {
				t.bulkConflicts.Store(0)
				t.bulkOffUntil.Store(time.Now().Add(bulkPause).UnixNano())
			}
		} else if ctx.Err() == nil {
			t.log.Debug("bulk path failed; using the fenced path", "error", err)
		}
		return Result{}, false
	}
	t.bulkConflicts.Store(0)
	n := len(refs)
	res := Result{Changes: n, Newer: n, Written: n}
	if t.spec.Staged {
		res.Applied = appliedAll(refs)
	}
	return res, true
}

// copyEscape writes s in COPY text format.
func copyEscape(buf *bytes.Buffer, s []byte) {
	start := 0
	for i := 0; i < len(s); i++ {
		var esc string
		switch s[i] {
		case '\\':
			esc = `\\`
		case '\n':
			esc = `\n`
		case '\r':
			esc = `\r`
		case '\t':
			esc = `\t`
		default:
			continue
		}
		buf.Write(s[start:i])
		buf.WriteString(esc)
		start = i + 1
	}
	buf.Write(s[start:])
}
