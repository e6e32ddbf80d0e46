package integration

import (
	"testing"
	"time"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/natsbus/natsembed"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// Pages of wide rows are split into messages that fit the server's
// max_payload (64 KiB here, against 1,000-row pages of ~1.2 MB).
func TestWideRowsFitMaxPayload(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 3000)
	src.Exec(t, "UPDATE public.invoices SET note = repeat('wide ', 240) || id")
	_, natsURL := bustest.StartJetStreamWith(t, natsembed.Options{MaxPayload: 64 << 10})
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	reader := testenv.Start(t, "reader", "run", "--config", cfg)
	writer := testenv.Start(t, "writer", "run", "--config", cfg)
	testenv.WaitFor(t, syncTimeout, func() error { return countIs(dst, 3000) })
	reader.Stop(t, 30*time.Second)
	writer.Stop(t, 30*time.Second)
	mustVerify(t, cfg, 0)
}
