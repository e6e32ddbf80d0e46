package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The chaos workload's table. Every committed state of a key has its own
// version (1 on insert, +1 per update) and a payload naming it, so every
// state is distinct and the version says how many states the key had.
const ChaosSourceDDL = `CREATE TABLE public.chaos (id bigint PRIMARY KEY, version bigint NOT NULL,
  payload text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`

// ChaosTargetDDL creates the target table ahead of the writer, with a
// target-owned column (crm) that must survive, and a trigger recording
// every row write and delete in chaos_history in the writing transaction
// (a rolled back write leaves no trace). The history is the exact check of
// I2 (a (key, version) written twice) and I3 (a key written an older
// version after a newer one, or again after its delete).
const ChaosTargetDDL = `CREATE TABLE public.chaos (id bigint PRIMARY KEY, version bigint, payload text,
  updated_at timestamptz, crm text NOT NULL DEFAULT 'target-owned');
CREATE TABLE public.chaos_history (seq bigserial PRIMARY KEY, id bigint NOT NULL, version bigint,
  deleted boolean NOT NULL DEFAULT false, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION public.chaos_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO public.chaos_history (id, version, deleted) VALUES (OLD.id, OLD.version, true);
  ELSE
    INSERT INTO public.chaos_history (id, version) VALUES (NEW.id, NEW.version);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_record AFTER INSERT OR UPDATE OR DELETE ON public.chaos
  FOR EACH ROW EXECUTE FUNCTION public.chaos_record()`

// ChaosSlowApplyDDL makes every write statement on the target table take
// at least d (a statement trigger sleeping), so a writer is inside an open
// target transaction most of the time: a kill or a pause lands mid-batch.
func ChaosSlowApplyDDL(d time.Duration) string {
	return fmt.Sprintf(`CREATE FUNCTION public.chaos_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_sleep(%g);
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_slow AFTER INSERT OR UPDATE ON public.chaos
  FOR EACH STATEMENT EXECUTE FUNCTION public.chaos_slow()`, d.Seconds())
}

// WorkloadOptions shape a Workload. Zero values take the defaults noted.
type WorkloadOptions struct {
	Keys         int           // rows inserted before Start; default 2000
	Interval     time.Duration // between transactions; default 20ms
	UpdatesPerTx int           // keys one update transaction changes; default 5
	InsertEvery  int           // every n-th transaction inserts a new key instead; default 4
	HotKeys      int           // half of the updates go to keys 1..HotKeys; default 20
	// DeleteEvery, when set, makes every n-th transaction (that is not an
	// insert) delete a live key above the hot ones instead; deleted keys
	// are never written again. Only for capture patterns that see deletes.
	DeleteEvery int
}

func (o *WorkloadOptions) defaults() {
	if o.Keys <= 0 {
		o.Keys = 2000
	}
	if o.Interval <= 0 {
		o.Interval = 20 * time.Millisecond
	}
	if o.UpdatesPerTx <= 0 {
		o.UpdatesPerTx = 5
	}
	if o.InsertEvery <= 0 {
		o.InsertEvery = 4
	}
	if o.HotKeys <= 0 {
		o.HotKeys = 20
	}
}

// Workload changes the chaos table at a steady rate from a connection of
// its own and records every committed state. NewWorkload seeds the table;
// Start begins the changes; Stop ends them. State and Changes may be
// called at any time, from any goroutine.
type Workload struct {
	t       testing.TB
	url     string
	o       WorkloadOptions
	rng     *rand.Rand
	mu      sync.Mutex
	vers    map[int64]int64 // committed version per live key
	live    []int64         // the live keys above the hot ones, for deletes
	deleted map[int64]int64 // deleted key → its last version
	next    int64

	changes atomic.Int64
	pad     atomic.Int64 // characters appended to each updated payload
	longest atomic.Int64 // the longest payload an update wrote
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	err     atomic.Pointer[error]
}

