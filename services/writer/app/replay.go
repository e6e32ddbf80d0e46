package app

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus"
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
	st, err := w.bus.EnsureStream(ctx, natsbus.PipelineStream(w.cfg))
	if err != nil {
		return err
	}
	subject := bus.SourceSubject(w.cfg.Pipeline)
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return fmt.Errorf("replay: stream info: %w", err)
	}
	end := info.State.LastSeq
	cfg := jetstream.ConsumerConfig{
		Durable:           "replay-" + w.cfg.Pipeline + "-" + w.target.Name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		FilterSubject:     subject,
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
	cons, err := w.bus.JS.CreateConsumer(ctx, st.CachedInfo().Config.Name, cfg)
	if err != nil {
		return fmt.Errorf("replay: create consumer: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = w.bus.JS.DeleteConsumer(dctx, st.CachedInfo().Config.Name, cfg.Durable)
	}()
	ci, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("replay: consumer info: %w", err)
	}
	total := ci.NumPending
	w.log.Info("replay starting", "consumer", cfg.Durable, "from_seq", from.Seq, "since", from.Since, "up_to_seq", end, "messages", total, "rebuild", rebuild)

	rctx, stop := context.WithCancel(ctx)
	defer stop()
	h := &handler{w: w, tgt: tgt, retrySubject: bus.RetrySubject(w.cfg.Pipeline, w.target.Name)}
	done := make(chan error, 1)
	go func() {
		done <- w.bus.ConsumeBatches(rctx, cons, h.handle, natsbus.ConsumeOptions{
			Workers: w.target.Writer.Workers, FetchBatch: w.target.Writer.FetchBatch,
			MaxAttempts: w.target.Writer.MaxAttempts, AckWait: w.target.Writer.AckWait.Duration,
			DeadLetterSubject: bus.DLQSubject(w.cfg.Pipeline, w.target.Name),
			Headers:           map[string]string{bus.HeaderPipeline: w.cfg.Pipeline, bus.HeaderTarget: w.target.Name},
			Log:               w.log,
		})
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("replay stopped: %w", err)
		case <-tick.C:
		}
		ci, err := cons.Info(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return err
			}
			continue
		}
		left := ci.NumPending + uint64(ci.NumAckPending)
		if progress != nil {
			progress(ReplayProgress{Done: total - min(total, left), Total: total})
		}
		// Done once everything up to end was acknowledged: later messages
		// are the live writers' business.
		if ci.AckFloor.Stream >= end || left == 0 {
			stop()
			<-done
			w.log.Info("replay done", "messages", total)
			return nil
		}
	}
}
