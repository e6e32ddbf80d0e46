package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oneway-sync/oneway/shared/natsbus/natsembed"
)

// syntheticCycle measures one cycle of the synthetic pattern: a table of
// n invoices, loaded by a first cycle, then 1% of its rows changed; the
// figures are the next cycle's duration (read, merge with the hash list,
// publish the changes, store the new list: the reader's "cycle done" log
// line) and the reader's peak RSS during it, each the median of
// syntheticCycles rounds of change and cycle. The reader and the writer
// run as separate processes (bin/reader, bin/writer) against a NATS
// server embedded in the bench, so the RSS is the reader's alone; the
// measured reader is a fresh process that starts with that cycle, so the
// first cycle's (the initial load's) memory does not count. The reference
// is the read the cycle cannot avoid: COPY (SELECT … ORDER BY id) TO
// STDOUT of the same table, median of 3.
type syntheticCycle struct {
	base, readerBin, writerBin, prefix, dir string
}

// syntheticCycles is how many measured cycles each size runs.
const syntheticCycles = 3

// cycleLine is the reader's "cycle done" log line.
type cycleLine struct {
	Msg     string  `json:"msg"`
	Cycle   uint64  `json:"cycle"`
	Rows    int     `json:"rows"`
	Changes int     `json:"changes"`
	Seconds float64 `json:"seconds"`
}

func (b *syntheticCycle) run(ctx context.Context, n int) result {
	name := fmt.Sprintf("synthetic_cycle_%dk", n/1000)
	if n%1_000_000 == 0 {
		name = fmt.Sprintf("synthetic_cycle_%dm", n/1_000_000)
	}
	srcDB, dstDB := b.prefix+"_syn_src", b.prefix+"_syn_dst"
	drop := func() {
		for _, db := range []string{srcDB, dstDB} {
			_ = exec1(ctx, b.base, "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)")
		}
	}
	drop()
	atFatal = append(atFatal, drop)
	defer func() { atFatal = atFatal[:len(atFatal)-1] }()
	defer drop()
	for _, db := range []string{srcDB, dstDB} {
		must(exec1(ctx, b.base, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()))
	}
	src, dst := dbURL(b.base, srcDB), dbURL(b.base, dstDB)
	log.Printf("%s: creating %d source rows …", name, n)
	must(exec1(ctx, src, invoicesDDL, fillInvoices(n), "VACUUM ANALYZE public.invoices"))

	// The reference: the ordered full read alone.
	srcConn, err := pgx.Connect(ctx, src)
	must(err)
	defer srcConn.Close(ctx)
	var refRuns []float64
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		_, err := srcConn.PgConn().CopyTo(ctx, io.Discard, "COPY (SELECT id, customer, amount, status, note, updated_at FROM public.invoices ORDER BY id) TO STDOUT")
		must(err)
		refRuns = append(refRuns, time.Since(t0).Seconds())
	}
	refSec := median(refRuns)

	dir := filepath.Join(b.dir, name)
	ns, err := natsembed.Start(natsembed.Options{StoreDir: filepath.Join(dir, "nats")})
	must(err)
	defer ns.Shutdown()
	cfg := filepath.Join(dir, "synthetic.yaml")
	writeInvoicesConfig(cfg, "bench_synthetic", fmt.Sprintf("nats:\n  url: %q\n", ns.ClientURL()), src,
		"    pattern: synthetic\n    batch_size: 1000\n    poll_interval: 1h\n", dst, "    delete: hard\n")

	writer := startProc(ctx, b.writerBin, "run", "--config", cfg, "--log-level", "warn", "--log-format", "json")
	defer writer.stop()
	atFatal = append(atFatal, writer.stop)
	defer func() { atFatal = atFatal[:len(atFatal)-1] }()

	// The first cycle: every row, as a snapshot.
	log.Printf("%s: first cycle (the initial load) …", name)
	// readCycle runs a fresh reader for one cycle with want changes, and
	// returns its cycle line and peak RSS.
	readCycle := func(want int) (cycleLine, float64) {
		r := startProc(ctx, b.readerBin, "run", "--config", cfg, "--log-level", "info", "--log-format", "json")
		atFatal = append(atFatal, r.stop)
		c := r.cycle(want)
		rss := r.peakRSSMB()
		r.stop()
		atFatal = atFatal[:len(atFatal)-1]
		return c, rss
	}
	c1, rss1 := readCycle(n)
	log.Printf("%s: first cycle: %d rows sent in %.2f s, reader peak RSS %.1f MB", name, c1.Changes, c1.Seconds, rss1)
	waitSameSum(ctx, src, dst, 10*time.Minute)

	// Three cycles, each by a fresh reader after 1% of the rows changed:
	// the figures are their medians (one peak RSS varies by ±2 MB between
	// runs, about the margin the 1M/3M comparison has).
	changed := n / 100
	var secs, rsss []float64
	var c2 cycleLine
	for i := 1; i <= syntheticCycles; i++ {
		must(exec1(ctx, src, fmt.Sprintf("UPDATE public.invoices SET amount = amount + 1, status = 'changed', updated_at = now() WHERE id %% 100 = 7 AND id <= %d", changed*100)))
		log.Printf("%s: %d rows changed; a fresh reader runs cycle %d/%d …", name, changed, i, syntheticCycles)
		c, rss := readCycle(changed)
		waitSameSum(ctx, src, dst, 5*time.Minute)
		log.Printf("%s: cycle %d/%d: %.2f s, reader peak RSS %.1f MB", name, i, syntheticCycles, c.Seconds, rss)
		secs, rsss, c2 = append(secs, c.Seconds), append(rsss, rss), c
	}
	sec, rss := median(secs), median(rsss)
	log.Printf("%s: cycle of %d rows with %d changes: %.2f s (ordered COPY read: %.2f s), reader peak RSS %.1f MB (medians of %d)", name, c2.Rows, c2.Changes, sec, refSec, rss, syntheticCycles)
	return result{Workload: name, Rows: n, Seconds: round(sec), RowsPerS: round(float64(n) / sec),
		ReferenceSeconds: round(refSec), ReferenceRowsPerS: round(float64(n) / refSec), Ratio: round(refSec / sec),
		PeakRSSMB: round(rss), Commit: commit(), At: time.Now().UTC().Format(time.RFC3339)}
}

