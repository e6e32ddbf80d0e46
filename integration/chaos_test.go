package integration

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/netproxy"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// The fault-injection suite: the reliability matrix of faults oneway must
// survive (issue 8), one subtest per row. Each row runs
// the chaos workload (testenv.Workload) through a reader and writers as
// processes, injects its fault while the workload runs, heals, drains and
// checks the invariants:
//
//   - I1: every key's owned values at the target equal the source's
//     (testenv.CheckChaos, and `oneway verify` for PostgreSQL targets);
//     target-owned values survive;
//   - I2: no (key, version) written twice (the target's write history) and
//     no ledger applies beyond the states a key had; no dead letters;
//   - I3: no key written an older version after a newer one;
//   - I4: the target converges and the writer's consumer has nothing
//     pending within chaosDrain of the heal (the recovery seconds).
//
// Each row appends a line to the summary that TestChaos prints and writes
// to $ONEWAY_CHAOS_REPORT.

const (
	chaosPipeline = "chaos"
	// chaosOutage is how long the deliberate outages of rows 7, 9, 10 and
	// 12 last under `make chaos` (long mode).
	chaosOutage = 30 * time.Second
	// chaosShortOutage is their length in short mode (`make test`): the
	// same paths (reconnects, backoff, waiting without spending the
	// delivery budget) in a sixth of the time.
	chaosShortOutage = 5 * time.Second
	// chaosSlowTarget is how long row 21's target stays slow.
	chaosSlowTarget = 20 * time.Second
	// chaosDrain bounds the recovery after a heal.
	chaosDrain = 3 * time.Minute
	// chaosAckWait is the writers' AckWait in every row but 21.
	chaosAckWait = 2 * time.Second
)

var chaosLongFlag = flag.Bool("chaos.long", false, "TestChaos: every row, with 30 s outages instead of 5 s (also ONEWAY_CHAOS_LONG=1; make chaos sets it)")

func chaosLong() bool { return *chaosLongFlag || os.Getenv("ONEWAY_CHAOS_LONG") == "1" }

func outageLength() time.Duration {
	if chaosLong() {
		return chaosOutage
	}
	return chaosShortOutage
}

// chaosCase is one row. Long rows run only in long mode (make chaos): they
// repeat what another end-to-end test of `make test` covers, or take long.
type chaosCase struct {
	row, fault string
	long       bool
	run        func(r *chaosRow)
}

// TestChaos runs every row of the reliability matrix that direct push can
// run, each in its own databases and NATS, one after the other, and writes
// the summary table.
func TestChaos(t *testing.T) {
	// Not parallel: its rows time faults against a quiet machine (row 3
	// saw no republished page while other tests loaded both cores).
	report := &testenv.ChaosReport{}
	path := os.Getenv("ONEWAY_CHAOS_REPORT")
	if path == "" {
		path = filepath.Join(t.TempDir(), "chaos-report.md")
	}
	mode := fmt.Sprintf("short mode (make test): %s outages, long rows skipped", outageLength())
	if chaosLong() {
		mode = fmt.Sprintf("long mode (make chaos): %s outages, every row", outageLength())
	}
	cases := []chaosCase{
		{"1–2", "kill -9 the writer 5× mid-batch, restart", false, chaosKillWriter},
		{"2", "kill -9 the writer after its commit, before its acks (writer↔NATS black-holed)", false, chaosKillWriterAfterCommit},
		{"3", "kill -9 the reader after publishing, before saving its position (snapshot, watermark)", false, chaosKillReader("2m")},
		{"3", "the same, republished beyond a 1 s duplicate window", true, chaosKillReader("1s")},
		{"3", "cdc: kill -9 the reader twice mid-stream (inserts, updates, deletes)", false, chaosKillReaderCDC},
		{"4", "staged: kill -9 the stager and the differ, twice each, mid-step", true, chaosKillStagerDiffer},
		{"5", "SIGSTOP each of 2 writers for 2.5× AckWait, then SIGCONT", true, chaosPauseWriters},
		{"6", "kill -9 the stream leader of a 3-node cluster (R3), restart it", true, chaosKillLeader},
		{"7", "2 of 3 NATS nodes down for " + outageLength().String(), false, chaosNoQuorum},
		{"8", "kill -9 all 3 NATS nodes, restart them", true, chaosKillAllNodes},
		{"9", "client↔NATS connections cut (reset, refused) for " + outageLength().String(), false, chaosCutNATS(false)},
		{"9", "client↔NATS connections black-holed for " + outageLength().String(), true, chaosCutNATS(true)},
		{"10", "writer↔target connections cut for " + outageLength().String(), false, chaosCutTarget},
		{"10", "target PostgreSQL stopped (-m immediate) for " + outageLength().String(), true, chaosStopTarget},
		{"11", "staged: the stage PostgreSQL stopped (-m immediate) for " + outageLength().String(), false, chaosStopStage},
		{"12", "reader↔source connections cut for " + outageLength().String(), false, chaosCutSource(false)},
		{"12", "cdc: reader↔source connections (replication included) cut for " + outageLength().String(), false, chaosCutSource(true)},
		{"21", "HTTP target at 2× AckWait per request for " + chaosSlowTarget.String(), true, chaosSlowHTTP},
		{"22", "stream max_bytes reached; the limit raised by an operator", false, chaosStreamFull(false)},
		{"22", "stream max_bytes reached; old messages age out (max_age 15s)", true, chaosStreamFull(true)},
		{"14", "malformed messages on the source subject mid-run (bad bytes, unknown schema version, no key)", false, chaosMalformed},
		{"14", "staged: malformed messages on the source and the push subject mid-run", true, chaosMalformedStaged},
		{"18", "source database in another time zone (UTC+14), timestamps from its clock", false, chaosClockSkew},
		{"19", "source schema change: a column the pipeline does not own added", false, chaosSchemaChange("add", false)},
		{"19", "source schema change: owned varchar(80) widened to text, longer values follow", false, chaosSchemaChange("widen", false)},
		{"19", "source schema change: owned varchar(80) widened to text beyond the target's varchar(80)", false, chaosSchemaChange("widen beyond the target", false)},
		{"19", "source schema change: an owned column dropped", false, chaosSchemaChange("drop", false)},
		{"19", "source schema change: an owned column renamed", true, chaosSchemaChange("rename", false)},
		{"19", "cdc: source schema change: a column the pipeline does not own added", true, chaosSchemaChange("add", true)},
		{"19", "cdc: source schema change: an owned column dropped", false, chaosSchemaChange("drop", true)},
		{"19", "cdc: source schema change: an owned column renamed", true, chaosSchemaChange("rename", true)},
		{"20", "the writer's durable consumer deleted by an operator", false, chaosDelete("consumer", false)},
		{"20", "the pipeline's stream deleted by an operator", false, chaosDelete("stream", false)},
		{"20", "staged: the pipeline's stream deleted by an operator", true, chaosDelete("stream", true)},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%02d_row_%s", i+1, strings.NewReplacer("–", "-", " ", "_").Replace(c.row)), func(t *testing.T) {
			r := &chaosRow{t: t, begun: time.Now(), res: testenv.ChaosResult{Row: c.row, Fault: c.fault, Recovery: -1}}
			t.Cleanup(func() {
				switch {
				case t.Skipped():
					r.res.Result = "skipped: a long row (make chaos runs it)"
				case t.Failed():
					r.res.Result = "FAIL"
				default:
					r.res.Result = "ok"
				}
				r.res.Notes = strings.Join(r.notes, "; ")
				report.Add(r.res)
			})
			if c.long && !chaosLong() {
				t.Skip("a long row: run it with make chaos (ONEWAY_CHAOS_LONG=1 or -chaos.long)")
			}
			c.run(r)
		})
	}
	for _, l := range chaosElsewhere {
		report.Add(l)
	}
	md := fmt.Sprintf("# oneway chaos report\n\n%s, %s/%s, %d CPUs, %s.\n\n%s\n%s",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), mode, report.Markdown(), chaosLegend)
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		t.Errorf("write the chaos report: %v", err)
	}
	t.Logf("chaos report (%s):\n%s", path, md)
}

