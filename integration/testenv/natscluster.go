package testenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	natsOnce sync.Once
	natsBin  string
	natsErr  error
)

// NATSServerBin builds the nats-server binary of the version the workspace
// uses (once per test process) and returns its path.
func NATSServerBin(t testing.TB) string {
	t.Helper()
	natsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "oneway-nats-")
		if err != nil {
			natsErr = err
			return
		}
		natsBin = filepath.Join(dir, "nats-server")
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", natsBin, "github.com/nats-io/nats-server/v2")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			natsErr = fmt.Errorf("build nats-server: %v\n%s", err, out)
		}
	})
	if natsErr != nil {
		t.Fatal(natsErr)
	}
	return natsBin
}

// NATSNode is one nats-server process of a cluster.
type NATSNode struct {
	Name      string
	ClientURL string
	healthURL string
	env       []string
	proc      *exec.Cmd
	done      chan struct{}
	log       *lockedBuffer
}

// NATSCluster is a 3-node JetStream cluster of nats-server processes on
// 127.0.0.1, each started from a file of deploy/nats.
type NATSCluster struct {
	t         testing.TB
	bin, conf string
	Nodes     []*NATSNode
}

// StartNATSCluster starts three nodes from deploy/nats/cluster.conf and
// waits until JetStream has a meta leader. The nodes are killed when the
// test ends.
func StartNATSCluster(t testing.TB) *NATSCluster {
	t.Helper()
	return StartNATSClusterFrom(t, "cluster.conf")
}

// StartNATSClusterFrom is StartNATSCluster from another file of deploy/nats
// that includes cluster.conf, such as cluster-auth.conf. The nodes inherit
// the test's environment (the variables the file reads).
func StartNATSClusterFrom(t testing.TB, name string) *NATSCluster {
	t.Helper()
	bin := NATSServerBin(t)
	_, file, _, _ := runtime.Caller(0)
	conf := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "nats", name)
	ports := freePorts(t, 9)
	routes := make([]string, 3)
	for i := range routes {
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[6+i])
	}
	c := &NATSCluster{t: t, bin: bin, conf: conf}
	for i := range 3 {
		n := &NATSNode{
			Name:      fmt.Sprintf("n%d", i+1),
			ClientURL: fmt.Sprintf("nats://127.0.0.1:%d", ports[i]),
			healthURL: fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[3+i]),
		}
		n.env = append(os.Environ(),
			"NATS_SERVER_NAME="+n.Name,
			fmt.Sprintf("NATS_PORT=%d", ports[i]),
			fmt.Sprintf("NATS_HTTP_PORT=%d", ports[3+i]),
			fmt.Sprintf("NATS_CLUSTER_PORT=%d", ports[6+i]),
			"NATS_ROUTE_1="+routes[0], "NATS_ROUTE_2="+routes[1], "NATS_ROUTE_3="+routes[2],
			"NATS_STORE_DIR="+t.TempDir(),
		)
		c.Nodes = append(c.Nodes, n)
		c.start(n)
	}
	for _, n := range c.Nodes {
		c.waitHealthy(n)
	}
	t.Cleanup(func() {
		for _, n := range c.Nodes {
			n.kill()
			if t.Failed() {
				t.Logf("nats-server %s log (tail):\n%s", n.Name, tail(n.log.String(), 3000))
			}
		}
	})
	return c
}

func (c *NATSCluster) start(n *NATSNode) {
	c.t.Helper()
	cmd := exec.Command(c.bin, "-c", c.conf)
	cmd.Env = n.env
	n.log = &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = n.log, n.log
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start nats-server %s: %v", n.Name, err)
	}
	n.proc, n.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(n.done)
	WaitFor(c.t, 30*time.Second, func() error {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(n.ClientURL, "nats://"), time.Second)
		if err != nil {
			return fmt.Errorf("nats-server %s not listening: %w\n%s", n.Name, err, tail(n.log.String(), 2000))
		}
		return conn.Close()
	})
}

// waitHealthy waits until the node's /healthz answers 200, which it does
// once JetStream is up and the node has caught up with the meta leader.
func (c *NATSCluster) waitHealthy(n *NATSNode) {
	c.t.Helper()
	WaitFor(c.t, time.Minute, func() error {
		resp, err := http.Get(n.healthURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("nats-server %s /healthz: HTTP %d", n.Name, resp.StatusCode)
		}
		return nil
	})
}

// URLs is the comma-separated client URL list of every node.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.ClientURL
	}
	return strings.Join(urls, ",")
}

// Log returns what every node has logged since it last started, each
// node's under a line naming it.
func (c *NATSCluster) Log() string {
	var b strings.Builder
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "--- nats-server %s\n%s", n.Name, n.log.String())
	}
	return b.String()
}

// Node returns the node of that server name.
func (c *NATSCluster) Node(name string) *NATSNode {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("no NATS node named %q", name)
	return nil
}

// Kill kills a node with SIGKILL (its store stays for Restart).
func (c *NATSCluster) Kill(n *NATSNode) { n.kill() }

// Restart starts killed nodes again on their ports and stores, all of them
// before waiting until each is healthy: a node alone cannot become healthy
// without a quorum to elect a meta leader.
func (c *NATSCluster) Restart(nodes ...*NATSNode) {
	c.t.Helper()
	for _, n := range nodes {
		c.start(n)
	}
	for _, n := range nodes {
		c.waitHealthy(n)
	}
}

func (n *NATSNode) kill() {
	if n.proc == nil || n.proc.Process == nil {
		return
	}
	_ = n.proc.Process.Kill()
	<-n.done
}

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	ls := make([]net.Listener, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
