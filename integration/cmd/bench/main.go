// Command bench measures oneway against a reference in the same run, so the
// figures are ratios that survive a noisy machine.
//
// Workload initial_load_direct: N invoices rows synced into an empty target
// by `oneway up --exit-when-synced`, against the reference
// `psql \copy … to stdout | psql \copy … from stdin` between the same two
// databases. Workload initial_load_staged: the same rows through staged
// push (stager, embedded stage, differ, writer with applied reports) into
// another empty target; initial_load_staged_pgstage the same with the
// stage in PostgreSQL. Workload cdc_steady (cdc.go): the seconds from the
// last commit of 1,000 transactions of 100-row updates until the target
// matches, against a native logical subscription. Workload synthetic_cycle
// (synthetic.go): one synthetic cycle over 1M and 3M rows with 1% changed,
// its seconds and the reader's peak RSS, against an ordered COPY read. It
// prints a table and appends one JSON line per workload to -out.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

type result struct {
	Workload          string  `json:"workload"`
	Rows              int     `json:"rows"`
	Seconds           float64 `json:"seconds"`
	RowsPerS          float64 `json:"rows_per_s"`
	ReferenceSeconds  float64 `json:"reference_seconds"`
	ReferenceRowsPerS float64 `json:"reference_rows_per_s"`
	Ratio             float64 `json:"ratio"`
	PeakRSSMB         float64 `json:"peak_rss_mb"`
	// CPU is the CPU seconds of the timed run by process role (cdc_steady:
	// the median round), ReferenceCPU the same for the reference.
	CPU          *cpuUse `json:"cpu,omitempty"`
	ReferenceCPU *cpuUse `json:"reference_cpu,omitempty"`
	Commit       string  `json:"commit"`
	At           string  `json:"at"`
}

