package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oneway-sync/oneway/integration/testenv"
)

// TestPostgresVerifyFull runs a staged pipeline whose source, target and
// stage are on a PostgreSQL server that takes TCP connections only over
// TLS, every URL with sslmode=verify-full and the server's CA: it
// converges and verifies. The same URLs trusting another CA fail, naming
// the certificate problem and not the password.
func TestPostgresVerifyFull(t *testing.T) {
	pg := testenv.StartTLSPostgres(t)
	for _, db := range []string{"src", "dst", "stage"} {
		pg.CreateDatabase(t, db)
	}
	src := testenv.Connect(t, pg.URL("src", pg.CAFile))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 1000)
	dst := testenv.Connect(t, pg.URL("dst", pg.CAFile))
	dst.Exec(t, testenv.InvoicesDDL)

	// The server refuses a plaintext connection, so whatever the pipeline
	// did, it did over TLS.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	plain := strings.Replace(pg.URL("src", pg.CAFile), "sslmode=verify-full", "sslmode=disable", 1)
	if conn, err := pgx.Connect(ctx, plain); err == nil {
		conn.Close(ctx)
		t.Fatal("the TLS-only server accepted a plaintext connection")
	}
	if ssl := src.String(t, `SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()`); ssl != "true" {
		t.Fatalf("a verify-full connection is not TLS (pg_stat_ssl.ssl = %s)", ssl)
	}

	write := func(ca string) string {
		return stagedConfig(t, "", pg.URL("src", ca), pg.URL("stage", ca), "2s", stagedTarget("pg", pg.URL("dst", ca), "500ms", ""))
	}
	cfg := write(pg.CAFile)
	if r := testenv.Run(t, 3*time.Minute, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--exit-when-synced", "--admin-addr", "off"); r.Code != 0 {
		t.Fatalf("up over verify-full TLS: exit %d\n%s", r.Code, r.Stderr)
	}
	if err := countIs(dst, 1000); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, cfg, 0)

	wrong := write(pg.OtherCAFile)
	r := testenv.Run(t, 2*time.Minute, "oneway", "verify", "--config", wrong)
	if r.Code == 0 {
		t.Fatal("verify trusting the wrong CA exited 0")
	}
	if !strings.Contains(r.Stderr, "certificate signed by unknown authority") {
		t.Fatalf("the error does not say the certificate is not trusted:\n%s", r.Stderr)
	}
	if strings.Contains(r.Stderr, ":postgres@") {
		t.Fatalf("the error leaks the password:\n%s", r.Stderr)
	}
}
