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

// BatchHandler processes several messages at once, all or nothing: nil
// means the effect of every message is durable. On an error the loop hands
// each message to the handler again alone, so one bad message is isolated
// and classified as Handler's contract says. Otherwise the same contract as
// Handler.
type BatchHandler func(ctx context.Context, msgs []jetstream.Msg) error

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
	Grace time.Duration
	// Recreate, when set, creates the durable consumer again from its
	// config. The loop calls it when a fetch fails and the consumer (or its
	// stream) no longer exists, e.g. deleted by an operator; one worker at
	// a time, retried every second while it fails. Without it the loop
	// logs each failed fetch and tries again (never use that for a
	// consumer that matters).
	Recreate  func(ctx context.Context) (jetstream.Consumer, error)
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
	return b.consume(ctx, cons, func(ctx context.Context, msgs []jetstream.Msg) error { return h(ctx, msgs[0]) }, false, o)
}

// ConsumeBatches is Consume for a handler that takes the messages a fetch
// brought that are ready at once (up to FetchBatch), so their effects can
// share one target transaction.
func (b *Bus) ConsumeBatches(ctx context.Context, cons jetstream.Consumer, h BatchHandler, o ConsumeOptions) error {
	return b.consume(ctx, cons, h, true, o)
}

func (b *Bus) consume(ctx context.Context, cons jetstream.Consumer, h BatchHandler, group bool, o ConsumeOptions) error {
	o.defaults()
	// Handlers get a context that outlives ctx by Grace.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(o.Grace, hcancel)
		context.AfterFunc(hctx, func() { t.Stop() })
	})
	defer stopGrace()

	ref := &consumerRef{c: cons}
	var wg sync.WaitGroup
	for i := 0; i < o.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.worker(ctx, hctx, ref, h, group, &o)
		}()
	}
	wg.Wait()
	return nil
}

// consumerRef is the consumer the workers of one loop fetch from; Recreate
// replaces it.
type consumerRef struct {
	mu      sync.Mutex
	c       jetstream.Consumer
	failing bool // Recreate failed last time (logged once per run of failures)
}

func (r *consumerRef) get() jetstream.Consumer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c
}

// recover handles a failed fetch from old: when the consumer or its stream
// is gone and o.Recreate is set, it creates the consumer again (unless
// another worker already did). It reports whether the consumer was
// missing.
func (r *consumerRef) recover(ctx context.Context, old jetstream.Consumer, o *ConsumeOptions) bool {
	if o.Recreate == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != old {
		return true // another worker created it again meanwhile
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := old.Info(ictx)
	cancel()
	if !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return false
	}
	name := ""
	if ci := old.CachedInfo(); ci != nil {
		name = ci.Name
	}
	c, cerr := o.Recreate(ctx)
	if cerr != nil {
		if !r.failing {
			o.Log.Error("consumer missing; creating it again failed, retrying every second", "consumer", name, "error", cerr)
		}
		r.failing = true
		return true
	}
	r.c, r.failing = c, false
	o.Log.Warn("consumer missing; created again from the config", "consumer", name, "cause", err,
		"hint", "it delivers the stream from its start again; what was applied is fenced by version")
	return true
}

func (b *Bus) worker(ctx, hctx context.Context, ref *consumerRef, h BatchHandler, group bool, o *ConsumeOptions) {
	for ctx.Err() == nil {
		cons := ref.get()
		batch, err := cons.Fetch(o.FetchBatch, jetstream.FetchMaxWait(250*time.Millisecond))
		if err != nil {
			if !ref.recover(ctx, cons, o) {
				o.Log.Warn("fetch failed", "error", err)
			}
			sleepCtx(ctx, time.Second)
			continue
		}
		// Messages of a fetch wait here while earlier ones are handled: keep
		// them in progress until their turn, or they expire and are
		// redelivered to another worker or replica meanwhile.
		waiting := newInProgressSet(o.AckWait / 3)
		msgs := make(chan jetstream.Msg, o.FetchBatch)
		go func() {
			defer close(msgs)
			for msg := range batch.Messages() {
				waiting.add(msg)
				msgs <- msg
			}
		}()
		for msg := range msgs {
			waiting.remove(msg) // handle or handleGroup keeps it in progress from here
			if ctx.Err() != nil {
				// Shutting down: hand the rest back at once.
				_ = msg.Nak()
				continue
			}
			if !group {
				b.handle(hctx, msg, single(h), o)
				continue
			}
			b.handleGroup(hctx, collect(msg, msgs, o.FetchBatch, waiting), h, o)
		}
		waiting.stop()
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			if !ref.recover(ctx, cons, o) {
				o.Log.Warn("fetch batch failed", "error", err)
			}
			sleepCtx(ctx, 500*time.Millisecond)
		}
	}
}

