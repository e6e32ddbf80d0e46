package runner

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

type behaviour int

const (
	blocks     behaviour = iota // returns nil once ctx ends
	fails                       // returns errBoom at once
	exitsEarly                  // returns nil at once
	returnsCtx                  // returns ctx.Err() once ctx ends
	panics                      // panics at once
	ignoresCtx                  // never returns until the test ends
)

var errBoom = errors.New("boom")

// recorder records the order in which components observe their context end.
type recorder struct {
	mu    sync.Mutex
	order []string
}

func (r *recorder) add(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.order = append(r.order, name)
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.order)
}

func component(t *testing.T, name string, b behaviour, rec *recorder, started *sync.WaitGroup) Component {
	t.Helper()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	started.Add(1)
	return Func(name, func(ctx context.Context) error {
		started.Done()
		switch b {
		case fails:
			return errBoom
		case exitsEarly:
			return nil
		case panics:
			panic("kaboom")
		case ignoresCtx:
			<-release
			return nil
		}
		<-ctx.Done()
		rec.add(name)
		if b == returnsCtx {
			return ctx.Err()
		}
		return nil
	})
}

func TestRun(t *testing.T) {
	type spec struct {
		name string
		b    behaviour
	}
	tests := []struct {
		name       string
		components []spec
		cancel     bool          // cancel the parent once every component started
		timeout    time.Duration // stop timeout; default 10s
		wantErrIs  error
		wantInErr  []string // substrings of the error
		wantOrder  []string // order in which components saw their ctx end
	}{
		{
			name:       "clean stop on cancel returns nil",
			components: []spec{{"metrics", blocks}, {"reader", blocks}, {"writer", blocks}},
			cancel:     true,
			wantOrder:  []string{"writer", "reader", "metrics"},
		},
		{
			name:       "context.Canceled after stop counts as clean",
			components: []spec{{"a", returnsCtx}, {"b", returnsCtx}},
			cancel:     true,
			wantOrder:  []string{"b", "a"},
		},
		{
			name:       "component error stops the others and is returned with its name",
			components: []spec{{"metrics", blocks}, {"reader", fails}, {"writer", blocks}},
			wantErrIs:  errBoom,
			wantInErr:  []string{"component reader"},
			wantOrder:  []string{"writer", "metrics"},
		},
		{
			name:       "component returning nil early is an error",
			components: []spec{{"metrics", blocks}, {"reader", exitsEarly}},
			wantErrIs:  ErrStoppedEarly,
			wantInErr:  []string{"component reader"},
			wantOrder:  []string{"metrics"},
		},
		{
			name:       "panic is recovered and returned",
			components: []spec{{"metrics", blocks}, {"writer", panics}},
			wantInErr:  []string{"component writer", "panic", "kaboom"},
			wantOrder:  []string{"metrics"},
		},
		{
			name:       "component ignoring ctx is abandoned after timeout and named",
			components: []spec{{"metrics", blocks}, {"stuck", ignoresCtx}, {"writer", blocks}},
			cancel:     true,
			timeout:    50 * time.Millisecond,
			wantErrIs:  ErrStopTimeout,
			wantInErr:  []string{"stuck"},
			wantOrder:  []string{"writer"}, // metrics is cancelled only at the deadline
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			var started sync.WaitGroup
			var cs []Component
			for _, s := range tt.components {
				cs = append(cs, component(t, s.name, s.b, rec, &started))
			}
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				go func() {
					started.Wait()
					cancel()
				}()
			}

			errc := make(chan error, 1)
			go func() { errc <- Run(ctx, slog.New(slog.DiscardHandler), timeout, cs...) }()
			var err error
			select {
			case err = <-errc:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}

			if tt.wantErrIs == nil && len(tt.wantInErr) == 0 {
				if err != nil {
					t.Fatalf("Run() = %v, want nil", err)
				}
			} else if err == nil {
				t.Fatal("Run() = nil, want error")
			}
			if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
				t.Errorf("Run() = %v, want errors.Is %v", err, tt.wantErrIs)
			}
			for _, s := range tt.wantInErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Run() = %q, want it to contain %q", err, s)
				}
			}
			got := rec.get()
			if tt.wantErrIs == ErrStopTimeout {
				// Components cancelled at the deadline may or may not have
				// recorded yet; only the prefix is ordered.
				got = got[:min(len(got), len(tt.wantOrder))]
			}
			if !slices.Equal(got, tt.wantOrder) {
				t.Errorf("stop order = %v, want %v", got, tt.wantOrder)
			}
		})
	}
}

// TestRunStopsInReverseOrder checks that component i's context is still live
// while a later component is stopping, not just the order of the records.
func TestRunStopsInReverseOrder(t *testing.T) {
	var (
		mu      sync.Mutex
		order   []string
		running = map[string]bool{}
	)
	mk := func(name string, after ...string) Component {
		mu.Lock()
		running[name] = true
		mu.Unlock()
		return Func(name, func(ctx context.Context) error {
			<-ctx.Done()
			mu.Lock()
			defer mu.Unlock()
			for _, later := range after {
				if running[later] {
					t.Errorf("%s cancelled while %s still running", name, later)
				}
			}
			order = append(order, name)
			running[name] = false
			return nil
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Run(ctx, nil, 10*time.Second,
		mk("server", "bus", "reader", "writer"),
		mk("bus", "reader", "writer"),
		mk("reader", "writer"),
		mk("writer"),
	)
	if err != nil {
		t.Fatalf("Run() = %v", err)
	}
	if want := []string{"writer", "reader", "bus", "server"}; !slices.Equal(order, want) {
		t.Errorf("stop order = %v, want %v", order, want)
	}
}

func TestRunKeepsContextValues(t *testing.T) {
	type key struct{}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	cancel()
	var got any
	err := Run(ctx, nil, time.Second, Func("c", func(ctx context.Context) error {
		got = ctx.Value(key{})
		<-ctx.Done()
		return nil
	}))
	if err != nil || got != "v" {
		t.Fatalf("Run() = %v, value = %v; want nil, v", err, got)
	}
}

func TestRunNoComponents(t *testing.T) {
	if err := Run(context.Background(), nil, time.Second); err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}
}
