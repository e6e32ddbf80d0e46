package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/stage"
)

// scanCount counts the differ's completed scans of every target.
type scanCount struct{ n atomic.Int64 }

func (s *scanCount) add() { s.n.Add(1) }

// waitStagedSynced waits, in staged mode, until the reader has caught up
// once, the differ has scanned every target once, and the pipeline is
// quiet: the stager's, the differ's and every writer's consumer have
// nothing pending or unacknowledged, and the stream has not grown since
// the previous check. A converged pipeline is quiet: the last applied
// reports make the differ decide nothing. A target whose deletes the
// breaker holds cannot converge: that is an error naming it.
func waitStagedSynced(ctx context.Context, b *natsbus.Bus, cfg *config.Pipeline, c *caughtUp, scans *scanCount, store stage.Store, log *slog.Logger) (bool, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	stream := bus.StreamName(cfg.Pipeline)
	consumers := []string{bus.StagerConsumer(cfg.Pipeline), bus.DifferConsumer(cfg.Pipeline)}
	for _, t := range cfg.Targets {
		consumers = append(consumers, bus.WriterConsumer(cfg.Pipeline, t.Name))
	}
	var lastSeq uint64
	quiet := 0
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case <-tick.C:
		}
		if seen, _ := c.get(); !seen || scans.n.Load() == 0 {
			continue
		}
		idle := true
		for _, name := range consumers {
			cons, err := b.JS.Consumer(ctx, stream, name)
			if err != nil {
				idle = false
				break
			}
			info, err := cons.Info(ctx)
			if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
				idle = false
				break
			}
		}
		st, err := b.JS.Stream(ctx, stream)
		if err != nil {
			continue
		}
		info, err := st.Info(ctx)
		if err != nil {
			continue
		}
		if !idle || info.State.LastSeq != lastSeq {
			lastSeq, quiet = info.State.LastSeq, 0
			continue
		}
		// Quiet across a second: nothing in flight, nothing published.
		if quiet++; quiet < 5 {
			continue
		}
		holds, err := store.Holds(ctx)
		if err != nil {
			return false, fmt.Errorf("read breaker holds: %w", err)
		}
		var held []string
		for _, h := range holds {
			if h.State == stage.HoldHeld {
				held = append(held, fmt.Sprintf("%s (%d of %d records)", h.Target, h.Deletes, h.Total))
			}
		}
		if len(held) > 0 {
			return false, cli.Exit(cli.ExitFailure, errors.New("the mass-delete breaker holds the deletes of target "+strings.Join(held, ", ")+": approve them with `oneway approve`"))
		}
		log.Info("every target is in sync", "stream_seq", lastSeq)
		return true, nil
	}
}
