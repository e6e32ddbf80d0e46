package natsbus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/natsbus"
)

func TestConsumeBatches(t *testing.T) {
	t.Parallel()
	const p = "grp"
	rows := func(n int, bad ...int) []string {
		var r []string
		for i := range n {
			if slices.Contains(bad, i) {
				r = append(r, fmt.Sprintf("bad-%d", i))
			} else {
				r = append(r, fmt.Sprintf("row-%d", i))
			}
		}
		return r
	}
	isBad := func(m jetstream.Msg) bool { return string(m.Data()[:3]) == "bad" }
	tests := []struct {
		name    string
		rows    []string
		workers int
		// replica: a second loop starts once the first handler call has
		// begun, so that it would take any message that expired meanwhile.
		replica    bool
		fetchBatch int
		ackWait    time.Duration
		work       time.Duration // simulated work per handler call
		handler    func(msgs []jetstream.Msg) error
		// wantGrouped: some call got more than one message (a backlog is
		// fetched in one burst, so this holds).
		wantGrouped  bool
		wantOutcomes map[natsbus.Outcome]int
		wantDLQ      []string // data of the dead letters
	}{
		{
			name:         "backlog is handled in groups",
			rows:         rows(20),
			fetchBatch:   8,
			ackWait:      5 * time.Second,
			handler:      func([]jetstream.Msg) error { return nil },
			wantGrouped:  true,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeAcked: 20},
		},
		{
			name:       "a failed group is retried one by one",
			rows:       rows(6, 3),
			fetchBatch: 8,
			ackWait:    5 * time.Second,
			handler: func(msgs []jetstream.Msg) error {
				if slices.ContainsFunc(msgs, isBad) {
					if len(msgs) > 1 {
						return errors.New("batch insert failed")
					}
					return errs.Permanent(errors.New("row violates check constraint"))
				}
				return nil
			},
			wantGrouped:  true,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeAcked: 5, natsbus.OutcomeDeadLetter: 1},
			wantDLQ:      []string{"bad-3"},
		},
		{
			name:       "a permanent group failure still isolates the bad row",
			rows:       rows(4, 0),
			fetchBatch: 8,
			ackWait:    5 * time.Second,
			handler: func(msgs []jetstream.Msg) error {
				if slices.ContainsFunc(msgs, isBad) {
					return errs.Permanent(errors.New("row violates check constraint"))
				}
				return nil
			},
			wantGrouped:  true,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeAcked: 3, natsbus.OutcomeDeadLetter: 1},
			wantDLQ:      []string{"bad-0"},
		},
		{
			name:         "a slow group is kept in progress",
			rows:         rows(3),
			replica:      true,
			fetchBatch:   8,
			ackWait:      time.Second,
			work:         2500 * time.Millisecond,
			handler:      func([]jetstream.Msg) error { return nil },
			wantGrouped:  true,
			wantOutcomes: map[natsbus.Outcome]int{natsbus.OutcomeAcked: 3},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBus(t)
			ctx := testCtx(t)
			st := pipelineStream(t, b, p)
			cons := writerConsumer(t, b, p, "pg", tc.ackWait)
			// A backlog, published before the loop starts.
			var last uint64
			for _, r := range tc.rows {
				last = publish(t, b, p, r)
			}

			var (
				mu        sync.Mutex
				succeeded = map[uint64]int{} // seq -> successful handler calls covering it
				maxGroup  int
				redeliv   []string
			)
			var outs outcomes
			started := make(chan struct{})
			var startOnce sync.Once
			h := func(hctx context.Context, msgs []jetstream.Msg) error {
				startOnce.Do(func() { close(started) })
				if tc.work > 0 {
					work := time.NewTimer(tc.work)
					defer work.Stop()
					select {
					case <-work.C:
					case <-hctx.Done():
						return hctx.Err()
					}
				}
				err := tc.handler(msgs)
				mu.Lock()
				defer mu.Unlock()
				maxGroup = max(maxGroup, len(msgs))
				for _, m := range msgs {
					seq, delivered := seqOf(t, m)
					if delivered != 1 {
						redeliv = append(redeliv, fmt.Sprintf("seq %d delivery %d", seq, delivered))
					}
					if err == nil {
						succeeded[seq]++
					}
				}
				return err
			}
			opts := natsbus.ConsumeOptions{
				Workers:           tc.workers,
				FetchBatch:        tc.fetchBatch,
				AckWait:           tc.ackWait,
				MaxAttempts:       3,
				DeadLetterSubject: bus.DLQSubject(p, "pg"),
				OnOutcome:         outs.record,
				Log:               newLogger(t),
			}
			runs := []*consumeRun{startConsumeBatches(t, b, cons, h, opts)}
			if tc.replica {
				select {
				case <-started:
				case <-ctx.Done():
					t.Fatal("handler never called")
				}
				runs = append(runs, startConsumeBatches(t, b, cons, h, opts))
			}
			waitFor(t, 15*time.Second, func() error { return consumerSettled(ctx, cons, last) })
			for _, r := range runs {
				if err := r.stop(t, 10*time.Second); err != nil {
					t.Fatal(err)
				}
			}

			mu.Lock()
			defer mu.Unlock()
			if tc.wantGrouped && maxGroup < 2 {
				t.Errorf("largest group %d: the backlog was never grouped", maxGroup)
			}
			if maxGroup > tc.fetchBatch {
				t.Errorf("largest group %d exceeds FetchBatch %d", maxGroup, tc.fetchBatch)
			}
			if len(redeliv) > 0 {
				t.Errorf("redelivered: %v", redeliv)
			}
			for seq := uint64(1); seq <= last; seq++ {
				want := 1
				if string(tc.rows[seq-1][:3]) == "bad" {
					want = 0
				}
				if succeeded[seq] != want {
					t.Errorf("message %d (%s) succeeded %d times, want %d", seq, tc.rows[seq-1], succeeded[seq], want)
				}
			}
			if o := outs.snapshot(); fmt.Sprint(o) != fmt.Sprint(tc.wantOutcomes) {
				t.Errorf("outcomes %v, want %v", o, tc.wantOutcomes)
			}
			info, err := st.Info(ctx, jetstream.WithSubjectFilter(bus.DLQSubject(p, "pg")))
			if err != nil {
				t.Fatal(err)
			}
			if got := info.State.Subjects[bus.DLQSubject(p, "pg")]; got != uint64(len(tc.wantDLQ)) {
				t.Errorf("%d dead letters, want %d", got, len(tc.wantDLQ))
			}
			if len(tc.wantDLQ) == 1 {
				m, err := st.GetLastMsgForSubject(ctx, bus.DLQSubject(p, "pg"))
				if err != nil {
					t.Fatal(err)
				}
				if string(m.Data) != tc.wantDLQ[0] || m.Header.Get(bus.HeaderAttempts) != "1" {
					t.Errorf("dead letter %q attempts %q, want %q attempts 1", m.Data, m.Header.Get(bus.HeaderAttempts), tc.wantDLQ[0])
				}
			}
		})
	}
}
