package natsbus_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/natsbus"
)

// publish stores one message on the pipeline's source subject and returns its
// stream sequence.
func publish(t testing.TB, b *natsbus.Bus, pipeline, data string) uint64 {
	t.Helper()
	ack, err := b.PublishMsg(testCtx(t), &nats.Msg{Subject: bus.SourceSubject(pipeline), Data: []byte(data)}, "msg-"+data)
	if err != nil {
		t.Fatalf("publish %q: %v", data, err)
	}
	return ack.Sequence
}

func TestConsume(t *testing.T) {
	t.Parallel()
	const (
		p       = "orders"
		target  = "pg"
		ackWait = 2 * time.Second
	)
	transient := errors.New("deadlock detected")
	tests := []struct {
		name        string
		maxAttempts int
		// handler's result on the n-th delivery (1-based)
		result       func(n int) error
		wantCalls    int
		wantOutcomes map[natsbus.Outcome]int
		// dead letter expectations; wantDLQ false means none may exist
		wantDLQ      bool
		wantAttempts string
		wantErrIn    string
	}{
		{
			name:         "success acks",
			maxAttempts:  3,
			result:       func(int) error { return nil },
			wantCalls:    1,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeAcked: 1},
		},
		{
			name:        "transient failure twice then success",
			maxAttempts: 5,
			result: func(n int) error {
				if n <= 2 {
					return transient
				}
				return nil
			},
			wantCalls:    3,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeRetried: 2, natsbus.OutcomeAcked: 1},
		},
		{
			name:        "permanent failure dead-letters at once",
			maxAttempts: 5,
			result: func(int) error {
				return errs.Permanent(errors.New("null value in column \"email\"\nviolates not-null constraint"))
			},
			wantCalls:    1,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeDeadLetter: 1},
			wantDLQ:      true,
			wantAttempts: "1",
			wantErrIn:    `null value in column "email" violates not-null constraint`,
		},
		{
			name:         "wrapped permanent failure dead-letters at once",
			maxAttempts:  5,
			result:       func(int) error { return fmt.Errorf("apply row: %w", errs.Permanentf("schema mismatch")) },
			wantCalls:    1,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeDeadLetter: 1},
			wantDLQ:      true,
			wantAttempts: "1",
			wantErrIn:    "apply row: schema mismatch",
		},
		{
			name:        "transient then permanent",
			maxAttempts: 5,
			result: func(n int) error {
				if n == 1 {
					return transient
				}
				return errs.Permanent(errors.New("check constraint"))
			},
			wantCalls:    2,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeRetried: 1, natsbus.OutcomeDeadLetter: 1},
			wantDLQ:      true,
			wantAttempts: "2",
			wantErrIn:    "check constraint",
		},
		{
			name:         "always transient dead-letters after MaxAttempts",
			maxAttempts:  3,
			result:       func(int) error { return transient },
			wantCalls:    3,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeRetried: 2, natsbus.OutcomeDeadLetter: 1},
			wantDLQ:      true,
			wantAttempts: "3",
			wantErrIn:    "deadlock detected",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			st := pipelineStream(t, b, p)
			cons := writerConsumer(t, b, p, target, ackWait)
			seq := publish(t, b, p, "row-1")

			var got calls
			var outs outcomes
			dlq := bus.DLQSubject(p, target)
			run := startConsume(t, b, cons, func(_ context.Context, msg jetstream.Msg) error {
				s, _ := seqOf(t, msg)
				return tc.result(got.add(s))
			}, natsbus.ConsumeOptions{
				MaxAttempts:       tc.maxAttempts,
				AckWait:           ackWait,
				DeadLetterSubject: dlq,
				Headers:           map[string]string{bus.HeaderPipeline: p, bus.HeaderTarget: target},
				OnOutcome:         outs.record,
				Log:               newLogger(t),
			})

			wantTotal := 0
			for _, n := range tc.wantOutcomes {
				wantTotal += n
			}
			waitFor(t, 10*time.Second, func() error {
				o := outs.snapshot()
				total := 0
				for _, n := range o {
					total += n
				}
				if total < wantTotal {
					return fmt.Errorf("outcomes so far %v, want %v", o, tc.wantOutcomes)
				}
				return consumerSettled(ctx, cons, seq)
			})
			// Acked or terminated: nothing can be redelivered now.
			if err := run.stop(t, 5*time.Second); err != nil {
				t.Fatalf("Consume: %v", err)
			}
			if n := got.get(seq); n != tc.wantCalls {
				t.Errorf("handler called %d times, want %d", n, tc.wantCalls)
			}
			if o := outs.snapshot(); fmt.Sprint(o) != fmt.Sprint(tc.wantOutcomes) {
				t.Errorf("outcomes %v, want %v", o, tc.wantOutcomes)
			}
			info, err := cons.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.NumAckPending != 0 || info.NumRedelivered != 0 || info.NumPending != 0 {
				t.Errorf("consumer ack pending %d, redelivered %d, pending %d; want all 0",
					info.NumAckPending, info.NumRedelivered, info.NumPending)
			}

			m, err := st.GetLastMsgForSubject(ctx, dlq)
			if !tc.wantDLQ {
				if !errors.Is(err, jetstream.ErrMsgNotFound) {
					t.Errorf("dead letter lookup: got %v (msg %v), want none", err, m)
				}
				return
			}
			if err != nil {
				t.Fatalf("no dead letter on %s: %v", dlq, err)
			}
			if string(m.Data) != "row-1" {
				t.Errorf("dead letter data %q, want %q", m.Data, "row-1")
			}
			wantHdr := map[string]string{
				bus.HeaderSequence: strconv.FormatUint(seq, 10),
				bus.HeaderAttempts: tc.wantAttempts,
				bus.HeaderSubject:  bus.SourceSubject(p),
				bus.HeaderPipeline: p,
				bus.HeaderTarget:   target,
			}
			for k, want := range wantHdr {
				if got := m.Header.Get(k); got != want {
					t.Errorf("dead letter header %s = %q, want %q", k, got, want)
				}
			}
			if e := m.Header.Get(bus.HeaderError); !strings.Contains(e, tc.wantErrIn) {
				t.Errorf("dead letter header %s = %q, want it to contain %q", bus.HeaderError, e, tc.wantErrIn)
			}
			n, err := streamMsgs(ctx, st)
			if err != nil {
				t.Fatal(err)
			}
			if n != 2 {
				t.Errorf("stream holds %d messages, want the original and one dead letter", n)
			}
		})
	}
}

