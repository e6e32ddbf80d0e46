package httptarget

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/services/writer/internal/target/targettest"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// ---- helpers ---------------------------------------------------------------

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newLedger creates a fresh database for the ledger and a pool on it.
func newLedger(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	return dbURL, openPool(t, dbURL)
}

func openPool(t *testing.T, dbURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgconn.Open(t.Context(), dbURL, "httptarget-test", 4)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func openTarget(t *testing.T, spec Spec) *Target {
	t.Helper()
	tg, err := Open(testCtx(t), spec, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open target: %v", err)
	}
	return tg
}

// simpleCols is the layout most tests use: (id integer key, name text).
var simpleCols = []*onewayv1.Column{
	{Name: "id", Type: "integer", Key: true},
	{Name: "name", Type: "text"},
}

// Change builders shared by the target tests.
var (
	packVals = targettest.PackVals
	up       = targettest.Up
	delOf    = targettest.DelOf
)

func del(key string) *onewayv1.Change { return delOf(len(simpleCols), key) }

func itemOf(seq uint64, cols []*onewayv1.Column, changes ...*onewayv1.Change) target.Item {
	return target.Item{Seq: seq, Batch: &onewayv1.Batch{
		SchemaVersion: event.SchemaVersion, Pipeline: "p", Origin: "source",
		Pattern: onewayv1.CapturePattern_CAPTURE_PATTERN_CDC, Table: "public.items",
		Columns: cols, Changes: changes,
	}}
}

func item(seq uint64, changes ...*onewayv1.Change) target.Item {
	return itemOf(seq, simpleCols, changes...)
}

// idemKey computes the Idempotency-Key independently of the code under test.
func idemKey(pipeline, tgt, key string, version int64) string {
	sum := sha256.Sum256([]byte(pipeline + "\x00" + tgt + "\x00" + key + "\x00" + strconv.FormatInt(version, 10)))
	return hex.EncodeToString(sum[:])[:32]
}

// readLedger reads a key's ledger row; found is false when there is none.
func readLedger(t *testing.T, pool *pgxpool.Pool, tg *Target, key string) (version int64, applies int, found bool) {
	t.Helper()
	err := pool.QueryRow(testCtx(t), "SELECT oneway_version, oneway_applies FROM "+tg.Ledger().Quoted()+" WHERE key = $1", key).
		Scan(&version, &applies)
	if err != nil {
		if strings.Contains(err.Error(), "no rows") {
			return 0, 0, false
		}
		t.Fatalf("read ledger: %v", err)
	}
	return version, applies, true
}

// ---- a fake API ------------------------------------------------------------

type apiRequest struct {
	Method, Path string // Path as escaped on the wire
	Query        url.Values
	Header       http.Header
	Body         string
}

// fakeAPI is a REST API keeping the last body per path. A DELETE of an
// absent path answers 404. fault, when set, may answer a request instead
// (it gets the how-many-th request with this Idempotency-Key it is).
type fakeAPI struct {
	*httptest.Server
	delay time.Duration
	fault func(w http.ResponseWriter, r *http.Request, attempt int) bool

	mu    sync.Mutex
	reqs  []apiRequest
	store map[string]string
	tries map[string]int // requests per Idempotency-Key
	oks   map[string]int // 2xx answers per Idempotency-Key
}

func newAPI(t *testing.T, delay time.Duration, fault func(http.ResponseWriter, *http.Request, int) bool) *fakeAPI {
	a := &fakeAPI{delay: delay, fault: fault, store: map[string]string{}, tries: map[string]int{}, oks: map[string]int{}}
	a.Server = httptest.NewServer(a)
	t.Cleanup(a.Close)
	return a
}

func (a *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if a.delay > 0 {
		time.Sleep(a.delay) // the API's latency
	}
	idem := r.Header.Get("Idempotency-Key")
	a.mu.Lock()
	a.reqs = append(a.reqs, apiRequest{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.Query(), Header: r.Header.Clone(), Body: string(body)})
	a.tries[idem]++
	n := a.tries[idem]
	a.mu.Unlock()
	if a.fault != nil && a.fault(w, r, n) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch r.Method {
	case http.MethodPut, http.MethodPost:
		a.store[r.URL.Path] = string(body)
	case http.MethodDelete:
		if _, ok := a.store[r.URL.Path]; !ok {
			http.Error(w, "no such item", http.StatusNotFound)
			return
		}
		delete(a.store, r.URL.Path)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	a.oks[idem]++
	w.WriteHeader(http.StatusNoContent)
}

func (a *fakeAPI) requests() []apiRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]apiRequest(nil), a.reqs...)
}

