// Package httptarget applies change batches to an HTTP REST API,
// effect-once.
//
// An API cannot compare versions in a transaction, so the fencing ledger
// lives in PostgreSQL next to the writer: one table per target,
// <ledger_schema>.http_ledger_<scope>, keyed by the record key as event.Key
// renders it and holding the last applied version and content hash of each
// key. Apply locks the ledger rows of its keys (SELECT … FOR UPDATE, in key
// order) and keeps them locked while the requests for those keys are in
// flight, then advances them and commits. Two writers racing on one key
// therefore serialise: the second sees the first's version and skips an
// older or equal change, so scale-out never reorders a key.
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
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// DeleteNone as Spec.DeleteMethod means deletes are not sent: the ledger
// records them (so a later re-insert with old content is sent again) and
// the API keeps the record.
const DeleteNone = "none"

const (
	defaultTimeout      = 10 * time.Second
	defaultAttempts     = 5
	defaultSchema       = "oneway"
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
	scope        int32
	ledger       pgconn.Table

	placeSQL, lockSQL, advanceSQL string

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
		spec.LedgerSchema = defaultSchema
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

	ls := pgconn.Quote(spec.LedgerSchema)
	err = pgx.BeginFunc(ctx, spec.Ledger, func(tx pgx.Tx) error {
		// Writers of several targets may start at once; DDL races otherwise.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('oneway.ledger.ddl'))"); err != nil {
			return err
		}
		stmts := []string{
			"CREATE SCHEMA IF NOT EXISTS " + ls,
			`CREATE TABLE IF NOT EXISTS ` + ls + `.ledger_scopes (
  id serial PRIMARY KEY, pipeline text NOT NULL, target text NOT NULL, table_name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (pipeline, target, table_name))`,
			"COMMENT ON TABLE " + ls + `.ledger_scopes IS 'oneway: one row per (pipeline, target, table); its ledger is ledger_<id>'`,
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		if err := tx.QueryRow(ctx, `
INSERT INTO `+ls+`.ledger_scopes (pipeline, target, table_name) VALUES ($1, $2, $3)
ON CONFLICT (pipeline, target, table_name) DO UPDATE SET pipeline = excluded.pipeline
RETURNING id`, spec.Pipeline, spec.Target, "http:"+spec.URL).Scan(&t.scope); err != nil {
			return err
		}
		t.ledger = pgconn.Table{Schema: spec.LedgerSchema, Name: fmt.Sprintf("http_ledger_%d", t.scope)}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+t.ledger.Quoted()+` (
  key text COLLATE "C" PRIMARY KEY, oneway_version bigint NOT NULL, oneway_hash bytea NOT NULL,
  oneway_applies int NOT NULL DEFAULT 0, oneway_applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "COMMENT ON TABLE "+t.ledger.Quoted()+" IS "+quoteLiteral(fmt.Sprintf(
			"oneway effect-once ledger of pipeline %s, target %s, HTTP endpoint %s", spec.Pipeline, spec.Target, redact(spec.URL))))
		return err
	})
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("prepare HTTP ledger in schema %s: %w", spec.LedgerSchema, err))
	}
	led := t.ledger.Quoted()
	t.placeSQL = `INSERT INTO ` + led + ` (key, oneway_version, oneway_hash)
SELECT k, -1, '' FROM unnest($1::text[]) AS u(k) ORDER BY k COLLATE "C"
ON CONFLICT (key) DO NOTHING`
	t.lockSQL = `SELECT key, oneway_version, oneway_hash FROM ` + led + `
WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE`
	t.advanceSQL = `UPDATE ` + led + ` AS l
SET oneway_version = u.v, oneway_hash = u.h, oneway_applies = l.oneway_applies + u.n,
    oneway_applied_at = CASE WHEN u.n > 0 THEN now() ELSE l.oneway_applied_at END
FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::int4[]) AS u(k, v, h, n)
WHERE l.key = u.k AND l.oneway_version < u.v`
	return t, nil
}

// Ledger is this target's ledger table.
func (t *Target) Ledger() pgconn.Table { return t.ledger }

// Scope is this target's id in the ledger catalog.
func (t *Target) Scope() int32 { return t.scope }

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

// ledgerRow is a key's state in the ledger.
type ledgerRow struct {
	version int64
	hash    []byte
}

// Apply sends the items' changes, fenced by the ledger, in one ledger
// transaction. Items must share one column layout. A change the API rejects
// for good (a 4xx other than 429 and 408, or a 3xx; or a change whose URL or
// body cannot be built) comes back in Result.Failed with its ledger row
// unchanged; a request that still fails after MaxAttempts (429, 408, 5xx,
// network errors) fails the whole call and nothing is recorded (requests
// already answered will be sent again, with the same Idempotency-Key).
func (t *Target) Apply(ctx context.Context, items []target.Item) (target.Result, error) {
	if len(items) == 0 {
		return target.Result{}, nil
	}
	first := items[0].Batch
	for _, it := range items {
		if len(it.Batch.GetChanges()) >= 1<<20 {
			return target.Result{}, errs.Permanentf("batch of %d changes exceeds 2^20", len(it.Batch.GetChanges()))
		}
		if !target.SameLayout(first, it.Batch) {
			return target.Result{}, fmt.Errorf("apply: items with different column layouts (%s)", first.GetTable())
		}
	}
	keyIdx := event.KeyIndexes(first)
	if len(keyIdx) == 0 {
		return target.Result{}, errs.Permanentf("apply: batch of %s has no key column", first.GetTable())
	}
	refs := target.Collapse(items, keyIdx)
	res := target.Result{Changes: len(refs)}
	if len(refs) == 0 {
		return res, nil
	}
	keys := make([]string, len(refs))
	for i, r := range refs {
		keys[i] = r.Key
	}

	tx, err := t.spec.Ledger.Begin(ctx)
	if err != nil {
		return target.Result{}, t.ledgerErr(ctx, "begin", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx) // no-op after Commit
	}()
	if _, err := tx.Exec(ctx, t.placeSQL, keys); err != nil {
		return target.Result{}, t.ledgerErr(ctx, "insert keys into", err)
	}
	rows, err := tx.Query(ctx, t.lockSQL, keys)
	if err != nil {
		return target.Result{}, t.ledgerErr(ctx, "lock keys in", err)
	}
	have := make(map[string]ledgerRow, len(keys))
	var (
		k   string
		row ledgerRow
	)
	_, err = pgx.ForEachRow(rows, []any{&k, &row.version, &row.hash}, func() error {
		have[k] = ledgerRow{version: row.version, hash: append([]byte(nil), row.hash...)}
		return nil
	})
	if err != nil {
		return target.Result{}, t.ledgerErr(ctx, "lock keys in", err)
	}

	// Decide per change, build the requests of those to send.
	var (
		calls       []call
		advKeys     []string
		advVersions []int64
		advHashes   [][]byte
		advApplies  []int32
		vals        [][]byte
	)
	advance := func(r target.Ref, h []byte, applied bool) {
		advKeys = append(advKeys, r.Key)
		advVersions = append(advVersions, r.Version)
		advHashes = append(advHashes, h)
		n := int32(0)
		if applied {
			n = 1
		}
		advApplies = append(advApplies, n)
	}
	cols := first.GetColumns()
	for i, r := range refs {
		led, ok := have[r.Key]
		if !ok {
			// The placeholder insert guarantees a row; its absence is a bug.
			return target.Result{}, fmt.Errorf("ledger %s: key %q missing after insert", t.ledger, r.Key)
		}
		if r.Version <= led.version {
			continue // stale: a newer change was applied
		}
		del := r.Change.GetOp() == onewayv1.Op_OP_DELETE
		h := []byte{} // a tombstone: distinct from any content hash
		if !del {
			if h = r.Change.GetHash(); len(h) == 0 {
				h = event.RowHash(r.Change.GetRow())
			}
		}
		// A placeholder (version -1) has never been applied: even a delete
		// is sent, the API may hold the record from before oneway.
		if led.version >= 0 && bytes.Equal(led.hash, h) {
			res.Newer++
			advance(r, h, false)
			continue
		}
		if del && t.deleteMethod == "" {
			res.Newer++
			advance(r, h, false)
			continue
		}
		if vals, err = event.Row(r.Change.GetRow(), vals); err != nil {
			res.Failed = append(res.Failed, target.Failure{Item: r.Item, Index: r.Index, Key: r.Key, Err: err})
			continue
		}
		c, err := t.build(cols, keyIdx, r, vals, del)
		if err != nil {
			res.Failed = append(res.Failed, target.Failure{Item: r.Item, Index: r.Index, Key: r.Key, Err: err})
			continue
		}
		c.ref, c.hash = i, h
		calls = append(calls, c)
	}

	if err := t.run(ctx, calls); err != nil {
		if ctx.Err() != nil {
			return target.Result{}, fmt.Errorf("apply %d changes to %s: %w", len(refs), t.spec.Target, ctx.Err())
		}
		return target.Result{}, fmt.Errorf("apply %d changes to %s: %w", len(refs), t.spec.Target, err)
	}
	for i := range calls {
		c := &calls[i]
		r := refs[c.ref]
		if c.err != nil {
			res.Failed = append(res.Failed, target.Failure{Item: r.Item, Index: r.Index, Key: r.Key, Err: c.err})
			continue
		}
		res.Newer++
		if c.del {
			res.Deleted++
		} else {
			res.Written++
		}
		advance(r, c.hash, true)
	}
	if len(advKeys) > 0 {
		if _, err := tx.Exec(ctx, t.advanceSQL, advKeys, advVersions, advHashes, advApplies); err != nil {
			return target.Result{}, t.ledgerErr(ctx, "advance", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return target.Result{}, t.ledgerErr(ctx, "commit", err)
	}
	if len(res.Failed) > 1 {
		// Failures from building and from sending: report them in key order.
		sortFailures(res.Failed)
	}
	return res, nil
}

func (t *Target) ledgerErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s ledger %s: %w", what, t.ledger, ctx.Err())
	}
	return pgconn.Classify(fmt.Errorf("%s ledger %s: %w", what, t.ledger, err))
}

// build renders the request of one change.
func (t *Target) build(cols []*onewayv1.Column, keyIdx []int, r target.Ref, vals [][]byte, del bool) (call, error) {
	if len(vals) != len(cols) {
		return call{}, errs.Permanentf("change has %d values for %d columns", len(vals), len(cols))
	}
	isKey := make(map[int]bool, len(keyIdx))
	parts := make([]string, len(keyIdx))
	for i, k := range keyIdx {
		isKey[k] = true
		parts[i] = string(vals[k])
	}
	fields := make(map[string]any, len(cols))
	for i, c := range cols {
		if del && !isKey[i] {
			continue
		}
		fields[c.GetName()] = typed(c.GetType(), vals[i])
	}
	op, method := "upsert", t.spec.UpsertMethod
	if del {
		op, method = "delete", t.deleteMethod
	}
	var sb strings.Builder
	if err := t.url.Execute(&sb, urlData{Key: r.Key, KeyParts: parts, Fields: fields, Op: op}); err != nil {
		return call{}, errs.Permanentf("render URL of key %s: %w", r.Key, err)
	}
	u, err := url.Parse(sb.String())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return call{}, errs.Permanentf("render URL of key %s: %q is not an absolute http(s) URL", r.Key, redact(sb.String()))
	}
	c := call{method: method, url: u.String(), show: redactURL(u), del: del, idem: t.idempotencyKey(r)}
	if !del {
		if c.body, err = body(cols, vals); err != nil {
			return call{}, errs.Permanentf("encode body of key %s: %w", r.Key, err)
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

// idempotencyKey is the first 32 hex digits of sha256(pipeline, target, key,
// version): the same change gets the same key on every delivery.
func (t *Target) idempotencyKey(r target.Ref) string {
	h := sha256.New()
	h.Write([]byte(t.spec.Pipeline + "\x00" + t.spec.Target + "\x00" + r.Key + "\x00" + strconv.FormatInt(r.Version, 10)))
	return hex.EncodeToString(h.Sum(nil))[:32]
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

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