// Each target of a pipeline dead-letters to its own subject in the shared
// pipeline stream. A message that fails permanently on two targets must be
// dead-lettered on both: neither copy may be swallowed as a duplicate.
func TestConsumeDeadLettersEveryTarget(t *testing.T) {
	t.Parallel()
	const p = "orders"
	targets := []string{"pg", "mysql"}
	b := newBus(t)
	ctx := testCtx(t)
	st := pipelineStream(t, b, p)
	seq := publish(t, b, p, "row-1")

	conss := map[string]jetstream.Consumer{}
	for _, target := range targets {
		cons := writerConsumer(t, b, p, target, 2*time.Second)
		conss[target] = cons
		startConsume(t, b, cons, func(context.Context, jetstream.Msg) error {
			return errs.Permanent(fmt.Errorf("%s rejects the row", target))
		}, natsbus.ConsumeOptions{
			AckWait:           2 * time.Second,
			DeadLetterSubject: bus.DLQSubject(p, target),
			Headers:           map[string]string{bus.HeaderPipeline: p, bus.HeaderTarget: target},
			Log:               newLogger(t),
		})
	}
	for _, target := range targets {
		waitFor(t, 10*time.Second, func() error { return consumerSettled(ctx, conss[target], seq) })
	}
	for _, target := range targets {
		m, err := st.GetLastMsgForSubject(ctx, bus.DLQSubject(p, target))
		if err != nil {
			t.Errorf("target %s: no dead letter for the message it terminated: %v", target, err)
			continue
		}
		if got := m.Header.Get(bus.HeaderTarget); got != target {
			t.Errorf("target %s: dead letter header %s = %q", target, bus.HeaderTarget, got)
		}
		if got := m.Header.Get(bus.HeaderError); got != target+" rejects the row" {
			t.Errorf("target %s: dead letter error %q", target, got)
		}
	}
}

