package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
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

// cycleCount counts the completed cycles (or caught-up polls) of each
// target's read-back.
type cycleCount struct {
	mu sync.Mutex
	n  map[string]int64
}

func newCycleCount() *cycleCount { return &cycleCount{n: map[string]int64{}} }

// watch makes target's read-back one that waitStagedSynced waits for.
// Call before the read-back runs.
func (c *cycleCount) watch(target string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[target] = 0
}

func (c *cycleCount) add(target string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[target]++
}

func (c *cycleCount) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

// since reports whether every read-back completed at least n cycles after
// mark (a snapshot).
func (c *cycleCount) since(mark map[string]int64, n int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for t, k := range c.n {
		if k < mark[t]+n {
			return false
		}
	}
	return true
}

// waitStagedSynced waits, in staged mode, until the reader has caught up
// once, the differ has scanned every target once, and the pipeline is
// quiet: the stager's, the differ's and every writer's consumer have
// nothing pending or unacknowledged, the stream has not grown since the
// previous check, and every read-back (readbacks) has read its target
// through at least once since the stream stopped growing (two completed
// cycles: the second began after the last write), and the differ holds no
// key set aside while its push is in flight (inFlight, the differ's
// InFlight, is 0: such a key is pushed again or decided without any new
// input, so a quiet pipeline is not yet a synced one). A converged
// pipeline is quiet: the last applied reports and read-backs make the
// differ decide nothing. A target whose deletes the breaker holds cannot
// converge: that is an error naming it.
func waitStagedSynced(ctx context.Context, b *natsbus.Bus, cfg *config.Pipeline, c *caughtUp, scans *scanCount, inFlight func() int, readbacks *cycleCount, store stage.Store, log *slog.Logger) (bool, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	stream := bus.StreamName(cfg.Pipeline)
	consumers := []string{bus.StagerConsumer(cfg.Pipeline), bus.DifferConsumer(cfg.Pipeline)}
	for _, t := range cfg.Targets {
		consumers = append(consumers, bus.WriterConsumer(cfg.Pipeline, t.Name))
	}
	var lastSeq uint64
	quiet := 0
	mark := readbacks.snapshot()
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
			mark = readbacks.snapshot()
			continue
		}
		// Quiet across a second: nothing in flight, nothing published,
		// and each target read back after its last write.
		if quiet++; quiet < 5 || !readbacks.since(mark, 2) {
			continue
		}
		if n := inFlight(); n > 0 {
			if quiet%25 == 0 { // every 5 s
				log.Info("waiting for pushes in flight", "keys", n)
			}
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
