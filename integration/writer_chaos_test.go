package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/integration/testenv"
	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// A property test of effect-once under scale-out: random change sequences
// over a few keys (upserts and deletes) are consumed by 1 to 4 writer
// processes that are paused past their AckWait (zombies waking up),
// killed and restarted at random, so messages are redelivered, duplicated
// and applied out of order. Every key must end at the state of its last
// change in stream order, and the ledger must hold that change's version.
func TestWritersUnderChaosEndAtLastVersion(t *testing.T) {
	t.Parallel() // a long test sharing no port, environment or cluster: runs beside the others
	for _, kind := range []string{"postgres", "http"} {
		for _, writers := range []int{1, 2, 4} {
			t.Run(fmt.Sprintf("%s, %d writers", kind, writers), func(t *testing.T) {
				runWriterChaos(t, kind, writers, uint64(writers)*7919)
			})
		}
	}
}

func runWriterChaos(t *testing.T, kind string, writers int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	dst.Exec(t, "CREATE TABLE public.kv (k int PRIMARY KEY, val text, extra text DEFAULT 'target-owned')")
	_, natsURL := bustest.StartJetStream(t)
	target := fmt.Sprintf(`    kind: postgres
    url: %q
    table: public.kv`, dst.URL)
	ledgerTable := "oneway.ledger_1"
	api := &kvAPI{vals: map[string]string{}}
	if kind == "http" {
		srv := httptest.NewServer(api)
		defer srv.Close()
		target = fmt.Sprintf(`    kind: http
    url: "%s/kv/{{.Key}}"
    ledger_url: %q
    http: {concurrency: 2}`, srv.URL, dst.URL)
		ledgerTable = "oneway.http_ledger_1"
	}
	cfg := filepath.Join(t.TempDir(), "chaos.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`pipeline: chaos
nats: {url: %q}
source: {kind: postgres, url: "postgres://unused/db", table: public.kv, key: [k], capture: {column: ts}}
targets:
  - name: pg
%s
    delete: hard
    writer: {workers: 2, fetch_batch: 4, ack_wait: 1s, max_attempts: 1000}
`, natsURL, target)), 0o600); err != nil {
		t.Fatal(err)
	}

	// Publish the history: 400 messages, each 1-5 changes over 8 keys.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bus.StreamName("chaos"), Subjects: bus.StreamSubjects("chaos"),
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew, MaxBytes: 1 << 30, MaxAge: 168 * time.Hour, Duplicates: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	type state struct {
		deleted bool
		val     string
		version int64
	}
	want := map[int]state{}
	cols := []*onewayv1.Column{{Name: "k", Type: "integer", Key: true}, {Name: "val", Type: "text"}}
	for m := 0; m < 400; m++ {
		n := 1 + rng.IntN(5)
		b := &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: "chaos", Origin: "source",
			Pattern: onewayv1.CapturePattern_CAPTURE_PATTERN_WATERMARK, Table: "public.kv", Columns: cols}
		type pending struct {
			k   int
			st  state
			idx int
		}
		var ps []pending
		for i := 0; i < n; i++ {
			k := rng.IntN(8)
			c := &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT}
			st := state{val: fmt.Sprintf("m%d-c%d-%x", m, i, rng.Uint32())}
			if rng.IntN(6) == 0 {
				c.Op = onewayv1.Op_OP_DELETE
				c.Row = event.PackRow([][]byte{[]byte(strconv.Itoa(k)), nil})
				st = state{deleted: true}
			} else {
				c.Row = event.PackRow([][]byte{[]byte(strconv.Itoa(k)), []byte(st.val)})
				c.Hash = event.RowHash(c.Row)
			}
			b.Changes = append(b.Changes, c)
			ps = append(ps, pending{k: k, st: st, idx: i})
		}
		data, err := event.Encode(b)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := js.Publish(ctx, bus.SourceSubject("chaos"), data)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			p.st.version = int64(ack.Sequence<<20 | uint64(p.idx))
			want[p.k] = p.st // later changes in stream order win
		}
	}

	procs := make([]*testenv.Proc, writers)
	for i := range procs {
		procs[i] = testenv.Start(t, "writer", "run", "--config", cfg, "--log-level", "warn")
	}
	// Chaos for a while: pause a writer past its AckWait, or kill and
	// restart it.
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		i := rng.IntN(writers)
		switch rng.IntN(3) {
		case 0:
			procs[i].Pause()
			time.Sleep(time.Duration(1200+rng.IntN(800)) * time.Millisecond) // past AckWait: fault duration
			procs[i].Resume()
		case 1:
			procs[i].Kill()
			procs[i] = testenv.Start(t, "writer", "run", "--config", cfg, "--log-level", "warn")
		default:
			time.Sleep(300 * time.Millisecond) // let work happen between faults
		}
	}
	// Heal and drain.
	cons := func() error {
		c, err := js.Consumer(ctx, bus.StreamName("chaos"), bus.WriterConsumer("chaos", "pg"))
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending+uint64(info.NumAckPending) > 0 {
			return fmt.Errorf("%d messages pending", info.NumPending+uint64(info.NumAckPending))
		}
		return nil
	}
	testenv.WaitFor(t, 2*time.Minute, cons)
	for _, p := range procs {
		p.Stop(t, 30*time.Second)
	}

	for k, st := range want {
		var val *string
		var err error
		if kind == "http" {
			val, err = api.get(strconv.Itoa(k))
		} else {
			err = dst.Conn.QueryRow(ctx, "SELECT val FROM public.kv WHERE k = $1", k).Scan(&val)
		}
		switch {
		case st.deleted && err == nil:
			t.Errorf("key %d: present with %v, want deleted", k, deref(val))
		case !st.deleted && err != nil:
			t.Errorf("key %d: %v, want %q", k, err, st.val)
		case !st.deleted && deref(val) != st.val:
			t.Errorf("key %d = %q, want %q (its last change)", k, deref(val), st.val)
		}
		var version int64
		keyCol := "k"
		if kind == "http" {
			keyCol = "key"
		}
		if err := dst.Conn.QueryRow(ctx, fmt.Sprintf("SELECT oneway_version FROM %s WHERE %s::text = $1", ledgerTable, keyCol), strconv.Itoa(k)).Scan(&version); err != nil {
			t.Errorf("key %d: no ledger row: %v", k, err)
		} else if version != st.version {
			t.Errorf("key %d: ledger version %d, want %d", k, version, st.version)
		}
	}
	if n := dst.Int(t, "SELECT count(*) FROM public.kv WHERE extra IS DISTINCT FROM 'target-owned'"); n != 0 {
		t.Errorf("%d rows lost their target-owned column", n)
	}
}

// kvAPI is a REST API storing the "val" field of the last PUT per key.
type kvAPI struct {
	mu   sync.Mutex
	vals map[string]string
}

func (a *kvAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := strings.TrimPrefix(r.URL.Path, "/kv/")
	a.mu.Lock()
	defer a.mu.Unlock()
	switch r.Method {
	case http.MethodPut:
		var body struct {
			Val string `json:"val"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.vals[key] = body.Val
	case http.MethodDelete:
		delete(a.vals, key)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *kvAPI) get(key string) (*string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.vals[key]
	if !ok {
		return nil, fmt.Errorf("no record %s", key)
	}
	return &v, nil
}

func deref(s *string) string {
	if s == nil {
		return "<null>"
	}
	return *s
}
