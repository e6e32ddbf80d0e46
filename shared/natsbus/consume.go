package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// Handler processes one message.
//
// Contract: it may be called concurrently from Workers goroutines, and the
// same message may be handed to it more than once (redelivery, a second
// writer), in any order: it must be idempotent and fence by version. It
// returns nil when the message's effect is durable; an error marked
// errs.Permanent when retrying cannot help (the message is dead-lettered and
// terminated); any other error to have the message redelivered with backoff.
// ctx is cancelled only after a grace period once shutdown begins, so the
// handler can finish in-flight work.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// Outcome is what happened to one message, for metrics.
type Outcome string

const (
	OutcomeAcked      Outcome = "acked"
	OutcomeRetried    Outcome = "retried"
	OutcomeDeadLetter Outcome = "dead_lettered"
)

// ConsumeOptions tune Consume. Zero values take the defaults noted.
type ConsumeOptions struct {
	Workers     int           // concurrent handlers; default 1
	FetchBatch  int           // messages per fetch; default 8
	MaxAttempts int           // deliveries before a transient failure is dead-lettered; default 5
	AckWait     time.Duration // the consumer's AckWait; InProgress is sent every third of it; default 30s
	// DeadLetterSubject receives a copy of a message that will not be retried,
	// with the error in headers. Empty: such messages are only terminated
	// (never use that for data that matters).
	DeadLetterSubject string
	// Headers are added to every dead letter (pipeline, target).
	Headers map[string]string
	// Grace bounds how long in-flight handlers may run after ctx ends; default 10s.
	Grace     time.Duration
	OnOutcome func(Outcome)
	Log       *slog.Logger
}

func (o *ConsumeOptions) defaults() {
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.FetchBatch <= 0 {
		o.FetchBatch = 8
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.Grace <= 0 {
		o.Grace = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.OnOutcome == nil {
		o.OnOutcome = func(Outcome) {}
	}
}

// Consume runs the durable pull-consumer loop until ctx ends, then waits for
// in-flight handlers (bounded by Grace) and returns nil. Each message is
// acked after the handler succeeds; naked with exponential delay after a
// transient failure; dead-lettered then terminated after a permanent failure
// or MaxAttempts deliveries. While a handler runs, InProgress keeps the
// message's AckWait from expiring.
func (b *Bus) Consume(ctx context.Context, cons jetstream.Consumer, h Handler, o ConsumeOptions) error {
	o.defaults()
	// Handlers get a context that outlives ctx by Grace.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(o.Grace, hcancel)
		context.AfterFunc(hctx, func() { t.Stop() })
	})
	defer stopGrace()

	var wg sync.WaitGroup
	for i := 0; i < o.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.worker(ctx, hctx, cons, h, &o)
		}()
	}
	wg.Wait()
	return nil
}

func (b *Bus) worker(ctx, hctx context.Context, cons jetstream.Consumer, h Handler, o *ConsumeOptions) {
	for ctx.Err() == nil {
		batch, err := cons.Fetch(o.FetchBatch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			o.Log.Warn("fetch failed", "error", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		for msg := range batch.Messages() {
			if ctx.Err() != nil {
				// Shutting down: hand the rest back at once.
				_ = msg.Nak()
				continue
			}
			b.handle(hctx, msg, h, o)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			o.Log.Warn("fetch batch failed", "error", err)
			sleepCtx(ctx, 500*time.Millisecond)
		}
	}
}

func (b *Bus) handle(ctx context.Context, msg jetstream.Msg, h Handler, o *ConsumeOptions) {
	meta, err := msg.Metadata()
	if err != nil {
		o.Log.Error("message without JetStream metadata", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	stop := keepInProgress(msg, o.AckWait/3)
	herr := h(ctx, msg)
	stop()
	if herr == nil {
		if err := msg.Ack(); err != nil {
			o.Log.Warn("ack failed; the message will be redelivered and fenced", "stream_seq", meta.Sequence.Stream, "error", err)
		}
		o.OnOutcome(OutcomeAcked)
		return
	}
	if ctx.Err() != nil && !errs.IsPermanent(herr) {
		_ = msg.Nak()
		return
	}
	attempts := meta.NumDelivered
	if errs.IsPermanent(herr) || attempts >= uint64(o.MaxAttempts) {
		if err := b.deadLetter(ctx, msg, meta, herr, o); err != nil {
			o.Log.Error("dead-letter publish failed; will retry the message", "stream_seq", meta.Sequence.Stream, "error", err)
			_ = msg.NakWithDelay(time.Second)
			o.OnOutcome(OutcomeRetried)
			return
		}
		o.Log.Error("message dead-lettered", "stream_seq", meta.Sequence.Stream, "attempts", attempts, "error", herr)
		_ = msg.TermWithReason(event.SanitizeHeader(herr.Error()))
		o.OnOutcome(OutcomeDeadLetter)
		return
	}
	delay := min(time.Duration(1<<min(attempts, 6))*250*time.Millisecond, 15*time.Second)
	o.Log.Warn("message failed; redelivering", "stream_seq", meta.Sequence.Stream, "attempts", attempts, "delay", delay, "error", herr)
	_ = msg.NakWithDelay(delay)
	o.OnOutcome(OutcomeRetried)
}

// DeadLetter copies msg to subject with headers naming the error, the
// attempts, and the original subject and sequence, and extra headers.
// The Msg-Id makes a repeated dead-lettering of one delivery a duplicate.
func (b *Bus) DeadLetter(ctx context.Context, subject string, data []byte, cause error, headers map[string]string) error {
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(bus.HeaderError, event.SanitizeHeader(cause.Error()))
	for k, v := range headers {
		m.Header.Set(k, event.SanitizeHeader(v))
	}
	id := ""
	if s := m.Header.Get(bus.HeaderSequence); s != "" {
		id = "dlq:" + s + ":" + m.Header.Get(bus.HeaderKey)
	}
	_, err := b.PublishMsg(ctx, m, id)
	return err
}

func (b *Bus) deadLetter(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, cause error, o *ConsumeOptions) error {
	if o.DeadLetterSubject == "" {
		return nil
	}
	h := map[string]string{
		bus.HeaderAttempts: strconv.FormatUint(meta.NumDelivered, 10),
		bus.HeaderSubject:  msg.Subject(),
		bus.HeaderSequence: strconv.FormatUint(meta.Sequence.Stream, 10),
	}
	for k, v := range o.Headers {
		h[k] = v
	}
	if err := b.DeadLetter(ctx, o.DeadLetterSubject, msg.Data(), cause, h); err != nil {
		return fmt.Errorf("dead-letter stream seq %d: %w", meta.Sequence.Stream, err)
	}
	return nil
}

// keepInProgress tells the server every interval that msg is still being
// worked on, until the returned stop is called.
func keepInProgress(msg jetstream.Msg, every time.Duration) (stop func()) {
	if every <= 0 {
		every = 10 * time.Second
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