func (a *fakeAPI) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.reqs)
}

func (a *fakeAPI) get(path string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, ok := a.store[path]
	return b, ok
}

// applied counts the 2xx answers to requests with this Idempotency-Key.
func (a *fakeAPI) applied(idem string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.oks[idem]
}

func spec(a *fakeAPI, pool *pgxpool.Pool) Spec {
	return Spec{Pipeline: "p", Target: "api", URL: a.URL + "/items/{{.Key | path}}", Ledger: pool}
}

func checkResult(t *testing.T, got, want target.Result) {
	t.Helper()
	got.Failed, want.Failed = nil, nil
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("result = %+v, want %+v", got, want)
	}
}

// ---- 1. requests -----------------------------------------------------------

// typedCols covers the JSON typing of every kind, under a composite key.
var typedCols = []*onewayv1.Column{
	{Name: "shop", Type: "text", Key: true},
	{Name: "id", Type: "integer", Key: true},
	{Name: "name", Type: "text"},
	{Name: "price", Type: "numeric(30,2)"},
	{Name: "qty", Type: "bigint"},
	{Name: "ratio", Type: "double precision"},
	{Name: "weird", Type: "numeric"},
	{Name: "active", Type: "boolean"},
	{Name: "archived", Type: "bool"},
	{Name: "note", Type: "text"},
	{Name: "meta", Type: "jsonb"},
	{Name: "at", Type: "timestamp with time zone"},
	{Name: "tags", Type: "integer[]"},
}

