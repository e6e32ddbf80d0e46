package pgcdc

import (
	"errors"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/testkit/netproxy"
)

// A connection that stalls in the middle of a transaction (where the
// stream receives without a deadline) is closed by the watchdog after
// midTxStall: Next fails with an Unavailable error, so the reader starts a
// new stream, instead of waiting forever.
func TestStreamStallInsideTransaction(t *testing.T) {
	old := midTxStall
	midTxStall = 2 * time.Second
	t.Cleanup(func() { midTxStall = old })

	dbURL, pool := newDB(t)
	exec(t, pool, "CREATE TABLE public.t (id int PRIMARY KEY, v text)")
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := netproxy.Start(t, u.Host)
	u.Host = proxy.Addr()
	cfg := newConfig(t, u.String(), spec("public.t", "id"))
	cfg.ChunkChanges = 1000
	c := open(t, cfg)
	s := startStream(t, c)

	// A transaction far larger than the sockets' buffers: when the proxy
	// stops, the stream is inside it.
	exec(t, pool, "INSERT INTO public.t SELECT i, repeat('x', 200) FROM generate_series(1, 200000) i")
	ch, err := s.Next(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if ch.Last {
		t.Fatal("the transaction came in one chunk")
	}
	proxy.Blackhole()
	start := time.Now()
	for {
		ch, err = s.Next(testCtx(t))
		if err != nil {
			break
		}
		if ch.Last {
			t.Fatal("the whole transaction came through a blackholed proxy")
		}
	}
	if waited := time.Since(start); waited > 20*time.Second {
		t.Errorf("the stall ended the stream after %s", waited)
	}
	if !errs.IsUnavailable(err) || !strings.Contains(err.Error(), "inside a transaction") {
		t.Fatalf("error %v (unavailable: %v), want an Unavailable stall", err, errs.IsUnavailable(err))
	}
	if errors.Is(err, io.EOF) {
		t.Fatal("a stalled stream ended as if finished")
	}
	// The walsender behind the blackhole goes once its connection closes,
	// so that the slot can be dropped.
	_ = proxy.Close()
}
