package netproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoServer answers each line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

type lineConn struct {
	net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{Conn: c, r: bufio.NewReader(c)}
}

// roundTrip sends a line and reads one back within wait.
func (c *lineConn) roundTrip(line string, wait time.Duration) (string, error) {
	if err := c.SetDeadline(time.Now().Add(wait)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	got, err := c.r.ReadString('\n')
	return strings.TrimSuffix(got, "\n"), err
}

// read waits up to wait for a line.
func (c *lineConn) read(wait time.Duration) (string, error) {
	if err := c.SetDeadline(time.Now().Add(wait)); err != nil {
		return "", err
	}
	got, err := c.r.ReadString('\n')
	return strings.TrimSuffix(got, "\n"), err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

func TestProxyForwards(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	for _, line := range []string{"one", strings.Repeat("x", 100_000), "three"} {
		got, err := c.roundTrip(line, 5*time.Second)
		if err != nil || got != line {
			t.Fatalf("round trip of %d bytes: got %d bytes, %v", len(line), len(got), err)
		}
	}
	if n := p.Conns(); n != 1 {
		t.Fatalf("Conns() = %d, want 1", n)
	}
}

func TestProxyCutResetsAndRefusesUntilHeal(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	if _, err := c.roundTrip("before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	if _, err := c.read(5 * time.Second); err == nil || isTimeout(err) {
		t.Fatalf("open connection after Cut: read error %v, want a reset or EOF at once", err)
	}
	waitFor(t, 5*time.Second, func() error {
		if n := p.Conns(); n != 0 {
			return errors.New("connections still open after Cut")
		}
		return nil
	})
	// A new connection is reset at once (the reset may even beat the end
	// of the client's connect).
	if nc, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second); err == nil {
		n := &lineConn{Conn: nc, r: bufio.NewReader(nc)}
		defer nc.Close()
		if _, err := n.roundTrip("during", 5*time.Second); err == nil || isTimeout(err) {
			t.Fatalf("new connection during Cut: error %v, want a reset or EOF at once", err)
		}
	} else if isTimeout(err) {
		t.Fatalf("dial during Cut: %v, want a reset at once", err)
	}
	p.Heal()
	h := dial(t, p.Addr())
	if got, err := h.roundTrip("after", 5*time.Second); err != nil || got != "after" {
		t.Fatalf("after Heal: %q, %v", got, err)
	}
}

func TestProxyBlackholeHoldsBytesUntilHeal(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	if _, err := c.roundTrip("before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	// Nothing comes back while black-holed, on an open or a new connection,
	// and nothing is closed.
	if _, err := c.roundTrip("held", 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("open connection while black-holed: %v, want a timeout", err)
	}
	n := dial(t, p.Addr())
	if _, err := n.roundTrip("new", 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("new connection while black-holed: %v, want a timeout", err)
	}
	if got := p.Conns(); got != 2 {
		t.Fatalf("Conns() = %d while black-holed, want 2", got)
	}
	p.Heal()
	// The held bytes arrive: nothing was lost.
	if got, err := c.read(5 * time.Second); err != nil || got != "held" {
		t.Fatalf("held line after Heal: %q, %v", got, err)
	}
	if got, err := n.read(5 * time.Second); err != nil || got != "new" {
		t.Fatalf("held connection after Heal: %q, %v", got, err)
	}
}

func TestProxyCutDuringBlackhole(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	if _, err := c.roundTrip("before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	n := dial(t, p.Addr()) // held before it was dialled upstream
	if _, err := n.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	for _, conn := range []*lineConn{c, n} {
		if _, err := conn.read(5 * time.Second); err == nil || isTimeout(err) {
			t.Fatalf("after Cut: %v, want a reset or EOF at once", err)
		}
	}
	p.Heal()
	h := dial(t, p.Addr())
	if got, err := h.roundTrip("after", 5*time.Second); err != nil || got != "after" {
		t.Fatalf("after Heal: %q, %v", got, err)
	}
}

func TestProxyCloseEndsEverything(t *testing.T) {
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr())
	if _, err := c.roundTrip("x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	held := dial(t, p.Addr())
	_ = held
	waitFor(t, 5*time.Second, func() error {
		if p.Conns() != 2 {
			return errors.New("second connection not accepted yet")
		}
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with a held connection")
	}
	if _, err := c.read(5 * time.Second); err == nil || isTimeout(err) {
		t.Fatalf("connection after Close: %v, want closed", err)
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("proxy still accepts after Close")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestProxyLatency(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	p.SetLatency(100 * time.Millisecond)
	start := time.Now()
	if got, err := c.roundTrip("slow", 5*time.Second); err != nil || got != "slow" {
		t.Fatalf("round trip with latency: %q, %v", got, err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("round trip took %s, want at least 2×100ms", d)
	}
	p.SetLatency(0)
	if got, err := c.roundTrip("fast", 5*time.Second); err != nil || got != "fast" {
		t.Fatalf("round trip without latency: %q, %v", got, err)
	}
}

// waitFor polls cond until it returns nil, failing after timeout.
func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
