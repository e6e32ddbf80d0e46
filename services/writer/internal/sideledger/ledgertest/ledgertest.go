// Package ledgertest is the conformance suite of targets fenced by a
// sideledger: each target package runs it against its real sink (an
// embedded NATS server, an in-process Kafka, a file) with a real PostgreSQL
// ledger.
package ledgertest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// Writer is a target under test.
type Writer interface {
	target.Writer
	Ledger() pgconn.Table
}

// Record is one message, line or record as the sink holds it.
type Record struct {
	Op      string // "upsert" or "delete"
	Key     string
	Version int64
	// Fields is the JSON object of the fields, "" when the sink carries no
	// document for the change (a Kafka tombstone).
	Fields string
}

// Sink is one sink (a subject, a topic, a file) for one test.
type Sink interface {
	// Open opens a new Target writing to the sink, with its ledger on pool.
	// Every Target opened on one sink shares one ledger scope.
	Open(t *testing.T, pool *pgxpool.Pool) Writer
	// Records returns what the sink holds, in append order (at least per
	// key), once every successful Apply's output is visible.
	Records(t *testing.T) []Record
	// Down makes the sink unavailable to the Targets already opened.
	Down(t *testing.T)
}

// NewSink makes a fresh sink for a test; name is unique per call.
type NewSink func(t *testing.T, name string) Sink

// Ctx is a test context with a deadline.
func Ctx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Pool opens a pool on dbURL, closed when the test ends.
func Pool(t *testing.T, dbURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgconn.Open(t.Context(), dbURL, "sideledger-test", 4)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// NewLedger creates a fresh database for the ledger and a pool on it.
func NewLedger(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	return dbURL, Pool(t, dbURL)
}

// Logger is a discarding logger.
func Logger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// SimpleCols is the layout most tests use: (id integer key, name text).
var SimpleCols = []*onewayv1.Column{
	{Name: "id", Type: "integer", Key: true},
	{Name: "name", Type: "text"},
}

// TypedCols covers the JSON typing of every kind, under a composite key.
var TypedCols = []*onewayv1.Column{
	{Name: "shop", Type: "text", Key: true},
	{Name: "id", Type: "integer", Key: true},
	{Name: "name", Type: "text"},
	{Name: "price", Type: "numeric(30,2)"},
	{Name: "active", Type: "boolean"},
	{Name: "note", Type: "text"},
	{Name: "meta", Type: "jsonb"},
	{Name: "tags", Type: "integer[]"},
}

// Change builders, shared with the other target tests.
var (
	PackVals = targettest.PackVals // a string is a value, nil is SQL NULL
	Up       = targettest.Up       // an upsert of the given values
	DelOf    = targettest.DelOf    // a delete of key values, key columns first
)

// Del is a delete of key in SimpleCols.
func Del(key string) *onewayv1.Change { return DelOf(len(SimpleCols), key) }

// ItemOf is a batch read at seq.
func ItemOf(seq uint64, cols []*onewayv1.Column, changes ...*onewayv1.Change) target.Item {
	return target.Item{Seq: seq, Batch: &onewayv1.Batch{
		SchemaVersion: event.SchemaVersion, Pipeline: "p", Origin: "source",
		Pattern: onewayv1.CapturePattern_CAPTURE_PATTERN_CDC, Table: "public.items",
		Columns: cols, Changes: changes,
	}}
}

// Item is ItemOf with SimpleCols.
func Item(seq uint64, changes ...*onewayv1.Change) target.Item {
	return ItemOf(seq, SimpleCols, changes...)
}

// LedgerVersion reads a key's ledger version; found is false when there
// is no row.
func LedgerVersion(t *testing.T, pool *pgxpool.Pool, w Writer, key string) (version int64, found bool) {
	t.Helper()
	err := pool.QueryRow(Ctx(t), "SELECT oneway_version FROM "+w.Ledger().Quoted()+" WHERE key = $1", key).Scan(&version)
	if err != nil {
		if strings.Contains(err.Error(), "no rows") {
			return 0, false
		}
		t.Fatalf("read ledger: %v", err)
	}
	return version, true
}

// ParseEnvelope reads a change envelope (package changejson).
func ParseEnvelope(t *testing.T, data []byte) Record {
	t.Helper()
	var e struct {
		Op      string          `json:"op"`
		Key     string          `json:"key"`
		Fields  json.RawMessage `json:"fields"`
		Version int64           `json:"version"`
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("envelope %s: %v", data, err)
	}
	return Record{Op: e.Op, Key: e.Key, Version: e.Version, Fields: string(e.Fields)}
}

func apply(t *testing.T, w Writer, items ...target.Item) target.Result {
	t.Helper()
	res, err := w.Apply(Ctx(t), items)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if len(res.Failed) > 0 {
		t.Fatalf("apply: failed %v", res.Failed)
	}
	return res
}

func checkResult(t *testing.T, got, want target.Result) {
	t.Helper()
	got.Failed, want.Failed = nil, nil
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("result = %+v, want %+v", got, want)
	}
}

