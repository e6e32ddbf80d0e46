package natsbus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
)

// waitFor polls cond until it returns nil, failing the test with cond's last
// error when timeout passes first.
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		<-tick.C
	}
}

// testLog routes slog output to t.Log until the test's cleanups run, then
// discards it (client goroutines may still log while the connection drains).
type testLog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

func newLogger(t testing.TB) *slog.Logger {
	w := &testLog{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newBus starts an embedded JetStream server and connects a Bus to it. Both
// are torn down when the test ends (bus first).
func newBus(t testing.TB) *natsbus.Bus {
	t.Helper()
	log := newLogger(t)
	_, url := bustest.StartJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := natsbus.Connect(ctx, url, t.Name(), log)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() {
		b.Close()
		waitFor(t, 10*time.Second, func() error {
			if !b.NC.IsClosed() {
				return errors.New("connection still draining")
			}
			return nil
		})
	})
	return b
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pipelineStream ensures the stream of pipeline with a generous spec.
func pipelineStream(t testing.TB, b *natsbus.Bus, pipeline string) jetstream.Stream {
	t.Helper()
	st, err := b.EnsureStream(testCtx(t), natsbus.StreamSpec{Pipeline: pipeline, DuplicateWindow: time.Minute})
	if err != nil {
		t.Fatalf("EnsureStream: %v", err)
	}
	return st
}

// writerConsumer ensures the durable writer consumer of target on the
// pipeline's source subject.
func writerConsumer(t testing.TB, b *natsbus.Bus, pipeline, target string, ackWait time.Duration) jetstream.Consumer {
	t.Helper()
	c, err := b.EnsureConsumer(testCtx(t), natsbus.ConsumerSpec{
		Stream:        bus.StreamName(pipeline),
		Durable:       bus.WriterConsumer(pipeline, target),
		FilterSubject: bus.SourceSubject(pipeline),
		AckWait:       ackWait,
		MaxAckPending: 1000,
	})
	if err != nil {
		t.Fatalf("EnsureConsumer: %v", err)
	}
	return c
}

func streamMsgs(ctx context.Context, st jetstream.Stream) (uint64, error) {
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// consumerSettled reports nil once every message up to stream sequence seq
// was delivered and acked or terminated: nothing pending, nothing waiting for
// an ack, the ack floor at seq.
func consumerSettled(ctx context.Context, c jetstream.Consumer, seq uint64) error {
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	if info.NumPending != 0 || info.NumAckPending != 0 || info.AckFloor.Stream < seq {
		return fmt.Errorf("consumer %s: pending %d, ack pending %d, ack floor %d (want %d)",
			info.Name, info.NumPending, info.NumAckPending, info.AckFloor.Stream, seq)
	}
	return nil
}

// consumeRun is one Consume call running in the background.
type consumeRun struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

func startConsume(t testing.TB, b *natsbus.Bus, c jetstream.Consumer, h natsbus.Handler, o natsbus.ConsumeOptions) *consumeRun {
	t.Helper()
	return startLoop(t, func(ctx context.Context) error { return b.Consume(ctx, c, h, o) })
}

func startConsumeBatches(t testing.TB, b *natsbus.Bus, c jetstream.Consumer, h natsbus.BatchHandler, o natsbus.ConsumeOptions) *consumeRun {
	t.Helper()
	return startLoop(t, func(ctx context.Context) error { return b.ConsumeBatches(ctx, c, h, o) })
}

// startLoop runs loop in the background until stopped (at the latest when
// the test ends).
func startLoop(t testing.TB, loop func(ctx context.Context) error) *consumeRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &consumeRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- loop(ctx) }()
	t.Cleanup(func() { r.stop(t, 20*time.Second) })
	return r
}

// stop cancels Consume's context and waits (at most within) for it to return.
func (r *consumeRun) stop(t testing.TB, within time.Duration) error {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(within):
			r.err = fmt.Errorf("Consume did not return within %v of cancellation", within)
			t.Error(r.err)
		}
	})
	return r.err
}

// calls counts handler invocations per stream sequence.
type calls struct {
	mu sync.Mutex
	n  map[uint64]int
}

func (c *calls) add(seq uint64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[uint64]int{}
	}
	c.n[seq]++
	return c.n[seq]
}

func (c *calls) get(seq uint64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[seq]
}

func (c *calls) snapshot() map[uint64]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[uint64]int, len(c.n))
	for k, v := range c.n {
		m[k] = v
	}
	return m
}

// outcomes counts OnOutcome reports.
type outcomes struct {
	mu sync.Mutex
	n  map[natsbus.Outcome]int
}

func (o *outcomes) record(x natsbus.Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[natsbus.Outcome]int{}
	}
	o.n[x]++
}

func (o *outcomes) snapshot() map[natsbus.Outcome]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := make(map[natsbus.Outcome]int, len(o.n))
	for k, v := range o.n {
		m[k] = v
	}
	return m
}

func seqOf(t testing.TB, msg jetstream.Msg) (seq, delivered uint64) {
	meta, err := msg.Metadata()
	if err != nil {
		t.Errorf("message metadata: %v", err)
		return 0, 0
	}
	return meta.Sequence.Stream, meta.NumDelivered
}