const chaosLegend = `
changes in flight: source changes not yet at the target when the fault began, plus those committed while it lasted.
lost: keys whose owned values differ at the target after the drain (missing, older, different, extra).
applied twice: target writes of a (key, version) already written, or ledger applies beyond the states a key had.
versions backwards: target writes of a key's version older than the one written before.
recovery s: from the heal to the target holding every change with nothing pending on the writer's consumer.
`

// chaosElsewhere maps the matrix rows TestChaos does not run to the tests
// that cover them, or says why none does yet.
var chaosElsewhere = []testenv.ChaosResult{
	{Row: "13", Fault: "a record the target rejects", Result: "covered by TestRejectedRecordIsDeadLettered, TestPoisonRecordPerKind, TestHTTPRejectionRetriedAfterFix, TestMySQLDataTooLongRetriedAfterFix, TestDeadLetterRetriedAfterFix"},
	{Row: "15", Fault: "the same event 3× in the window, and after it", Result: "covered by TestPublishFenced, TestPublishAsyncDeduplicates, TestReplayChangesNothing"},
	{Row: "16", Fault: "redelivery reorders two versions of a key", Result: "covered by TestWritersUnderChaosEndAtLastVersion, TestEffectOnce, TestConcurrentWriters"},
	{Row: "17", Fault: "late-committing transaction behind the watermark", Result: "covered by TestLateCommitNotSkipped, TestSafeBound"},
	{Row: "23", Fault: "a target that rewrites values on write", Result: "covered by TestStagedTrimmingTargetDoesNotLoop"},
	{Row: "24", Fault: "a mass delete beyond a configured share", Result: "covered by TestStagedBreakerHoldsMassDelete"},
	{Row: "25", Fault: "names with quotes, semicolons, mixed case, unicode", Result: "covered by TestAwkwardNamesAreQuoted"},
	{Row: "26", Fault: "insecure transport in production mode", Result: "covered by TestProductionModeRefusesInsecureTransport"},
	{Row: "27", Fault: "bad pipeline config", Result: "covered by TestBadConfigNamesItsError"},
	{Row: "28", Fault: "target edited by hand", Result: "covered by TestStagedPoliciesAndRepairs (staged mode), TestReplayRebuildsTruncatedTarget (oneway replay --rebuild)"},
}

// chaosSetup is what a row runs against.
type chaosSetup struct {
	// CDC reads the source with the cdc pattern (logical replication, a
	// slot of the row's own) and makes the workload delete keys too;
	// otherwise the watermark pattern on updated_at.
	CDC bool
	// Staged runs the pipeline in staged mode (stager, differ) on a
	// PostgreSQL stage, on StageOn (default the test server).
	Staged    bool
	StageOn   string
	Workload  testenv.WorkloadOptions
	SlowApply time.Duration // each target write statement takes at least this long
	TargetOn  string        // PostgreSQL server of the target database; default the test server
	HTTP      bool          // an HTTP API target (its ledger in the target database)
	Cluster   bool          // a 3-node NATS cluster instead of one embedded server
}

// chaosRow is one row's world and measurements.
type chaosRow struct {
	t     *testing.T
	res   testenv.ChaosResult
	notes []string

	srcURL, dstURL string
	stageURL       string // staged mode's stage database; "" in direct mode
	slot           string // the cdc pattern's slot and publication; "" for watermark
	natsURL        string // direct, for the checks
	cluster        *testenv.NATSCluster
	api            *testenv.ChaosAPI
	target         testenv.ChaosTarget
	targetName     string
	work           *testenv.Workload
	js             jetstream.JetStream

	begun           time.Time
	faultAt, healAt time.Time
	changesAtFault  int64
	backlog         int64
	// wantDeadLetters is the number of dead letters the row's fault must
	// leave (row 14); finish fails on any other count.
	wantDeadLetters uint64
}

