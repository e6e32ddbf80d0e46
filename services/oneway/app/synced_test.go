package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	differapp "github.com/oneway-sync/oneway/services/differ/app"
	stagerapp "github.com/oneway-sync/oneway/services/stager/app"
	writerapp "github.com/oneway-sync/oneway/services/writer/app"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/stage/sqlitestage"
)

func TestCycleCountSince(t *testing.T) {
	tests := []struct {
		name   string
		before map[string]int // cycles before the mark
		after  map[string]int // cycles after it
		want   bool
	}{
		{"no read-backs", nil, nil, true},
		{"none since", map[string]int{"a": 3}, nil, false},
		{"one since: it may have begun before the mark", map[string]int{"a": 3}, map[string]int{"a": 1}, false},
		{"two since", map[string]int{"a": 3}, map[string]int{"a": 2}, true},
		{"one target behind", map[string]int{"a": 1, "b": 1}, map[string]int{"a": 5, "b": 1}, false},
		{"every target through", map[string]int{"a": 1}, map[string]int{"a": 2, "b": 2}, true},
		{"never cycled", map[string]int{}, map[string]int{"a": 2, "b": 0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCycleCount()
			for _, m := range []map[string]int{tt.before, tt.after} {
				for target := range m {
					c.watch(target)
				}
			}
			for target, n := range tt.before {
				for range n {
					c.add(target)
				}
			}
			mark := c.snapshot()
			for target, n := range tt.after {
				for range n {
					c.add(target)
				}
			}
			if got := c.since(mark, 2); got != tt.want {
				t.Fatalf("since(mark, 2) = %v, want %v", got, tt.want)
			}
		})
	}
}

// A staged pipeline that is quiet is not reported in sync while the
// differ holds a key set aside with its push in flight.
func TestWaitStagedSyncedWaitsForPushesInFlight(t *testing.T) {
	_, url := bustest.StartJetStream(t)
	cfg, err := config.Parse("p.yaml", []byte(fmt.Sprintf(`pipeline: inv
mode: staged
nats:
  url: %s
source:
  kind: postgres
  url: postgres://x@h/db
  table: public.invoices
  key: [id]
  columns: [id, amount, updated_at]
  capture:
    column: updated_at
targets:
  - name: pg
    kind: postgres
    url: postgres://x@h/t
`, url)), nil)
	require.NoError(t, err)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := natsbus.Connect(ctx, url, "test", log)
	require.NoError(t, err)
	t.Cleanup(b.Close)
	_, err = b.EnsureStream(ctx, natsbus.PipelineStream(cfg))
	require.NoError(t, err)
	for _, spec := range []natsbus.ConsumerSpec{stagerapp.ConsumerSpec(cfg), differapp.ConsumerSpec(cfg), writerapp.ConsumerSpec(cfg, cfg.Targets[0])} {
		_, err := b.EnsureConsumer(ctx, spec)
		require.NoError(t, err)
	}
	store, err := sqlitestage.Open(ctx, sqlitestage.Config{Dir: t.TempDir(), Pipeline: "inv"})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	var caught caughtUp
	caught.set(0)
	var scans scanCount
	scans.add()
	var inFlight atomic.Int64
	inFlight.Store(1)
	wait := func(timeout time.Duration) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return waitStagedSynced(ctx, b, cfg, &caught, &scans, func() int { return int(inFlight.Load()) }, newCycleCount(), store, log)
	}

	// Quiet for 1 s is enough otherwise; 3 s with a key in flight are not.
	synced, err := wait(3 * time.Second)
	require.NoError(t, err)
	require.False(t, synced, "reported in sync with a push in flight")
	inFlight.Store(0)
	synced, err = wait(30 * time.Second)
	require.NoError(t, err)
	require.True(t, synced)
}