// slowHandler simulates work lasting d (the timer is the work, not
// synchronisation) and records each call's delivery count.
func slowHandler(t testing.TB, got *calls, deliveries *sync.Map, d time.Duration) natsbus.Handler {
	return func(ctx context.Context, msg jetstream.Msg) error {
		seq, delivered := seqOf(t, msg)
		n := got.add(seq)
		deliveries.Store(fmt.Sprintf("%d#%d", seq, n), delivered)
		work := time.NewTimer(d)
		defer work.Stop()
		select {
		case <-work.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// A handler that runs for longer than AckWait keeps its message: InProgress
// stops the server from redelivering it (to this or another worker).
func TestConsumeSlowHandlerNotRedelivered(t *testing.T) {
	t.Parallel()
	const ackWait = time.Second
	tests := []struct {
		name    string
		workers int
	}{
		{name: "one worker", workers: 1},
		// Idle workers keep pull requests open, so a redelivery would be
		// picked up at once.
		{name: "four workers", workers: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			pipelineStream(t, b, "slow")
			cons := writerConsumer(t, b, "slow", "pg", ackWait)
			seq := publish(t, b, "slow", "row-1")

			var got calls
			var deliveries sync.Map
			run := startConsume(t, b, cons, slowHandler(t, &got, &deliveries, 5*ackWait/2), natsbus.ConsumeOptions{
				Workers: tc.workers,
				AckWait: ackWait,
				Log:     newLogger(t),
			})
			waitFor(t, 10*time.Second, func() error { return consumerSettled(ctx, cons, seq) })
			if err := run.stop(t, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if n := got.get(seq); n != 1 {
				t.Errorf("slow handler called %d times, want 1", n)
			}
			deliveries.Range(func(k, v any) bool {
				if v.(uint64) != 1 {
					t.Errorf("call %v saw delivery %d, want 1", k, v)
				}
				return true
			})
		})
	}
}

// Messages fetched in the same batch as a slow one wait in the client while
// it runs. They must not expire there and be redelivered to another replica:
// each is handled once.
func TestConsumeBatchBehindSlowHandlerNotRedelivered(t *testing.T) {
	t.Parallel()
	const ackWait = time.Second
	type starter func(t testing.TB, b *natsbus.Bus, c jetstream.Consumer, h natsbus.Handler, o natsbus.ConsumeOptions) *consumeRun
	tests := []struct {
		name  string
		start starter
	}{
		{name: "Consume", start: startConsume},
		{
			// The group fails at once, so its messages are handled one by
			// one: the later ones wait while the first runs.
			name: "ConsumeBatches, group failed",
			start: func(t testing.TB, b *natsbus.Bus, c jetstream.Consumer, h natsbus.Handler, o natsbus.ConsumeOptions) *consumeRun {
				return startConsumeBatches(t, b, c, func(ctx context.Context, msgs []jetstream.Msg) error {
					if len(msgs) > 1 {
						return errors.New("group conflict")
					}
					return h(ctx, msgs[0])
				}, o)
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const p = "slow"
			b := newBus(t)
			ctx := testCtx(t)
			pipelineStream(t, b, p)
			cons := writerConsumer(t, b, p, "pg", ackWait)

			var got calls
			var deliveries sync.Map
			h := slowHandler(t, &got, &deliveries, 5*ackWait/2)
			opts := natsbus.ConsumeOptions{Workers: 1, FetchBatch: 8, AckWait: ackWait, Log: newLogger(t)}

			// Replica one is alone with an open pull request when both
			// messages arrive, so it fetches both in one batch.
			first := tc.start(t, b, cons, h, opts)
			waitFor(t, 5*time.Second, func() error {
				info, err := cons.Info(ctx)
				if err != nil {
					return err
				}
				if info.NumWaiting < 1 {
					return errors.New("no pull request yet")
				}
				return nil
			})
			var futures []jetstream.PubAckFuture
			for _, data := range []string{"row-1", "row-2"} {
				f, err := b.PublishAsync(ctx, bus.SourceSubject(p), []byte(data), data)
				if err != nil {
					t.Fatal(err)
				}
				futures = append(futures, f)
			}
			var seqs []uint64
			for _, f := range futures {
				select {
				case ack := <-f.Ok():
					seqs = append(seqs, ack.Sequence)
				case err := <-f.Err():
					t.Fatal(err)
				case <-ctx.Done():
					t.Fatal("no publish ack")
				}
			}
			waitFor(t, 5*time.Second, func() error {
				if got.get(seqs[0]) == 0 && got.get(seqs[1]) == 0 {
					return errors.New("no message handled yet")
				}
				return nil
			})
			// Replica two comes up while replica one works on the first
			// message.
			second := tc.start(t, b, cons, h, opts)

			waitFor(t, 15*time.Second, func() error { return consumerSettled(ctx, cons, seqs[1]) })
			for _, r := range []*consumeRun{first, second} {
				if err := r.stop(t, 10*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range seqs {
				if n := got.get(s); n != 1 {
					t.Errorf("message %d handled %d times, want 1", s, n)
				}
			}
			deliveries.Range(func(k, v any) bool {
				if v.(uint64) != 1 {
					t.Errorf("call %v saw delivery %d, want 1", k, v)
				}
				return true
			})
		})
	}
}

func TestConsumeShutdown(t *testing.T) {
	t.Parallel()
	const p = "stop"
	tests := []struct {
		name    string
		workers int
		grace   time.Duration
		// inFlight: a handler is running when ctx is cancelled; it returns
		// once release is closed or its ctx ends.
		inFlight bool
		release  bool // close release after cancelling Consume's ctx
		wantAck  bool
		wantCtx  bool // the handler's ctx ends (grace ran out)
	}{
		{name: "idle, one worker", workers: 1},
		{name: "idle, four workers", workers: 4},
		{name: "in-flight handler finishes within grace", workers: 2, grace: 10 * time.Second, inFlight: true, release: true, wantAck: true},
		{name: "in-flight handler cut off after grace", workers: 1, grace: 300 * time.Millisecond, inFlight: true, wantCtx: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			st := pipelineStream(t, b, p)
			cons := writerConsumer(t, b, p, "pg", 5*time.Second)

			started := make(chan context.Context, 1)
			release := make(chan struct{})
			var handlerErr atomic.Value
			var outs outcomes
			run := startConsume(t, b, cons, func(hctx context.Context, msg jetstream.Msg) error {
				select {
				case started <- hctx:
				default:
				}
				select {
				case <-release:
					return nil
				case <-hctx.Done():
					handlerErr.Store(hctx.Err())
					return hctx.Err()
				}
			}, natsbus.ConsumeOptions{
				Workers:           tc.workers,
				AckWait:           5 * time.Second,
				Grace:             tc.grace,
				DeadLetterSubject: bus.DLQSubject(p, "pg"),
				OnOutcome:         outs.record,
				Log:               newLogger(t),
			})

			var seq uint64
			var hctx context.Context
			if tc.inFlight {
				seq = publish(t, b, p, "row-1")
				select {
				case hctx = <-started:
				case <-ctx.Done():
					t.Fatal("handler never started")
				}
			}
			run.cancel()
			if hctx != nil && hctx.Err() != nil {
				t.Errorf("handler ctx ended as soon as Consume's ctx did: %v", hctx.Err())
			}
			if tc.release {
				close(release)
			}
			// Fetches wait at most 1s; after that, only in-flight handlers
			// (bounded by grace) hold Consume up.
			if err := run.stop(t, 3*time.Second+tc.grace); err != nil {
				t.Fatalf("Consume returned %v, want nil", err)
			}
			if !tc.release {
				close(release)
			}
			if !tc.inFlight {
				return
			}
			info, err := cons.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if acked := info.AckFloor.Stream >= seq; acked != tc.wantAck {
				t.Errorf("message acked = %v, want %v (ack floor %d)", acked, tc.wantAck, info.AckFloor.Stream)
			}
			if gotCtx := handlerErr.Load() != nil; gotCtx != tc.wantCtx {
				t.Errorf("handler ctx ended = %v, want %v", gotCtx, tc.wantCtx)
			}
			if o := outs.snapshot(); o[natsbus.OutcomeDeadLetter] != 0 {
				t.Errorf("outcomes %v: a message cut off by shutdown was dead-lettered", o)
			}
			if _, err := st.GetLastMsgForSubject(ctx, bus.DLQSubject(p, "pg")); !errors.Is(err, jetstream.ErrMsgNotFound) {
				t.Errorf("dead letter lookup: %v, want none", err)
			}
		})
	}
}

func TestConsumeWorkersHandleEachMessageOnce(t *testing.T) {
	t.Parallel()
	const p = "many"
	tests := []struct {
		name       string
		workers    int
		fetchBatch int
		msgs       int
	}{
		{name: "one worker", workers: 1, msgs: 50},
		{name: "four workers", workers: 4, msgs: 300},
		{name: "four workers, batch of one", workers: 4, fetchBatch: 1, msgs: 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			pipelineStream(t, b, p)
			cons := writerConsumer(t, b, p, "pg", 5*time.Second)
			var last uint64
			for i := range tc.msgs {
				last = publish(t, b, p, fmt.Sprintf("row-%d", i))
			}

			var got calls
			run := startConsume(t, b, cons, func(_ context.Context, msg jetstream.Msg) error {
				s, _ := seqOf(t, msg)
				got.add(s)
				return nil
			}, natsbus.ConsumeOptions{
				Workers:    tc.workers,
				FetchBatch: tc.fetchBatch,
				AckWait:    5 * time.Second,
				Log:        newLogger(t),
			})
			waitFor(t, 15*time.Second, func() error { return consumerSettled(ctx, cons, last) })
			if err := run.stop(t, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			m := got.snapshot()
			if len(m) != tc.msgs {
				t.Errorf("%d distinct messages handled, want %d", len(m), tc.msgs)
			}
			for s := uint64(1); s <= last; s++ {
				if m[s] != 1 {
					t.Errorf("message %d handled %d times, want 1", s, m[s])
				}
			}
		})
	}
}

// With Workers n, n handlers run at the same time.
func TestConsumeWorkersRunConcurrently(t *testing.T) {
	t.Parallel()
	const (
		p       = "conc"
		workers = 4
	)
	b := newBus(t)
	ctx := testCtx(t)
	pipelineStream(t, b, p)
	cons := writerConsumer(t, b, p, "pg", 10*time.Second)
	var last uint64
	for i := range workers {
		last = publish(t, b, p, fmt.Sprintf("row-%d", i))
	}

	var mu sync.Mutex
	inFlight, peak := 0, 0
	all := make(chan struct{})
	var allOnce sync.Once
	run := startConsume(t, b, cons, func(hctx context.Context, _ jetstream.Msg) error {
		mu.Lock()
		inFlight++
		peak = max(peak, inFlight)
		if inFlight == workers {
			allOnce.Do(func() { close(all) })
		}
		mu.Unlock()
		defer func() {
			mu.Lock()
			inFlight--
			mu.Unlock()
		}()
		// Hold every handler until all workers are busy at once.
		select {
		case <-all:
			return nil
		case <-hctx.Done():
			return hctx.Err()
		}
	}, natsbus.ConsumeOptions{Workers: workers, FetchBatch: 1, AckWait: 10 * time.Second, Log: newLogger(t)})
	waitFor(t, 10*time.Second, func() error { return consumerSettled(ctx, cons, last) })
	if err := run.stop(t, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak != workers {
		t.Errorf("peak concurrent handlers %d, want %d", peak, workers)
	}
}
