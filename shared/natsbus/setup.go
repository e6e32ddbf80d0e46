package natsbus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/retry"
)

// setupPolicy bounds how long stream, consumer and bucket setup waits for a
// JetStream that is not ready yet: a cluster still electing its meta leader,
// a node restarting, a leader change. About two minutes, then it fails
// naming the last error, so a wrong setup is reported rather than retried
// forever.
var setupPolicy = retry.Policy{Initial: 250 * time.Millisecond, Max: 5 * time.Second, Attempts: 30}

// setupTimeout bounds one setup request.
const setupTimeout = 5 * time.Second

// setup runs one JetStream setup request, retrying while JetStream is not
// ready (timeouts, no responders, 503s, a cluster without enough peers yet)
// and failing at once on a request JetStream refuses for good (a 4xx API
// error: bad config, a name in use with other settings) or the server's
// permissions refused (a violation reported while the request waited: it
// gets no reply, and a retry gets none either).
func (b *Bus) setup(ctx context.Context, what string, op func(ctx context.Context) error) error {
	p := setupPolicy
	p.OnRetry = func(err error, wait time.Duration) {
		b.log.Warn("JetStream not ready; retrying", "what", what, "error", err, "wait", wait)
	}
	return retry.Do(ctx, p, func(ctx context.Context) error {
		start := time.Now()
		ctx, cancel := context.WithTimeout(ctx, setupTimeout)
		defer cancel()
		err := op(ctx)
		if err == nil {
			return nil
		}
		if v := b.Refused(start); v != nil {
			return errs.Permanent(fmt.Errorf("%s: %w", what, v))
		}
		return classifySetup(err)
	})
}

// jsInsufficientResources is returned while a cluster has fewer peers up
// than the replicas asked for: transient during start and node loss.
const jsInsufficientResources jetstream.ErrorCode = 10023

func classifySetup(err error) error {
	if err == nil {
		return nil
	}
	var api *jetstream.APIError
	if errors.As(err, &api) && api.Code >= 400 && api.Code < 500 && api.ErrorCode != jsInsufficientResources {
		return errs.Permanent(err)
	}
	return err
}
