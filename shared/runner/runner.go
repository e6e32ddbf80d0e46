// Package runner is the process lifecycle every oneway binary shares: run a
// set of long-running components, stop them in reverse start order when the
// process is asked to stop or one of them exits, and bound the time that
// takes.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"
)

// Component is one long-running part of a service.
//
// Run blocks until ctx is cancelled or the component fails; it returns nil
// after a clean stop caused by ctx (returning ctx's context.Canceled is also
// accepted as clean). It must return within a bounded time after ctx ends:
// finish in-flight work, flush, checkpoint, then return. Returning before ctx
// ends, even with nil, is a failure that stops the whole process.
type Component interface {
	Name() string
	Run(ctx context.Context) error
}

// Func adapts a name and function to Component.
func Func(name string, run func(ctx context.Context) error) Component {
	return funcComponent{name: name, run: run}
}

type funcComponent struct {
	name string
	run  func(ctx context.Context) error
}

func (f funcComponent) Name() string                  { return f.name }
func (f funcComponent) Run(ctx context.Context) error { return f.run(ctx) }

// ErrStoppedEarly is returned (wrapped with the component name) for a
// component whose Run returned nil before it was asked to stop.
var ErrStoppedEarly = errors.New("stopped before shutdown was requested")

// ErrStopTimeout is returned (wrapped, naming the components) when
// components are still running when the stop timeout expires.
var ErrStopTimeout = errors.New("still running after stop timeout")

type result struct {
	idx int
	err error // already classified and wrapped with the component name
}

// Run starts every component in its own goroutine and waits. When ctx ends,
// or any component returns (error or not) before ctx ended, it stops them in
// REVERSE start order: component i's context is cancelled only after
// components i+1..n-1 have returned, so e.g. readers and writers stop before
// the things they depend on, and a metrics server listed first stops last.
// Component contexts carry ctx's values but not its cancellation.
//
// Stopping is bounded by timeout (<= 0 means no bound), measured from the
// start of the stop. When it expires, every remaining component's context is
// cancelled, the ones that have not returned are abandoned and named in the
// returned error (errors.Is ErrStopTimeout), and Run returns.
//
// Run returns the first component error, wrapped with the component's name
// (a component returning nil before being stopped counts as ErrStoppedEarly),
// joined with the timeout error if any; nil when all components stopped
// cleanly because ctx ended. A panic in a component is recovered and returned
// as its error.
func Run(ctx context.Context, log *slog.Logger, timeout time.Duration, components ...Component) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := len(components)
	if n == 0 {
		return nil
	}

	base := context.WithoutCancel(ctx)
	cancels := make([]context.CancelFunc, n)
	results := make(chan result, n) // buffered: abandoned goroutines never block
	for i, c := range components {
		cctx, cancel := context.WithCancel(base)
		cancels[i] = cancel
		go func() { results <- result{idx: i, err: runOne(cctx, log, c)} }()
		log.Debug("component started", slog.String("component", c.Name()))
	}
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
	}()

	finished := make([]bool, n)
	var firstErr error
	record := func(r result) {
		finished[r.idx] = true
		name := components[r.idx].Name()
		if r.err != nil {
			log.Error("component failed", slog.String("component", name), slog.Any("error", r.err))
			if firstErr == nil {
				firstErr = r.err
			}
			return
		}
		log.Info("component stopped", slog.String("component", name))
	}

	select {
	case <-ctx.Done():
		log.Info("shutdown requested", slog.Any("cause", context.Cause(ctx)))
	case r := <-results:
		record(r)
		log.Info("shutdown after component exit", slog.String("component", components[r.idx].Name()))
	}

	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	for i := n - 1; i >= 0; i-- {
		cancels[i]()
		for !finished[i] {
			select {
			case r := <-results:
				record(r)
			case <-deadline:
				return errors.Join(firstErr, abandon(log, timeout, components, cancels, finished, results, record))
			}
		}
	}
	return firstErr
}

// abandon cancels every component, collects the results already available
// without waiting, and returns the error naming those still running.
func abandon(log *slog.Logger, timeout time.Duration, components []Component, cancels []context.CancelFunc,
	finished []bool, results <-chan result, record func(result)) error {
	for _, cancel := range cancels {
		cancel()
	}
drain:
	for {
		select {
		case r := <-results:
			record(r)
		default:
			break drain
		}
	}
	var running []string
	for i, c := range components {
		if !finished[i] {
			running = append(running, c.Name())
		}
	}
	log.Error("components abandoned after stop timeout",
		slog.Duration("timeout", timeout), slog.Any("components", running))
	return fmt.Errorf("runner: %w (%s): %s", ErrStopTimeout, timeout, strings.Join(running, ", "))
}

// runOne runs c and classifies its result: nil for a clean stop, else an
// error wrapped with the component name.
func runOne(ctx context.Context, log *slog.Logger, c Component) (err error) {
	name := c.Name()
	defer func() {
		if p := recover(); p != nil {
			log.Error("component panicked", slog.String("component", name),
				slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			err = fmt.Errorf("component %s: panic: %v", name, p)
		}
	}()
	err = c.Run(ctx)
	stopped := ctx.Err() != nil
	switch {
	case err == nil && stopped:
		return nil
	case err == nil:
		return fmt.Errorf("component %s: %w", name, ErrStoppedEarly)
	case stopped && errors.Is(err, context.Canceled):
		return nil
	default:
		return fmt.Errorf("component %s: %w", name, err)
	}
}
