package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// outageServer returns a PostgreSQL server the test may stop, and the
// pg_ctlcluster words naming it ("15 oneway_outage"). .ci/run creates it.
func outageServer(t *testing.T) (url string, cluster []string) {
	t.Helper()
	url, name := os.Getenv("ONEWAY_TEST_OUTAGE_POSTGRES_URL"), os.Getenv("ONEWAY_TEST_OUTAGE_CLUSTER")
	if url == "" || name == "" {
		msg := "ONEWAY_TEST_OUTAGE_POSTGRES_URL and ONEWAY_TEST_OUTAGE_CLUSTER name a PostgreSQL cluster this test may stop (.ci/run creates one)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return url, strings.Fields(name)
}

func pgCtl(t *testing.T, cluster []string, action ...string) {
	t.Helper()
	args := append(append([]string{}, cluster...), action...)
	if out, err := exec.Command("pg_ctlcluster", args...).CombinedOutput(); err != nil {
		t.Fatalf("pg_ctlcluster %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// The target PostgreSQL crashes (stop -m immediate) for 30 s while changes
// keep coming: the writer waits with backoff without spending its delivery
// budget, nothing is dead-lettered, and the target converges after.
func TestTargetDownThirtySeconds(t *testing.T) {
	outageURL, cluster := outageServer(t)
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dstURL := pgtest.NewDatabaseOn(t, outageURL)
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 20000)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dstURL, "      max_attempts: 2\n")
	up := testenv.Start(t, "oneway", "up", "--config", cfg, "--log-format", "json")
	_ = up

	count := func() (int64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d, err := pgxConnect(ctx, dstURL)
		if err != nil {
			return 0, err
		}
		defer d.Close(ctx)
		var n int64
		err = d.QueryRow(ctx, "SELECT count(*) FROM public.invoices WHERE status = 'paid'").Scan(&n)
		return n, err
	}
	testenv.WaitFor(t, syncTimeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d, err := pgxConnect(ctx, dstURL)
		if err != nil {
			return err
		}
		defer d.Close(ctx)
		var n int64
		if err := d.QueryRow(ctx, "SELECT count(*) FROM public.invoices").Scan(&n); err != nil {
			return err
		}
		if n != 20000 {
			return fmt.Errorf("target has %d rows", n)
		}
		return nil
	})

	t.Cleanup(func() { _ = exec.Command("pg_ctlcluster", append(append([]string{}, cluster...), "start")...).Run() })
	pgCtl(t, cluster, "stop", "-m", "immediate")
	down := time.Now()
	// Changes keep coming while the target is down, in several batches.
	for i := 0; i < 6; i++ {
		src.Exec(t, fmt.Sprintf("UPDATE public.invoices SET status = 'paid', updated_at = now() WHERE id %% 6 = %d", i))
		time.Sleep(5 * time.Second) // the outage's length, not synchronisation
	}
	if d := time.Since(down); d < 30*time.Second {
		time.Sleep(30*time.Second - d)
	}
	pgCtl(t, cluster, "start")

	testenv.WaitFor(t, syncTimeout, func() error {
		n, err := count()
		if err != nil {
			return err
		}
		if n != 20000 {
			return fmt.Errorf("%d paid rows in the target", n)
		}
		return nil
	})
	up.Stop(t, 30*time.Second)
	mustVerify(t, cfg, 0)

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), bus.StreamName("invoices"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(bus.DLQSubject("invoices", "pg")))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[bus.DLQSubject("invoices", "pg")]; n != 0 {
		t.Fatalf("%d dead letters after a target outage; want none", n)
	}
	if strings.Contains(up.Output(), "message dead-lettered") {
		t.Fatal("the writer dead-lettered a message during the outage")
	}
}