func (r *chaosRow) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *chaosRow) setup(o chaosSetup) {
	t := r.t
	t.Helper()
	r.srcURL = pgtest.NewDatabase(t)
	if o.TargetOn != "" {
		r.dstURL = pgtest.NewDatabaseOn(t, o.TargetOn)
	} else {
		r.dstURL = pgtest.NewDatabase(t)
	}
	if o.Staged {
		if o.StageOn != "" {
			r.stageURL = pgtest.NewDatabaseOn(t, o.StageOn)
		} else {
			r.stageURL = pgtest.NewDatabase(t)
		}
	}
	if o.CDC {
		r.slot = cdcSlot(t)
		if o.Workload.DeleteEvery == 0 {
			o.Workload.DeleteEvery = 7
		}
	}
	r.work = testenv.NewWorkload(t, r.srcURL, o.Workload)
	if o.HTTP {
		r.api = testenv.StartChaosAPI(t, r.dstURL)
		r.target, r.targetName = r.api, "api"
	} else {
		dst := testenv.Connect(t, r.dstURL)
		dst.Exec(t, testenv.ChaosTargetDDL)
		if o.SlowApply > 0 {
			dst.Exec(t, testenv.ChaosSlowApplyDDL(o.SlowApply))
		}
		r.target, r.targetName = testenv.PGChaosTarget{URL: r.dstURL, Ledger: "oneway.ledger_1"}, "pg"
	}
	if o.Cluster {
		r.cluster = testenv.StartNATSCluster(t)
		r.natsURL = r.cluster.URLs()
	} else {
		_, r.natsURL = bustest.StartJetStream(t)
	}
	nc, err := nats.Connect(r.natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if r.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
}

// chaosConfig is one pipeline file; empty fields take the row's direct
// addresses and the defaults noted.
type chaosConfig struct {
	NATSURL, SourceURL, TargetURL string
	Replicas                      int
	MaxBytes                      int64
	MaxAge, DuplicateWindow       string
	AckWait                       time.Duration // default chaosAckWait
	Workers                       int           // default 2
	// Columns are the source's owned columns; default id, version,
	// payload, updated_at.
	Columns []string
	// AdminAddr serves /metrics (and the health checks); default none.
	AdminAddr string
}

func (r *chaosRow) config(c chaosConfig) string {
	t := r.t
	t.Helper()
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.NATSURL, r.natsURL)
	def(&c.SourceURL, r.srcURL)
	def(&c.TargetURL, r.dstURL)
	if c.AckWait == 0 {
		c.AckWait = chaosAckWait
	}
	if c.Workers == 0 {
		c.Workers = 2
	}
	if len(c.Columns) == 0 {
		c.Columns = []string{"id", "version", "payload", "updated_at"}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pipeline: %s\n", chaosPipeline)
	if c.AdminAddr != "" {
		fmt.Fprintf(&b, "admin:\n  addr: %q\n", c.AdminAddr)
	}
	if r.stageURL != "" {
		fmt.Fprintf(&b, "mode: staged\nstage:\n  url: %q\n  scan_interval: 5s\n", r.stageURL)
	}
	fmt.Fprintf(&b, "nats:\n  url: %q\n", c.NATSURL)
	if c.Replicas > 0 {
		fmt.Fprintf(&b, "  replicas: %d\n", c.Replicas)
	}
	if c.MaxBytes > 0 {
		fmt.Fprintf(&b, "  max_bytes: %d\n", c.MaxBytes)
	}
	if c.MaxAge != "" {
		fmt.Fprintf(&b, "  max_age: %s\n", c.MaxAge)
	}
	if c.DuplicateWindow != "" {
		fmt.Fprintf(&b, "  duplicate_window: %s\n", c.DuplicateWindow)
	}
	capture := "{pattern: watermark, column: updated_at, batch_size: 200, poll_interval: 100ms}"
	if r.slot != "" {
		capture = fmt.Sprintf("{pattern: cdc, slot: %s, publication: %s, batch_size: 200, poll_interval: 100ms}", r.slot, r.slot)
	}
	fmt.Fprintf(&b, `source:
  kind: postgres
  url: %q
  table: public.chaos
  key: [id]
  columns: [%s]
  capture: %s
targets:
`, c.SourceURL, strings.Join(c.Columns, ", "), capture)
	writer := fmt.Sprintf("{workers: %d, fetch_batch: 8, ack_wait: %s}", c.Workers, c.AckWait)
	if r.api != nil {
		fmt.Fprintf(&b, `  - name: api
    kind: http
    url: "%s/chaos/{{.Key}}"
    ledger_url: %q
    http: {concurrency: 4}
    writer: %s
`, r.api.Server.URL, r.dstURL, writer)
	} else {
		fmt.Fprintf(&b, `  - name: pg
    kind: postgres
    url: %q
    table: public.chaos
    create_table: false
    writer: %s
`, c.TargetURL, writer)
	}
	path := filepath.Join(t.TempDir(), "chaos.yaml")
	writeFile(t, path, b.String())
	return path
}

// start runs `<bin> run` on cfg with JSON logs.
func (r *chaosRow) start(bin, cfg string) *testenv.Proc {
	r.t.Helper()
	return testenv.Start(r.t, bin, "run", "--config", cfg, "--log-format", "json")
}

// poll calls cond every interval until it returns nil, failing the test
// after timeout. For conditions that read the whole target: WaitFor's 50 ms
// would load the database for nothing.
func (r *chaosRow) poll(timeout time.Duration, cond func(ctx context.Context) error) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if err := r.work.Err(); err != nil {
			r.t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := cond(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// applied is the sum of the target's versions: the changes it holds.
func (r *chaosRow) applied(ctx context.Context) (int64, error) {
	v, err := r.target.Versions(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, x := range v {
		n += x
	}
	return n, nil
}

// loaded waits for the initial load, starts the workload and waits until
// its changes flow to the target.
func (r *chaosRow) loaded() {
	r.t.Helper()
	r.poll(chaosDrain, func(ctx context.Context) error {
		v, err := r.target.Versions(ctx)
		if err != nil {
			return err
		}
		if b := r.work.Behind(v); b > 0 {
			return fmt.Errorf("initial load: %d rows not at the target", b)
		}
		return nil
	})
	r.t.Logf("%.1fs: initial load of %d keys done; workload starting", time.Since(r.begun).Seconds(), len(r.work.State()))
	r.work.Start()
	r.flowing(100)
	r.t.Logf("%.1fs: changes flowing", time.Since(r.begun).Seconds())
}

// flowing waits until the target holds n more changes than now.
func (r *chaosRow) flowing(n int64) {
	r.t.Helper()
	var base int64
	r.poll(time.Minute, func(ctx context.Context) (err error) { base, err = r.applied(ctx); return })
	r.poll(chaosDrain, func(ctx context.Context) error {
		got, err := r.applied(ctx)
		if err != nil {
			return err
		}
		if got < base+n {
			return fmt.Errorf("%d of %d changes applied since", got-base, n)
		}
		return nil
	})
}

// fault marks the start of the fault window (the first call only) and
// counts the changes not yet at the target.
func (r *chaosRow) fault() {
	if !r.faultAt.IsZero() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if v, err := r.target.Versions(ctx); err == nil {
		r.backlog = r.work.Behind(v)
	}
	r.changesAtFault = r.work.Changes()
	r.faultAt = time.Now()
	r.t.Logf("%.1fs: fault; %d changes not at the target yet", time.Since(r.begun).Seconds(), r.backlog)
}

// heal marks the end of the fault window and stops the workload.
func (r *chaosRow) heal() {
	r.healAt = time.Now()
	r.work.Stop()
	r.res.InFlight = r.backlog + r.work.Changes() - r.changesAtFault
	r.t.Logf("healed after %.1fs; %d changes in flight", r.healAt.Sub(r.faultAt).Seconds(), r.res.InFlight)
}

// finish waits for the drain, then checks I1–I4 and records the result.
func (r *chaosRow) finish() {
	t := r.t
	t.Helper()
	final, deleted := r.work.State(), r.work.Deleted()
	r.poll(chaosDrain, func(ctx context.Context) error {
		v, err := r.target.Versions(ctx)
		if err != nil {
			return err
		}
		if b := r.work.Behind(v); b > 0 {
			return fmt.Errorf("%d changes not at the target", b)
		}
		if p, err := r.pending(ctx); err != nil || p > 0 {
			return fmt.Errorf("writer consumer: %d pending (%v)", p, err)
		}
		return nil
	})
	r.res.Recovery = time.Since(r.healAt)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	source, err := testenv.ChaosRows(ctx, r.srcURL)
	if err != nil {
		t.Fatalf("read the source: %v", err)
	}
	for k, v := range final {
		if source[k].Version != v {
			t.Fatalf("the source holds key %d at v%d, the workload recorded v%d", k, source[k].Version, v)
		}
	}
	if len(source) != len(final) {
		t.Fatalf("the source holds %d keys, the workload recorded %d live ones", len(source), len(final))
	}
	chk, err := testenv.CheckChaos(ctx, source, deleted, r.target)
	if err != nil {
		t.Fatal(err)
	}
	r.res.Lost, r.res.AppliedTwice, r.res.Backwards = chk.Lost(), chk.AppliedTwice(), int64(chk.Backwards)
	if chk.Lost() > 0 || chk.AppliedTwice() > 0 || chk.Backwards > 0 || chk.Foreign > 0 {
		t.Errorf("invariants broken: %d missing, %d different, %d extra, %d duplicate writes, %d ledger applies beyond states, %d writes backwards, %d target-owned values overwritten; e.g. %s",
			chk.Missing, chk.Different, chk.Extra, chk.DuplicateWrites, chk.LedgerExcess, chk.Backwards, chk.Foreign, strings.Join(chk.Samples, "; "))
	}
	if n, err := r.deadLetters(ctx); err != nil || n != r.wantDeadLetters {
		t.Errorf("%d dead letters (%v); want %d", n, err, r.wantDeadLetters)
		r.note("%d dead letters", n)
	}
	if r.stageURL == "" && r.wantDeadLetters == 0 { // one source message per stream sequence: staged streams and dead letters add others
		if n, err := r.redeliveries(ctx); err == nil && n >= 0 { // < 0: the stream was created again (row 20)
			r.note("%d redeliveries", n)
		}
	}
	if r.api == nil {
		mustVerify(t, r.config(chaosConfig{}), 0)
	}
	if len(deleted) > 0 {
		r.note("%d keys deleted", len(deleted))
	}
	t.Logf("recovered in %.1fs: %d keys, lost %d, applied twice %d, backwards %d; %s",
		r.res.Recovery.Seconds(), len(final), r.res.Lost, r.res.AppliedTwice, r.res.Backwards, strings.Join(r.notes, "; "))
}

func (r *chaosRow) stream(ctx context.Context) (jetstream.Stream, error) {
	return r.js.Stream(ctx, bus.StreamName(chaosPipeline))
}

// pending is what the writer's consumer (and in staged mode the stager's
// and the differ's) has not acked yet.
func (r *chaosRow) pending(ctx context.Context) (uint64, error) {
	names := []string{bus.WriterConsumer(chaosPipeline, r.targetName)}
	if r.stageURL != "" {
		names = append(names, bus.StagerConsumer(chaosPipeline), bus.DifferConsumer(chaosPipeline))
	}
	var n uint64
	for _, name := range names {
		c, err := r.js.Consumer(ctx, bus.StreamName(chaosPipeline), name)
		if err != nil {
			return 0, fmt.Errorf("consumer %s: %w", name, err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			return 0, err
		}
		n += info.NumPending + uint64(info.NumAckPending)
	}
	return n, nil
}

// redeliveries is the consumer's deliveries beyond one per message (valid
// once it has drained and when no dead letter took a sequence).
func (r *chaosRow) redeliveries(ctx context.Context) (int64, error) {
	c, err := r.js.Consumer(ctx, bus.StreamName(chaosPipeline), bus.WriterConsumer(chaosPipeline, r.targetName))
	if err != nil {
		return 0, err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return 0, err
	}
	st, err := r.stream(ctx)
	if err != nil {
		return 0, err
	}
	si, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return int64(ci.Delivered.Consumer) - int64(si.State.LastSeq), nil
}

func (r *chaosRow) deadLetters(ctx context.Context) (uint64, error) {
	st, err := r.stream(ctx)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(bus.DLQSubjects(chaosPipeline)))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

// lastSeq is the stream's last sequence (0 while it does not exist).
func (r *chaosRow) lastSeq() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := r.stream(ctx)
	if err != nil {
		return 0
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.LastSeq
}

// historyLen is the number of row writes the PostgreSQL target recorded.
func (r *chaosRow) historyLen() int64 {
	r.t.Helper()
	return pgtest.QueryInt(r.t, r.dstURL, "SELECT count(*) FROM public.chaos_history")
}

// streamLeader waits for the stream to have a leader and returns its node.
func (r *chaosRow) streamLeader(not string) *testenv.NATSNode {
	r.t.Helper()
	var leader string
	testenv.WaitFor(r.t, time.Minute, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		st, err := r.stream(ctx)
		if err != nil {
			return err
		}
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if info.Cluster == nil || info.Cluster.Leader == "" || info.Cluster.Leader == not {
			return fmt.Errorf("no stream leader (other than %q) yet", not)
		}
		leader = info.Cluster.Leader
		return nil
	})
	return r.cluster.Node(leader)
}

func hostOf(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

func viaProxy(t *testing.T, raw string, p *netproxy.Proxy) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.Addr()
	return u.String()
}

// logCount counts the JSON log lines of procs whose msg is msg and whose
// text contains every one of also.
func logCount(msg string, procs []*testenv.Proc, also ...string) int {
	n := 0
	for _, p := range procs {
	line:
		for _, l := range strings.Split(p.Output(), "\n") {
			if !strings.Contains(l, `"msg":"`+msg+`"`) {
				continue
			}
			for _, a := range also {
				if !strings.Contains(l, a) {
					continue line
				}
			}
			n++
		}
	}
	return n
}

// Rows 1–2: the writer is killed at random points of its batches (the
// target's statements are slowed so most kills land inside an open
// transaction) and restarted at once; its unacked messages are redelivered
// after AckWait.
func chaosKillWriter(r *chaosRow) {
	r.setup(chaosSetup{SlowApply: 50 * time.Millisecond})
	cfg := r.config(chaosConfig{})
	r.start("reader", cfg)
	w := r.start("writer", cfg)
	r.loaded()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for range 5 {
		r.flowing(20)
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond) // a random kill point, not synchronisation
		r.fault()
		w.Kill()
		w = r.start("writer", cfg)
	}
	r.heal()
	r.finish()
}

// Row 2 exactly: the writer's NATS link is black-holed while it applies,
// so the batches it commits then cannot be acked; it is killed after those
// commits and restarted. The redelivered batches find the ledger already
// applied them.
func chaosKillWriterAfterCommit(r *chaosRow) {
	t := r.t
	r.setup(chaosSetup{SlowApply: 300 * time.Millisecond})
	proxy := netproxy.Start(t, hostOf(t, r.natsURL))
	cfg := r.config(chaosConfig{})
	wcfg := r.config(chaosConfig{NATSURL: "nats://" + proxy.Addr()})
	r.start("reader", cfg)
	w := r.start("writer", wcfg)
	r.loaded()
	// Hold the writer's NATS traffic until a batch it had in hand commits;
	// if it had none, let it fetch again and retry.
	var held int64
	for try := 0; held == 0; try++ {
		if try == 5 {
			t.Fatal("the writer committed nothing while its NATS link was held, 5 times")
		}
		before := r.historyLen()
		r.fault()
		proxy.Blackhole()
		deadline := time.Now().Add(5 * time.Second)
		for held == 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond) // polling the target's history
			held = r.historyLen() - before
		}
		if held == 0 {
			proxy.Heal()
			r.flowing(20)
		}
	}
	w.Kill()
	proxy.Heal()
	r.start("writer", wcfg)
	r.heal()
	r.note("%d row writes committed with their acks held", held)
	r.finish()
}

// Row 3: the reader is killed while it publishes, once during the
// snapshot and once during the watermark phase, and restarted (it waits
// for its dead lease, 6 s); it republishes from its saved position. Its
// NATS link has 20 ms of latency, so snapshot pages take a while and the
// kill lands between a page's ack and the next position save (every
// 250 ms). Within the duplicate window JetStream drops the republished
// pages (same Msg-Id); beyond it (window 1 s) they are stored again and the
// writer's ledger absorbs them.
func chaosKillReader(window string) func(r *chaosRow) {
	return func(r *chaosRow) {
		t := r.t
		r.setup(chaosSetup{Workload: testenv.WorkloadOptions{Keys: 20000}})
		proxy := netproxy.Start(t, hostOf(t, r.natsURL))
		proxy.SetLatency(20 * time.Millisecond)
		cfg := r.config(chaosConfig{DuplicateWindow: window})
		rcfg := r.config(chaosConfig{DuplicateWindow: window, NATSURL: "nats://" + proxy.Addr()})
		rd := r.start("reader", rcfg)
		r.start("writer", cfg)
		testenv.WaitFor(t, time.Minute, func() error {
			if s := r.lastSeq(); s < 10 {
				return fmt.Errorf("%d snapshot pages published", s)
			}
			return nil
		})
		// Kill it when the stream holds pages past its saved position:
		// paused, it cannot save meanwhile.
		testenv.WaitFor(t, time.Minute, func() error {
			rd.Pause()
			unsaved, err := r.publishedUnsaved()
			if err == nil && unsaved == 0 {
				err = errors.New("every published page is saved")
			}
			if err != nil {
				rd.Resume()
				return err
			}
			r.fault()
			rd.Kill()
			r.note("killed with %d published rows past the saved position", unsaved)
			return nil
		})
		readers := []*testenv.Proc{rd}
		rd = r.start("reader", rcfg)
		r.loaded()
		rd.Kill()
		readers = append(readers, rd)
		rd = r.start("reader", rcfg)
		r.flowing(50) // the restarted reader resumed
		r.heal()
		readers = append(readers, rd)
		dropped := logCount("batch already in the stream; not stored again", readers)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stored, err := r.storedTwice(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.note("%d republished pages dropped as duplicates, %d stored again", dropped, stored)
		if window == "1s" {
			if stored == 0 {
				t.Error("no page was stored twice: the row did not republish beyond the duplicate window")
			}
		} else if dropped == 0 || stored > 0 {
			t.Errorf("%d pages dropped as duplicates, %d stored twice: want some dropped and none stored twice", dropped, stored)
		}
		r.finish()
	}
}

// publishedUnsaved is the number of snapshot rows the stream holds past
// the position the reader saved: a reader killed now publishes them again.
func (r *chaosRow) publishedUnsaved() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := r.js.KeyValue(ctx, bus.StateBucket)
	if err != nil {
		return 0, err
	}
	var pos struct {
		Phase       string   `json:"phase"`
		SnapshotKey []string `json:"snapshot_key"`
	}
	var saved int64
	e, err := kv.Get(ctx, bus.ReaderPositionKey(chaosPipeline, "source"))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return 0, err
	default:
		if err := json.Unmarshal(e.Value(), &pos); err != nil {
			return 0, err
		}
		if pos.Phase != "snapshot" {
			return 0, fmt.Errorf("the reader is past its snapshot (%s)", pos.Phase)
		}
		if len(pos.SnapshotKey) == 1 {
			if saved, err = strconv.ParseInt(pos.SnapshotKey[0], 10, 64); err != nil {
				return 0, err
			}
		}
	}
	st, err := r.stream(ctx)
	if err != nil {
		return 0, err
	}
	m, err := st.GetLastMsgForSubject(ctx, bus.SourceSubject(chaosPipeline))
	if err != nil {
		return 0, err
	}
	b, err := event.Decode(m.Data)
	if err != nil {
		return 0, err
	}
	ch := b.GetChanges()
	last, err := strconv.ParseInt(event.Key(ch[len(ch)-1], event.KeyIndexes(b)), 10, 64)
	if err != nil {
		return 0, err
	}
	return max(last-saved, 0), nil
}

