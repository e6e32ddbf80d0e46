package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus"
)

// ErrReaderActive means a reader holds the pipeline's lease: a resync
// would race with it.
var ErrReaderActive = errors.New("a reader of this pipeline is running")

// ResyncReport says what Resync cleared.
type ResyncReport struct {
	// Position is the position that was saved (nil when there was none).
	Position *Position
	// Objects are the capture state objects deleted.
	Objects []string
}

// Resync forces a full re-sync of a pipeline's source side: it deletes the
// reader's saved position and its capture state (hash lists, overlap
// hashes), so the next reader to start reads the source from the start (a
// snapshot, or a first cycle without a hash list). Targets are not
// touched: the writers' ledger skips the rows they already have.
//
// It takes the reader lease for the time it works, so no reader can start
// meanwhile, and refuses with ErrReaderActive while a reader holds it. It
// is idempotent.
func Resync(ctx context.Context, b *natsbus.Bus, pipeline string, replicas int) (ResyncReport, error) {
	var rep ResyncReport
	kv, err := b.StateKV(ctx, replicas)
	if err != nil {
		return rep, err
	}
	leaseKey := bus.ReaderLeaseKey(pipeline, "source")
	holder := "resync/" + holderID()
	rev, err := tryLease(ctx, kv, leaseKey, holder)
	if errors.Is(err, errLeaseHeld) {
		who := "another process"
		if e, gerr := kv.Get(ctx, leaseKey); gerr == nil {
			var v leaseValue
			if json.Unmarshal(e.Value(), &v) == nil && v.Holder != "" {
				who = v.Holder
			}
		}
		return rep, fmt.Errorf("%w (lease held by %s): stop it first (a crashed reader's lease expires after %s)", ErrReaderActive, who, leaseTTL)
	}
	if err != nil {
		return rep, fmt.Errorf("take the reader lease: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseRenew)
		defer cancel()
		_ = kv.Delete(rctx, leaseKey, jetstream.LastRevision(rev))
	}()

	pos, err := loadPosition(ctx, kv, pipeline)
	if err != nil {
		return rep, err
	}
	if pos.Phase != "" || pos.Pattern != "" {
		rep.Position = &pos
	}
	if err := kv.Purge(ctx, bus.ReaderPositionKey(pipeline, "source")); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return rep, fmt.Errorf("clear reader position: %w", err)
	}
	obj, err := b.CaptureStore(ctx, replicas)
	if err != nil {
		return rep, err
	}
	for _, name := range bus.CaptureObjects(pipeline, "source") {
		_, err := obj.GetInfo(ctx, name)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			continue
		}
		if err != nil {
			return rep, fmt.Errorf("look up capture state %s: %w", name, err)
		}
		if err := obj.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return rep, fmt.Errorf("delete capture state %s: %w", name, err)
		}
		rep.Objects = append(rep.Objects, name)
	}
	return rep, nil
}
