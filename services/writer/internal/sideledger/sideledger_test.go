package sideledger_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/services/writer/internal/sideledger"
	"github.com/oneway-sync/oneway/services/writer/internal/sideledger/changejson"
	lt "github.com/oneway-sync/oneway/services/writer/internal/sideledger/ledgertest"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// memSink is an append-only list of envelopes.
type memSink struct {
	name string
	mu   sync.Mutex
	recs [][]byte
	down bool
}

type memTarget struct {
	l *sideledger.Ledger
	s *memSink
}

func (m *memTarget) Ledger() pgconn.Table { return m.l.Table() }

func (m *memTarget) Apply(ctx context.Context, items []target.Item) (target.Result, error) {
	return m.l.Apply(ctx, items, func(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
		m.s.mu.Lock()
		defer m.s.mu.Unlock()
		if m.s.down {
			return nil, errs.Unavailable(errors.New("sink down"))
		}
		for _, d := range b.Decisions {
			e, err := changejson.Envelope(b.Columns, d.Values, d.Key, d.Delete, d.Version)
			if err != nil {
				return nil, err
			}
			m.s.recs = append(m.s.recs, e)
		}
		return nil, nil
	})
}

func (s *memSink) Open(t *testing.T, pool *pgxpool.Pool) lt.Writer {
	l, err := sideledger.Open(lt.Ctx(t), sideledger.Spec{Pipeline: "p", Target: s.name, Kind: "mem", Sink: "list", Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	return &memTarget{l: l, s: s}
}

func (s *memSink) Records(t *testing.T) []lt.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []lt.Record
	for _, r := range s.recs {
		out = append(out, lt.ParseEnvelope(t, r))
	}
	return out
}

func (s *memSink) Down(t *testing.T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = true
}

func TestConformance(t *testing.T) {
	lt.Run(t, func(t *testing.T, name string) lt.Sink { return &memSink{name: name} }, false)
}

func TestOpen(t *testing.T) {
	dbURL, pool := lt.NewLedger(t)
	open := func(s sideledger.Spec) (*sideledger.Ledger, error) {
		s.Pool = pool
		return sideledger.Open(lt.Ctx(t), s)
	}
	a, err := open(sideledger.Spec{Pipeline: "p", Target: "t", Kind: "http", Sink: "http://x/{{.Key}}", Describe: "it's an API"})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("oneway.http_ledger_%d", a.Scope()); a.Table().String() != want {
		t.Errorf("table %s, want %s", a.Table(), want)
	}
	if n := pgtest.QueryInt(t, dbURL, `SELECT count(*) FROM oneway.ledger_scopes WHERE id = $1 AND table_name = 'http:http://x/{{.Key}}'`, a.Scope()); n != 1 {
		t.Errorf("scope row missing")
	}
	b, err := open(sideledger.Spec{Pipeline: "p", Target: "t", Kind: "http", Sink: "http://x/{{.Key}}"})
	if err != nil || b.Scope() != a.Scope() {
		t.Errorf("reopen: scope %v (%v), want %d", b, err, a.Scope())
	}
	c, err := open(sideledger.Spec{Pipeline: "p", Target: "t", Kind: "nats", Sink: "http://x/{{.Key}}", Schema: "other"})
	if err != nil || c.Table().Schema != "other" || !strings.HasPrefix(c.Table().Name, "nats_ledger_") {
		t.Errorf("other kind and schema: %v %v", c, err)
	}
	for _, bad := range []sideledger.Spec{{Kind: ""}, {Kind: "Http"}, {Kind: "a-b"}, {Kind: "1x"}} {
		if _, err := open(bad); !errs.IsPermanent(err) {
			t.Errorf("kind %q: %v, want permanent", bad.Kind, err)
		}
	}
	if _, err := sideledger.Open(lt.Ctx(t), sideledger.Spec{Kind: "x"}); !errs.IsPermanent(err) {
		t.Errorf("no pool: %v", err)
	}
}

// TestOutcomes: applied, skipped and rejected changes, a failing send, a
// send that answers the wrong number of outcomes, and Settle.
func TestOutcomes(t *testing.T) {
	_, pool := lt.NewLedger(t)
	items := []target.Item{lt.Item(10, lt.Up("1", "a"), lt.Up("2", "b"), lt.Del("3"), lt.Up("4", "d"))}
	boom := errs.Unavailable(errors.New("boom"))
	cases := []struct {
		name     string
		send     sideledger.SendFunc
		res      target.Result
		err      error
		failed   []string
		versions map[string]int64 // ledger after; absent = no row
	}{
		{
			name: "all applied",
			send: func(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) { return nil, nil },
			res:  target.Result{Changes: 4, Newer: 4, Written: 3, Deleted: 1},
			versions: map[string]int64{"1": target.Version(10, 0), "2": target.Version(10, 1),
				"3": target.Version(10, 2), "4": target.Version(10, 3)},
		},
		{
			name: "skipped and rejected",
			send: func(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
				outs := make([]sideledger.Outcome, len(b.Decisions))
				for i, d := range b.Decisions {
					switch d.Key {
					case "3":
						outs[i].Skipped = true
					case "2", "4":
						outs[i].Err = errs.Permanentf("no %s", d.Key)
					}
				}
				return outs, nil
			},
			res:      target.Result{Changes: 4, Newer: 2, Written: 1},
			failed:   []string{"2", "4"},
			versions: map[string]int64{"1": target.Version(10, 0), "2": -1, "3": target.Version(10, 2), "4": -1},
		},
		{
			name: "send fails",
			send: func(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) { return nil, boom },
			err:  boom,
		},
		{
			name: "wrong number of outcomes",
			send: func(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
				return make([]sideledger.Outcome, 1), nil
			},
			err: errors.New("1 outcomes for 4 changes"),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := sideledger.Open(lt.Ctx(t), sideledger.Spec{Pipeline: "p", Target: tc.name, Kind: "mem", Pool: pool})
			if err != nil {
				t.Fatal(err)
			}
			var seen []sideledger.Decision
			res, err := l.Apply(lt.Ctx(t), items, func(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
				seen = b.Decisions
				return tc.send(ctx, b)
			})
			switch {
			case tc.err != nil && (err == nil || !strings.Contains(err.Error(), tc.err.Error())):
				t.Fatalf("error %v, want %v", err, tc.err)
			case tc.err == nil && err != nil:
				t.Fatalf("apply: %v", err)
			}
			if errors.Is(tc.err, boom) && !errs.IsUnavailable(err) {
				t.Errorf("error %v lost its class", err)
			}
			if len(seen) != 4 || !seen[0].Fresh || seen[2].Key != "3" || !seen[2].Delete || len(seen[2].Hash) != 0 ||
				string(seen[1].Values[1]) != "b" {
				t.Errorf("decisions %+v", seen)
			}
			var failed []string
			for _, f := range res.Failed {
				failed = append(failed, f.Key)
			}
			res.Failed = nil
			if tc.err == nil && fmt.Sprint(res) != fmt.Sprint(tc.res) {
				t.Errorf("result %+v, want %+v", res, tc.res)
			}
			if strings.Join(failed, ",") != strings.Join(tc.failed, ",") {
				t.Errorf("failed %v, want %v", failed, tc.failed)
			}
			for _, k := range []string{"1", "2", "3", "4"} {
				var v int64
				err := pool.QueryRow(lt.Ctx(t), "SELECT oneway_version FROM "+l.Table().Quoted()+" WHERE key = $1", k).Scan(&v)
				want, ok := tc.versions[k]
				if found := err == nil; found != ok || v != want {
					t.Errorf("ledger of %s: %d (found %v), want %d (found %v)", k, v, found, want, ok)
				}
			}
		})
	}

	t.Run("settle", func(t *testing.T) {
		l, err := sideledger.Open(lt.Ctx(t), sideledger.Spec{Pipeline: "p", Target: "settle", Kind: "mem", Pool: pool})
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		ctx, cancel := context.WithCancel(lt.Ctx(t))
		_, err = l.Apply(ctx, items[:1], func(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
			b.Settle(release)
			cancel()
			return nil, ctx.Err()
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("apply: %v", err)
		}
		// Another Apply on the same keys waits for the release.
		done := make(chan error, 1)
		go func() {
			_, err := l.Apply(lt.Ctx(t), items[:1], func(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) { return nil, nil })
			done <- err
		}()
		select {
		case err := <-done:
			t.Fatalf("second apply did not wait for the settle: %v", err)
		case <-time.After(300 * time.Millisecond):
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

func TestIdempotencyKey(t *testing.T) {
	// The scheme the HTTP target has always used: first 32 hex digits of
	// sha256(pipeline NUL target NUL key NUL version).
	sum := sha256.Sum256([]byte("p\x00api\x00[\"a\",\"1\"]\x0010485761"))
	if got, want := sideledger.IdempotencyKey("p", "api", `["a","1"]`, 10485761), hex.EncodeToString(sum[:])[:32]; got != want {
		t.Errorf("IdempotencyKey = %q, want %q", got, want)
	}
}