// NewWorkload creates the chaos table in the source database and inserts
// o.Keys rows (version 1).
func NewWorkload(t testing.TB, sourceURL string, o WorkloadOptions) *Workload {
	t.Helper()
	o.defaults()
	w := &Workload{t: t, url: sourceURL, o: o, vers: map[int64]int64{}, deleted: map[int64]int64{},
		rng:  rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 42)),
		stop: make(chan struct{}), done: make(chan struct{})}
	db := Connect(t, sourceURL)
	db.Exec(t, ChaosSourceDDL, fmt.Sprintf(`INSERT INTO public.chaos (id, version, payload)
SELECT g, 1, 'k' || g || ' v1' FROM generate_series(1, %d) g`, o.Keys))
	for id := int64(1); id <= int64(o.Keys); id++ {
		w.vers[id] = 1
		if id > int64(o.HotKeys) {
			w.live = append(w.live, id)
		}
	}
	w.next = int64(o.Keys) + 1
	w.changes.Store(int64(o.Keys))
	return w
}

// Start begins the changes in a goroutine; Stop ends it.
func (w *Workload) Start() {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.url)
	if err != nil {
		w.t.Fatalf("workload: connect to the source: %v", err)
	}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		tick := time.NewTicker(w.o.Interval)
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			if err := w.step(conn, n); err != nil {
				w.err.Store(&err)
				return
			}
		}
	}()
}

// step commits one transaction: an insert of a new key, or an update of
// UpdatesPerTx keys (half of them hot).
func (w *Workload) step(conn *pgx.Conn, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n%w.o.InsertEvery == 0 {
		w.mu.Lock()
		id := w.next
		w.mu.Unlock()
		if _, err := conn.Exec(ctx, `INSERT INTO public.chaos (id, version, payload) VALUES ($1::bigint, 1, 'k' || $1::bigint || ' v1')`, id); err != nil {
			return fmt.Errorf("workload: insert key %d: %w", id, err)
		}
		w.mu.Lock()
		w.vers[id] = 1
		w.live = append(w.live, id)
		w.next++
		w.mu.Unlock()
		w.changes.Add(1)
		return nil
	}
	if w.o.DeleteEvery > 0 && n%w.o.DeleteEvery == 0 {
		return w.delete(ctx, conn)
	}
	w.mu.Lock()
	ids := make([]int64, 0, w.o.UpdatesPerTx)
	for i := 0; i < w.o.UpdatesPerTx; i++ {
		var id int64
		if i%2 == 0 || len(w.live) == 0 {
			id = 1 + w.rng.Int64N(min(w.next-1, int64(w.o.HotKeys)))
		} else {
			id = w.live[w.rng.IntN(len(w.live))]
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	w.mu.Unlock()
	rows, err := conn.Query(ctx, `UPDATE public.chaos SET version = version + 1,
  payload = 'k' || id || ' v' || (version + 1) || ' ' || md5(random()::text) || repeat('x', $2::int), updated_at = now()
WHERE id = ANY($1) RETURNING id, version, length(payload)`, ids, w.pad.Load())
	if err != nil {
		return fmt.Errorf("workload: update: %w", err)
	}
	type kv struct{ id, v, n int64 }
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (kv, error) {
		var x kv
		err := r.Scan(&x.id, &x.v, &x.n)
		return x, err
	})
	if err != nil {
		return fmt.Errorf("workload: update: %w", err)
	}
	w.mu.Lock()
	for _, x := range got {
		w.vers[x.id] = x.v
		if x.n > w.longest.Load() {
			w.longest.Store(x.n)
		}
	}
	w.mu.Unlock()
	w.changes.Add(int64(len(got)))
	return nil
}

// delete removes a random live key above the hot ones.
func (w *Workload) delete(ctx context.Context, conn *pgx.Conn) error {
	w.mu.Lock()
	if len(w.live) == 0 {
		w.mu.Unlock()
		return nil
	}
	i := w.rng.IntN(len(w.live))
	id := w.live[i]
	w.mu.Unlock()
	var v int64
	if err := conn.QueryRow(ctx, "DELETE FROM public.chaos WHERE id = $1 RETURNING version", id).Scan(&v); err != nil {
		return fmt.Errorf("workload: delete key %d: %w", id, err)
	}
	w.mu.Lock()
	w.live[i] = w.live[len(w.live)-1]
	w.live = w.live[:len(w.live)-1]
	delete(w.vers, id)
	w.deleted[id] = v
	w.mu.Unlock()
	w.changes.Add(1)
	return nil
}

// SetPad makes every later update append n characters to the payloads it
// writes (longer values, e.g. after a column was widened).
func (w *Workload) SetPad(n int) { w.pad.Store(int64(n)) }

// MaxPayload is the length of the longest payload an update wrote.
func (w *Workload) MaxPayload() int64 { return w.longest.Load() }

// Stop ends the changes and waits for the last transaction. It fails the
// test if a transaction failed. It is idempotent.
func (w *Workload) Stop() {
	w.t.Helper()
	w.once.Do(func() { close(w.stop) })
	select {
	case <-w.done:
	case <-time.After(time.Minute):
		w.t.Fatal("workload did not stop within a minute")
	}
	if err := w.Err(); err != nil {
		w.t.Fatal(err)
	}
}

// Err is the error that ended the workload early, if any.
func (w *Workload) Err() error {
	if p := w.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Changes is the number of changes committed so far, seeding included
// (one per inserted key and one per updated key).
func (w *Workload) Changes() int64 { return w.changes.Load() }

// State is a copy of the committed version of every live key.
func (w *Workload) State() map[int64]int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.vers)
}

