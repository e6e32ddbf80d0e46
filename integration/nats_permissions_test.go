package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// natsUsers are the users of deploy/nats/permissions.conf.
var natsUsers = []string{"reader", "writer", "stager", "differ", "status", "operator"}

func natsPassword(user string) string { return "pw-" + user + "-7c1d" }

// violationLog keeps what the server logs about refused publishes and
// subscriptions.
type violationLog struct {
	mu    sync.Mutex
	lines []string
	// warnings are the server's last warnings and errors, printed when the
	// test fails.
	warnings []string
}

func (l *violationLog) record(format string, v ...any) {
	line := fmt.Sprintf(format, v...)
	if strings.Contains(line, "Violation") {
		l.mu.Lock()
		l.lines = append(l.lines, line)
		l.mu.Unlock()
	}
}

func (l *violationLog) warn(format string, v ...any) {
	l.record(format, v...)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.warnings) == 50 {
		l.warnings = l.warnings[1:]
	}
	l.warnings = append(l.warnings, time.Now().UTC().Format("15:04:05.000 ")+fmt.Sprintf(format, v...))
}

func (l *violationLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// forget drops the violations of user: those a test caused on purpose.
func (l *violationLog) forget(user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = slices.DeleteFunc(l.lines, func(line string) bool { return strings.Contains(line, `/user:`+user+`"`) })
}

// check fails the test at once when the server refused anything.
func (l *violationLog) check(t *testing.T) {
	t.Helper()
	if v := l.String(); v != "" {
		t.Fatalf("the services did something their users may not:\n%s", v)
	}
}

func (l *violationLog) Noticef(format string, v ...any) { l.record(format, v...) }
func (l *violationLog) Warnf(format string, v ...any)   { l.warn(format, v...) }
func (l *violationLog) Fatalf(format string, v ...any)  { l.warn(format, v...) }
func (l *violationLog) Errorf(format string, v ...any)  { l.warn(format, v...) }
func (l *violationLog) Debugf(format string, v ...any)  { l.record(format, v...) }
func (l *violationLog) Tracef(format string, v ...any)  { l.record(format, v...) }

// startPermissionedNATS runs a JetStream server whose only users are those
// of deploy/nats/permissions.conf, loaded from that file as a deployment
// includes it.
func startPermissionedNATS(t *testing.T) (string, *violationLog) {
	t.Helper()
	perms, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "nats", "permissions.conf"))
	if err != nil {
		t.Fatal(err)
	}
	return startNATSWithUsers(t, string(perms), "")
}

// setNATSPasswords puts the password of each of natsUsers, with
// userPrefix, in the environment, where a server config including the
// users reads it. (Not from a parallel test: call it before.)
func setNATSPasswords(t *testing.T, userPrefix string) {
	t.Helper()
	for _, u := range natsUsers {
		t.Setenv("ONEWAY_NATS_"+strings.ToUpper(userPrefix+u)+"_PASSWORD", natsPassword(userPrefix+u))
	}
}

// startNATSWithUsers runs a JetStream server whose only users are those of
// the authorization block perms (users natsUsers, each with userPrefix,
// their passwords set by setNATSPasswords), included from the server's
// config.
func startNATSWithUsers(t *testing.T, perms, userPrefix string) (string, *violationLog) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "permissions.conf"), perms)
	conf := filepath.Join(dir, "server.conf")
	writeFile(t, conf, fmt.Sprintf("host: 127.0.0.1\nport: 4222\njetstream { store_dir: %q }\ninclude ./permissions.conf\n", filepath.Join(dir, "js")))
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("load the server config with deploy/nats/permissions.conf: %v", err)
	}
	opts.Port = -1
	opts.NoSigs = true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	log := &violationLog{}
	s.SetLoggerV2(log, false, false, false)
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	t.Cleanup(func() {
		if t.Failed() {
			log.mu.Lock()
			defer log.mu.Unlock()
			t.Logf("the NATS server's last warnings and errors:\n%s", strings.Join(log.warnings, "\n"))
		}
	})
	return s.ClientURL(), log
}