// storedTwice reads the Msg-Id of every message on the source subject and
// counts those stored more than once.
func (r *chaosRow) storedTwice(ctx context.Context) (int, error) {
	st, err := r.stream(ctx)
	if err != nil {
		return 0, err
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.SourceSubject(chaosPipeline)}, HeadersOnly: true})
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	twice := 0
	for {
		batch, err := c.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return 0, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			id := m.Headers().Get(jetstream.MsgIDHeader)
			if seen[id] {
				twice++
			}
			seen[id] = true
			meta, err := m.Metadata()
			if err != nil {
				return 0, err
			}
			if meta.NumPending == 0 {
				return twice, nil
			}
		}
		if err := batch.Error(); err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, fmt.Errorf("read %d messages of the source subject, then nothing", len(seen))
		}
	}
}

// Row 5: two writers; each in turn is paused past its AckWait mid-batch
// (slow target statements), so its messages are redelivered to the other;
// on SIGCONT the paused one finishes its stale work, which the ledger
// fences.
func chaosPauseWriters(r *chaosRow) {
	r.setup(chaosSetup{SlowApply: 200 * time.Millisecond})
	cfg := r.config(chaosConfig{})
	r.start("reader", cfg)
	writers := []*testenv.Proc{r.start("writer", cfg), r.start("writer", cfg)}
	r.loaded()
	for _, w := range writers {
		r.fault()
		w.Pause()
		time.Sleep(chaosAckWait*5/2 + time.Second) // the fault's length: past AckWait
		w.Resume()
		r.flowing(50)
	}
	r.heal()
	r.finish()
}

