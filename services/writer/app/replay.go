package app

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/services/writer/internal/pgtarget"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/retry"
)

// ReplayFrom says where a replay starts: at stream sequence Seq, or at the
// first message stored at or after Since; both zero means the whole stream.
type ReplayFrom struct {
	Seq   uint64
	Since time.Time
}

// ReplayProgress is reported while a replay runs: messages of the source
// subject done so far, out of Total (those in the stream when it began).
type ReplayProgress struct {
	Done, Total uint64
}

// Replay re-applies the pipeline's source subject, from `from` up to what
// the stream held when it began, to this writer's target, with a consumer
// of its own beside the live writers (which keep going). The ledger fences
// every change as usual: a replayed change older than what the target has
// applied is skipped. With rebuild the target's ledger is cleared first,
// so every replayed change is written: for a target that lost rows. The
// consumer is deleted at the end (and expires by itself after an hour if
// the replay dies). Dead letters go to the target's DLQ subject as usual.
func (w *Writer) Replay(ctx context.Context, from ReplayFrom, rebuild bool, progress func(ReplayProgress)) error {
	var tgt target.Writer
	var closeTarget func()
	err := retry.Do(ctx, retry.Policy{Initial: 200 * time.Millisecond, Max: 10 * time.Second, Attempts: 10},
		func(ctx context.Context) (err error) {
			tgt, closeTarget, err = w.openTarget(ctx)
			return err
		})
	if err != nil {
		return fmt.Errorf("open target %s: %w", w.target.Name, err)
	}
	defer closeTarget()
	if rebuild {
		r, ok := tgt.(target.LedgerResetter)
		if !ok {
			return fmt.Errorf("target %s: --rebuild is not supported for kind %s yet (its ledger cannot be cleared)", w.target.Name, w.target.Kind)
		}
		if err := r.ResetLedger(ctx); err != nil {
			return err
		}
	}
	r, err := w.startReplay(ctx, from, tgt, map[string]any{"rebuild": rebuild})
	if err != nil {
		return err
	}
	defer r.close()
	if err := r.waitAcked(ctx, r.end, progress); err != nil {
		return err
	}
	r.stopConsuming()
	w.log.Info("replay done", "messages", r.total)
	return nil
}

// ShadowStats says what a shadow replay carried over from the live table
// when it swapped the shadow in.
type ShadowStats struct {
	// Empty: nothing was replayed, so nothing was swapped.
	Empty bool
	// CarriedRows: rows of keys the replay never saw (orphans, keys whose
	// history the stream no longer holds), kept as they were;
	// CarriedLedger: their ledger rows.
	CarriedRows, CarriedLedger int64
	// TargetOnlyRows: rows whose TargetOnlyColumns were copied from the
	// live table.
	TargetOnlyRows    int64
	TargetOnlyColumns []string
}

// shadowLockedCatchUp bounds how long the swap may hold the live table
// locked while the shadow applies the last messages.
const shadowLockedCatchUp = 2 * time.Minute

// ReplayShadow rebuilds a PostgreSQL target into a shadow table and ledger
// beside the live ones and swaps them in atomically (see pgtarget.Shadow):
// it replays the source subject from `from` into the shadow while the live
// writers keep applying to the live table, catches up with the stream's
// end, then, holding the live table locked, applies what is left and
// renames the shadow into place in one transaction. Readers of the table
// see the old table until the swap commits, then the new one, never a
// half-built one. Direct mode only. On failure the shadow is dropped and
// the live table is as it was.
func (w *Writer) ReplayShadow(ctx context.Context, from ReplayFrom, progress func(ReplayProgress)) (ShadowStats, error) {
	if w.target.Kind != config.KindPostgres {
		return ShadowStats{}, errs.Permanentf("target %s: --shadow needs a postgres target, not %s", w.target.Name, w.target.Kind)
	}
	spec, err := w.pgSpec()
	if err != nil {
		return ShadowStats{}, err
	}
	pool, err := pgconn.Open(ctx, w.target.URL.Value(), "oneway-replay-shadow-"+w.cfg.Pipeline+"-"+w.target.Name, int32(w.target.Writer.Workers+2))
	if err != nil {
		return ShadowStats{}, fmt.Errorf("open target %s: %w", w.target.Name, err)
	}
	defer pool.Close()
	sh, err := pgtarget.OpenShadow(ctx, pool, spec, w.log)
	if err != nil {
		return ShadowStats{}, err
	}
	swapped := false
	defer func() {
		if !swapped {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := sh.Discard(dctx); err != nil {
				w.log.Error("shadow table left behind; the next replay --shadow drops it", "shadow", sh.Table().String(), "error", err)
			}
		}
	}()
	r, err := w.startReplay(ctx, from, sh.Target(), map[string]any{"shadow": sh.Table().String()})
	if err != nil {
		return ShadowStats{}, err
	}
	defer r.close()
	if err := r.waitAcked(ctx, r.end, progress); err != nil {
		return ShadowStats{}, err
	}
	// Catch up with what the live writers were given meanwhile, so that
	// the locked part of the swap is short.
	for range 3 {
		end, err := r.lastSourceSeq(ctx)
		if err != nil {
			return ShadowStats{}, err
		}
		w.log.Info("shadow catching up with the stream", "up_to_seq", end)
		if err := r.waitAcked(ctx, end, nil); err != nil {
			return ShadowStats{}, err
		}
	}
	st, err := sh.Swap(ctx, func(ctx context.Context) error {
		// Every change a live writer committed was published before the
		// lock was taken, so it is at or below the stream's end now.
		end, err := r.lastSourceSeq(ctx)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, shadowLockedCatchUp)
		defer cancel()
		if err := r.waitAcked(wctx, end, nil); err != nil {
			return fmt.Errorf("apply the stream up to seq %d to the shadow: %w", end, err)
		}
		r.stopConsuming()
		return nil
	})
	if err != nil {
		return ShadowStats{}, err
	}
	swapped = true
	w.log.Info("replay done", "messages", r.total, "shadow_swapped", !st.Empty)
	return ShadowStats{Empty: st.Empty, CarriedRows: st.CarriedRows, CarriedLedger: st.CarriedLedger,
		TargetOnlyRows: st.TargetOnlyRows, TargetOnlyColumns: st.TargetOnlyColumns}, nil
}