// asUser writes a copy of the pipeline file cfg logged in to NATS as user,
// with the inbox prefix the permissions give that user.
func asUser(t *testing.T, cfg, user string) string {
	t.Helper()
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Replace(string(b), "nats:\n", fmt.Sprintf("nats:\n  user: %s\n  password: %q\n  inbox_prefix: _INBOX_%s\n", user, natsPassword(user), user), 1)
	path := filepath.Join(t.TempDir(), user+".yaml")
	writeFile(t, path, body)
	return path
}

// startService runs `<bin> run` as user and waits until it is ready.
func startService(t *testing.T, bin, cfg, user string, violations *violationLog, args ...string) *testenv.Proc {
	t.Helper()
	addr := freeAddr(t)
	p := testenv.Start(t, bin, append([]string{"run", "--config", asUser(t, cfg, user), "--admin-addr", addr}, args...)...)
	testenv.WaitFor(t, time.Minute, func() error {
		if done, code := p.Exited(); done {
			t.Fatalf("%s (user %s) exited with %d:\n%s", bin, user, code, p.Output())
		}
		violations.check(t)
		if r := testenv.Run(t, time.Minute, bin, "healthcheck", "--url", "http://"+addr+"/readyz"); r.Code != 0 {
			return fmt.Errorf("%s not ready: %s", bin, r.Stderr)
		}
		return nil
	})
	return p
}