// single adapts a batch handler to one message.
func single(h BatchHandler) Handler {
	return func(ctx context.Context, m jetstream.Msg) error { return h(ctx, []jetstream.Msg{m}) }
}

// collect groups first with the messages of the same fetch that are ready
// now (they arrive within microseconds when the consumer has a backlog),
// without waiting for the fetch to fill.
func collect(first jetstream.Msg, more <-chan jetstream.Msg, limit int, waiting *inProgressSet) []jetstream.Msg {
	group := []jetstream.Msg{first}
	t := time.NewTimer(2 * time.Millisecond)
	defer t.Stop()
	for len(group) < limit {
		select {
		case m, ok := <-more:
			if !ok {
				return group
			}
			waiting.remove(m)
			group = append(group, m)
		case <-t.C:
			return group
		}
	}
	return group
}

// handleGroup runs h on a group; on failure each message is handled alone.
func (b *Bus) handleGroup(ctx context.Context, group []jetstream.Msg, h BatchHandler, o *ConsumeOptions) {
	if len(group) == 1 {
		b.handle(ctx, group[0], single(h), o)
		return
	}
	stops := make([]func(), len(group))
	for i, m := range group {
		stops[i] = keepInProgress(m, o.AckWait/3)
	}
	gstart := time.Now()
	err := h(ctx, group)
	o.Log.Debug("group handled", "messages", len(group), "seconds", time.Since(gstart).Seconds())
	for _, stop := range stops {
		stop()
	}
	if err == nil {
		for _, m := range group {
			if err := m.Ack(); err != nil {
				o.Log.Warn("ack failed; the message will be redelivered and fenced", "error", err)
			}
			o.OnOutcome(OutcomeAcked)
		}
		return
	}
	if ctx.Err() != nil && !errs.IsPermanent(err) {
		for _, m := range group {
			_ = m.Nak()
		}
		return
	}
	o.Log.Debug("group failed; handling its messages one by one", "messages", len(group), "error", err)
	// The rest of the group waits while each message is handled alone.
	rest := newInProgressSet(o.AckWait / 3)
	for _, m := range group[1:] {
		rest.add(m)
	}
	for _, m := range group {
		rest.remove(m)
		b.handle(ctx, m, single(h), o)
	}
	rest.stop()
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
		// The targets of a pipeline share its stream and so its duplicate
		// window: the subject (one per target) keeps their dead letters apart.
		id = "dlq:" + subject + ":" + s + ":" + m.Header.Get(bus.HeaderKey)
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

// inProgressSet tells the server every interval that the messages it holds
// are still being worked on, until stop is called. A message removed gets no
// InProgress after remove returns.
type inProgressSet struct {
	mu   sync.Mutex
	msgs map[jetstream.Msg]struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

func newInProgressSet(every time.Duration) *inProgressSet {
	if every <= 0 {
		every = 10 * time.Second
	}
	s := &inProgressSet{msgs: map[jetstream.Msg]struct{}{}, done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
				s.mu.Lock()
				for m := range s.msgs {
					_ = m.InProgress()
				}
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *inProgressSet) add(m jetstream.Msg) {
	s.mu.Lock()
	s.msgs[m] = struct{}{}
	s.mu.Unlock()
}

func (s *inProgressSet) remove(m jetstream.Msg) {
	s.mu.Lock()
	delete(s.msgs, m)
	s.mu.Unlock()
}

func (s *inProgressSet) stop() {
	close(s.done)
	s.wg.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