// sameRecords compares records per key, in order: a sink orders a key's
// records, not records of different keys (Kafka partitions).
func sameRecords(got, want []Record) bool {
	byKey := func(a, b Record) int { return strings.Compare(a.Key, b.Key) }
	got, want = slices.Clone(got), slices.Clone(want)
	slices.SortStableFunc(got, byKey)
	slices.SortStableFunc(want, byKey)
	return slices.Equal(got, want)
}

func checkRecords(t *testing.T, got, want []Record) {
	t.Helper()
	if !sameRecords(got, want) {
		t.Errorf("sink holds\n %+v\nwant\n %+v", got, want)
	}
}

// Run runs the conformance suite on sinks made by newSink. skipFields
// leaves Record.Fields of deletes unchecked (sinks that carry no document
// for a delete).
func Run(t *testing.T, newSink NewSink, skipDeleteFields bool) {
	_, pool := NewLedger(t)
	n := 0
	sink := func(t *testing.T) Sink {
		n++
		return newSink(t, fmt.Sprintf("s%d", n))
	}
	t.Run("payload", func(t *testing.T) { testPayload(t, pool, sink(t), skipDeleteFields) })
	t.Run("effect-once", func(t *testing.T) { testEffectOnce(t, pool, sink, skipDeleteFields) })
	t.Run("concurrent writers shuffled", func(t *testing.T) { testConcurrent(t, sink(t), skipDeleteFields, false) })
	t.Run("concurrent writers nearly in order", func(t *testing.T) { testConcurrent(t, sink(t), skipDeleteFields, true) })
	t.Run("sink down", func(t *testing.T) { testDown(t, pool, sink(t)) })
}

func testPayload(t *testing.T, pool *pgxpool.Pool, s Sink, skipDel bool) {
	w := s.Open(t, pool)
	full := Up("a b/c", "7", `Tom <&> "Q"`, "12345678901234567890.12", "t", nil, `{"a": [1, 2], "b": null}`, "{1,2}")
	res := apply(t, w,
		ItemOf(3, TypedCols, full),
		ItemOf(4, TypedCols, Up("x", "1", nil, "NaN", "maybe", "", "{bad", nil), DelOf(len(TypedCols), "y", "2")))
	checkResult(t, res, target.Result{Changes: 3, Newer: 3, Written: 2, Deleted: 1})
	delFields := `{"shop":"y","id":2}`
	if skipDel {
		delFields = ""
	}
	// Collapse orders by key: ["a b/c","7"] < ["x","1"] < ["y","2"].
	checkRecords(t, s.Records(t), []Record{
		{Op: "upsert", Key: `["a b/c","7"]`, Version: target.Version(3, 0),
			Fields: `{"shop":"a b/c","id":7,"name":"Tom <&> \"Q\"","price":12345678901234567890.12,"active":true,"note":null,"meta":{"a":[1,2],"b":null},"tags":"{1,2}"}`},
		{Op: "upsert", Key: `["x","1"]`, Version: target.Version(4, 0),
			Fields: `{"shop":"x","id":1,"name":null,"price":"NaN","active":"maybe","note":"","meta":"{bad","tags":null}`},
		{Op: "delete", Key: `["y","2"]`, Version: target.Version(4, 1), Fields: delFields},
	})
}