// Deleted is a copy of the deleted keys, each with its last version.
func (w *Workload) Deleted() map[int64]int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.deleted)
}

// Behind is the number of committed changes the target (the version of
// each key it holds) does not reflect yet: per live key, its version minus
// the target's (0 for a missing key), plus one per deleted key the target
// still holds.
func (w *Workload) Behind(target map[int64]int64) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := Behind(w.vers, target)
	for k := range w.deleted {
		if _, ok := target[k]; ok {
			n++
		}
	}
	return n
}

// ChaosRow is one key's owned values as compared for I1. UpdatedAt is
// normalised to UTC microseconds, "2006-01-02 15:04:05.000000".
type ChaosRow struct {
	Version   int64
	Payload   string
	UpdatedAt string
}

// ChaosWrite is one real write of a key at the target, in write order:
// an upsert of that version, or (Deleted) the key's delete.
type ChaosWrite struct {
	ID, Version int64
	Deleted     bool
}

// ChaosTarget is the target side of a chaos row, as the checks read it.
// Every method may fail while the target is unreachable; callers poll.
type ChaosTarget interface {
	// Versions is the version of every key the target holds.
	Versions(ctx context.Context) (map[int64]int64, error)
	// Rows is every key's owned values.
	Rows(ctx context.Context) (map[int64]ChaosRow, error)
	// Writes is every real write (and delete) the target received, in order.
	Writes(ctx context.Context) ([]ChaosWrite, error)
	// Applies is the writer ledger's count of real writes per key.
	Applies(ctx context.Context) (map[int64]int64, error)
	// Foreign counts rows whose target-owned data was overwritten.
	Foreign(ctx context.Context) (int64, error)
}