// Row 6: the stream leader of an R3 stream is killed mid-run; a new leader
// takes over; the old one is restarted as a follower.
func chaosKillLeader(r *chaosRow) {
	r.setup(chaosSetup{Cluster: true})
	cfg := r.config(chaosConfig{Replicas: 3})
	r.start("reader", cfg)
	r.start("writer", cfg)
	r.start("writer", cfg)
	r.loaded()
	leader := r.streamLeader("")
	r.fault()
	r.cluster.Kill(leader)
	r.note("killed leader %s", leader.Name)
	r.streamLeader(leader.Name)
	r.flowing(100) // changes flow under the new leader
	r.cluster.Restart(leader)
	r.heal()
	r.finish()
}

// Row 7: two of three nodes (the stream leader and another) are down: no
// quorum, so publishes fail and the reader retries the same page without
// advancing its position; writers cannot fetch. Both come back.
func chaosNoQuorum(r *chaosRow) {
	r.setup(chaosSetup{Cluster: true})
	cfg := r.config(chaosConfig{Replicas: 3})
	rd := r.start("reader", cfg)
	r.start("writer", cfg)
	r.start("writer", cfg)
	r.loaded()
	leader := r.streamLeader("")
	var other *testenv.NATSNode
	for _, n := range r.cluster.Nodes {
		if n != leader {
			other = n
			break
		}
	}
	r.fault()
	r.cluster.Kill(leader)
	r.cluster.Kill(other)
	time.Sleep(outageLength()) // the outage
	retries := logCount("publish failed; retrying with the same Msg-Id", []*testenv.Proc{rd})
	r.cluster.Restart(leader, other)
	r.heal()
	losses := logCount("reader lease not renewed in time; this reader stands by until it can take it again", []*testenv.Proc{rd})
	restarts := logCount("JetStream unavailable; the reader resumes from its saved position when it answers", []*testenv.Proc{rd})
	if retries+losses+restarts == 0 {
		r.t.Error("the reader did not notice that the cluster had no quorum")
	}
	r.note("the reader: %d publish retries, %d lease losses, %d restarts from its saved position", retries, losses, restarts)
	r.finish()
}