// TestNATSPermissions runs pipelines on a server that has only the users
// of deploy/nats/permissions.conf, each service logged in as its own user:
// a direct pipeline (reader, writer) and a staged one (reader, stager,
// differ, writer, and the target's read-back) converge, and go on
// converging through the faults whose recovery takes grants of its own:
// every durable consumer deleted, the stream deleted, the synthetic reader
// restarted (it downloads its hash list); a row deleted by hand in the
// staged target is recreated. No permission violation may be logged. The
// status user reads the status and the operator lists the dead letters. A
// file that grants too little stalls them or logs a violation; the
// refusals below keep it from granting everything.
func TestNATSPermissions(t *testing.T) {
	setNATSPasswords(t, "")
	run := func(t *testing.T, staged bool) {
		// The two pipelines share nothing (server, databases, ports) and
		// mostly wait: they run side by side.
		t.Parallel()
		natsURL, violations := startPermissionedNATS(t)
		src := testenv.Connect(t, pgtest.NewDatabase(t))
		src.Exec(t, testenv.InvoicesDDL)
		testenv.SeedInvoices(t, src, 1, 3000)
		dst := testenv.Connect(t, pgtest.NewDatabase(t))
		var cfg, stageURL string
		services := []string{"writer"}
		if staged {
			dst.Exec(t, testenv.InvoicesDDL)
			stageURL = pgtest.NewDatabase(t)
			cfg = stagedConfig(t, natsURL, src.URL, stageURL, "2s", stagedTarget("pg", dst.URL, "500ms", "    recreate_deleted: true\n"))
			services = []string{"stager", "differ", "writer"}
		} else {
			// The synthetic pattern keeps its hash lists in the object
			// store: the reader's grants for it are exercised too.
			cfg = testenv.Config(t, natsURL, src.URL, dst.URL, "")
			b, err := os.ReadFile(cfg)
			if err != nil {
				t.Fatal(err)
			}
			synthetic := strings.Replace(string(b), "    pattern: watermark\n    column: updated_at\n", "    pattern: synthetic\n", 1)
			synthetic = strings.Replace(synthetic, "poll_interval: 100ms", "poll_interval: 500ms", 1)
			if synthetic == string(b) {
				t.Fatal("the test's config has no watermark capture to replace")
			}
			writeFile(t, cfg, synthetic)
		}
		// The synthetic reader keeps its hash lists in the object store:
		// the source's reader in direct mode, the target's read-back (which
		// runs as the reader's user) in staged mode.
		var source *testenv.Proc // the source's reader
		startSynthetic := func() *testenv.Proc {
			source = startService(t, "reader", cfg, "reader", violations)
			return source
		}
		if staged {
			source = startService(t, "reader", cfg, "reader", violations)
			startSynthetic = func() *testenv.Proc {
				return startService(t, "reader", cfg, "reader", violations, "--readback", "pg")
			}
		}
		synthetic := startSynthetic()
		for _, svc := range services {
			startService(t, svc, cfg, svc, violations)
		}
		testenv.WaitFor(t, 2*time.Minute, func() error {
			violations.check(t)
			return countIs(dst, 3000)
		})
		// Changes after the initial load: updates and new rows.
		src.Exec(t, `UPDATE public.invoices SET status = 'paid', updated_at = now() WHERE id % 7 = 0`)
		testenv.SeedInvoices(t, src, 3001, 3500)
		testenv.WaitFor(t, 2*time.Minute, func() error {
			violations.check(t)
			if err := countIs(dst, 3500); err != nil {
				return err
			}
			if n := dst.Int(t, `SELECT count(*) FROM public.invoices WHERE status = 'paid'`); n != 3000/7 {
				return fmt.Errorf("%d paid invoices in the target, want %d", n, 3000/7)
			}
			return nil
		})
		// changesArrive sets status on the invoices whose id is a multiple
		// of mod and waits for the target to have them all.
		changesArrive := func(status string, mod int64, after string) {
			t.Helper()
			src.Exec(t, fmt.Sprintf(`UPDATE public.invoices SET status = '%s', updated_at = now() WHERE id %% %d = 0`, status, mod))
			testenv.WaitFor(t, 2*time.Minute, func() error {
				violations.check(t)
				if n := dst.Int(t, fmt.Sprintf(`SELECT count(*) FROM public.invoices WHERE status = '%s'`, status)); n != 3500/mod {
					return fmt.Errorf("%d %s invoices in the target, want %d (%s)", n, status, 3500/mod, after)
				}
				return nil
			})
		}
		// An operator deletes every durable consumer: each service sees
		// its fetches fail, asks for its consumer's info (its own grant),
		// learns the consumer is gone and creates it again, so later
		// changes still arrive.
		durables := []string{"writer-invoices-pg"}
		if staged {
			durables = append(durables, "stager-invoices", "differ-invoices")
		}
		deleteConsumers(t, natsURL, durables...)
		changesArrive("void", 11, "after the consumers were deleted")
		// An operator deletes the pipeline's stream: the services create
		// it again, the reader moves its sequences above every version
		// published before and reads the source again (see chaosDelete),
		// all within their users' grants.
		deleteStream(t, natsURL)
		changesArrive("refunded", 13, "after the stream was deleted")
		// The synthetic reader restarted downloads its last hash list from
		// the object store.
		synthetic.Stop(t, 30*time.Second)
		_ = startSynthetic()
		changesArrive("disputed", 17, "after the reader restarted")
		if staged {
			// A row deleted by hand is seen by the read-back and recreated.
			// (Not a key just updated above: the differ waits out a push it
			// may still see in flight before it pushes that version again;
			// see the differ's package doc, "Pushes in flight".)
			stage := testenv.Connect(t, stageURL)
			dst.Exec(t, `DELETE FROM public.invoices WHERE id = 43`)
			testenv.WaitFor(t, 2*time.Minute, func() error {
				violations.check(t)
				if n := dst.Int(t, `SELECT count(*) FROM public.invoices WHERE id = 43`); n != 1 {
					return fmt.Errorf("invoice 43 not recreated yet; the stage holds %s", stageState(stage, "43"))
				}
				return nil
			})
		}
		mustVerify(t, cfg, 0)
		operator := asUser(t, cfg, "operator")
		if !staged {
			// Changes the target rejects are dead-lettered by the writer;
			// the operator shows one and drops it, and retries the other
			// once the target is fixed.
			dst.Exec(t, `ALTER TABLE public.invoices ADD CONSTRAINT no_negative CHECK (amount >= 0)`)
			src.Exec(t, `UPDATE public.invoices SET amount = -5, updated_at = now() WHERE id IN (1234, 1235)`)
			var rows []dlqEntry
			testenv.WaitFor(t, time.Minute, func() error {
				violations.check(t)
				if rows = dlqList(t, operator, ""); len(rows) != 2 {
					return fmt.Errorf("%d dead letters, want 2", len(rows))
				}
				return nil
			})
			slices.SortFunc(rows, func(a, b dlqEntry) int { return strings.Compare(a.key, b.key) })
			mustDLQ(t, operator, "", "show", "--seq", strconv.FormatUint(rows[0].seq, 10))
			mustDLQ(t, operator, "", "drop", "--seq", strconv.FormatUint(rows[1].seq, 10), "--yes")
			dst.Exec(t, `ALTER TABLE public.invoices DROP CONSTRAINT no_negative`)
			mustDLQ(t, operator, "", "retry", "--all")
			testenv.WaitFor(t, time.Minute, func() error {
				violations.check(t)
				if got := dst.String(t, "SELECT amount::text FROM public.invoices WHERE id = 1234"); got != "-5.00" {
					return fmt.Errorf("amount of 1234 = %s after the retry, want -5.00", got)
				}
				return nil
			})
			if got := dst.String(t, "SELECT amount::text FROM public.invoices WHERE id = 1235"); got == "-5.00" {
				t.Fatal("the dropped dead letter of 1235 was applied")
			}
		}

		// The status service's user reads the pipeline's state.
		addr := freeAddr(t)
		testenv.Start(t, "oneway", "status", "--serve", addr, "--config", asUser(t, cfg, "status"))
		testenv.WaitFor(t, time.Minute, func() error {
			violations.check(t)
			s, err := getStatus("http://" + addr)
			if err != nil {
				return err
			}
			if len(s.Targets) != 1 || s.Targets[0].LagMessages != 0 {
				return fmt.Errorf("status: %+v", s)
			}
			return nil
		})
		// The operator's commands: list the dead letters (none), replay the
		// target's history, and in staged mode look at the next push, ask
		// for a scan and approve held deletes (none held: exit 1); last,
		// with the reader stopped, a resync.
		commands := []struct {
			args []string
			code int
		}{
			{[]string{"dlq", "list"}, 0},
			{[]string{"replay", "--target", "pg", "--all"}, 0},
		}
		if staged {
			commands = append(commands, []struct {
				args []string
				code int
			}{
				{[]string{"diff", "--dry-run"}, 0},
				{[]string{"diff", "--scan"}, 0},
				{[]string{"approve", "--target", "pg"}, 1},
			}...)
		}
		for _, c := range commands {
			if r := testenv.Run(t, 2*time.Minute, "oneway", append(c.args, "--config", operator)...); r.Code != c.code {
				t.Fatalf("oneway %s as the operator: exit %d, want %d\n%s%s", strings.Join(c.args, " "), r.Code, c.code, r.Stdout, r.Stderr)
			}
			violations.check(t)
		}
		// A user without the grants for a replay is told so, at once.
		r := testenv.Run(t, time.Minute, "oneway", "replay", "--target", "pg", "--all", "--config", asUser(t, cfg, "status"))
		if last := lastLine(r.Stderr, "oneway: "); r.Code == 0 || !strings.Contains(last, "Permissions Violation") || !strings.Contains(last, "oneway permissions") {
			t.Fatalf("oneway replay as the status user: exit %d, want an error naming the refusal and the fix, got %q\n%s%s", r.Code, last, r.Stdout, r.Stderr)
		}
		violations.forget("status")
		source.Stop(t, 30*time.Second)
		if r := testenv.Run(t, 2*time.Minute, "oneway", "resync", "--config", operator); r.Code != 0 {
			t.Fatalf("oneway resync as the operator: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		violations.check(t)
		checkRefusals(t, natsURL)
	}
	t.Run("direct", func(t *testing.T) { run(t, false) })
	t.Run("staged", func(t *testing.T) { run(t, true) })
}

// asOperator runs f with a JetStream context logged in as the operator of
// the users with userPrefix.
func asOperator(t *testing.T, natsURL, userPrefix string, f func(ctx context.Context, js jetstream.JetStream)) {
	t.Helper()
	user := userPrefix + "operator"
	nc, err := nats.Connect(natsURL, nats.UserInfo(user, natsPassword(user)), nats.CustomInboxPrefix("_INBOX_"+user))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f(ctx, js)
}

// TestGeneratedNATSPermissions runs a pipeline of another name with two
// targets on a server whose only users are those `oneway permissions`
// writes for its file (with a user prefix): the generator's grants, not
// only the shipped file's, let every service do its work, with no
// violation, through the deletion of the writers' consumers.
func TestGeneratedNATSPermissions(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 2000)
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	dst2 := testenv.Connect(t, pgtest.NewDatabase(t))
	// The NATS URL is not known before the server runs on the generated
	// users: the file names it by variable.
	cfg := testenv.Config(t, "${TEST_NATS_URL}", src.URL, dst.URL, fmt.Sprintf(`  - name: copy
    kind: postgres
    url: %q
    table: public.invoices
`, dst2.URL))
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	orders := strings.Replace(string(b), "pipeline: invoices\n", "pipeline: orders\n", 1)
	if orders == string(b) {
		t.Fatal("the test's config has no pipeline name to replace")
	}
	writeFile(t, cfg, orders)
	t.Setenv("TEST_NATS_URL", "nats://127.0.0.1:1")
	r := testenv.Run(t, time.Minute, "oneway", "permissions", "--config", cfg, "--user-prefix", "orders_")
	if r.Code != 0 {
		t.Fatalf("oneway permissions: exit %d\n%s", r.Code, r.Stderr)
	}
	for _, want := range []string{"writer-orders-pg", "writer-orders-copy", "oneway.orders.source", "ORDERS_WRITER"} {
		if !strings.Contains(r.Stdout, want) {
			t.Fatalf("oneway permissions wrote no %s:\n%s", want, r.Stdout)
		}
	}
	setNATSPasswords(t, "orders_")
	natsURL, violations := startNATSWithUsers(t, r.Stdout, "orders_")
	t.Setenv("TEST_NATS_URL", natsURL)
	for _, svc := range []string{"reader", "writer"} {
		startService(t, svc, cfg, "orders_"+svc, violations)
	}
	converged := func(n int64) func() error {
		return func() error {
			violations.check(t)
			for _, db := range []*testenv.DB{dst, dst2} {
				if err := countIs(db, n); err != nil {
					return err
				}
			}
			return nil
		}
	}
	testenv.WaitFor(t, 2*time.Minute, converged(2000))
	asOperator(t, natsURL, "orders_", func(ctx context.Context, js jetstream.JetStream) {
		for _, d := range []string{"writer-orders-pg", "writer-orders-copy"} {
			if err := js.DeleteConsumer(ctx, "ONEWAY_ORDERS", d); err != nil {
				t.Fatalf("delete consumer %s as the operator: %v", d, err)
			}
		}
	})
	testenv.SeedInvoices(t, src, 2001, 2200)
	testenv.WaitFor(t, 2*time.Minute, converged(2200))
	violations.check(t)
}

// deleteConsumers deletes the pipeline's durable consumers, as the
// operator.
func deleteConsumers(t *testing.T, natsURL string, durables ...string) {
	t.Helper()
	asOperator(t, natsURL, "", func(ctx context.Context, js jetstream.JetStream) {
		for _, d := range durables {
			if err := js.DeleteConsumer(ctx, "ONEWAY_INVOICES", d); err != nil {
				t.Fatalf("delete consumer %s as the operator: %v", d, err)
			}
		}
	})
}

// deleteStream deletes the pipeline's stream, as the operator.
func deleteStream(t *testing.T, natsURL string) {
	t.Helper()
	asOperator(t, natsURL, "", func(ctx context.Context, js jetstream.JetStream) {
		if err := js.DeleteStream(ctx, "ONEWAY_INVOICES"); err != nil {
			t.Fatalf("delete the stream as the operator: %v", err)
		}
	})
}

// checkRefusals: each user is refused what its service has no business
// doing.
func checkRefusals(t *testing.T, natsURL string) {
	t.Helper()
	tests := []struct {
		user, subject string
		subscribe     bool
	}{
		{user: "writer", subject: "oneway.invoices.source"},                // forge source changes
		{user: "writer", subject: "oneway.invoices.push.pg"},               // forge pushes
		{user: "writer", subject: "$JS.API.STREAM.DELETE.ONEWAY_INVOICES"}, // drop the stream
		{user: "writer", subject: "$KV.ONEWAY_STATE.invoices.reader.source.position"},
		{user: "reader", subject: "oneway.invoices.push.pg"},
		{user: "reader", subject: "$JS.API.STREAM.DELETE.ONEWAY_INVOICES"},
		{user: "reader", subject: "$JS.API.CONSUMER.DELETE.ONEWAY_INVOICES.writer-invoices-pg"},
		{user: "stager", subject: "oneway.invoices.push.pg"},
		{user: "differ", subject: "oneway.invoices.source"},
		{user: "status", subject: "oneway.invoices.dlq.pg"},
		{user: "status", subject: "$KV.ONEWAY_STATE.invoices.reader.source.lease"},
		{user: "operator", subject: "$JS.API.STREAM.DELETE.ONEWAY_OTHER"}, // another pipeline
		{user: "operator", subject: "$KV.ONEWAY_STATE.other.reader.source.position"},
		{user: "writer", subject: "oneway.invoices.>", subscribe: true}, // read the changes besides JetStream
		{user: "reader", subject: "$KV.ONEWAY_STATE.>", subscribe: true},
		{user: "status", subject: "_INBOX.>", subscribe: true},        // everyone's replies
		{user: "writer", subject: "_INBOX_reader.>", subscribe: true}, // another's replies
	}
	for _, tt := range tests {
		name := tt.user + " publish " + tt.subject
		if tt.subscribe {
			name = tt.user + " subscribe " + tt.subject
		}
		t.Run(name, func(t *testing.T) {
			errc := make(chan error, 4)
			nc, err := nats.Connect(natsURL, nats.UserInfo(tt.user, natsPassword(tt.user)),
				nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errc <- err }))
			if err != nil {
				t.Fatalf("connect as %s: %v", tt.user, err)
			}
			defer nc.Close()
			if tt.subscribe {
				_, err = nc.SubscribeSync(tt.subject)
			} else {
				err = nc.Publish(tt.subject, []byte("{}"))
			}
			if err == nil {
				err = nc.Flush()
			}
			if err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-errc:
				if !errors.Is(err, nats.ErrPermissionViolation) {
					t.Fatalf("got %v, want a permissions violation", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("user %s was not refused", tt.user)
			}
		})
	}
	// And a refusal as a service sees it: the writer's JetStream publish
	// to the source subject fails rather than forging a change.
	errc := make(chan error, 4)
	nc, err := nats.Connect(natsURL, nats.UserInfo("writer", natsPassword("writer")), nats.CustomInboxPrefix("_INBOX_writer"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errc <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.Publish("oneway.invoices.source", []byte("forged"), nats.Context(ctx)); err == nil {
		t.Fatal("the writer's user published to the source subject")
	}
	select {
	case err := <-errc:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("the writer's JetStream publish to the source subject: %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the writer's JetStream publish to the source subject was not refused")
	}
}