func TestRequests(t *testing.T) {
	_, pool := newLedger(t)
	const tmpl = "/shops/{{.Fields.shop | path}}/items/{{.Fields.id | path}}?op={{.Op}}&k={{.Key | urlquery}}&n={{index .KeyParts 1}}"
	full := up("a b/c", "7", `Tom <&> "Q"`, "12345678901234567890.12", "9007199254740993", "0.1", "NaN",
		"t", "false", nil, `{"a": [1, 2], "b": null}`, "2024-05-01 10:00:00+00", "{1,2}")
	const fullBody = `{"shop":"a b/c","id":7,"name":"Tom <&> \"Q\"","price":12345678901234567890.12,` +
		`"qty":9007199254740993,"ratio":0.1,"weird":"NaN","active":true,"archived":false,"note":null,` +
		`"meta":{"a":[1,2],"b":null},"at":"2024-05-01 10:00:00+00","tags":"{1,2}"}`
	const key = `["a b/c","7"]`
	type want struct {
		method, path, op, body string
		ctype                  string // Content-Type; "" = none
		version                int64
	}
	cases := []struct {
		name  string
		tweak func(*Spec)
		items []target.Item
		res   target.Result
		want  []want
	}{
		{
			name:  "upsert typed body",
			items: []target.Item{itemOf(3, typedCols, full)},
			res:   target.Result{Changes: 1, Newer: 1, Written: 1},
			want: []want{{method: "PUT", path: "/shops/a%20b%2Fc/items/7", op: "upsert", body: fullBody,
				ctype: "application/json", version: target.Version(3, 0)}},
		},
		{
			name:  "upsert by POST then delete",
			tweak: func(s *Spec) { s.UpsertMethod = "POST" },
			items: []target.Item{itemOf(3, typedCols, full), itemOf(4, typedCols, up("x", "1", nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil), delOf(len(typedCols), "a b/c", "7"))},
			res:   target.Result{Changes: 2, Newer: 2, Written: 1, Deleted: 1},
			want: []want{
				// Collapse orders by key: ["a b/c","7"] < ["x","1"].
				{method: "DELETE", path: "/shops/a%20b%2Fc/items/7", op: "delete", version: target.Version(4, 1)},
				{method: "POST", path: "/shops/x/items/1", op: "upsert", ctype: "application/json", version: target.Version(4, 0),
					body: `{"shop":"x","id":1,"name":null,"price":null,"qty":null,"ratio":null,"weird":null,"active":null,"archived":null,"note":null,"meta":null,"at":null,"tags":null}`},
			},
		},
		{
			name:  "deletes not sent",
			tweak: func(s *Spec) { s.DeleteMethod = DeleteNone },
			items: []target.Item{itemOf(5, typedCols, delOf(len(typedCols), "a b/c", "7"))},
			res:   target.Result{Changes: 1, Newer: 1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			api := newAPI(t, 0, nil)
			s := Spec{Pipeline: "p", Target: tc.name, URL: api.URL + tmpl, Ledger: pool,
				Headers: map[string]string{"Authorization": "Bearer s3cret", "X-Static": "yes"}}
			if tc.tweak != nil {
				tc.tweak(&s)
			}
			tg := openTarget(t, s)
			res, err := tg.Apply(testCtx(t), tc.items)
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			checkResult(t, res, tc.res)
			if len(res.Failed) != 0 {
				t.Fatalf("failed: %v", res.Failed)
			}
			reqs := api.requests()
			if len(reqs) != len(tc.want) {
				t.Fatalf("%d requests, want %d: %+v", len(reqs), len(tc.want), reqs)
			}
			for i, w := range tc.want {
				r := reqs[i]
				if r.Method != w.method || r.Path != w.path {
					t.Errorf("request %d: %s %s, want %s %s", i, r.Method, r.Path, w.method, w.path)
				}
				k := key
				if i == 1 {
					k = `["x","1"]`
				}
				if r.Query.Get("op") != w.op || r.Query.Get("k") != k || r.Query.Get("n") != strings.Split(strings.Trim(k, "[]\""), `","`)[1] {
					t.Errorf("request %d: query %v, want op=%s k=%s", i, r.Query, w.op, k)
				}
				if r.Body != w.body {
					t.Errorf("request %d: body\n %s\nwant\n %s", i, r.Body, w.body)
				}
				if got := r.Header.Get("Content-Type"); got != w.ctype {
					t.Errorf("request %d: Content-Type %q, want %q", i, got, w.ctype)
				}
				if got, want := r.Header.Get("Idempotency-Key"), idemKey("p", tc.name, k, w.version); got != want {
					t.Errorf("request %d: Idempotency-Key %q, want %q", i, got, want)
				}
				if r.Header.Get("Authorization") != "Bearer s3cret" || r.Header.Get("X-Static") != "yes" {
					t.Errorf("request %d: static headers missing: %v", i, r.Header)
				}
			}
			// Every change, sent or not, advanced its key's ledger row.
			for _, r := range target.Collapse(tc.items, event.KeyIndexes(tc.items[0].Batch)) {
				if v, _, ok := readLedger(t, pool, tg, r.Key); !ok || v != r.Version {
					t.Errorf("ledger of %s: version %d (found %v), want %d", r.Key, v, ok, r.Version)
				}
			}
		})
	}
}

// ---- 2. effect-once ---------------------------------------------------------