// Row 8: every node is killed with SIGKILL, then all are restarted; the
// stream, the consumer and the reader's state survive on disk.
func chaosKillAllNodes(r *chaosRow) {
	r.setup(chaosSetup{Cluster: true})
	cfg := r.config(chaosConfig{Replicas: 3})
	r.start("reader", cfg)
	r.start("writer", cfg)
	r.start("writer", cfg)
	r.loaded()
	r.fault()
	for _, n := range r.cluster.Nodes {
		r.cluster.Kill(n)
	}
	r.cluster.Restart(r.cluster.Nodes...)
	r.heal()
	r.finish()
}

// Row 9: every client connection to NATS (reader and writer) goes through
// a proxy that cuts them (resets, and refuses reconnects) or black-holes
// them (bytes and connections held: only timeouts tell) for the outage.
func chaosCutNATS(blackhole bool) func(r *chaosRow) {
	return func(r *chaosRow) {
		t := r.t
		r.setup(chaosSetup{})
		proxy := netproxy.Start(t, hostOf(t, r.natsURL))
		cfg := r.config(chaosConfig{NATSURL: "nats://" + proxy.Addr()})
		r.start("reader", cfg)
		r.start("writer", cfg)
		r.loaded()
		r.fault()
		if blackhole {
			proxy.Blackhole()
		} else {
			proxy.Cut()
		}
		time.Sleep(outageLength()) // the outage
		proxy.Heal()
		r.heal()
		r.finish()
	}
}

