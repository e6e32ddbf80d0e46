package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// TestClusterLeaderKilled runs the services of staged push as processes
// against a 3-node NATS JetStream cluster (built nats-server binaries
// started from deploy/nats/cluster.conf) with R3 streams: a reader, a
// stager, a differ and three writers while the source keeps changing. The stream's leader node is killed with
// SIGKILL mid-run and restarted later. Every change still arrives exactly
// as in the source (`verify` 0) and nothing is dead-lettered.
func TestClusterLeaderKilled(t *testing.T) {
	t.Parallel() // a long test sharing no port, environment or cluster: runs beside the others
	cluster := testenv.StartNATSCluster(t)
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dstURL := pgtest.NewDatabase(t)
	stageURL := pgtest.NewDatabase(t)
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 20000)

	cfg := filepath.Join(t.TempDir(), "pipeline.yaml")
	writeFile(t, cfg, fmt.Sprintf(`pipeline: invoices
mode: staged
nats:
  url: %q
  replicas: 3
stage:
  url: %q
source:
  kind: postgres
  url: %q
  table: public.invoices
  key: [id]
  columns: [id, customer, amount, status, note, updated_at]
  capture:
    column: updated_at
    batch_size: 500
    poll_interval: 100ms
targets:
  - name: pg
    kind: postgres
    url: %q
    writer:
      ack_wait: 5s
`, cluster.URLs(), stageURL, src.URL, dstURL))

	testenv.Start(t, "reader", "run", "--config", cfg)
	testenv.Start(t, "stager", "run", "--config", cfg)
	testenv.Start(t, "differ", "run", "--config", cfg)
	for range 3 {
		testenv.Start(t, "writer", "run", "--config", cfg)
	}

	nc, err := nats.Connect(cluster.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	info := func() (*jetstream.StreamInfo, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, bus.StreamName("invoices"))
		if err != nil {
			return nil, err
		}
		return s.Info(ctx)
	}
	var leader string
	testenv.WaitFor(t, time.Minute, func() error {
		si, err := info()
		if err != nil {
			return err
		}
		if si.Config.Replicas != 3 || si.Cluster == nil || si.Cluster.Leader == "" || si.State.Msgs == 0 {
			return fmt.Errorf("stream not yet R3 with a leader and messages: %+v", si.Cluster)
		}
		leader = si.Cluster.Leader
		return nil
	})

	// Keep the source changing through the fault.
	stop := make(chan struct{})
	done := make(chan struct{})
	var rounds atomic.Int64
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			lo := (i*97)%20000 + 1
			if _, err := src.Conn.Exec(context.Background(),
				`UPDATE public.invoices SET status = 'round ' || $1::int, updated_at = now() WHERE id BETWEEN $2 AND $2 + 49`,
				i, lo); err != nil {
				t.Errorf("update round %d: %v", i, err)
				return
			}
			rounds.Add(1)
		}
	}()

	testenv.WaitFor(t, time.Minute, func() error {
		if rounds.Load() < 20 {
			return fmt.Errorf("%d update rounds so far", rounds.Load())
		}
		return nil
	})
	node := cluster.Node(leader)
	t.Logf("killing the stream leader %s", leader)
	cluster.Kill(node)
	testenv.WaitFor(t, time.Minute, func() error {
		si, err := info()
		if err != nil {
			return err
		}
		if si.Cluster == nil || si.Cluster.Leader == "" || si.Cluster.Leader == leader {
			return fmt.Errorf("no new stream leader yet")
		}
		return nil
	})
	before := rounds.Load()
	testenv.WaitFor(t, time.Minute, func() error {
		if rounds.Load() < before+20 {
			return fmt.Errorf("waiting for changes under the new leader")
		}
		return nil
	})
	cluster.Restart(node)
	after := rounds.Load() // a few more rounds with the old leader back as a follower
	testenv.WaitFor(t, time.Minute, func() error {
		if rounds.Load() < after+10 {
			return fmt.Errorf("waiting for changes after the restart")
		}
		return nil
	})
	close(stop)
	<-done

	testenv.WaitFor(t, 2*time.Minute, func() error {
		r := testenv.Run(t, time.Minute, "oneway", "verify", "--config", cfg)
		if r.Code != 0 {
			return fmt.Errorf("verify exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
		}
		return nil
	})
	si, err := info()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bus.StreamName("invoices"))
	if err != nil {
		t.Fatal(err)
	}
	dl, err := s.Info(ctx, jetstream.WithSubjectFilter(bus.DLQSubjects("invoices")))
	if err != nil {
		t.Fatal(err)
	}
	if len(dl.State.Subjects) != 0 {
		t.Fatalf("dead letters after a leader kill: %v", dl.State.Subjects)
	}
	t.Logf("%d update rounds; stream holds %d messages; leader now %s", rounds.Load(), si.State.Msgs, si.Cluster.Leader)
}
