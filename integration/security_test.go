package integration

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/natsbus/natsembed"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// withPassword returns dbURL logged in as a new role with that password
// (owner of the database, so it may create the ledger schema).
func withPassword(t *testing.T, dbURL, role, password string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	pgtest.Exec(t, dbURL,
		fmt.Sprintf(`DO $$ BEGIN CREATE ROLE %s LOGIN PASSWORD '%s'; EXCEPTION WHEN duplicate_object THEN ALTER ROLE %s PASSWORD '%s'; END $$`, role, password, role, password),
		fmt.Sprintf(`ALTER DATABASE %q OWNER TO %s`, db, role),
		fmt.Sprintf(`GRANT pg_read_all_stats TO %s`, role),
		fmt.Sprintf(`GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s`, role),
	)
	u.User = url.UserPassword(role, password)
	return u.String()
}

// TestSecretsNeverLogged runs every command that touches the pipeline with
// known secrets in it — database passwords, NATS credentials, an HTTP
// header — at debug level, including failing runs, and greps all output.
func TestSecretsNeverLogged(t *testing.T) {
	const (
		srcPass   = "Src-Secret-5e1f"
		dstPass   = "Dst-Secret-77aa"
		natsPass  = "Nats-Secret-90bd"
		apiToken  = "Api-Secret-c3c3"
		sinkPass  = "Sink-Secret-4b07"
		kafkaPass = "Kafka-Secret-d2e9"
	)
	secrets := []string{srcPass, dstPass, natsPass, apiToken, sinkPass, kafkaPass, url.QueryEscape(srcPass)}
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 200)
	srcURL := withPassword(t, src.URL, "oneway_src_secret", srcPass)
	dstURL := withPassword(t, pgtest.NewDatabase(t), "oneway_dst_secret", dstPass)
	_, natsURL := bustest.StartJetStreamWith(t, natsembed.Options{User: "svc", Password: natsPass})
	// A NATS target and a Kafka target, each behind its own login.
	_, sinkURL := bustest.StartJetStreamWith(t, natsembed.Options{User: "sink", Password: sinkPass})
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "invoices-out"), kfake.EnableSASL(),
		kfake.Superuser("SCRAM-SHA-256", "producer", kafkaPass))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kafka.Close)

	write := func(name, targetURL, natsPassword string, sinkKafkaPass ...string) string {
		sinkPassword, kafkaPassword := sinkPass, kafkaPass
		if len(sinkKafkaPass) == 2 {
			sinkPassword, kafkaPassword = sinkKafkaPass[0], sinkKafkaPass[1]
		}
		path := filepath.Join(t.TempDir(), name)
		writeFile(t, path, fmt.Sprintf(`pipeline: invoices
nats:
  url: %q
  user: svc
  password: %q
source:
  kind: postgres
  url: %q
  table: public.invoices
  key: [id]
  capture:
    column: updated_at
    poll_interval: 100ms
targets:
  - name: pg
    kind: postgres
    url: %q
  - name: api
    kind: http
    url: http://127.0.0.1:1/invoices/{{.Key}}
    ledger_url: %q
    http:
      headers:
        - name: Authorization
          value: "Bearer %s"
  - name: bus
    kind: nats
    url: %q
    ledger_url: %q
    nats:
      subject: out.invoices
      user: sink
      password: %q
  - name: topic
    kind: kafka
    url: %q
    ledger_url: %q
    kafka:
      topic: invoices-out
      sasl: {mechanism: scram-sha-256, user: producer, password: %q}
`, natsURL, natsPassword, srcURL, targetURL, dstURL, apiToken, sinkURL, dstURL, sinkPassword,
			strings.Join(kafka.ListenAddrs(), ","), dstURL, kafkaPassword))
		return path
	}
	good := write("good.yaml", dstURL, natsPass)
	badTarget := write("bad-target.yaml", strings.Replace(dstURL, "127.0.0.1", "127.0.0.1:1", 1), natsPass)
	badNATS := write("bad-nats.yaml", dstURL, "wrong-"+natsPass)
	badSinks := write("bad-sinks.yaml", dstURL, natsPass, "wrong-"+sinkPass, "wrong-"+kafkaPass)

	var outputs []string
	run := func(timeout time.Duration, args ...string) testenv.Result {
		r := testenv.Run(t, timeout, "oneway", append(args, "--log-level", "debug")...)
		outputs = append(outputs, strings.Join(args, " ")+"\n"+r.Stdout+r.Stderr)
		return r
	}
	run(time.Minute, "config", "print", "--config", good)
	run(time.Minute, "config", "validate", "--config", good)
	// Reader and writers run; the API is unreachable, so its writer logs
	// failures (with the request URL and headers redacted) meanwhile.
	up := testenv.Start(t, "oneway", "up", "--config", good, "--data-dir", t.TempDir(), "--log-level", "debug")
	dst := testenv.Connect(t, dstURL)
	testenv.WaitFor(t, syncTimeout, func() error {
		if done, code := up.Exited(); done {
			t.Fatalf("oneway up exited with %d", code)
		}
		return countIs(dst, 200)
	})
	up.Stop(t, 30*time.Second)
	outputs = append(outputs, "up\n"+up.Output())
	run(time.Minute, "verify", "--config", good, "--target", "pg")
	if r := run(2*time.Minute, "verify", "--config", badTarget, "--target", "pg"); r.Code == 0 {
		t.Error("verify against an unreachable target exited 0")
	}
	if r := run(2*time.Minute, "dlq", "list", "--config", badNATS); r.Code == 0 {
		t.Error("dlq list with a wrong NATS password exited 0")
	}
	// The sinks' logins, wrong: verify reads each back and fails.
	for _, target := range []string{"bus", "topic"} {
		if r := run(2*time.Minute, "verify", "--config", badSinks, "--target", target); r.Code == 0 {
			t.Errorf("verify of target %s with a wrong password exited 0", target)
		}
	}
	for _, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("output of `oneway %s` contains the secret %q", strings.SplitN(out, "\n", 2)[0], s)
			}
		}
	}
	if !strings.Contains(strings.Join(outputs, ""), "xxxxx") {
		t.Error("no redacted value in any output: the test did not exercise the redaction")
	}
}