// proc is a service process whose JSON log the bench reads.
type proc struct {
	cmd    *exec.Cmd
	cycles chan cycleLine
	exited chan error
	err    error
	done   bool
}

func startProc(ctx context.Context, bin string, args ...string) *proc {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = os.Stderr
	pipe, err := cmd.StderrPipe()
	must(err)
	must(cmd.Start())
	p := &proc{cmd: cmd, cycles: make(chan cycleLine, 16), exited: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l struct {
				cycleLine
				Level string `json:"level"`
			}
			if json.Unmarshal(sc.Bytes(), &l) != nil || l.Level == "WARN" || l.Level == "ERROR" {
				fmt.Fprintln(os.Stderr, sc.Text())
			}
			if l.Msg == "cycle done" {
				p.cycles <- l.cycleLine
			}
		}
		p.exited <- cmd.Wait()
	}()
	return p
}

// cycle waits for the log line of a cycle that sent want changes.
func (p *proc) cycle(want int) cycleLine {
	deadline := time.After(15 * time.Minute)
	for {
		select {
		case c := <-p.cycles:
			if c.Changes == want {
				return c
			}
			log.Printf("cycle %d: %d changes (waiting for one with %d)", c.Cycle, c.Changes, want)
		case err := <-p.exited:
			p.exited <- err
			fatalf("%s ended before its cycle: %v", p.cmd.Path, err)
		case <-deadline:
			fatalf("%s: no cycle with %d changes within 15 minutes", p.cmd.Path, want)
		}
	}
}

// stop interrupts the process and waits for it (idempotent).
func (p *proc) stop() {
	if p.done {
		return
	}
	p.done = true
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case p.err = <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		p.err = <-p.exited
	}
}

// peakRSSMB is the running process's peak resident set so far (VmHWM).
// Not the rusage of the ended child: Go starts children with a vfork-like
// clone, and Linux carries the parent's peak (this bench, which embeds the
// NATS server) into the child's ru_maxrss at exec.
func (p *proc) peakRSSMB() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	must(err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			must(err)
			return float64(kb) / 1024
		}
	}
	fatalf("no VmHWM in /proc/%d/status", p.cmd.Process.Pid)
	return 0
}

// sumDigest is an order-free digest of a table (count and a sum of row
// hashes): cheap on millions of rows.
const sumDigest = `SELECT count(*) || ':' || coalesce(sum(hashtextextended(id || '|' || amount || '|' || status || '|' || coalesce(note, '') || '|' || customer || '|' || extract(epoch FROM updated_at), 0)::numeric), 0)
FROM public.invoices`

// waitSameSum polls until dst holds the rows of src.
func waitSameSum(ctx context.Context, src, dst string, limit time.Duration) {
	get := func(u string) string {
		conn, err := pgx.Connect(ctx, u)
		must(err)
		defer conn.Close(ctx)
		var s string
		if err := conn.QueryRow(ctx, sumDigest).Scan(&s); err != nil && !isUndefinedTable(err) {
			must(err)
		}
		return s
	}
	want := get(src)
	deadline := time.Now().Add(limit)
	for get(dst) != want {
		if time.Now().After(deadline) {
			fatalf("the target does not match the source after %s", limit)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