// ChaosRows reads the owned values of every key from a PostgreSQL table
// shaped like the chaos table.
func ChaosRows(ctx context.Context, url string) (map[int64]ChaosRow, error) {
	out := map[int64]ChaosRow{}
	err := withConn(ctx, url, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT id, version, payload,
  to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM public.chaos`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id int64
			var r ChaosRow
			var v *int64
			var p, u *string
			if err := rows.Scan(&id, &v, &p, &u); err != nil {
				return err
			}
			if v != nil {
				r.Version = *v
			}
			if p != nil {
				r.Payload = *p
			}
			if u != nil {
				r.UpdatedAt = *u
			}
			out[id] = r
		}
		return rows.Err()
	})
	return out, err
}

func withConn(ctx context.Context, url string, f func(*pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return f(c)
}

// PGChaosTarget is a PostgreSQL target created with ChaosTargetDDL; its
// ledger is Ledger (e.g. oneway.ledger_1).
type PGChaosTarget struct {
	URL    string
	Ledger string
}

var _ ChaosTarget = PGChaosTarget{}

func (p PGChaosTarget) Versions(ctx context.Context) (map[int64]int64, error) {
	return queryPairs(ctx, p.URL, "SELECT id, version FROM public.chaos")
}

func (p PGChaosTarget) Rows(ctx context.Context) (map[int64]ChaosRow, error) {
	return ChaosRows(ctx, p.URL)
}

func (p PGChaosTarget) Writes(ctx context.Context) ([]ChaosWrite, error) {
	var out []ChaosWrite
	err := withConn(ctx, p.URL, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, "SELECT id, coalesce(version, 0), deleted FROM public.chaos_history ORDER BY seq")
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (ChaosWrite, error) {
			var w ChaosWrite
			err := r.Scan(&w.ID, &w.Version, &w.Deleted)
			return w, err
		})
		return err
	})
	return out, err
}

func (p PGChaosTarget) Applies(ctx context.Context) (map[int64]int64, error) {
	return queryPairs(ctx, p.URL, "SELECT id, oneway_applies FROM "+p.Ledger)
}

func (p PGChaosTarget) Foreign(ctx context.Context) (int64, error) {
	var n int64
	err := withConn(ctx, p.URL, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT count(*) FROM public.chaos WHERE crm IS DISTINCT FROM 'target-owned'").Scan(&n)
	})
	return n, err
}

func queryPairs(ctx context.Context, url, sql string) (map[int64]int64, error) {
	out := map[int64]int64{}
	err := withConn(ctx, url, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, sql)
		if err != nil {
			return err
		}
		for rows.Next() {
			var k int64
			var v *int64
			if err := rows.Scan(&k, &v); err != nil {
				return err
			}
			if v != nil {
				out[k] = *v
			}
		}
		return rows.Err()
	})
	return out, err
}

// ChaosAPI is a REST API for the chaos table (PUT /chaos/{id} with the
// owned fields as JSON) that records every write in order, so I2 and I3
// are checked exactly as with PGChaosTarget's history. SetDelay makes each
// request take that long (a slow target). Its ledger is in LedgerURL.
type ChaosAPI struct {
	Server    *httptest.Server
	LedgerURL string

	delay    atomic.Int64 // nanoseconds
	requests atomic.Int64
	mu       sync.Mutex
	rows     map[int64]ChaosRow
	writes   []ChaosWrite
	idem     map[string]int
}

var _ ChaosTarget = (*ChaosAPI)(nil)

// StartChaosAPI starts the API; it stops when the test ends.
func StartChaosAPI(t testing.TB, ledgerURL string) *ChaosAPI {
	a := &ChaosAPI{LedgerURL: ledgerURL, rows: map[int64]ChaosRow{}, idem: map[string]int{}}
	a.Server = httptest.NewServer(a)
	t.Cleanup(a.Server.Close)
	return a
}

// SetDelay sets how long each request takes from now on.
func (a *ChaosAPI) SetDelay(d time.Duration) { a.delay.Store(int64(d)) }

// Requests is the number of requests served.
func (a *ChaosAPI) Requests() int64 { return a.requests.Load() }

// RepeatedIdempotencyKeys is the number of requests that repeated an
// Idempotency-Key already served.
func (a *ChaosAPI) RepeatedIdempotencyKeys() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.idem {
		n += c - 1
	}
	return n
}

func (a *ChaosAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.requests.Add(1)
	if d := time.Duration(a.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	id, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/chaos/"), 10, 64)
	if err != nil || r.Method != http.MethodPut {
		http.Error(w, "PUT /chaos/{id} only", http.StatusBadRequest)
		return
	}
	var body struct {
		Version   int64  `json:"version"`
		Payload   string `json:"payload"`
		UpdatedAt string `json:"updated_at"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	at, err := time.Parse("2006-01-02 15:04:05.999999-07", body.UpdatedAt)
	if err != nil {
		http.Error(w, "updated_at: "+err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.idem[r.Header.Get("Idempotency-Key")]++
	a.rows[id] = ChaosRow{Version: body.Version, Payload: body.Payload, UpdatedAt: at.UTC().Format("2006-01-02 15:04:05.000000")}
	a.writes = append(a.writes, ChaosWrite{ID: id, Version: body.Version})
	w.WriteHeader(http.StatusNoContent)
}

func (a *ChaosAPI) Versions(context.Context) (map[int64]int64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[int64]int64, len(a.rows))
	for k, r := range a.rows {
		out[k] = r.Version
	}
	return out, nil
}

func (a *ChaosAPI) Rows(context.Context) (map[int64]ChaosRow, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[int64]ChaosRow, len(a.rows))
	for k, r := range a.rows {
		out[k] = r
	}
	return out, nil
}

func (a *ChaosAPI) Writes(context.Context) ([]ChaosWrite, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.writes), nil
}