// TestProductionModeRefusesInsecureTransport: `oneway up` in production
// mode with sslmode=disable exits 2 naming the setting.
func TestProductionModeRefusesInsecureTransport(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	writeFile(t, cfg, `pipeline: invoices
production: true
nats:
  url: tls://nats.example.com:4222
  creds_file: /dev/null
source:
  kind: postgres
  url: postgres://oneway:pw@erp.example.com:5432/erp?sslmode=disable
  table: public.invoices
  key: [id]
  capture:
    column: updated_at
targets:
  - name: pg
    kind: postgres
    url: postgres://oneway:pw@crm.example.com:5432/crm?sslmode=verify-full
`)
	r := testenv.Run(t, time.Minute, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir())
	if r.Code != 2 {
		t.Fatalf("exit %d, want 2\n%s", r.Code, r.Stderr)
	}
	if !strings.Contains(r.Stderr, "source.url") || !strings.Contains(r.Stderr, "sslmode=disable") {
		t.Fatalf("the error does not name source.url and sslmode=disable:\n%s", r.Stderr)
	}
	if strings.Contains(r.Stderr, ":pw@") {
		t.Fatalf("the error leaks the password:\n%s", r.Stderr)
	}
}

// TestAwkwardNamesAreQuoted syncs a table whose names are SQL keywords,
// mixed case, unicode and contain $, end to end; a name carrying SQL is
// refused by the config, naming the field.
func TestAwkwardNamesAreQuoted(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, `CREATE SCHEMA "Select"`,
		`CREATE TABLE "Select"."Order" ("from" bigint PRIMARY KEY, "select" text, "Group$1" numeric, "café" text,
		  "updated_at" timestamptz NOT NULL DEFAULT now())`,
		`INSERT INTO "Select"."Order" SELECT g, 'x''; DROP TABLE y; --' || g, g / 3.0, 'é' || g FROM generate_series(1, 500) g`)
	_, natsURL := bustest.StartJetStream(t)
	write := func(columns string) string {
		path := filepath.Join(t.TempDir(), "p.yaml")
		writeFile(t, path, fmt.Sprintf(`pipeline: awkward
nats:
  url: %q
source:
  kind: postgres
  url: %q
  table: Select.Order
  key: [from]
  columns: %s
  capture:
    column: updated_at
    poll_interval: 100ms
targets:
  - name: pg
    kind: postgres
    url: %q
`, natsURL, src.URL, columns, dst.URL))
		return path
	}
	cfg := write(`[from, select, Group$1, café, updated_at]`)
	if r := testenv.Run(t, 2*time.Minute, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--exit-when-synced"); r.Code != 0 {
		t.Fatalf("up exit %d:\n%s", r.Code, r.Stderr)
	}
	mustVerify(t, cfg, 0)
	if n := dst.Int(t, `SELECT count(*) FROM "Select"."Order" WHERE "select" LIKE 'x''; DROP TABLE y; --%'`); n != 500 {
		t.Fatalf("%d rows with the quoted value, want 500", n)
	}

	bad := write(`[from, 'select"; DROP TABLE x; --', updated_at]`)
	r := testenv.Run(t, time.Minute, "oneway", "config", "validate", "--config", bad)
	if r.Code != 2 || !strings.Contains(r.Stderr, "source.columns") || !strings.Contains(r.Stderr, "not a valid identifier") {
		t.Fatalf("a column name carrying SQL: exit %d, want 2 naming source.columns:\n%s", r.Code, r.Stderr)
	}
}
