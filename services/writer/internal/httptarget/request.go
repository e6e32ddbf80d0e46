package httptarget

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
)

// call is one change's request and, after run, its outcome.
type call struct {
	ref    int // index into Apply's refs
	method string
	url    string // as sent
	show   string // for errors and logs: no user info, query or fragment
	idem   string // Idempotency-Key
	body   []byte // nil for a delete
	del    bool
	hash   []byte // recorded in the ledger on success

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

// ---- bodies ----------------------------------------------------------------

type kind int

const (
	kString kind = iota
	kNumber
	kBool
	kJSON
)

// kindOf maps a column type, as the source's catalog spells it, to its JSON
// form. Arrays and everything not listed are strings.
func kindOf(typ string) kind {
	t := strings.ToLower(strings.TrimSpace(typ))
	if strings.HasSuffix(t, "]") {
		return kString
	}
	if i := strings.IndexByte(t, '('); i >= 0 {
		t = strings.TrimSpace(t[:i])
	}
	switch t {
	case "smallint", "integer", "bigint", "int", "int2", "int4", "int8",
		"numeric", "decimal", "real", "double precision", "float4", "float8":
		return kNumber
	case "boolean", "bool":
		return kBool
	case "json", "jsonb":
		return kJSON
	}
	return kString
}

var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// rawJSON is a json/jsonb value: embedded as is in a body, printed as text
// in a URL template.
type rawJSON []byte

func (r rawJSON) MarshalJSON() ([]byte, error) { return r, nil }
func (r rawJSON) String() string               { return string(r) }

// typed converts one text value (nil = NULL) to its JSON form. Values that do
// not fit their type's form (NaN, Infinity, a malformed boolean or JSON)
// stay strings rather than fail.
func typed(typ string, v []byte) any {
	if v == nil {
		return nil
	}
	switch kindOf(typ) {
	case kNumber:
		if jsonNumber.Match(v) {
			return json.Number(v) // the text itself: no float rounding
		}
	case kBool:
		switch string(v) {
		case "t", "true":
			return true
		case "f", "false":
			return false
		}
	case kJSON:
		if json.Valid(v) {
			return rawJSON(bytes.Clone(v))
		}
	}
	return string(v)
}

// body is the JSON object of an upsert: every owned column, in column order.
func body(cols []*onewayv1.Column, vals [][]byte) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	put := func(v any) error {
		if err := enc.Encode(v); err != nil {
			return err
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		return nil
	}
	buf.WriteByte('{')
	for i, c := range cols {
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := put(c.GetName()); err != nil {
			return nil, err
		}
		buf.WriteByte(':')
		if err := put(typed(c.GetType(), vals[i])); err != nil {
			return nil, fmt.Errorf("column %q: %w", c.GetName(), err)
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func sortFailures(f []target.Failure) {
	sort.SliceStable(f, func(i, j int) bool { return f[i].Key < f[j].Key })
}