func testEffectOnce(t *testing.T, pool *pgxpool.Pool, sink func(*testing.T) Sink, skipDel bool) {
	type step struct {
		items   []target.Item
		res     target.Result
		sent    []Record // records this step appends (Fields of "1" is {"id":1,"name":…})
		version int64    // ledger version of key 1 after the step
	}
	rec := func(op string, seq uint64, idx int, name string) Record {
		r := Record{Op: op, Key: "1", Version: target.Version(seq, idx), Fields: `{"id":1}`}
		if op == "upsert" {
			r.Fields = `{"id":1,"name":"` + name + `"}`
		} else if skipDel {
			r.Fields = ""
		}
		return r
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"same item twice", []step{
			{[]target.Item{Item(10, Up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, []Record{rec("upsert", 10, 0, "a")}, target.Version(10, 0)},
			{[]target.Item{Item(10, Up("1", "a"))}, target.Result{Changes: 1}, nil, target.Version(10, 0)},
		}},
		{"older after newer", []step{
			{[]target.Item{Item(20, Up("1", "new"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, []Record{rec("upsert", 20, 0, "new")}, target.Version(20, 0)},
			{[]target.Item{Item(10, Up("1", "old"))}, target.Result{Changes: 1}, nil, target.Version(20, 0)},
		}},
		{"same content at a newer seq", []step{
			{[]target.Item{Item(10, Up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, []Record{rec("upsert", 10, 0, "a")}, target.Version(10, 0)},
			{[]target.Item{Item(30, Up("1", "a"))}, target.Result{Changes: 1, Newer: 1}, nil, target.Version(30, 0)},
		}},
		{"repeats collapse to the newest", []step{
			{[]target.Item{Item(10, Up("1", "a"), Up("1", "b")), Item(9, Up("1", "c"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, []Record{rec("upsert", 10, 1, "b")}, target.Version(10, 1)},
		}},
		{"delete, older upsert, delete again, upsert", []step{
			{[]target.Item{Item(10, Up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, []Record{rec("upsert", 10, 0, "a")}, target.Version(10, 0)},
			{[]target.Item{Item(20, Del("1"))}, target.Result{Changes: 1, Newer: 1, Deleted: 1}, []Record{rec("delete", 20, 0, "")}, target.Version(20, 0)},
			{[]target.Item{Item(15, Up("1", "a"))}, target.Result{Changes: 1}, nil, target.Version(20, 0)},
			{[]target.Item{Item(25, Del("1"))}, target.Result{Changes: 1, Newer: 1}, nil, target.Version(25, 0)},
			{[]target.Item{Item(30, Up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, []Record{rec("upsert", 30, 0, "a")}, target.Version(30, 0)},
		}},
		{"first delete of a key is sent", []step{
			{[]target.Item{Item(10, Del("1"))}, target.Result{Changes: 1, Newer: 1, Deleted: 1}, []Record{rec("delete", 10, 0, "")}, target.Version(10, 0)},
		}},
		{"a second Target on the same sink shares the ledger", []step{
			{[]target.Item{Item(10, Up("1", "a"))}, target.Result{Changes: 1, Newer: 1, Written: 1}, []Record{rec("upsert", 10, 0, "a")}, target.Version(10, 0)},
			{[]target.Item{Item(10, Up("1", "a")), Item(5, Up("1", "z"))}, target.Result{Changes: 1}, nil, target.Version(10, 0)},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := sink(t)
			w := s.Open(t, pool)
			var want []Record
			for i, st := range tc.steps {
				if strings.HasPrefix(tc.name, "a second Target") && i == 1 {
					w = s.Open(t, pool)
				}
				res := apply(t, w, st.items...)
				checkResult(t, res, st.res)
				want = append(want, st.sent...)
				got := s.Records(t)
				if !sameRecords(got, want) {
					t.Errorf("step %d: sink holds\n %+v\nwant\n %+v", i, got, want)
				}
				if v, _ := LedgerVersion(t, pool, w, "1"); v != st.version {
					t.Errorf("step %d: ledger version %d, want %d", i, v, st.version)
				}
			}
		})
	}
}

// testConcurrent: four writers (own Target, own pool, one ledger) apply the
// same 200 items over 10 keys, each in its own order and chunking. The sink
// must hold, per key, strictly increasing versions in append order, the
// last being the key's newest change. Fully shuffled, most changes are stale
// by the time a writer gets to them; nearly in order (shuffled within
// windows of 8), the writers race on every key all along.
func testConcurrent(t *testing.T, s Sink, skipDel, nearlyInOrder bool) {
	const nItems, nKeys, writers = 200, 10, 4
	dbURL, _ := NewLedger(t)
	rng := rand.New(rand.NewPCG(42, 7))
	seqs := rng.Perm(10 * nItems)[:nItems]
	slices.Sort(seqs)
	items := make([]target.Item, nItems)
	newest := map[string]Record{}
	lastDel := map[string]bool{}
	for i, sq := range seqs {
		seq := uint64(sq + 1)
		key := strconv.Itoa(rng.IntN(nKeys))
		// Every change of a key differs from the one before it (no two
		// deletes in a row, a name per seq), so the newest is always sent.
		var c *onewayv1.Change
		r := Record{Key: key, Version: target.Version(seq, 0)}
		if !lastDel[key] && rng.IntN(8) == 0 {
			c, r.Op, r.Fields = Del(key), "delete", `{"id":`+key+`}`
			if skipDel {
				r.Fields = ""
			}
		} else {
			name := fmt.Sprintf("k%s@%d", key, seq)
			c, r.Op, r.Fields = Up(key, name), "upsert", fmt.Sprintf(`{"id":%s,"name":"%s"}`, key, name)
		}
		lastDel[key] = r.Op == "delete"
		items[i] = Item(seq, c)
		newest[key] = r // seqs ascend
	}
	var wg sync.WaitGroup
	for w := range writers {
		tg := s.Open(t, Pool(t, dbURL))
		r := rand.New(rand.NewPCG(42, uint64(w)))
		order := r.Perm(nItems)
		if nearlyInOrder {
			// items are in stream order.
			for i := range order {
				order[i] = i
			}
			for w := 0; w < len(order); w += 8 {
				win := order[w:min(w+8, len(order))]
				r.Shuffle(len(win), func(i, j int) { win[i], win[j] = win[j], win[i] })
			}
		}
		wg.Go(func() {
			ctx := Ctx(t)
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
	recs := s.Records(t)
	last := map[string]Record{}
	for i, r := range recs {
		if p, ok := last[r.Key]; ok && r.Version <= p.Version {
			t.Errorf("record %d: key %s version %d after %d", i, r.Key, r.Version, p.Version)
		}
		last[r.Key] = r
	}
	for k, want := range newest {
		if got := last[k]; got != want {
			t.Errorf("key %s: last record %+v, want %+v", k, got, want)
		}
	}
	t.Logf("%d records for %d items × %d writers", len(recs), nItems, writers)
}

func testDown(t *testing.T, pool *pgxpool.Pool, s Sink) {
	w := s.Open(t, pool)
	apply(t, w, Item(10, Up("1", "a")))
	s.Down(t)
	start := time.Now()
	_, err := w.Apply(Ctx(t), []target.Item{Item(20, Up("1", "b"), Up("2", "b"))})
	if !errs.IsUnavailable(err) || errs.IsPermanent(err) {
		t.Fatalf("apply with the sink down: error %v, want errs.Unavailable", err)
	}
	t.Logf("apply with the sink down failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if v, _ := LedgerVersion(t, pool, w, "1"); v != target.Version(10, 0) {
		t.Errorf("ledger of key 1 at %d after a failed apply, want %d", v, target.Version(10, 0))
	}
	if v, found := LedgerVersion(t, pool, w, "2"); found {
		t.Errorf("ledger of key 2 at %d after a failed apply, want no row", v)
	}
}