// replayRun is a replay consumer applying to a target in the background.
type replayRun struct {
	w        *Writer
	stream   jetstream.Stream
	cons     jetstream.Consumer
	durable  string
	subject  string
	began    time.Time
	end      uint64 // last source message when the replay began
	total    uint64 // messages to replay up to end
	done     chan error
	stop     context.CancelFunc
	stopped  bool
	consumed error
}

// startReplay creates the replay's consumer, from `from`, and starts
// applying to tgt. close (always) stops it and deletes the consumer.
func (w *Writer) startReplay(ctx context.Context, from ReplayFrom, tgt target.Writer, logAttrs map[string]any) (*replayRun, error) {
	st, err := w.bus.EnsureStream(ctx, natsbus.PipelineStream(w.cfg))
	if err != nil {
		return nil, err
	}
	r := &replayRun{w: w, stream: st, subject: bus.SourceSubject(w.cfg.Pipeline), began: time.Now()}
	if r.end, err = r.lastSourceSeq(ctx); err != nil {
		return nil, r.refused(err)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:           "replay-" + w.cfg.Pipeline + "-" + w.target.Name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		FilterSubject:     r.subject,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           w.target.Writer.AckWait.Duration,
		MaxDeliver:        -1,
		MaxAckPending:     max(w.target.Writer.Workers*w.target.Writer.FetchBatch*2, 64),
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: time.Hour,
	}
	switch {
	case from.Seq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from.Seq
	case !from.Since.IsZero():
		since := from.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	r.durable = cfg.Durable
	if r.cons, err = w.bus.JS.CreateConsumer(ctx, st.CachedInfo().Config.Name, cfg); err != nil {
		return nil, r.refused(fmt.Errorf("replay: create consumer: %w", err))
	}
	ci, err := r.cons.Info(ctx)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("replay: consumer info: %w", err)
	}
	r.total = ci.NumPending
	attrs := []any{"consumer", cfg.Durable, "from_seq", from.Seq, "since", from.Since, "up_to_seq", r.end, "messages", r.total}
	for k, v := range logAttrs {
		attrs = append(attrs, k, v)
	}
	w.log.Info("replay starting", attrs...)

	rctx, stop := context.WithCancel(ctx)
	r.stop, r.done = stop, make(chan error, 1)
	h := &handler{w: w, tgt: tgt, retrySubject: bus.RetrySubject(w.cfg.Pipeline, w.target.Name)}
	go func() {
		r.done <- w.bus.ConsumeBatches(rctx, r.cons, h.handle, natsbus.ConsumeOptions{
			Workers: w.target.Writer.Workers, FetchBatch: w.target.Writer.FetchBatch,
			MaxAttempts: w.target.Writer.MaxAttempts, AckWait: w.target.Writer.AckWait.Duration,
			DeadLetterSubject: bus.DLQSubject(w.cfg.Pipeline, w.target.Name),
			Headers:           map[string]string{bus.HeaderPipeline: w.cfg.Pipeline, bus.HeaderTarget: w.target.Name},
			Log:               w.log,
		})
	}()
	return r, nil
}

// refused is err, with the permission violation that caused it when the
// server refused this replay a request (which then timed out, unanswered).
func (r *replayRun) refused(err error) error {
	if v := r.w.bus.Refused(r.began); v != nil {
		return fmt.Errorf("%w: %w", err, v)
	}
	return err
}

// lastSourceSeq is the stream sequence of the last message on the source
// subject (0 when there is none).
func (r *replayRun) lastSourceSeq(ctx context.Context) (uint64, error) {
	m, err := r.stream.GetLastMsgForSubject(ctx, r.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replay: last message on %s: %w", r.subject, err)
	}
	return m.Sequence, nil
}

// waitAcked waits until the consumer has acknowledged every message up to
// stream sequence end, reporting progress (of the first end) as it goes.
func (r *replayRun) waitAcked(ctx context.Context, end uint64, progress func(ReplayProgress)) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		ci, err := r.cons.Info(ctx)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if v := r.w.bus.Refused(r.began); v != nil {
			// Its fetches or acks refused: nothing would ever move.
			return fmt.Errorf("replay: %w", v)
		}
		if err == nil {
			left := ci.NumPending + uint64(ci.NumAckPending)
			if progress != nil {
				progress(ReplayProgress{Done: r.total - min(r.total, left), Total: r.total})
			}
			// Done once everything up to end was acknowledged: later
			// messages are the live writers' business.
			if ci.AckFloor.Stream >= end || left == 0 {
				return nil
			}
		}
		select {
		case err := <-r.done:
			r.stopped, r.consumed = true, err
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("replay stopped: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// stopConsuming stops applying and waits for the handlers in flight.
func (r *replayRun) stopConsuming() {
	if r.stopped || r.stop == nil {
		return
	}
	r.stop()
	r.consumed = <-r.done
	r.stopped = true
}

// close stops consuming and deletes the consumer.
func (r *replayRun) close() {
	r.stopConsuming()
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = r.w.bus.JS.DeleteConsumer(dctx, r.stream.CachedInfo().Config.Name, r.durable)
}
