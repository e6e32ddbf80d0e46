package pgcdc

import (
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/shared/errs"
)

// pausingProxy forwards TCP connections to a server; while paused it
// stops reading from the server, so the client waits as on a stalled
// network.
type pausingProxy struct {
	ln     net.Listener
	to     string
	paused atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func startPausingProxy(t *testing.T, to string) *pausingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pausingProxy{ln: ln, to: to}
	t.Cleanup(p.close)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", to)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c) }()
			go p.serverToClient(s, c)
		}
	}()
	return p
}

// close stops the proxy and closes every connection through it, so the
// server's side ends too.
func (p *pausingProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
}

func (p *pausingProxy) serverToClient(s, c net.Conn) {
	buf := make([]byte, 16<<10)
	for {
		for p.paused.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		n, err := s.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = c.Close()
			return
		}
	}
}

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
	proxy := startPausingProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
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
	proxy.paused.Store(true)
	start := time.Now()
	for {
		ch, err = s.Next(testCtx(t))
		if err != nil {
			break
		}
		if ch.Last {
			t.Fatal("the whole transaction came through a paused proxy")
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
	// The walsender behind the paused proxy goes once its connection
	// closes, so that the slot can be dropped.
	proxy.close()
	proxy.paused.Store(false)
}
