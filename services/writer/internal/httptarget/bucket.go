package httptarget

import (
	"context"
	"sync"
	"time"
)

// bucket is a token bucket shared by all requests of a Target: rate tokens
// per second, at most burst in store. A request takes one token; when none
// is left it reserves the next one (the count goes negative) and waits
// until it is due, so waiters are served in arrival order and the rate
// holds however many goroutines ask.
type bucket struct {
	mu     sync.Mutex
	now    func() time.Time
	rate   float64 // tokens per second
	burst  float64
	tokens float64 // may be negative: tokens reserved ahead
	last   time.Time
}

// newBucket returns a full bucket.
func newBucket(rate, burst float64, now func() time.Time) *bucket {
	return &bucket{now: now, rate: rate, burst: burst, tokens: burst, last: now()}
}

func (b *bucket) refill(now time.Time) {
	if now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
}

// available is the number of tokens in store now (negative: reserved ahead).
func (b *bucket) available() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(b.now())
	return b.tokens
}

// reserve takes a token and returns how long to wait before using it.
func (b *bucket) reserve() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(b.now())
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// unreserve gives back a token reserved but not used.
func (b *bucket) unreserve() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(b.now())
	b.tokens = min(b.burst, b.tokens+1)
}

// wait takes a token, waiting until it is due or ctx ends.
func (b *bucket) wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	d := b.reserve()
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		b.unreserve()
		return context.Cause(ctx)
	case <-timer.C:
		return nil
	}
}
