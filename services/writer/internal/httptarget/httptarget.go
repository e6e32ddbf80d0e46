// Package httptarget applies change batches to an HTTP REST API,
// effect-once.
//
// An API cannot compare versions in a transaction, so the fencing ledger
// lives in PostgreSQL next to the writer (package sideledger): one table
// per target, <ledger_schema>.http_ledger_<scope>, keyed by the record key
// as event.Key renders it and holding the last applied version and content
// hash of each key. Apply locks the ledger rows of its keys (SELECT … FOR
// UPDATE, in key order) and keeps them locked while the requests for those
// keys are in flight, then advances them and commits. Two writers racing on
// one key therefore serialise: the second sees the first's version and
// skips an older or equal change, so scale-out never reorders a key.
//
// A change is sent only when its version is newer than the ledger's and its
// content hash differs from what was last applied; a newer change with the
// same content only advances the ledger. Each request carries an
// Idempotency-Key derived from (pipeline, target, key, version): when the
// ledger transaction is lost after a request succeeded (crash, commit
// failure, a sibling request exhausting its retries), the redelivered change
// is sent again with the same key, so an API that honours Idempotency-Key
// sees it once.
//
// While requests are in flight the ledger transaction is idle: a
// idle_in_transaction_session_timeout on the ledger database must exceed
// Timeout × MaxAttempts plus the backoff between attempts.
package httptarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/sideledger"
	"github.com/oneway-sync/oneway/services/writer/internal/sideledger/changejson"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// DeleteNone as Spec.DeleteMethod means deletes are not sent: the ledger
// records them (so a later re-insert with old content is sent again) and
// the API keeps the record.
const DeleteNone = "none"

const (
	defaultTimeout      = 10 * time.Second
	defaultAttempts     = 5
	maxRetryAfter       = 60 * time.Second
	errBodyBytes        = 200      // response bytes quoted in a permanent error
	drainBytes          = 64 << 10 // response bytes read to keep the connection
	defaultInitialDelay = 100 * time.Millisecond
	defaultMaxDelay     = 10 * time.Second
)

// Spec configures a Target.
type Spec struct {
	Pipeline, Target string
	// URL is a text/template rendered per change with .Key (string: the
	// record key as event.Key renders it), .KeyParts ([]string, the key
	// column values), .Fields (map[string]any, the owned values typed as in
	// the body; for a delete only the key columns are set) and .Op
	// ("upsert" or "delete"). Escape values yourself: "path"
	// (url.PathEscape) and "query" (url.QueryEscape), which take any value
	// (NULL prints empty), and the built-in "urlquery" are available, e.g.
	// https://api/items/{{.Key | path}}.
	URL          string
	UpsertMethod string // default "PUT"
	// DeleteMethod defaults to "DELETE"; DeleteNone ("none") means deletes
	// are not sent.
	DeleteMethod string
	Headers      map[string]string // static headers, e.g. Authorization (never logged)
	Timeout      time.Duration     // per request, default 10s
	MaxAttempts  int               // attempts per request on 429/5xx/network errors, default 5
	RateLimit    float64           // requests per second for this Target (all goroutines), 0 = unlimited
	Concurrency  int               // requests in flight per Apply call, default 1
	Ledger       *pgxpool.Pool     // PostgreSQL holding the fencing ledger
	LedgerSchema string            // default "oneway"
	Client       *http.Client      // default: a client with Timeout
}

// Target applies batches to one API endpoint. Safe for concurrent use.
type Target struct {
	spec         Spec
	log          *slog.Logger
	url          *template.Template
	deleteMethod string // "" = deletes are not sent
	client       *http.Client
	bucket       *bucket // nil = unlimited
	ledger       *sideledger.Ledger

	// Backoff between attempts (tests shorten them).
	initialDelay, maxDelay time.Duration
	now                    func() time.Time
}

var _ target.Writer = (*Target)(nil)

