// Package netproxy is a TCP proxy for tests of network faults between a
// service and what it talks to: cut connections, a blackhole, latency.
package netproxy

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 in front of one upstream address, for
// network faults between a service and what it talks to. It forwards until
// told otherwise:
//
//   - Cut resets every open connection (TCP RST) and, until Heal, resets
//     each new one as soon as it is accepted: a partition the client sees
//     at once, like a crashed peer or a firewall rejecting packets.
//   - Blackhole stops every byte in both directions without closing
//     anything; new connections are accepted and held. A client notices
//     only through its own timeouts. On Heal the held bytes flow again and
//     held connections are connected upstream, as when a partition heals
//     before TCP gives up.
//   - Heal forwards again.
//
// SetLatency delays every chunk forwarded, in each direction, independently
// of the fault state: a slow link.
//
// The methods are safe for concurrent use. Close stops the proxy and closes
// every connection.
type Proxy struct {
	upstream string
	ln       net.Listener

	mu     sync.Mutex
	state  proxyState
	healed chan struct{} // closed when the state returns to forwarding
	conns  map[*proxyConn]struct{}
	closed bool
	wg     sync.WaitGroup

	latency atomic.Int64 // nanoseconds per forwarded chunk
}

type proxyState int

const (
	forwarding proxyState = iota
	cut
	blackholed
)

// proxyConn is one client connection and, once dialled, its upstream.
type proxyConn struct {
	once   sync.Once
	done   chan struct{}
	mu     sync.Mutex
	client net.Conn
	up     net.Conn
}

// close resets both sides (linger 0 sends RST instead of FIN).
func (c *proxyConn) close() {
	c.once.Do(func() {
		close(c.done)
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range []net.Conn{c.client, c.up} {
			if n == nil {
				continue
			}
			if tc, ok := n.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = n.Close()
		}
	})
}

// New listens on 127.0.0.1 (a free port) and forwards to upstream
// ("host:port").
func New(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy to %s: listen: %w", upstream, err)
	}
	p := &Proxy{upstream: upstream, ln: ln, conns: map[*proxyConn]struct{}{}, healed: make(chan struct{})}
	close(p.healed)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Start is New for a test: the proxy is closed when the test ends.
func Start(t testing.TB, upstream string) *Proxy {
	t.Helper()
	p, err := New(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// Addr is the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut resets every connection and refuses (resets) new ones until Heal.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.leaveForwarding()
	p.state = cut
	conns := p.takeConns()
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Blackhole holds every byte and every new connection until Heal.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leaveForwarding()
	p.state = blackholed
}

// Heal forwards again; bytes and connections held by Blackhole go through.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != forwarding {
		p.state = forwarding
		close(p.healed)
	}
}

// SetLatency delays each chunk forwarded from now on by d (0: none). The
// chunks of one direction are delayed one after the other, so a latency
// also bounds a connection's throughput.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Conns is the number of client connections open through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening, closes every connection and waits for the proxy's
// goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := p.takeConns()
	p.mu.Unlock()
	err := p.ln.Close()
	for _, c := range conns {
		c.close()
	}
	p.wg.Wait()
	return err
}

// leaveForwarding makes a fresh healed channel when the proxy stops
// forwarding. p.mu is held.
func (p *Proxy) leaveForwarding() {
	if p.state == forwarding {
		p.healed = make(chan struct{})
	}
}

// takeConns empties the connection set. p.mu is held.
func (p *Proxy) takeConns() []*proxyConn {
	out := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		out = append(out, c)
	}
	clear(p.conns)
	return out
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		c := &proxyConn{client: client, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed || p.state == cut {
			p.mu.Unlock()
			c.close()
			continue
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

// pass blocks while the proxy is black-holed. It reports false when the
// connection must end instead (cut, closed).
func (p *Proxy) pass(c *proxyConn) bool {
	for {
		p.mu.Lock()
		st, healed := p.state, p.healed
		p.mu.Unlock()
		switch st {
		case forwarding:
			select {
			case <-c.done:
				return false
			default:
				return true
			}
		case cut:
			return false
		}
		select {
		case <-healed:
		case <-c.done:
			return false
		}
	}
}

func (p *Proxy) serve(c *proxyConn) {
	defer p.wg.Done()
	defer func() {
		c.close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	if !p.pass(c) {
		return
	}
	up, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		return
	}
	c.mu.Lock()
	select {
	case <-c.done: // cut or closed while dialling
		c.mu.Unlock()
		_ = up.Close()
		return
	default:
		c.up = up
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(c, up, c.client) }()
	go func() { defer wg.Done(); p.pipe(c, c.client, up) }()
	wg.Wait()
}

// pipe copies src to dst, holding each chunk while the proxy is
// black-holed. When either side ends, the whole connection is closed.
func (p *Proxy) pipe(c *proxyConn, dst, src net.Conn) {
	defer c.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.latency.Load()); d > 0 {
				select {
				case <-time.After(d):
				case <-c.done:
					return
				}
			}
			if !p.pass(c) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or an error: PostgreSQL and NATS never half-close
		}
	}
}
