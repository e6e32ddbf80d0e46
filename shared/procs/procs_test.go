package procs

import (
	"context"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// unsetGOMAXPROCS removes the variable for the test (a user's setting
// turns the Governor off) and puts it back afterwards.
func unsetGOMAXPROCS(t *testing.T) {
	t.Helper()
	if v, ok := os.LookupEnv("GOMAXPROCS"); ok {
		t.Setenv("GOMAXPROCS", v) // restores it at cleanup
		if err := os.Unsetenv("GOMAXPROCS"); err != nil {
			t.Fatal(err)
		}
	}
}

func testGovernor() *Governor {
	g := New(nil)
	g.all = 4
	g.Interval = 100 * time.Millisecond
	g.RaiseWindow = 200 * time.Millisecond // 2 samples
	g.LowerWindow = 500 * time.Millisecond // 5 samples
	return g
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name string
		cur  int
		used []float64
		want int
	}{
		{"one P, no samples yet", 1, nil, 1},
		{"one P, one busy sample is not a window", 1, []float64{0.95}, 1},
		{"one P kept busy raises", 1, []float64{0.1, 0.9, 0.85}, 4},
		{"one P at the threshold raises", 1, []float64{0.8, 0.8}, 4},
		{"one P half busy stays", 1, []float64{0.5, 0.6, 0.7, 0.75}, 1},
		{"one P just below the threshold stays", 1, []float64{0.79, 0.79}, 1},
		{"one P, a busy sample then an idle one stays", 1, []float64{1.0, 0.2}, 1},
		{"all Ps, a short quiet spell stays", 4, []float64{0.1, 0.1, 0.1, 0.1}, 4},
		{"all Ps, quiet for the window lowers", 4, []float64{1.8, 0.4, 0.5, 0.3, 0.2, 0.1}, 1},
		{"all Ps, under a P's worth for the window lowers", 4, []float64{0.8, 0.7, 0.75, 0.6, 0.8}, 1},
		{"all Ps, busy in the window stays", 4, []float64{0.1, 0.1, 0.1, 0.1, 1.9}, 4},
		{"all Ps, just above the threshold stays", 4, []float64{0.85, 0.85, 0.85, 0.85, 0.85}, 4},
		{"all Ps, one interval above the threshold stays", 4, []float64{0.1, 0.1, 0.9, 0.1, 0.1}, 4},
	}
	g := testGovernor()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := g.decide(tc.cur, tc.used); got != tc.want {
				t.Fatalf("decide(%d, %v) = %d, want %d", tc.cur, tc.used, got, tc.want)
			}
		})
	}
}

// fakeProcess is a process whose CPU use per wall second is load, and
// which records the GOMAXPROCS the Governor sets.
type fakeProcess struct {
	mu   sync.Mutex
	load float64
	cpu  time.Duration
	at   time.Time
	sets []int
}

func (p *fakeProcess) setLoad(l float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.advance()
	p.load = l
}

func (p *fakeProcess) advance() {
	now := time.Now()
	if !p.at.IsZero() {
		p.cpu += time.Duration(p.load * float64(now.Sub(p.at)))
	}
	p.at = now
}

func (p *fakeProcess) readCPU() (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.advance()
	return p.cpu, true
}

func (p *fakeProcess) set(n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n == 0 {
		n = 4 // the fake runtime's default
	}
	p.sets = append(p.sets, n)
	return n
}

func (p *fakeProcess) history() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.sets...)
}

// waitFor polls until the Governor's history is want, or fails.
func waitFor(t *testing.T, p *fakeProcess, want ...int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := p.history()
		if equal(got, want) {
			return
		}
		if len(got) > len(want) || time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS set to %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRunFollowsTheLoad(t *testing.T) {
	unsetGOMAXPROCS(t)
	p := &fakeProcess{}
	g := testGovernor()
	g.cpu, g.set = p.readCPU, p.set
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()

	waitFor(t, p, 1) // starts on one P
	p.setLoad(0.95)  // one P saturated
	waitFor(t, p, 1, 4)
	p.setLoad(1.5) // busy on all Ps: stays
	time.Sleep(8 * g.Interval)
	waitFor(t, p, 1, 4)
	p.setLoad(0.2) // quiet
	waitFor(t, p, 1, 4, 1)

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	waitFor(t, p, 1, 4, 1, 4) // the runtime's default back
}

func TestUserSetGOMAXPROCSStands(t *testing.T) {
	t.Setenv("GOMAXPROCS", "3")
	p := &fakeProcess{}
	g := testGovernor()
	g.cpu, g.set = p.readCPU, p.set
	if g.Enabled() {
		t.Fatal("Enabled with GOMAXPROCS set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*g.Interval)
	defer cancel()
	if err := g.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if h := p.history(); len(h) != 0 {
		t.Fatalf("GOMAXPROCS set to %v although the user set it", h)
	}
}

// TestRunSetsTheRuntime checks the real wiring: one P while idle, the
// runtime's default once Run returns.
func TestRunSetsTheRuntime(t *testing.T) {
	unsetGOMAXPROCS(t)
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	if def < 2 {
		t.Skipf("the runtime's default is %d P: nothing to govern", def)
	}
	g := New(nil)
	g.Interval = 20 * time.Millisecond
	g.RaiseAt = 1e9 // never raise
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.GOMAXPROCS(0) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS = %d, want 1 while idle", runtime.GOMAXPROCS(0))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := runtime.GOMAXPROCS(0); n != def {
		t.Fatalf("GOMAXPROCS = %d after Run, want the default %d", n, def)
	}
}