func (a *ChaosAPI) Applies(ctx context.Context) (map[int64]int64, error) {
	return queryPairs(ctx, a.LedgerURL, "SELECT key::bigint, oneway_applies FROM oneway.http_ledger_1")
}

func (a *ChaosAPI) Foreign(context.Context) (int64, error) { return 0, nil }

// Behind is the number of changes the source committed (state, a
// Workload's State) that the target does not have yet: per key, source
// version minus target version (0 for a missing key).
func Behind(state, target map[int64]int64) int64 {
	var n int64
	for k, v := range state {
		if d := v - target[k]; d > 0 {
			n += d
		}
	}
	return n
}

// ChaosCheck is what the invariant checks found after a row healed and
// drained.
type ChaosCheck struct {
	Missing, Different, Extra int      // I1: keys missing at the target, with other owned values, not at the source (deleted ones included)
	Samples                   []string // a few offending keys, for the failure message
	DuplicateWrites           int      // I2: writes of a (key, version) already written
	LedgerExcess              int64    // I2: ledger applies beyond the key's number of states
	Backwards                 int      // I3: writes of a version older than the key's previous write, or after its delete
	Foreign                   int64    // target-owned values overwritten
}

// Lost is the number of keys that did not converge (I1).
func (c ChaosCheck) Lost() int64 { return int64(c.Missing + c.Different + c.Extra) }

// AppliedTwice is the I2 count: duplicate writes, or ledger applies beyond
// the states a key had, whichever is larger.
func (c ChaosCheck) AppliedTwice() int64 { return max(int64(c.DuplicateWrites), c.LedgerExcess) }