func TestEffectOnce(t *testing.T) {
	_, pool := newLedger(t)
	type step struct {
		items    []target.Item
		res      target.Result
		requests int    // requests this step makes
		body     string // the API's body of /items/1 after the step ("" = absent)
		version  int64  // ledger version of key 1 after the step
	}
	body := func(name string) string { return `{"id":1,"name":"` + name + `"}` }
	cases := []struct {
		name  string
		steps []step
	}{
		{"same item twice", []step{
			{[]target.Item{item(10, up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, 1, body("a"), target.Version(10, 0)},
			{[]target.Item{item(10, up("1", "a"))}, target.Result{Changes: 1}, 0, body("a"), target.Version(10, 0)},
		}},
		{"older after newer", []step{
			{[]target.Item{item(20, up("1", "new"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, 1, body("new"), target.Version(20, 0)},
			{[]target.Item{item(10, up("1", "old"))}, target.Result{Changes: 1}, 0, body("new"), target.Version(20, 0)},
		}},
		{"same content at a newer seq", []step{
			{[]target.Item{item(10, up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, 1, body("a"), target.Version(10, 0)},
			{[]target.Item{item(30, up("1", "a"))}, target.Result{Changes: 1, Newer: 1}, 0, body("a"), target.Version(30, 0)},
		}},
		{"repeats collapse to the newest", []step{
			{[]target.Item{item(10, up("1", "a"), up("1", "b")), item(9, up("1", "c"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, 1, body("b"), target.Version(10, 1)},
		}},
		{"delete, then older upsert, then delete again", []step{
			{[]target.Item{item(10, up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, 1, body("a"), target.Version(10, 0)},
			{[]target.Item{item(20, del("1"))}, target.Result{Changes: 1, Newer: 1, Deleted: 1}, 1, "", target.Version(20, 0)},
			{[]target.Item{item(15, up("1", "a"))}, target.Result{Changes: 1}, 0, "", target.Version(20, 0)},
			{[]target.Item{item(25, del("1"))}, target.Result{Changes: 1, Newer: 1}, 0, "", target.Version(25, 0)},
			{[]target.Item{item(30, up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, 1, body("a"), target.Version(30, 0)},
		}},
		{"first delete of a key is sent (404 is gone)", []step{
			{[]target.Item{item(10, del("1"))}, target.Result{Changes: 1, Newer: 1, Deleted: 1}, 1, "", target.Version(10, 0)},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			api := newAPI(t, 0, nil)
			s := spec(api, pool)
			s.Target = tc.name
			tg := openTarget(t, s)
			for i, st := range tc.steps {
				before := api.count()
				res, err := tg.Apply(testCtx(t), st.items)
				if err != nil {
					t.Fatalf("step %d: apply: %v", i, err)
				}
				checkResult(t, res, st.res)
				if n := api.count() - before; n != st.requests {
					t.Errorf("step %d: %d requests, want %d", i, n, st.requests)
				}
				got, ok := api.get("/items/1")
				if st.body == "" && ok || st.body != "" && got != st.body {
					t.Errorf("step %d: API has %q (present %v), want %q", i, got, ok, st.body)
				}
				if v, _, _ := readLedger(t, pool, tg, "1"); v != st.version {
					t.Errorf("step %d: ledger version %d, want %d", i, v, st.version)
				}
			}
		})
	}
}

// ---- 3. retries --------------------------------------------------------------

func TestRetries(t *testing.T) {
	_, pool := newLedger(t)

	t.Run("429 with Retry-After then 200", func(t *testing.T) {
		api := newAPI(t, 0, func(w http.ResponseWriter, r *http.Request, attempt int) bool {
			if attempt == 1 {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "slow down", http.StatusTooManyRequests)
				return true
			}
			return false
		})
		s := spec(api, pool)
		s.Target = "429"
		tg := openTarget(t, s)
		start := time.Now()
		res, err := tg.Apply(testCtx(t), []target.Item{item(10, up("1", "a"))})
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		checkResult(t, res, target.Result{Changes: 1, Newer: 1, Written: 1})
		if el := time.Since(start); el < 900*time.Millisecond {
			t.Errorf("retried after %v, before Retry-After's 1s", el)
		}
		reqs := api.requests()
		if len(reqs) != 2 || reqs[0].Header.Get("Idempotency-Key") != reqs[1].Header.Get("Idempotency-Key") {
			t.Fatalf("want 2 requests with one Idempotency-Key, got %+v", reqs)
		}
		if n := api.applied(reqs[0].Header.Get("Idempotency-Key")); n != 1 {
			t.Errorf("applied %d times, want 1", n)
		}
		if v, applies, _ := readLedger(t, pool, tg, "1"); v != target.Version(10, 0) || applies != 1 {
			t.Errorf("ledger: version %d applies %d", v, applies)
		}
	})

	t.Run("5xx until attempts run out, then recovery", func(t *testing.T) {
		var failing atomic.Bool
		failing.Store(true)
		api := newAPI(t, 0, func(w http.ResponseWriter, r *http.Request, attempt int) bool {
			if failing.Load() {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return true
			}
			return false
		})
		s := spec(api, pool)
		s.Target, s.MaxAttempts, s.Concurrency = "503", 3, 2
		tg := openTarget(t, s)
		items := []target.Item{item(10, up("1", "a"), up("2", "b"))}
		_, err := tg.Apply(testCtx(t), items)
		if err == nil {
			t.Fatal("apply succeeded against a failing API")
		}
		// 503 says the service is down: an outage the writer waits out
		// without spending the delivery budget.
		if errs.IsPermanent(err) || !errs.IsUnavailable(err) || !strings.Contains(err.Error(), "503") {
			t.Errorf("error %v: want an Unavailable error naming 503", err)
		}
		for _, k := range []string{"1", "2"} {
			if _, _, found := readLedger(t, pool, tg, k); found {
				t.Errorf("ledger has key %s after a failed apply", k)
			}
		}
		if n := api.count(); n < 3 || n > 6 {
			t.Errorf("%d requests, want 3 for the failing key (+ up to 3 for the other)", n)
		}
		failing.Store(false)
		res, err := tg.Apply(testCtx(t), items)
		if err != nil {
			t.Fatalf("apply after recovery: %v", err)
		}
		checkResult(t, res, target.Result{Changes: 2, Newer: 2, Written: 2})
		if v, _, _ := readLedger(t, pool, tg, "2"); v != target.Version(10, 1) {
			t.Errorf("ledger version %d", v)
		}
	})

	t.Run("connection refused is Unavailable", func(t *testing.T) {
		api := newAPI(t, 0, nil)
		s := spec(api, pool)
		s.Target, s.MaxAttempts = "refused", 2
		tg := openTarget(t, s)
		api.Close()
		_, err := tg.Apply(testCtx(t), []target.Item{item(10, up("1", "a"))})
		if !errs.IsUnavailable(err) {
			t.Fatalf("error %v: want errs.Unavailable", err)
		}
		if _, _, found := readLedger(t, pool, tg, "1"); found {
			t.Error("ledger has the key after a failed apply")
		}
	})

	t.Run("canceled while a request is in flight", func(t *testing.T) {
		started := make(chan struct{}, 1)
		api := newAPI(t, 0, func(w http.ResponseWriter, r *http.Request, attempt int) bool {
			started <- struct{}{}
			<-r.Context().Done() // hang until the client gives up
			return true
		})
		s := spec(api, pool)
		s.Target, s.Timeout = "cancel", 30*time.Second
		tg := openTarget(t, s)
		ctx, cancel := context.WithCancel(testCtx(t))
		go func() {
			<-started
			cancel()
		}()
		start := time.Now()
		_, err := tg.Apply(ctx, []target.Item{item(10, up("1", "a"))})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v: want context.Canceled", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("returned after %v", el)
		}
		if _, _, found := readLedger(t, pool, tg, "1"); found {
			t.Error("ledger has the key after a canceled apply")
		}
	})
}

// ---- 4. poison ---------------------------------------------------------------

func TestPoison(t *testing.T) {
	_, pool := newLedger(t)
	api := newAPI(t, 0, func(w http.ResponseWriter, r *http.Request, attempt int) bool {
		if r.URL.Path == "/items/2" {
			http.Error(w, "bad name: "+strings.Repeat("x", 300), http.StatusBadRequest)
			return true
		}
		return false
	})
	s := spec(api, pool)
	s.URL += "?token=secret"
	s.Concurrency = 2
	tg := openTarget(t, s)
	items := []target.Item{item(10, up("1", "a"), up("2", "b")), item(11, up("3", "c"))}
	for round := range 2 {
		before := api.count()
		res, err := tg.Apply(testCtx(t), items)
		if err != nil {
			t.Fatalf("round %d: apply: %v", round, err)
		}
		if len(res.Failed) != 1 {
			t.Fatalf("round %d: failed %v, want exactly key 2", round, res.Failed)
		}
		f := res.Failed[0]
		if f.Key != "2" || f.Item != 0 || f.Index != 1 || !errs.IsPermanent(f.Err) {
			t.Errorf("round %d: failure %+v, want key 2 (item 0, index 1), permanent", round, f)
		}
		msg := f.Err.Error()
		want := "PUT " + api.URL + "/items/2 → 400: bad name: "
		if !strings.HasPrefix(msg, want) || strings.Contains(msg, "secret") || len(msg) > len(want)+200 {
			t.Errorf("round %d: error %q, want %q + at most 200 bytes of body, no query", round, msg, want)
		}
		if round == 0 {
			checkResult(t, res, target.Result{Changes: 3, Newer: 2, Written: 2})
			if n := api.count() - before; n != 3 {
				t.Errorf("%d requests, want 3 (a 400 is not retried)", n)
			}
		} else {
			checkResult(t, res, target.Result{Changes: 3})
			if n := api.count() - before; n != 1 {
				t.Errorf("redelivery: %d requests, want 1 (only the rejected key)", n)
			}
		}
		for _, k := range []string{"1", "3"} {
			if _, ok := api.get("/items/" + k); !ok {
				t.Errorf("round %d: key %s not applied", round, k)
			}
		}
		if v, _, _ := readLedger(t, pool, tg, "2"); v != -1 {
			t.Errorf("round %d: ledger of the rejected key at version %d, want untouched (-1)", round, v)
		}
	}
}

// ---- 5. scale-out --------------------------------------------------------------

// TestConcurrentWritersKeepKeyOrder: four writers (own Target, own pool, one
// ledger) apply the same stream of 200 items over 10 keys, each in its own
// order; each key ends at its highest version's content and no change is
// applied twice. Fully shuffled, most changes are stale by the time a writer
// gets to them; nearly in order (shuffled within windows of 8), the writers
// race on every key all along.
func TestConcurrentWritersKeepKeyOrder(t *testing.T) {
	const nItems, nKeys, writers = 200, 10, 4
	rng := rand.New(rand.NewPCG(42, 7))
	seqs := rng.Perm(10 * nItems)[:nItems]
	items := make([]target.Item, nItems)
	type last struct {
		seq  uint64
		body string // "" = deleted
	}
	want := map[string]last{}
	for i, s := range seqs {
		seq := uint64(s + 1)
		key := strconv.Itoa(rng.IntN(nKeys))
		var c *onewayv1.Change
		var body string
		if rng.IntN(10) == 0 {
			c = del(key)
		} else {
			name := fmt.Sprintf("k%s@%d", key, seq)
			c, body = up(key, name), fmt.Sprintf(`{"id":%s,"name":"%s"}`, key, name)
		}
		items[i] = item(seq, c)
		if seq > want[key].seq {
			want[key] = last{seq, body}
		}
	}
	bySeq := make([]int, nItems) // item indexes in stream order
	for i := range bySeq {
		bySeq[i] = i
	}
	slices.SortFunc(bySeq, func(a, b int) int { return cmp.Compare(items[a].Seq, items[b].Seq) })

	cases := []struct {
		name  string
		order func(r *rand.Rand) []int
	}{
		{"shuffled", func(r *rand.Rand) []int { return r.Perm(nItems) }},
		{"nearly in order", func(r *rand.Rand) []int {
			o := slices.Clone(bySeq)
			for w := 0; w < len(o); w += 8 {
				win := o[w:min(w+8, len(o))]
				r.Shuffle(len(win), func(i, j int) { win[i], win[j] = win[j], win[i] })
			}
			return o
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dbURL, _ := newLedger(t)
			api := newAPI(t, 2*time.Millisecond, nil)
			var scopes [writers]int32
			var wg sync.WaitGroup
			for w := range writers {
				pool := openPool(t, dbURL)
				s := Spec{Pipeline: "p", Target: "api", URL: api.URL + "/items/{{.Key | path}}", Ledger: pool, Concurrency: 3}
				tg := openTarget(t, s)
				scopes[w] = tg.Scope()
				r := rand.New(rand.NewPCG(42, uint64(w)))
				order := tc.order(r)
				wg.Go(func() {
					ctx := testCtx(t)
					for i := 0; i < len(order); {
						n := min(1+r.IntN(5), len(order)-i)
						chunk := make([]target.Item, n)
						for j := range n {
							chunk[j] = items[order[i+j]]
						}
						i += n
						for attempt := 1; ; attempt++ {
							res, err := tg.Apply(ctx, chunk)
							if err == nil {
								if len(res.Failed) > 0 {
									t.Errorf("writer %d: failed %v", w, res.Failed)
								}
								break
							}
							if errs.IsPermanent(err) || attempt == 5 || ctx.Err() != nil {
								t.Errorf("writer %d: apply: %v", w, err)
								return
							}
							t.Logf("writer %d: transient error, retrying: %v", w, err)
						}
					}
				})
			}
			wg.Wait()
			for _, s := range scopes[1:] {
				if s != scopes[0] {
					t.Fatalf("writers got scopes %v, want one", scopes)
				}
			}
			for k, l := range want {
				got, ok := api.get("/items/" + k)
				if l.body == "" && ok || l.body != "" && got != l.body {
					t.Errorf("key %s: API has %q (present %v), want %q (seq %d)", k, got, ok, l.body, l.seq)
				}
			}
			api.mu.Lock()
			defer api.mu.Unlock()
			for idem, n := range api.oks {
				if n > 1 {
					t.Errorf("Idempotency-Key %s applied %d times", idem, n)
				}
			}
			t.Logf("%d requests for %d items × %d writers", len(api.reqs), nItems, writers)
		})
	}
}

// ---- 6. rate limit -------------------------------------------------------------

func TestBucket(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	type op struct {
		at    time.Duration // clock offset from t0
		take  bool          // reserve a token (else read available)
		wait  time.Duration // for take: the wait reserve returns
		avail float64       // for read
	}
	cases := []struct {
		name        string
		rate, burst float64
		ops         []op
	}{
		{"10/s burst 1", 10, 1, []op{
			{at: 0, avail: 1},
			{at: 0, take: true, wait: 0},
			{at: 0, avail: 0},
			{at: 0, take: true, wait: 100 * time.Millisecond},
			{at: 0, take: true, wait: 200 * time.Millisecond},
			{at: 150 * time.Millisecond, avail: -0.5},
			{at: 200 * time.Millisecond, avail: 0},
			{at: 300 * time.Millisecond, avail: 1},
			{at: 10 * time.Second, avail: 1}, // capped at burst
		}},
		{"50/s burst 5", 50, 5, []op{
			{at: 0, avail: 5},
			{at: 0, take: true}, {at: 0, take: true}, {at: 0, take: true}, {at: 0, take: true}, {at: 0, take: true},
			{at: 0, take: true, wait: 20 * time.Millisecond},
			{at: 10 * time.Millisecond, avail: -0.5},
			{at: 70 * time.Millisecond, avail: 2.5},
			{at: 70 * time.Millisecond, take: true},
			{at: 1 * time.Second, avail: 5},
		}},
		{"0.5/s", 0.5, 1, []op{
			{at: 0, take: true},
			{at: 0, take: true, wait: 2 * time.Second},
			{at: 1 * time.Second, avail: -0.5},
			{at: 3 * time.Second, avail: 0.5},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			now := t0
			b := newBucket(tc.rate, tc.burst, func() time.Time { return now })
			for i, o := range tc.ops {
				now = t0.Add(o.at)
				if o.take {
					if got := b.reserve(); absDur(got-o.wait) > time.Microsecond {
						t.Errorf("op %d at %v: reserve waits %v, want %v", i, o.at, got, o.wait)
					}
					continue
				}
				if got := b.available(); got < o.avail-1e-9 || got > o.avail+1e-9 {
					t.Errorf("op %d at %v: %v tokens, want %v", i, o.at, got, o.avail)
				}
			}
		})
	}
	t.Run("unreserve on cancel", func(t *testing.T) {
		now := t0
		b := newBucket(1, 1, func() time.Time { return now })
		b.reserve()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := b.wait(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("wait: %v", err)
		}
		if got := b.available(); got != 0 {
			t.Errorf("%v tokens after a canceled wait, want 0", got)
		}
	})
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"1", time.Second},
		{" 30 ", 30 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"3600", maxRetryAfter},
		{now.Add(20 * time.Second).Format(http.TimeFormat), 20 * time.Second},
		{now.Add(-20 * time.Second).Format(http.TimeFormat), 0},
		{now.Add(2 * time.Hour).Format(http.TimeFormat), maxRetryAfter},
		{"soon", 0},
	}
	for _, tc := range cases {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestOpenRejectsBadSpec(t *testing.T) {
	_, pool := newLedger(t)
	cases := []struct {
		name string
		s    Spec
	}{
		{"no ledger", Spec{Pipeline: "p", Target: "t", URL: "http://x/"}},
		{"no URL", Spec{Pipeline: "p", Target: "t", Ledger: pool}},
		{"bad template", Spec{Pipeline: "p", Target: "t", URL: "http://x/{{.Key", Ledger: pool}},
		{"bad method", Spec{Pipeline: "p", Target: "t", URL: "http://x/", UpsertMethod: "PU T", Ledger: pool}},
	}
	for _, tc := range cases {
		if _, err := Open(testCtx(t), tc.s, nil); !errs.IsPermanent(err) {
			t.Errorf("%s: error %v, want permanent", tc.name, err)
		}
	}
}
