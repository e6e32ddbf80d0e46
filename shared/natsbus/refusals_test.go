package natsbus

import (
	"errors"
	"testing"
	"time"
)

// One violation is logged at once, then at most once a refusalLogEvery
// with the count of those not logged; another violation is logged at
// once; since finds the last one from a time on.
func TestRefusalsLogEachViolationOncePerInterval(t *testing.T) {
	clock := time.Unix(1_000_000, 0)
	r := &refusals{now: func() time.Time { return clock }}
	a := errors.New(`nats: permissions violation: Permissions Violation for Publish to "A"`)
	b := errors.New(`nats: permissions violation: Permissions Violation for Publish to "B"`)
	steps := []struct {
		after      time.Duration
		err        error
		log        bool
		suppressed int
	}{
		{0, a, true, 0},
		{250 * time.Millisecond, a, false, 0},
		{250 * time.Millisecond, a, false, 0},
		{time.Second, b, true, 0},
		{refusalLogEvery, a, true, 2},
		{time.Second, a, false, 0},
		{refusalLogEvery, a, true, 1},
	}
	for i, s := range steps {
		clock = clock.Add(s.after)
		log, suppressed := r.record(s.err)
		if log != s.log || suppressed != s.suppressed {
			t.Fatalf("step %d (%v): record = %v, %d; want %v, %d", i, s.err, log, suppressed, s.log, s.suppressed)
		}
	}
	if got := r.since(clock); got != a {
		t.Fatalf("since(now) = %v, want the last violation", got)
	}
	if got := r.since(clock.Add(time.Nanosecond)); got != nil {
		t.Fatalf("since(after it) = %v, want nil", got)
	}
	var none *refusals // a Bus made by New
	if got := none.since(time.Time{}); got != nil {
		t.Fatalf("a nil refusals: since = %v", got)
	}
}