// CheckChaos compares the source (every key's owned values; deleted, the
// keys the source deleted with their last version) with the target and
// inspects the target's write history and ledger.
func CheckChaos(ctx context.Context, source map[int64]ChaosRow, deleted map[int64]int64, tgt ChaosTarget) (ChaosCheck, error) {
	var c ChaosCheck
	rows, err := tgt.Rows(ctx)
	if err != nil {
		return c, fmt.Errorf("read target rows: %w", err)
	}
	sample := func(format string, args ...any) {
		if len(c.Samples) < 5 {
			c.Samples = append(c.Samples, fmt.Sprintf(format, args...))
		}
	}
	for k, s := range source {
		r, ok := rows[k]
		switch {
		case !ok:
			c.Missing++
			sample("key %d missing (source v%d)", k, s.Version)
		case r != s:
			c.Different++
			sample("key %d: target %+v, source %+v", k, r, s)
		}
	}
	for k := range rows {
		if _, ok := source[k]; !ok {
			c.Extra++
			if _, del := deleted[k]; del {
				sample("key %d deleted at the source, still at the target", k)
			} else {
				sample("key %d only at the target", k)
			}
		}
	}
	writes, err := tgt.Writes(ctx)
	if err != nil {
		return c, fmt.Errorf("read target writes: %w", err)
	}
	last := map[int64]int64{}
	gone := map[int64]bool{}
	seen := map[ChaosWrite]bool{}
	for _, w := range writes {
		if seen[w] {
			c.DuplicateWrites++
			sample("key %d version %d written twice (delete: %v)", w.ID, w.Version, w.Deleted)
		}
		seen[w] = true
		switch prev, ok := last[w.ID]; {
		case gone[w.ID] && !w.Deleted:
			c.Backwards++
			sample("key %d written v%d after its delete", w.ID, w.Version)
		case ok && w.Version < prev:
			c.Backwards++
			sample("key %d written v%d after v%d", w.ID, w.Version, prev)
		}
		last[w.ID] = w.Version
		gone[w.ID] = w.Deleted
	}
	applies, err := tgt.Applies(ctx)
	if err != nil {
		return c, fmt.Errorf("read ledger: %w", err)
	}
	for k, n := range applies {
		states := source[k].Version
		if v, ok := deleted[k]; ok {
			states = v + 1 // its versions, then the delete
		}
		if n > states {
			c.LedgerExcess += n - states
			sample("key %d applied %d times, %d states", k, n, states)
		}
	}
	if c.Foreign, err = tgt.Foreign(ctx); err != nil {
		return c, fmt.Errorf("read target-owned column: %w", err)
	}
	return c, nil
}

// ChaosResult is one line of the chaos summary.
type ChaosResult struct {
	Row, Fault   string
	InFlight     int64 // changes not at the target when the fault began, plus those committed while it lasted
	Lost         int64
	AppliedTwice int64
	Backwards    int64
	Recovery     time.Duration // from heal to converged with nothing pending; <0 when not measured
	Result       string        // "ok", "FAIL", or "covered by …" / "pending: …"
	Notes        string
}

// ChaosReport collects ChaosResults; safe for concurrent use.
type ChaosReport struct {
	mu   sync.Mutex
	rows []ChaosResult
}

// Add appends a line.
func (r *ChaosReport) Add(res ChaosResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, res)
}

// Rows is a copy of the lines so far.
func (r *ChaosReport) Rows() []ChaosResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.rows)
}

// Markdown renders the lines as a table, in matrix order (by the row's
// leading number; lines of one row in the order added).
func (r *ChaosReport) Markdown() string {
	rows := r.Rows()
	slices.SortStableFunc(rows, func(a, b ChaosResult) int { return leadingNumber(a.Row) - leadingNumber(b.Row) })
	var b strings.Builder
	b.WriteString("| row | fault | changes in flight | lost | applied twice | versions backwards | recovery s | result | notes |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---|---|\n")
	for _, x := range rows {
		num := func(n int64) string { return strconv.FormatInt(n, 10) }
		inFlight, lost, twice, back, rec := num(x.InFlight), num(x.Lost), num(x.AppliedTwice), num(x.Backwards), "–"
		if x.Recovery >= 0 {
			rec = fmt.Sprintf("%.1f", x.Recovery.Seconds())
		}
		if x.Result != "ok" && x.Result != "FAIL" {
			inFlight, lost, twice, back, rec = "", "", "", "", ""
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			x.Row, x.Fault, inFlight, lost, twice, back, rec, x.Result, x.Notes)
	}
	return b.String()
}

func leadingNumber(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}
