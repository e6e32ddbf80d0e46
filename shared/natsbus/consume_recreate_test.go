package natsbus_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus"
)

// A durable consumer deleted by an operator while the loop runs is created
// again through Recreate; the messages published after the delete are
// handled, and the new consumer delivers the stream from its start again
// (the handler's version fence absorbs that).
func TestConsumeRecreatesDeletedConsumer(t *testing.T) {
	t.Parallel()
	const p = "gone"
	tests := []struct {
		name    string
		workers int
	}{
		{name: "one worker", workers: 1},
		{name: "three workers", workers: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			pipelineStream(t, b, p)
			cons := writerConsumer(t, b, p, "pg", 5*time.Second)
			for i := range 10 {
				publish(t, b, p, fmt.Sprintf("before-%d", i))
			}
			var got calls
			var recreated atomic.Int32
			run := startConsume(t, b, cons, func(_ context.Context, msg jetstream.Msg) error {
				s, _ := seqOf(t, msg)
				got.add(s)
				return nil
			}, natsbus.ConsumeOptions{
				Workers: tc.workers, AckWait: 5 * time.Second, Log: newLogger(t),
				Recreate: func(ctx context.Context) (jetstream.Consumer, error) {
					recreated.Add(1)
					return writerConsumer(t, b, p, "pg", 5*time.Second), nil
				},
			})
			waitFor(t, 15*time.Second, func() error { return consumerSettled(ctx, cons, 10) })
			if err := b.JS.DeleteConsumer(ctx, bus.StreamName(p), bus.WriterConsumer(p, "pg")); err != nil {
				t.Fatal(err)
			}
			var last uint64
			for i := range 10 {
				last = publish(t, b, p, fmt.Sprintf("after-%d", i))
			}
			waitFor(t, 20*time.Second, func() error {
				c, err := b.JS.Consumer(ctx, bus.StreamName(p), bus.WriterConsumer(p, "pg"))
				if err != nil {
					return err
				}
				return consumerSettled(ctx, c, last)
			})
			if err := run.stop(t, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if n := recreated.Load(); n != 1 {
				t.Errorf("Recreate called %d times, want 1", n)
			}
			m := got.snapshot()
			for s := uint64(1); s <= last; s++ {
				if m[s] == 0 {
					t.Errorf("message %d never handled", s)
				}
			}
		})
	}
}