// Row 10, by the network: the writer's target (and ledger) connections are
// cut for the outage. The writer waits with backoff, keeping its messages
// in progress, without spending their delivery budget.
func chaosCutTarget(r *chaosRow) {
	t := r.t
	r.setup(chaosSetup{})
	proxy := netproxy.Start(t, hostOf(t, r.dstURL))
	cfg := r.config(chaosConfig{})
	r.start("reader", cfg)
	r.start("writer", r.config(chaosConfig{TargetURL: viaProxy(t, r.dstURL, proxy)}))
	r.loaded()
	r.fault()
	proxy.Cut()
	time.Sleep(outageLength()) // the outage
	proxy.Heal()
	r.heal()
	r.finish()
}

// Row 10, by the server: the target PostgreSQL (the second cluster) is
// stopped with -m immediate (a crash) for the outage.
func chaosStopTarget(r *chaosRow) {
	t := r.t
	server, cluster := outageServer(t)
	r.setup(chaosSetup{TargetOn: server})
	cfg := r.config(chaosConfig{})
	r.start("reader", cfg)
	r.start("writer", cfg)
	r.loaded()
	t.Cleanup(func() { _ = exec.Command("pg_ctlcluster", append(append([]string{}, cluster...), "start")...).Run() })
	r.fault()
	pgCtl(t, cluster, "stop", "-m", "immediate")
	time.Sleep(outageLength()) // the outage
	pgCtl(t, cluster, "start")
	r.heal()
	r.finish()
}

// Row 12: the reader's source connections are cut for the outage while the
// source keeps changing; the reader resumes from its watermark, or (cdc)
// from its replication slot: no gap.
func chaosCutSource(cdc bool) func(r *chaosRow) {
	return func(r *chaosRow) {
		t := r.t
		r.setup(chaosSetup{CDC: cdc})
		proxy := netproxy.Start(t, hostOf(t, r.srcURL))
		r.start("reader", r.config(chaosConfig{SourceURL: viaProxy(t, r.srcURL, proxy)}))
		r.start("writer", r.config(chaosConfig{}))
		r.loaded()
		r.fault()
		proxy.Cut()
		time.Sleep(outageLength()) // the outage
		proxy.Heal()
		r.heal()
		r.finish()
	}
}

// Row 4: staged push on a PostgreSQL stage; the stager and the differ are
// each killed with SIGKILL at a random point of their work, twice, and
// restarted at once. They resume from what the stage and the stream hold.
func chaosKillStagerDiffer(r *chaosRow) {
	r.setup(chaosSetup{Staged: true})
	cfg := r.config(chaosConfig{})
	r.start("reader", cfg)
	procs := map[string]*testenv.Proc{"stager": r.start("stager", cfg), "differ": r.start("differ", cfg)}
	r.start("writer", cfg)
	consumer := map[string]string{"stager": bus.StagerConsumer(chaosPipeline), "differ": bus.DifferConsumer(chaosPipeline)}
	r.loaded()
	for range 2 {
		for _, svc := range []string{"stager", "differ"} {
			// The one started last has taken work; kill it at a random point.
			r.working(consumer[svc], 10)
			time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond) // a random kill point, not synchronisation
			r.fault()
			procs[svc].Kill()
			procs[svc] = r.start(svc, cfg)
		}
	}
	r.working(consumer["stager"], 10)
	r.working(consumer["differ"], 10)
	r.heal()
	r.note("the stager and the differ killed twice each, each time once it had taken 10 messages")
	r.finish()
}

// working waits until the durable consumer has delivered n more messages
// than now: its (restarted) service is at work.
func (r *chaosRow) working(durable string, n uint64) {
	r.t.Helper()
	delivered := func(ctx context.Context) (uint64, error) {
		c, err := r.js.Consumer(ctx, bus.StreamName(chaosPipeline), durable)
		if err != nil {
			return 0, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return 0, err
		}
		return info.Delivered.Consumer, nil
	}
	var base uint64
	r.poll(time.Minute, func(ctx context.Context) (err error) { base, err = delivered(ctx); return })
	r.poll(time.Minute, func(ctx context.Context) error {
		d, err := delivered(ctx)
		if err != nil {
			return err
		}
		if d < base+n {
			return fmt.Errorf("consumer %s delivered %d of %d messages since", durable, d-base, n)
		}
		return nil
	})
}