// Open checks spec, registers this target in the ledger catalog,
// <ledger_schema>.ledger_scopes (table_name "http:" + URL template), creates
// its ledger table and returns a Target.
func Open(ctx context.Context, spec Spec, log *slog.Logger) (*Target, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if spec.Ledger == nil {
		return nil, errs.Permanentf("http target %q: no ledger database", spec.Target)
	}
	if spec.URL == "" {
		return nil, errs.Permanentf("http target %q: no URL", spec.Target)
	}
	if spec.UpsertMethod == "" {
		spec.UpsertMethod = http.MethodPut
	}
	if spec.DeleteMethod == "" {
		spec.DeleteMethod = http.MethodDelete
	}
	if spec.Timeout <= 0 {
		spec.Timeout = defaultTimeout
	}
	if spec.MaxAttempts <= 0 {
		spec.MaxAttempts = defaultAttempts
	}
	if spec.Concurrency <= 0 {
		spec.Concurrency = 1
	}
	if spec.RateLimit < 0 {
		return nil, errs.Permanentf("http target %q: negative rate limit %v", spec.Target, spec.RateLimit)
	}
	if spec.LedgerSchema == "" {
		spec.LedgerSchema = sideledger.DefaultSchema
	}
	tmpl, err := template.New("url").
		Funcs(template.FuncMap{
			"path":  func(v any) string { return url.PathEscape(text(v)) },
			"query": func(v any) string { return url.QueryEscape(text(v)) },
		}).
		Option("missingkey=error").
		Parse(spec.URL)
	if err != nil {
		return nil, errs.Permanentf("http target %q: URL template: %w", spec.Target, err)
	}
	t := &Target{
		spec: spec, log: log, url: tmpl, client: spec.Client,
		initialDelay: defaultInitialDelay, maxDelay: defaultMaxDelay, now: time.Now,
	}
	if !strings.EqualFold(spec.DeleteMethod, DeleteNone) {
		t.deleteMethod = spec.DeleteMethod
	}
	for _, m := range []string{spec.UpsertMethod, t.deleteMethod} {
		if m == "" {
			continue
		}
		if _, err := http.NewRequest(m, "http://localhost/", nil); err != nil {
			return nil, errs.Permanentf("http target %q: invalid method %q", spec.Target, m)
		}
	}
	if t.client == nil {
		t.client = &http.Client{Timeout: spec.Timeout, CheckRedirect: sameMethodRedirect}
	}
	if spec.RateLimit > 0 {
		t.bucket = newBucket(spec.RateLimit, 1, time.Now)
	}
	// Ledger table http_ledger_<scope>, scope "http:" + URL template: the
	// names this target has always used.
	t.ledger, err = sideledger.Open(ctx, sideledger.Spec{
		Pipeline: spec.Pipeline, Target: spec.Target, Kind: "http", Sink: spec.URL,
		Describe: "HTTP endpoint " + redact(spec.URL), Pool: spec.Ledger, Schema: spec.LedgerSchema,
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Ledger is this target's ledger table.
func (t *Target) Ledger() pgconn.Table { return t.ledger.Table() }

// Scope is this target's id in the ledger catalog.
func (t *Target) Scope() int32 { return t.ledger.Scope() }

// sameMethodRedirect follows redirects that keep the method (307, 308) and
// stops at those that would turn a PUT into a GET (301, 302, 303): the 3xx
// is then a permanent rejection instead of a false success.
func sameMethodRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.Method != via[0].Method {
		return http.ErrUseLastResponse
	}
	return nil
}

// Apply sends the items' changes, fenced by the ledger, in one ledger
// transaction. Items must share one column layout. A change the API rejects
// for good (a 4xx other than 429 and 408, or a 3xx; or a change whose URL or
// body cannot be built) comes back in Result.Failed with its ledger row
// unchanged; a request that still fails after MaxAttempts (429, 408, 5xx,
// network errors) fails the whole call and nothing is recorded (requests
// already answered will be sent again, with the same Idempotency-Key).
func (t *Target) Apply(ctx context.Context, items []target.Item) (target.Result, error) {
	return t.ledger.Apply(ctx, items, t.sendBatch)
}

// sendBatch builds the requests of the changes the ledger let through and
// makes them, Concurrency at a time, while the ledger holds their keys.
func (t *Target) sendBatch(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
	outs := make([]sideledger.Outcome, len(b.Decisions))
	calls := make([]call, 0, len(b.Decisions))
	for i, d := range b.Decisions {
		if d.Delete && t.deleteMethod == "" {
			outs[i].Skipped = true // recorded, not sent
			continue
		}
		c, err := t.build(b.Columns, b.KeyIdx, d)
		if err != nil {
			outs[i].Err = err
			continue
		}
		c.ref = i
		calls = append(calls, c)
	}
	if err := t.run(ctx, calls); err != nil {
		return nil, err
	}
	for _, c := range calls {
		outs[c.ref].Err = c.err
	}
	return outs, nil
}

// build renders the request of one change.
func (t *Target) build(cols []*onewayv1.Column, keyIdx []int, d sideledger.Decision) (call, error) {
	vals, del := d.Values, d.Delete
	if len(vals) != len(cols) {
		return call{}, errs.Permanentf("change has %d values for %d columns", len(vals), len(cols))
	}
	op, method := "upsert", t.spec.UpsertMethod
	if del {
		op, method = "delete", t.deleteMethod
	}
	var sb strings.Builder
	data := urlData{Key: d.Key, KeyParts: changejson.KeyParts(vals, keyIdx), Fields: changejson.Fields(cols, vals, del), Op: op}
	if err := t.url.Execute(&sb, data); err != nil {
		return call{}, errs.Permanentf("render URL of key %s: %w", d.Key, err)
	}
	u, err := url.Parse(sb.String())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return call{}, errs.Permanentf("render URL of key %s: %q is not an absolute http(s) URL", d.Key, redact(sb.String()))
	}
	c := call{method: method, url: u.String(), show: redactURL(u), del: del, idem: t.ledger.IdempotencyKey(d.Key, d.Version)}
	if !del {
		if c.body, err = changejson.Object(cols, vals); err != nil {
			return call{}, errs.Permanentf("encode body of key %s: %w", d.Key, err)
		}
	}
	return c, nil
}

// urlData is what the URL template sees.
type urlData struct {
	Key      string
	KeyParts []string
	Fields   map[string]any
	Op       string
}

// redactURL drops what may hold secrets from a URL shown in errors and
// logs: user info, query and fragment.
func redactURL(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.ForceQuery, c.Fragment, c.RawFragment = nil, "", false, "", ""
	return c.String()
}

// redact is redactURL for text that may not parse.
func redact(s string) string {
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	if u, err := url.Parse(s); err == nil {
		return redactURL(u)
	}
	return s
}

// text prints a template value: NULL is empty, json.Number its digits.
func text(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}
