// Package retry runs an operation again after transient failures, using
// github.com/cenkalti/backoff/v4.
package retry

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/oneway-sync/oneway/shared/errs"
)

// Policy bounds the retries of one operation.
type Policy struct {
	// Initial and Max bound the exponential backoff between attempts.
	Initial, Max time.Duration
	// Attempts caps the attempts for transient errors; 0 means no cap.
	// Errors marked errs.Unavailable never count against it: an outage is
	// waited out until ctx ends.
	Attempts int
	// OnRetry, when set, is called before each wait.
	OnRetry func(err error, wait time.Duration)
}

// Default is the policy for calls to sources and targets.
var Default = Policy{Initial: 100 * time.Millisecond, Max: 15 * time.Second, Attempts: 5}

// Do runs op until it succeeds, returns a permanent error (errs.Permanent),
// the transient attempts run out, or ctx ends. It never retries after ctx is
// cancelled; on cancel it returns op's last error joined with ctx.Err().
func Do(ctx context.Context, p Policy, op func(ctx context.Context) error) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.Initial
	b.MaxInterval = p.Max
	b.MaxElapsedTime = 0
	b.Reset()
	transient := 0
	for {
		err := op(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		if errs.IsPermanent(err) {
			return err
		}
		if !errs.IsUnavailable(err) {
			transient++
			if p.Attempts > 0 && transient >= p.Attempts {
				return err
			}
		}
		wait := b.NextBackOff()
		if p.OnRetry != nil {
			p.OnRetry(err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
}