// Row 11: staged push with its stage on the stoppable PostgreSQL cluster,
// which crashes (stop -m immediate) mid-transaction for the outage; the
// stager and the differ wait and go on from the committed stage.
func chaosStopStage(r *chaosRow) {
	t := r.t
	server, cluster := outageServer(t)
	r.setup(chaosSetup{Staged: true, StageOn: server})
	cfg := r.config(chaosConfig{})
	for _, svc := range []string{"reader", "stager", "differ", "writer"} {
		r.start(svc, cfg)
	}
	r.loaded()
	t.Cleanup(func() { _ = exec.Command("pg_ctlcluster", append(append([]string{}, cluster...), "start")...).Run() })
	r.fault()
	pgCtl(t, cluster, "stop", "-m", "immediate")
	ctx := context.Background()
	before, err := r.applied(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(outageLength()) // the outage
	during, err := r.applied(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pgCtl(t, cluster, "start")
	r.heal()
	r.note("%d changes reached the target while the stage was down (batches already pushed)", during-before)
	r.finish()
}

// Row 3 with cdc: the reader is killed mid-stream, twice, while keys are
// inserted, updated and deleted; the slot is confirmed only once JetStream
// acknowledged, so the restarted reader streams again from there.
func chaosKillReaderCDC(r *chaosRow) {
	r.setup(chaosSetup{CDC: true})
	cfg := r.config(chaosConfig{})
	rd := r.start("reader", cfg)
	r.start("writer", cfg)
	r.loaded()
	for range 2 {
		r.flowing(50)
		r.fault()
		rd.Kill()
		rd = r.start("reader", cfg)
	}
	r.flowing(50) // the restarted reader streams
	r.heal()
	r.finish()
}

// Row 21: an HTTP target whose every request takes twice the AckWait. The
// writer keeps its messages in progress, so none is redelivered while it
// waits (no storm of parallel retries against a struggling API), and the
// backlog drains once the API is fast again.
func chaosSlowHTTP(r *chaosRow) {
	t := r.t
	const ackWait = time.Second
	r.setup(chaosSetup{HTTP: true, Workload: testenv.WorkloadOptions{Keys: 500, Interval: 100 * time.Millisecond, UpdatesPerTx: 2}})
	cfg := r.config(chaosConfig{AckWait: ackWait})
	r.start("reader", cfg)
	r.start("writer", cfg)
	r.loaded()
	ctx := context.Background()
	redeliveredBefore, err := r.redeliveries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r.fault()
	before := r.api.Requests()
	r.api.SetDelay(2 * ackWait)
	time.Sleep(chaosSlowTarget) // the slow period
	slowRequests := r.api.Requests() - before
	r.api.SetDelay(0)
	r.heal()
	r.note("%d requests while slow", slowRequests)
	r.finish()
	if slowRequests == 0 {
		t.Error("no request reached the slow API: the writer stalled")
	}
	// In progress every third of the AckWait, nothing should be redelivered;
	// a loaded machine may delay one InProgress past it now and then.
	if n, err := r.redeliveries(ctx); err != nil || n-redeliveredBefore > 2 {
		t.Errorf("%d messages redelivered during and after the slow period (%v); want at most 2", n-redeliveredBefore, err)
	}
	if n := r.api.RepeatedIdempotencyKeys(); n > 0 {
		t.Errorf("%d requests repeated an Idempotency-Key", n)
	}
}

// Row 22: a stream limited to 256 KiB fills up. Publishes are refused
// (DiscardNew: nothing already stored is dropped); the reader logs it,
// retries the same page and does not advance its saved position. It
// resumes when an operator raises the limit, or, with a short max_age, when
// the oldest (consumed) messages age out.
func chaosStreamFull(ageOut bool) func(r *chaosRow) {
	return func(r *chaosRow) {
		t := r.t
		r.setup(chaosSetup{Workload: testenv.WorkloadOptions{Keys: 500}})
		c := chaosConfig{MaxBytes: 256 << 10}
		if ageOut {
			c.MaxAge, c.DuplicateWindow = "15s", "5s"
		}
		cfg := r.config(c)
		rd := r.start("reader", cfg)
		r.start("writer", cfg)
		r.loaded()
		procs := []*testenv.Proc{rd}
		refused := func() int {
			return logCount("stream full: publish refused; retrying with the same Msg-Id", procs)
		}
		testenv.WaitFor(t, 2*time.Minute, func() error {
			if refused() == 0 {
				return fmt.Errorf("no publish refused yet (stream at %d)", r.lastSeq())
			}
			return nil
		})
		r.fault()
		full := r.lastSeq()
		ctx := context.Background()
		kv, err := r.js.KeyValue(ctx, bus.StateBucket)
		if err != nil {
			t.Fatal(err)
		}
		pos, err := kv.Get(ctx, bus.ReaderPositionKey(chaosPipeline, "source"))
		if err != nil {
			t.Fatal(err)
		}
		if ageOut {
			// Space frees as consumed messages age out; the next refused
			// page then goes in.
			testenv.WaitFor(t, time.Minute, func() error {
				if s := r.lastSeq(); s <= full {
					return fmt.Errorf("stream still at %d", s)
				}
				return nil
			})
		} else {
			testenv.WaitFor(t, time.Minute, func() error {
				if n := refused(); n < 6 {
					return fmt.Errorf("%d refused publishes", n)
				}
				return nil
			})
			if s := r.lastSeq(); s != full {
				t.Errorf("the full stream moved from %d to %d", full, s)
			}
			if now, err := kv.Get(ctx, bus.ReaderPositionKey(chaosPipeline, "source")); err != nil || now.Revision() != pos.Revision() {
				t.Errorf("the reader saved its position while its publishes were refused (%v)", err)
			}
			st, err := r.stream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sc := info.Config
			sc.MaxBytes = 1 << 30
			if _, err := r.js.UpdateStream(ctx, sc); err != nil {
				t.Fatal(err)
			}
		}
		r.heal()
		r.note("%d refused publishes logged", refused())
		r.finish()
	}
}
