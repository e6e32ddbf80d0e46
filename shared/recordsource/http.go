package recordsource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
)

// Header is one HTTP header sent with every request. Its value is a
// secret: it is never logged nor put in an error.
type Header struct {
	Name, Value string
}

// HTTPOptions describe an HTTP JSON API collection.
type HTTPOptions struct {
	// URL is the collection: GET URL lists it.
	URL     string
	Headers []Header
	// Timeout bounds one request, body included.
	Timeout time.Duration
	// MaxAttempts bounds the tries of one request on 429, 5xx and network
	// errors.
	MaxAttempts int
	// PageSize is sent in LimitParam.
	PageSize int
	// RecordsField holds a page's records; NextTokenField the next page's
	// token (absent, null or "" on the last page), which the next request
	// sends in PageTokenParam.
	RecordsField, NextTokenField, PageTokenParam, LimitParam string
	// ModifiedSinceParam carries the watermark of ListSince (RFC 3339).
	ModifiedSinceParam string
	// Client sends the requests (nil = a client of its own).
	Client *http.Client
	// InitialBackoff is the first wait between attempts without a
	// Retry-After (0 = 200ms); the waits grow to 30s.
	InitialBackoff time.Duration
}

// HTTP lists the records of an HTTP JSON API collection, page by page:
// GET URL?limit=N[&page_token=T][&modified_since=M] returns a JSON object
// whose RecordsField is an array of objects (one field per column) and
// whose NextTokenField is the next page's token. A 429 or 5xx answer and
// network errors are retried (waiting what Retry-After says, else an
// exponential backoff), up to MaxAttempts per request; other 4xx answers
// are permanent errors.
type HTTP struct {
	o    HTTPOptions
	base *url.URL
	what string // the URL without query or credentials, for errors
	dec  *Decoder
	cl   *http.Client
	log  *slog.Logger
}

var _ SinceLister = (*HTTP)(nil)

// maxRetryAfter caps a Retry-After wait.
const maxRetryAfter = 10 * time.Minute

// maxPageBytes caps a page's body.
const maxPageBytes = 256 << 20

// NewHTTP returns the lister of the collection at o.URL.
func NewHTTP(o HTTPOptions, dec *Decoder, log *slog.Logger) (*HTTP, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errs.Permanentf("http source: the URL is not an http:// or https:// URL")
	}
	what := u.Scheme + "://" + u.Host + u.Path
	if o.MaxAttempts < 1 {
		o.MaxAttempts = 1
	}
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = 200 * time.Millisecond
	}
	cl := o.Client
	if cl == nil {
		cl = &http.Client{}
	}
	return &HTTP{o: o, base: u, what: what, dec: dec, cl: cl, log: log}, nil
}

// List implements Lister: the full listing.
func (h *HTTP) List(ctx context.Context, emit func(row source.Row, where string) error) error {
	return h.list(ctx, "", emit)
}

// ListSince implements SinceLister: the records modified at or after
// mark.
func (h *HTTP) ListSince(ctx context.Context, mark string, emit func(row source.Row, where string) error) error {
	t, err := parseTime(mark)
	if err != nil {
		return errs.Permanent(fmt.Errorf("http source %s: watermark: %w", h.what, err))
	}
	return h.list(ctx, t.Format(time.RFC3339Nano), emit)
}

