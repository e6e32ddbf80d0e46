package httptarget

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/oneway-sync/oneway/shared/errs"
)

// call is one change's request and, after run, its outcome.
type call struct {
	ref    int // index into the batch's decisions
	method string
	url    string // as sent
	show   string // for errors and logs: no user info, query or fragment
	idem   string // Idempotency-Key
	body   []byte // nil for a delete
	del    bool

	err error // permanent rejection (Result.Failed); nil = applied
}

// run sends calls, at most Concurrency at a time. It returns the first
// error that fails the whole Apply (retries exhausted, ctx canceled) and
// cancels the requests still in flight; permanent rejections are left in
// each call's err.
func (t *Target) run(ctx context.Context, calls []call) error {
	if len(calls) == 0 {
		return ctx.Err()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(t.spec.Concurrency, len(calls)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(calls) {
					return
				}
				if err := t.send(ctx, &calls[i]); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// send makes c's request until it succeeds, is rejected for good (c.err)
// or fails MaxAttempts times (the returned error).
func (t *Target) send(ctx context.Context, c *call) error {
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(t.initialDelay),
		backoff.WithMaxInterval(t.maxDelay),
		backoff.WithMaxElapsedTime(0))
	for attempt := 1; ; attempt++ {
		if t.bucket != nil {
			if err := t.bucket.wait(ctx); err != nil {
				return err
			}
		}
		status, retryAfter, snippet, err := t.do(ctx, c)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		var fail error
		switch {
		case err != nil:
			fail = fmt.Errorf("%s %s: %w", c.method, c.show, err)
			if unavailable(err) {
				fail = errs.Unavailable(fail)
			}
		case status >= 200 && status < 300, c.del && (status == http.StatusNotFound || status == http.StatusGone):
			return nil
		case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout, status >= 500:
			fail = fmt.Errorf("%s %s → %d: %s", c.method, c.show, status, snippet)
			// The service says it is down or overloaded: an outage, waited
			// out by the writer without spending the delivery budget.
			switch status {
			case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
				fail = errs.Unavailable(fail)
			}
		default:
			c.err = errs.Permanent(fmt.Errorf("%s %s → %d: %s", c.method, c.show, status, snippet))
			t.log.Warn("http target rejected a change", "target", t.spec.Target,
				"method", c.method, "url", c.show, "status", status)
			return nil
		}
		if attempt >= t.spec.MaxAttempts {
			return fmt.Errorf("after %d attempts: %w", attempt, fail)
		}
		delay := bo.NextBackOff()
		if retryAfter > delay {
			delay = retryAfter
		}
		t.log.Debug("http target retrying", "target", t.spec.Target, "method", c.method, "url", c.show,
			"attempt", attempt, "delay", delay, "error", fail.Error())
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return context.Cause(ctx)
		case <-timer.C:
		}
	}
}

// do makes one attempt. It returns the status, the Retry-After delay (0 if
// none), the first errBodyBytes of the response body, or a network error.
func (t *Target) do(ctx context.Context, c *call) (status int, retryAfter time.Duration, snippet string, err error) {
	rctx, cancel := context.WithTimeout(ctx, t.spec.Timeout)
	defer cancel()
	var rd io.Reader
	if c.body != nil {
		rd = bytes.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(rctx, c.method, c.url, rd)
	if err != nil {
		return 0, 0, "", err
	}
	req.Header.Set("User-Agent", "oneway-writer")
	for k, v := range t.spec.Headers {
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	if c.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Idempotency-Key", c.idem)
	resp, err := t.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// *url.Error repeats the whole URL, query string included.
			err = ue.Err
		}
		return 0, 0, "", err
	}
	defer resp.Body.Close()
	head, err := io.ReadAll(io.LimitReader(resp.Body, errBodyBytes))
	if err != nil {
		return 0, 0, "", err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBytes))
	return resp.StatusCode, parseRetryAfter(resp.Header.Get("Retry-After"), t.now()),
		strings.TrimSpace(strings.ToValidUTF8(string(head), "\uFFFD")), nil
}

// parseRetryAfter reads a Retry-After header: delta-seconds or an HTTP-date,
// capped at maxRetryAfter; 0 when absent, invalid or past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		d = time.Duration(n) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		d = at.Sub(now)
	}
	return max(0, min(d, maxRetryAfter))
}

// unavailable reports whether a network error means the API is down or
// unreachable: connection refused, DNS failure, timeout.
func unavailable(err error) bool {
	var dns *net.DNSError
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.As(err, &dns), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, context.DeadlineExceeded):
		return true
	case errors.As(err, &op) && op.Op == "dial":
		return true
	case errors.As(err, &ne) && ne.Timeout():
		return true
	}
	return false
}
