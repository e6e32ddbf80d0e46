// Package procs sizes the Go scheduler to the work a oneway process has.
//
// A oneway process mostly hands small messages between goroutines and
// sockets: a replication stream, JetStream, a database. With several Ps,
// every hand-off to an idle P wakes another thread, which spins, polls the
// network and sleeps again. On a small machine shared with the databases
// (a 2-core host running PostgreSQL beside `oneway up`), that churn costs
// more CPU than the work itself: measured with `make bench`'s cdc_steady,
// `oneway up` used about 35% less CPU per 100,000 changes on one P than on
// two, and the cores it no longer burnt went to the walsender and the
// target's sessions. Bulk work (a staged initial load) does need every
// core, so one P cannot be the fixed default either.
//
// The Governor therefore runs the process on one P while one core is enough
// and on all of them (the runtime's own default, which follows the
// container's CPU limit) while the process keeps a core busy.
package procs

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"time"
)

// Governor switches GOMAXPROCS between 1 and the runtime's default (all
// the cores, or the container's CPU limit) by the CPU the process used. Build it with New and set its fields before Run; Run it once, for
// the life of the process. Nothing else in the process may set GOMAXPROCS
// meanwhile.
//
// The rule, checked every Interval:
//   - on one P, it raises to the default when the process used at least
//     RaiseAt cores over the last RaiseWindow (one P is saturated);
//   - on more, it lowers to one when it used at most LowerAt cores in
//     every interval of the last LowerWindow (a burst keeps every core).
//
// Only samples taken since the last switch count, so each level is judged
// by what the process did on it, and a switch is followed by at least one
// window at its new level.
type Governor struct {
	Interval    time.Duration
	RaiseAt     float64
	RaiseWindow time.Duration
	LowerAt     float64
	LowerWindow time.Duration

	all int                          // the runtime's default, as last set
	cpu func() (time.Duration, bool) // process CPU time (user+system); false when unknown
	set func(n int) int              // sets GOMAXPROCS to n (0: the runtime's default) and returns it
	log *slog.Logger
}

// New returns a Governor with the defaults: sampling every 500 ms, raise
// at 0.8 cores over 1 s, lower at 0.8 cores in every interval of 5 s (a
// pipeline's hand-offs cost more CPU on several Ps than on one, so a load
// that fits one P measures below a P's worth there too). log may be nil.
func New(log *slog.Logger) *Governor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Governor{
		all:         runtime.GOMAXPROCS(0),
		Interval:    500 * time.Millisecond,
		RaiseAt:     0.8,
		RaiseWindow: time.Second,
		LowerAt:     0.8,
		LowerWindow: 5 * time.Second,
		cpu:         processCPU,
		set:         setProcs,
		log:         log,
	}
}

// Enabled reports whether Run would govern anything: not when the user set
// GOMAXPROCS (their number stands), when there is one P anyway, or when the
// platform does not report the process's CPU time.
func (g *Governor) Enabled() bool {
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		return false
	}
	_, ok := g.cpu()
	return g.all > 1 && ok
}

// Name implements runner.Component.
func (g *Governor) Name() string { return "procs" }

// Run governs until ctx ends, then gives the runtime its default back and
// returns nil. When the Governor is not Enabled it only waits for ctx.
func (g *Governor) Run(ctx context.Context) error {
	if !g.Enabled() {
		<-ctx.Done()
		return nil
	}
	defer g.set(0)
	cur := g.set(1)
	g.log.Debug("gomaxprocs", "procs", cur, "max", g.all)
	t := time.NewTicker(g.Interval)
	defer t.Stop()
	var used []float64 // cores used per interval since the last switch
	last, _ := g.cpu()
	lastAt := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			c, _ := g.cpu()
			now := time.Now()
			if wall := now.Sub(lastAt); wall > 0 {
				used = append(used, float64(c-last)/float64(wall))
			}
			last, lastAt = c, now
			if next := g.decide(cur, used); next != cur {
				g.log.Debug("gomaxprocs", "procs", next, "max", g.all, "cores_used", used[len(used)-1])
				if next == g.all {
					next = g.set(0) // the default follows CPU limits that changed meanwhile
					g.all = next
				} else {
					next = g.set(next)
				}
				cur, used = next, used[:0]
			}
			if keep := max(g.samples(true), g.samples(false)); len(used) > keep {
				used = append(used[:0], used[len(used)-keep:]...)
			}
		}
	}
}

// decide is the rule of the type's doc: the Ps to run on next, given the
// current number and the cores used per interval since the last switch.
func (g *Governor) decide(cur int, used []float64) int {
	if cur == 1 {
		n := g.samples(true)
		if len(used) >= n && mean(used[len(used)-n:]) >= g.RaiseAt {
			return g.all
		}
		return 1
	}
	n := g.samples(false)
	if len(used) >= n && peak(used[len(used)-n:]) <= g.LowerAt {
		return 1
	}
	return cur
}

// samples is how many intervals the window of a switch spans:
// RaiseWindow's when raising, LowerWindow's when lowering.
func (g *Governor) samples(raise bool) int {
	w := g.LowerWindow
	if raise {
		w = g.RaiseWindow
	}
	return max(1, int((w+g.Interval-1)/g.Interval))
}

func peak(xs []float64) float64 {
	var p float64
	for _, x := range xs {
		p = max(p, x)
	}
	return p
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// setProcs sets GOMAXPROCS to n, or back to the runtime's default (which
// follows the container's CPU limit) for 0, and returns the number set.
func setProcs(n int) int {
	if n == 0 {
		runtime.SetDefaultGOMAXPROCS()
		return runtime.GOMAXPROCS(0)
	}
	runtime.GOMAXPROCS(n)
	return n
}