func (h *HTTP) list(ctx context.Context, since string, emit func(source.Row, string) error) error {
	token := ""
	for page := 1; ; page++ {
		q := h.base.Query()
		q.Set(h.o.LimitParam, strconv.Itoa(h.o.PageSize))
		if token != "" {
			q.Set(h.o.PageTokenParam, token)
		}
		if since != "" {
			q.Set(h.o.ModifiedSinceParam, since)
		}
		u := *h.base
		u.RawQuery = q.Encode()
		records, next, err := h.page(ctx, u.String(), page)
		if err != nil {
			return err
		}
		for i, rec := range records {
			where := fmt.Sprintf("GET %s page %d record %d", h.what, page, i+1)
			row, err := h.dec.JSON(rec)
			if err != nil {
				return errs.Permanent(fmt.Errorf("http source %s: %w", where, err))
			}
			if err := emit(row, where); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		if next == token {
			return errs.Permanentf("http source %s: page %d gives its own token as the next page's (%s): the API would be listed forever", h.what, page, h.o.NextTokenField)
		}
		token = next
	}
}

// page gets one page, retrying.
func (h *HTTP) page(ctx context.Context, u string, page int) ([]json.RawMessage, string, error) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = h.o.InitialBackoff
	b.MaxInterval = 30 * time.Second
	b.MaxElapsedTime = 0
	b.Reset()
	for attempt := 1; ; attempt++ {
		records, next, retryAfter, err := h.get(ctx, u, page)
		if err == nil {
			return records, next, nil
		}
		if errs.IsPermanent(err) || ctx.Err() != nil {
			if ctx.Err() != nil {
				return nil, "", errors.Join(err, ctx.Err())
			}
			return nil, "", err
		}
		if attempt >= h.o.MaxAttempts {
			// The API is down or throttling: the pattern waits it out
			// (with its own backoff) rather than giving up.
			return nil, "", errs.Unavailable(fmt.Errorf("%w (after %d attempts)", err, attempt))
		}
		wait := b.NextBackOff()
		if retryAfter > 0 {
			wait = retryAfter
		}
		h.log.Warn("http source request failed; retrying", "url", h.what, "page", page, "attempt", attempt, "wait", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, "", errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
}

// get runs one request; retryAfter is what a 429 or 5xx answer asked to
// wait (0 when it did not say).
func (h *HTTP) get(ctx context.Context, u string, page int) (records []json.RawMessage, next string, retryAfter time.Duration, err error) {
	if h.o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.o.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", 0, errs.Permanent(fmt.Errorf("http source %s: %w", h.what, err))
	}
	req.Header.Set("Accept", "application/json")
	for _, hd := range h.o.Headers {
		req.Header.Set(hd.Name, hd.Value)
	}
	resp, err := h.cl.Do(req)
	if err != nil {
		// The error names the URL with its query, which holds no secret
		// (the headers do).
		return nil, "", 0, fmt.Errorf("http source GET %s page %d: %w", h.what, page, stripURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		err := fmt.Errorf("http source GET %s page %d: %s: %s", h.what, page, resp.Status, strings.TrimSpace(string(msg)))
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
			return nil, "", parseRetryAfter(resp.Header.Get("Retry-After")), err
		}
		return nil, "", 0, errs.Permanent(err)
	}
	var body map[string]json.RawMessage
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxPageBytes))
	if err := dec.Decode(&body); err != nil {
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		if errors.As(err, &syntax) || errors.As(err, &typ) {
			return nil, "", 0, errs.Permanent(fmt.Errorf("http source GET %s page %d: the body is not a JSON object: %w", h.what, page, err))
		}
		// Cut short (a reset connection, the timeout): try again.
		return nil, "", 0, fmt.Errorf("http source GET %s page %d: read the body: %w", h.what, page, err)
	}
	raw, ok := body[h.o.RecordsField]
	if !ok {
		return nil, "", 0, errs.Permanentf("http source GET %s page %d: the body has no field %q (source.http.records_field)", h.what, page, h.o.RecordsField)
	}
	if err := json.Unmarshal(raw, &records); err != nil {
		return nil, "", 0, errs.Permanent(fmt.Errorf("http source GET %s page %d: field %q is not an array: %w", h.what, page, h.o.RecordsField, err))
	}
	if tok, ok := body[h.o.NextTokenField]; ok && string(tok) != "null" {
		var s string
		if err := json.Unmarshal(tok, &s); err != nil {
			s = strings.TrimSpace(string(tok)) // a number
		}
		next = s
	}
	return records, next, 0, nil
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && n >= 0 && !math.IsInf(n, 0) {
		d = time.Duration(n * float64(time.Second))
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return min(max(d, 0), maxRetryAfter)
}

// stripURL drops the URL from a client error (url.Error), keeping its
// cause: the caller names the URL without its query.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