func main() {
	rows := flag.Int("rows", 1_000_000, "rows to load")
	base := flag.String("postgres", firstNonEmpty(os.Getenv("ONEWAY_BENCH_POSTGRES_URL"), os.Getenv("ONEWAY_TEST_POSTGRES_URL"),
		"postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable"), "PostgreSQL server URL (env ONEWAY_BENCH_POSTGRES_URL)")
	bin := flag.String("oneway", "../bin/oneway", "the oneway binary")
	out := flag.String("out", "../bench/results.jsonl", "append results here")
	logLevel := flag.String("log-level", "warn", "log level of oneway up")
	only := flag.String("workloads", "", "comma-separated workloads to run (default: all): initial_load_direct, initial_load_staged, initial_load_staged_pgstage, incremental_updates_direct, writer_scaling, cdc_steady, synthetic_cycle")
	prefix := flag.String("db-prefix", "oneway_bench", "prefix of the databases the bench creates and drops")
	cdcRows := flag.Int("cdc-rows", 100_000, "cdc_steady: rows of the source table (the workload updates 100,000 rows in 1,000 transactions)")
	cdcRounds := flag.Int("cdc-rounds", 3, "cdc_steady: rounds of 100,000 updates for oneway and for the reference (the median counts)")
	synRows := flag.String("synthetic-rows", "1000000,3000000", "synthetic_cycle: table sizes, comma-separated (peak RSS should not grow with them)")
	cpuProfile := flag.String("cpu-profile-dir", "", "when set, each oneway up writes a CPU profile <workload>.pprof here")
	flag.Parse()
	log.SetFlags(0)
	ctx := context.Background()

	want := func(workload string) bool {
		return *only == "" || slices.Contains(strings.Split(*only, ","), workload)
	}
	dir, err := os.MkdirTemp("", "oneway-bench-")
	must(err)
	defer os.RemoveAll(dir)
	if *cpuProfile != "" {
		must(os.MkdirAll(*cpuProfile, 0o755))
	}
	var results []result
	if want("initial_load_direct") || want("initial_load_staged") || want("initial_load_staged_pgstage") || want("incremental_updates_direct") {
		results = initialLoads(ctx, dir, *base, *bin, *logLevel, *prefix, *cpuProfile, *rows, want)
	}
	// Scale-out against a slow HTTP target (5 ms per request).
	if want("writer_scaling") {
		results = append(results, writerScaling(ctx, filepath.Join(filepath.Dir(*bin), "writer"), *base, 2000)...)
	}

	// Steady-state cdc: seconds from the last commit of a burst of
	// transactions until the target matches.
	if want("cdc_steady") {
		b := &cdcSteady{base: *base, bin: *bin, prefix: *prefix, logLevel: *logLevel, profileDir: *cpuProfile, dir: dir,
			rows: *cdcRows, txns: 1000, perTxn: 100, rounds: *cdcRounds}
		results = append(results, b.run(ctx))
	}

	// Synthetic CDC: one cycle over a table with 1% changed, at each size.
	if want("synthetic_cycle") {
		b := &syntheticCycle{base: *base, readerBin: filepath.Join(filepath.Dir(*bin), "reader"), writerBin: filepath.Join(filepath.Dir(*bin), "writer"),
			prefix: *prefix, dir: dir}
		var syn []result
		for _, f := range strings.Split(*synRows, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			must(err)
			syn = append(syn, b.run(ctx, n))
		}
		for _, r := range syn[1:] {
			log.Printf("synthetic_cycle: peak RSS at %d rows is %.2f× that at %d rows; cycle %.2f s against %.2f s",
				r.Rows, r.PeakRSSMB/syn[0].PeakRSSMB, syn[0].Rows, r.Seconds, syn[0].Seconds)
		}
		results = append(results, syn...)
	}

	fmt.Printf("\n%-28s %10s %10s %14s %12s %16s %7s %12s\n", "workload", "rows", "seconds", "rows/s", "reference s", "reference rows/s", "ratio", "peak RSS MB")
	f, err := os.OpenFile(*out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	must(err)
	for _, r := range results {
		fmt.Printf("%-28s %10d %10.3f %14.0f %12.3f %16.0f %7.2f %12.1f\n", r.Workload, r.Rows, r.Seconds, r.RowsPerS, r.ReferenceSeconds, r.ReferenceRowsPerS, r.Ratio, r.PeakRSSMB)
		line, _ := json.Marshal(r)
		_, err = f.Write(append(line, '\n'))
		must(err)
	}
	must(f.Close())
}

// initialLoads runs the workloads on a rows-row source table: the
// initial loads (direct and staged) and the incremental updates.
func initialLoads(ctx context.Context, dir, base, bin, logLevel, prefix, cpuProfile string, rows int, want func(string) bool) []result {
	dbs := []string{prefix + "_src", prefix + "_dst", prefix + "_ref", prefix + "_staged", prefix + "_staged_pg", prefix + "_stage"}
	src, dst, ref, stagedDst := dbURL(base, dbs[0]), dbURL(base, dbs[1]), dbURL(base, dbs[2]), dbURL(base, dbs[3])
	stagedPGDst, stageDB := dbURL(base, dbs[4]), dbURL(base, dbs[5])
	for _, name := range dbs {
		must(exec1(ctx, base, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()))
	}
	log.Printf("creating %d source rows …", rows)
	must(exec1(ctx, src, invoicesDDL, fillInvoices(rows), "CREATE INDEX ON public.invoices (updated_at, id)", "VACUUM ANALYZE public.invoices"))
	must(exec1(ctx, ref, invoicesDDL))

	// Each timed run starts from a checkpointed server, so neither pays for
	// the other's (or the setup's) dirty buffers.
	// The reference is timed three times (the copy pipe varies by ±30% on a
	// loaded 2-core machine); the median is the figure.
	var refRuns []float64
	for i := 0; i < 3; i++ {
		must(exec1(ctx, ref, "TRUNCATE public.invoices", "CHECKPOINT"))
		log.Printf("reference %d/3: psql \\copy pipe …", i+1)
		t0 := time.Now()
		pipe := fmt.Sprintf(`psql %q -q -c "\copy (select * from public.invoices) to stdout" | psql %q -q -c "\copy public.invoices from stdin"`, noParams(src), noParams(ref))
		cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", pipe)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+password(base))
		if b, err := cmd.CombinedOutput(); err != nil {
			log.Fatalf("reference copy pipe: %v\n%s", err, b)
		}
		refRuns = append(refRuns, time.Since(t0).Seconds())
	}
	sort.Float64s(refRuns)
	refSec := refRuns[1]
	log.Printf("reference runs: %.2f s, %.2f s, %.2f s", refRuns[0], refRuns[1], refRuns[2])

	cfg := filepath.Join(dir, "bench.yaml")
	watermark := "    pattern: watermark\n    column: updated_at\n"
	writeInvoicesConfig(cfg, "bench", "", src, watermark, dst, "")
	stagedCfg := filepath.Join(dir, "bench-staged.yaml")
	writeInvoicesConfig(stagedCfg, "bench_staged", "mode: staged\n", src, watermark, stagedDst, "")
	// The same with the stage in PostgreSQL (pgstage) rather than the
	// embedded SQLite file.
	stagedPGCfg := filepath.Join(dir, "bench-staged-pg.yaml")
	writeInvoicesConfig(stagedPGCfg, "bench_staged_pg", fmt.Sprintf("mode: staged\nstage:\n  url: %q\n", stageDB), src, watermark, stagedPGDst, "")
	must(exec1(ctx, base, "CHECKPOINT"))
	// runPipeline runs `oneway up --exit-when-synced` on a config, then
	// verify, and measures it against the reference.
	runPipeline := func(workload, cfg, dataDir string, n int) result {
		must(exec1(ctx, base, "CHECKPOINT"))
		log.Printf("%s: oneway up --exit-when-synced …", workload)
		t0 := time.Now()
		args := []string{"up", "--config", cfg, "--exit-when-synced", "--data-dir", dataDir, "--log-level", logLevel}
		if cpuProfile != "" {
			args = append(args, "--cpu-profile", filepath.Join(cpuProfile, workload+".pprof"))
		}
		up := exec.CommandContext(ctx, bin, args...)
		up.Stdout, up.Stderr = os.Stderr, os.Stderr
		cpu0 := sampleCPU()
		must(up.Start())
		// The pipeline's databases, by name: their sessions are the
		// reader's (source), the writer's (target) and pgstage's.
		roles := pgRoles(up.Process.Pid, map[string]string{dbs[0]: "source sessions", dbs[1]: "target sessions",
			dbs[3]: "target sessions", dbs[4]: "target sessions", dbs[5]: "stage sessions"})
		last := cpu0
		// The oneway process is sampled until it exits: a sample after
		// the exit no longer finds it.
		done := make(chan error, 1)
		go func() { done <- up.Wait() }()
		var err error
		for waiting := true; waiting; {
			select {
			case err = <-done:
				waiting = false
			case <-time.After(200 * time.Millisecond):
				last = mergeSamples(last, sampleCPU())
			}
		}
		if err != nil {
			log.Fatalf("oneway up: %v", err)
		}
		sec := time.Since(t0).Seconds()
		end := mergeSamples(last, sampleCPU())
		if ru, ok := up.ProcessState.SysUsage().(*syscall.Rusage); ok { // exact, to the exit
			end.procs[up.Process.Pid] = procCPU{cmdline: last.procs[up.Process.Pid].cmdline,
				sec: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()}
		}
		use := cpu0.until(end, roles)
		log.Printf("%s: %.2f s; %s", workload, sec, use)
		rss := float64(up.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024
		vf := exec.CommandContext(ctx, bin, "verify", "--config", cfg, "--log-level", "warn")
		vf.Stdout, vf.Stderr = os.Stderr, os.Stderr
		if err := vf.Run(); err != nil {
			log.Fatalf("oneway verify after %s: %v", workload, err)
		}
		return result{Workload: workload, Rows: n, Seconds: round(sec), RowsPerS: round(float64(n) / sec),
			ReferenceSeconds: round(refSec), ReferenceRowsPerS: round(float64(rows) / refSec),
			Ratio:     round(float64(n) / sec / (float64(rows) / refSec)),
			PeakRSSMB: round(rss), CPU: &use, Commit: commit(), At: time.Now().UTC().Format(time.RFC3339)}
	}
	runUp := func(workload string, n int) result { return runPipeline(workload, cfg, filepath.Join(dir, "data"), n) }
	var results []result
	if want("initial_load_direct") || want("incremental_updates_direct") {
		results = append(results, runUp("initial_load_direct", rows))
	}
	// Staged push: every row is staged twice (source, then the writer's
	// report of the target) and joined once by the differ.
	if want("initial_load_staged") {
		results = append(results, runPipeline("initial_load_staged", stagedCfg, filepath.Join(dir, "data-staged"), rows))
	}
	if want("initial_load_staged_pgstage") {
		results = append(results, runPipeline("initial_load_staged_pgstage", stagedPGCfg, filepath.Join(dir, "data-staged-pg"), rows))
	}
	// Incremental: a fifth of the rows change at the source; they take the
	// fenced (ledger-checked upsert) path. The reference is the same COPY
	// pipe rate: what PostgreSQL moves when nothing is checked.
	if want("incremental_updates_direct") {
		updates := rows / 5
		must(exec1(ctx, src, fmt.Sprintf("UPDATE public.invoices SET status = 'changed', amount = amount + 1, updated_at = now() WHERE id <= %d", updates)))
		results = append(results, runUp("incremental_updates_direct", updates))
	}
	for _, name := range dbs {
		_ = exec1(ctx, base, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	}
	return results
}

// invoicesDDL is the source table of every workload.
const invoicesDDL = `CREATE TABLE public.invoices (id bigint PRIMARY KEY, customer text, amount numeric(12,2), status text, note text, updated_at timestamptz NOT NULL DEFAULT now())`

// fillInvoices inserts ids 1..n.
func fillInvoices(n int) string {
	return fmt.Sprintf(`INSERT INTO public.invoices (id, customer, amount, status, note, updated_at)
SELECT g, 'customer ' || (g %% 5000), round((g %% 100000) / 7.0, 2), (ARRAY['open','paid','void'])[1 + g %% 3],
       CASE WHEN g %% 10 = 0 THEN NULL ELSE 'note for invoice ' || g END, now() - (g || ' seconds')::interval
FROM generate_series(1, %d) g`, n)
}

func exec1(ctx context.Context, u string, stmts ...string) error {
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%.60s…: %w", s, err)
		}
	}
	return nil
}

func dbURL(base, db string) string {
	u, err := url.Parse(base)
	must(err)
	u.Path = "/" + db
	return u.String()
}

// noParams drops the password for psql (it comes from PGPASSWORD).
func noParams(s string) string {
	u, err := url.Parse(s)
	must(err)
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	return u.String()
}

func password(s string) string {
	u, err := url.Parse(s)
	must(err)
	p, _ := u.User.Password()
	return p
}

func commit() string {
	b, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func round(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// atFatal holds what fatalf undoes before exiting (replication slots
// keep WAL until dropped, so a failed run must not leave one behind).
var atFatal []func()

// fatalf runs atFatal, latest first, then exits like log.Fatalf.
func fatalf(format string, args ...any) {
	hooks := atFatal
	atFatal = nil
	for i := len(hooks) - 1; i >= 0; i-- {
		hooks[i]()
	}
	log.Fatalf(format, args...)
}

func must(err error) {
	if err != nil {
		fatalf("%v", err)
	}
}

// writeInvoicesConfig writes a pipeline file that syncs public.invoices
// from the PostgreSQL database src into the PostgreSQL target dst. head
// holds the top-level sections besides source and targets (mode, nats,
// stage), capture the fields of source.capture and target the target's
// fields after its url, each line indented as in the file.
func writeInvoicesConfig(path, pipeline, head, src, capture, dst, target string) {
	must(os.WriteFile(path, []byte(fmt.Sprintf(`pipeline: %s
%ssource:
  kind: postgres
  url: %q
  table: public.invoices
  key: [id]
  columns: [id, customer, amount, status, note, updated_at]
  capture:
%stargets:
  - name: pg
    kind: postgres
    url: %q
%s`, pipeline, head, src, capture, dst, target)), 0o600))
}
