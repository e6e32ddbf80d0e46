package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/pgconn"
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
	// Slots are the cdc replication slots dropped on the source.
	Slots []string
}

// Resync forces a full re-sync of a pipeline's source side: it deletes the
// reader's saved position and its capture state (hash lists, overlap
// hashes), so the next reader to start reads the source from the start (a
// snapshot, or a first cycle without a hash list). Targets are not
// touched: the writers' ledger skips the rows they already have.
//
// For the cdc pattern it also drops the replication slot on the source
// (the one the saved position names, and the configured one), so the next
// start creates it again with a new snapshot; the publication stays. A slot
// of a pattern switched away from is dropped the same way, so it no longer
// keeps WAL on the source. The slots are dropped before the position is
// cleared: a failure leaves a position that a retry clears.
//
// It takes the reader lease for the time it works, so no reader can start
// meanwhile, and refuses with ErrReaderActive while a reader holds it. It
// is idempotent.
func Resync(ctx context.Context, b *natsbus.Bus, cfg *config.Pipeline, log *slog.Logger) (ResyncReport, error) {
	var rep ResyncReport
	pipeline, replicas := cfg.Pipeline, cfg.NATS.Replicas
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

	pos, err := loadPosition(ctx, kv, pipeline, "source")
	if err != nil {
		return rep, err
	}
	if pos.Phase != "" || pos.Pattern != "" {
		rep.Position = &pos
	}
	var slots []string
	if pos.Slot != "" {
		slots = append(slots, pos.Slot)
	}
	if c := cfg.Source.Capture; c.Pattern == config.PatternCDC && !slices.Contains(slots, c.Slot) {
		slots = append(slots, c.Slot)
	}
	for _, slot := range slots {
		dropped, err := DropSlot(ctx, cfg.Source.URL.Value(), slot, log)
		if err != nil {
			return rep, err
		}
		if dropped {
			rep.Slots = append(rep.Slots, slot)
		}
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

// DropSlot drops the replication slot named slot on the source at
// sourceURL and reports whether it existed. A slot still held by a
// connection (the walsender of a reader that was just killed) is waited
// for, up to 30 s, then the error names the holder's pid.
func DropSlot(ctx context.Context, sourceURL, slot string, log *slog.Logger) (bool, error) {
	pool, err := pgconn.Open(ctx, sourceURL, "oneway-resync", 1)
	if err != nil {
		return false, fmt.Errorf("drop replication slot %s: %w", slot, err)
	}
	defer pool.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var pid *int32
		err := pool.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		if err != nil {
			return false, pgconn.Classify(fmt.Errorf("drop replication slot %s: %w", slot, err))
		}
		if pid == nil {
			break
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("drop replication slot %s: it is in use by the server process with pid %d (a reader still streams from it; stop it first)", slot, *pid)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if _, err := pool.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot); err != nil {
		return false, pgconn.Classify(fmt.Errorf("drop replication slot %s: %w", slot, err))
	}
	log.Info("replication slot dropped", "slot", slot)
	return true, nil
}
