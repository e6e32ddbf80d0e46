package telemetry

import (
	"slices"
	"sync"
)

// Health tracks liveness and readiness. Liveness (/healthz) never checks
// dependencies: it is true while the process runs. Readiness (/readyz) is
// true only after every registered component has called its ready function
// and not called notReady since; with no registered component it is true.
// Safe for concurrent use.
type Health struct {
	mu      sync.Mutex
	entries []*healthEntry
}

type healthEntry struct {
	name  string
	ready bool
}

// NewHealth returns a Health with no registered component.
func NewHealth() *Health {
	return &Health{}
}

// Register adds a component, initially not ready, and returns the functions
// that mark it ready and not ready again (e.g. while a dependency is down).
// Both are safe to call any number of times from any goroutine. Each call
// registers a separate entry, even for a name already registered.
func (h *Health) Register(component string) (ready func(), notReady func()) {
	e := &healthEntry{name: component}
	h.mu.Lock()
	h.entries = append(h.entries, e)
	h.mu.Unlock()
	set := func(v bool) func() {
		return func() {
			h.mu.Lock()
			e.ready = v
			h.mu.Unlock()
		}
	}
	return set(true), set(false)
}

// IsReady reports whether every registered component is ready and, if not,
// the sorted names of those that are not.
func (h *Health) IsReady() (bool, []string) {
	h.mu.Lock()
	var pending []string
	for _, e := range h.entries {
		if !e.ready {
			pending = append(pending, e.name)
		}
	}
	h.mu.Unlock()
	slices.Sort(pending)
	return len(pending) == 0, pending
}
