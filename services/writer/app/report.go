package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/retry"
)

// reportChanges bounds the changes of one applied report.
const reportChanges = 1000

// report publishes, in staged mode, what each newer change left in the
// target on the target's applied subject, before the pushes are acked: a
// Batch (origin "applied.<target>") in the pushes' layout, one change per
// key: OP_UPSERT with the row the target stored, or OP_DELETE, and in
// Change.version the version it was applied at. The stager stages it on
// the target's side at that version. The Msg-Id is a digest of the
// versions, so a report published twice is a duplicate.
//
// Changes that left the target exactly as pushed go in reports marked
// HeaderAsPushed, the others (a trigger changed the row, or kept it out)
// in unmarked ones: only those make the differ look at the keys again.
func (h *handler) report(ctx context.Context, items []target.Item, applied []target.Applied) error {
	if len(applied) == 0 {
		return nil
	}
	var asPushed, changed []target.Applied
	for _, a := range applied {
		c := items[a.Item].Batch.GetChanges()[a.Index]
		if a.Deleted == (c.GetOp() == onewayv1.Op_OP_DELETE) && (a.Deleted || bytes.Equal(a.Row, c.GetRow())) {
			asPushed = append(asPushed, a)
		} else {
			changed = append(changed, a)
		}
	}
	var futures []jetstream.PubAckFuture
	for _, part := range []struct {
		applied  []target.Applied
		asPushed bool
	}{{asPushed, true}, {changed, false}} {
		fs, err := h.publishReport(ctx, items, part.applied, part.asPushed)
		if err != nil {
			return err
		}
		futures = append(futures, fs...)
	}
	return h.waitReports(ctx, futures)
}

// publishReport publishes applied as reports of at most reportChanges
// changes and three quarters of the server's max payload.
func (h *handler) publishReport(ctx context.Context, items []target.Item, applied []target.Applied, asPushed bool) ([]jetstream.PubAckFuture, error) {
	w := h.w
	layout := items[0].Batch
	maxBytes := int(w.bus.NC.MaxPayload()) * 3 / 4
	var futures []jetstream.PubAckFuture
	for len(applied) > 0 {
		b := &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: w.cfg.Pipeline, Origin: "applied." + w.target.Name,
			Table: layout.GetTable(), Columns: layout.GetColumns()}
		digest := sha256.New()
		size := 256
		n := 0
		now := time.Now().UnixNano()
		for n < len(applied) && n < reportChanges {
			a := applied[n]
			c := &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: a.Row, Version: uint64(a.Version), CapturedAtUnixNano: now}
			if a.Deleted {
				c.Op, c.Row = onewayv1.Op_OP_DELETE, items[a.Item].Batch.GetChanges()[a.Index].GetRow()
			} else {
				c.Hash = event.RowHash(c.Row)
			}
			if n > 0 && size+len(c.Row)+48 > maxBytes {
				break
			}
			size += len(c.Row) + 48
			b.Changes = append(b.Changes, c)
			var v [8]byte
			binary.BigEndian.PutUint64(v[:], c.Version)
			digest.Write(v[:])
			n++
		}
		data, err := event.Encode(b)
		if err != nil {
			return nil, err
		}
		id := "applied:" + w.target.Name + ":" + hex.EncodeToString(digest.Sum(nil)[:16])
		m := &nats.Msg{Subject: h.appliedSubject, Data: data, Header: nats.Header{}}
		if asPushed {
			m.Header.Set(bus.HeaderAsPushed, "true")
		}
		f, err := w.bus.PublishMsgAsync(ctx, m, id)
		if err != nil {
			return nil, err
		}
		futures = append(futures, f)
		applied = applied[n:]
	}
	return futures, nil
}

// waitReports waits for the reports' acks, publishing again what failed.
func (h *handler) waitReports(ctx context.Context, futures []jetstream.PubAckFuture) error {
	w := h.w
	err := natsbus.WaitAcks(ctx, futures)
	if err != nil {
		// Once more, synchronously and with backoff: the ids make repeats
		// duplicates.
		err = retry.Do(ctx, retry.Policy{Initial: 200 * time.Millisecond, Max: 5 * time.Second, Attempts: 5}, func(ctx context.Context) error {
			for _, f := range futures {
				if _, err := w.bus.PublishMsg(ctx, f.Msg(), f.Msg().Header.Get(jetstream.MsgIDHeader)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("report applied changes of target %s: %w", w.target.Name, err)
	}
	return nil
}
