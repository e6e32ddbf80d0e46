package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// Two readers of one pipeline: one is active, the other stands by. When the
// active one is paused (SIGSTOP) past its lease, the standby takes over;
// when the paused one wakes up, its publishes are refused (fenced by the
// subject's expected last sequence) and it stands by. The target converges
// and nothing is applied out of order.
func TestStandbyReaderTakesOverAndZombieIsFenced(t *testing.T) {
	const rows = 120000
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, rows)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")

	a := testenv.Start(t, "reader", "run", "--config", cfg, "--log-format", "json")
	testenv.WaitFor(t, time.Minute, func() error {
		if !strings.Contains(a.Output(), `"msg":"reader active"`) {
			return fmt.Errorf("reader A not active yet")
		}
		return nil
	})
	b := testenv.Start(t, "reader", "run", "--config", cfg, "--log-format", "json")
	testenv.WaitFor(t, time.Minute, func() error {
		if !strings.Contains(b.Output(), "standing by") {
			return fmt.Errorf("reader B is not standing by")
		}
		return nil
	})
	if strings.Contains(b.Output(), `"msg":"reader active"`) {
		t.Fatal("two readers active at once")
	}
	a.Pause()
	testenv.WaitFor(t, time.Minute, func() error {
		if !strings.Contains(b.Output(), `"msg":"reader active"`) {
			return fmt.Errorf("reader B has not taken over")
		}
		return nil
	})
	a.Resume()
	testenv.WaitFor(t, time.Minute, func() error {
		out := a.Output()
		if !strings.Contains(out, "reader lease lost") && !strings.Contains(out, "this reader stands by") {
			return fmt.Errorf("reader A did not notice it lost the lease")
		}
		return nil
	})

	w := testenv.Start(t, "writer", "run", "--config", cfg)
	src.Exec(t, "UPDATE public.invoices SET status = 'paid', updated_at = now() WHERE id % 100 = 0")
	testenv.WaitFor(t, syncTimeout, func() error {
		var n int64
		if err := dst.Conn.QueryRow(context.Background(), "SELECT count(*) FROM public.invoices WHERE status = 'paid'").Scan(&n); err != nil {
			return err
		}
		if n != rows/100 {
			return fmt.Errorf("%d paid rows", n)
		}
		return countIs(dst, rows)
	})
	w.Stop(t, 30*time.Second)
	a.Stop(t, 30*time.Second)
	b.Stop(t, 30*time.Second)
	mustVerify(t, cfg, 0)
}
