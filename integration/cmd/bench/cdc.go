package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// cdcSteady is the steady-state cdc workload: while a pipeline follows a
// 100,000-row invoices table by logical replication, 1,000 transactions
// of 100-row UPDATEs (100,000 updates, every row once) are committed as
// fast as one connection can; the figure is the time from the last
// commit until the target matches the source. It is measured for
// `oneway up` (cdc pattern, direct mode into PostgreSQL) and for the
// reference, a native PostgreSQL logical subscription between the same
// kind of databases; each does `rounds` rounds and the median counts.
type cdcSteady struct {
	base, bin, prefix, logLevel, profileDir, dir string
	rows, txns, perTxn, rounds                   int
}

const cdcPoll = 20 * time.Millisecond

func (b *cdcSteady) db(suffix string) string { return b.prefix + "_cdc_" + suffix }

func (b *cdcSteady) slot(suffix string) string { return b.prefix + "_cdc_" + suffix + "_slot" }

// cleanup drops what an earlier (possibly crashed) run left: the
// subscription (a database holding one cannot be dropped), the slots and
// the databases.
func (b *cdcSteady) cleanup(ctx context.Context) error {
	sub := dbURL(b.base, b.db("sub"))
	if conn, err := pgx.Connect(ctx, sub); err == nil {
		_ = dropSubscription(ctx, conn, b.prefix+"_cdc_sub")
		conn.Close(ctx)
	}
	for _, s := range []string{b.slot("ref"), b.slot("oneway")} {
		if err := dropSlot(ctx, b.base, s); err != nil {
			return err
		}
	}
	for _, name := range []string{b.db("src"), b.db("dst"), b.db("sub")} {
		if err := exec1(ctx, b.base, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			return err
		}
	}
	return nil
}

func dropSubscription(ctx context.Context, conn *pgx.Conn, name string) error {
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_subscription WHERE subname = $1", name).Scan(&n); err != nil || n == 0 {
		return err
	}
	id := pgx.Identifier{name}.Sanitize()
	// Detached from its slot first: dropping a slot over a connection to
	// the same cluster is done below, by the caller, once it is inactive.
	for _, s := range []string{"ALTER SUBSCRIPTION " + id + " DISABLE", "ALTER SUBSCRIPTION " + id + " SET (slot_name = NONE)", "DROP SUBSCRIPTION " + id} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// dropSlot drops a replication slot once no walsender holds it (waiting
// up to 30 s); a missing slot is fine.
func dropSlot(ctx context.Context, base, slot string) error {
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var exists, active bool
		err := conn.QueryRow(ctx, "SELECT true, active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&exists, &active)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if !active {
			_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication slot %s is still active after 30 s", slot)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *cdcSteady) run(ctx context.Context) result {
	must(b.cleanup(ctx))
	clean := func() {
		if err := b.cleanup(ctx); err != nil {
			log.Printf("cdc_steady: cleanup: %v", err)
		}
	}
	atFatal = append(atFatal, clean)
	defer func() { atFatal = atFatal[:len(atFatal)-1] }()
	defer clean()
	for _, name := range []string{b.db("src"), b.db("dst"), b.db("sub")} {
		must(exec1(ctx, b.base, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()))
	}
	src, dst, sub := dbURL(b.base, b.db("src")), dbURL(b.base, b.db("dst")), dbURL(b.base, b.db("sub"))
	log.Printf("cdc_steady: creating %d source rows …", b.rows)
	must(exec1(ctx, src, invoicesDDL, fillInvoices(b.rows), "VACUUM ANALYZE public.invoices"))

	srcConn, err := pgx.Connect(ctx, src)
	must(err)
	defer srcConn.Close(ctx)

	// The reference: a native subscription. CREATE SUBSCRIPTION cannot
	// create its slot on its own cluster (it waits for its own
	// transaction), so the slot is made beforehand.
	pub := b.prefix + "_cdc_ref_pub"
	must(exec1(ctx, src, "CREATE PUBLICATION "+pgx.Identifier{pub}.Sanitize()+" FOR TABLE public.invoices",
		fmt.Sprintf("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", quoteLiteral(b.slot("ref")))))
	must(exec1(ctx, sub, invoicesDDL, fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s WITH (create_slot = false, slot_name = %s, copy_data = true)",
		pgx.Identifier{b.prefix + "_cdc_sub"}.Sanitize(), quoteLiteral(libpqConnString(src)), pgx.Identifier{pub}.Sanitize(), quoteLiteral(b.slot("ref")))))
	subConn, err := pgx.Connect(ctx, sub)
	must(err)
	defer subConn.Close(ctx)
	log.Printf("cdc_steady: reference: waiting for the subscription's initial copy …")
	b.waitSame(ctx, srcConn, subConn, 5*time.Minute, nil)
	refRuns, refCPU := b.measure(ctx, srcConn, subConn, "ref", "reference",
		pgRoles(0, map[string]string{b.db("src"): "source sessions", b.db("sub"): "target sessions"}))
	must(dropSubscription(ctx, subConn, b.prefix+"_cdc_sub"))
	must(dropSlot(ctx, b.base, b.slot("ref")))

	// oneway up, cdc pattern, direct into PostgreSQL.
	cfg := filepath.Join(b.dir, "cdc.yaml")
	writeInvoicesConfig(cfg, "bench_cdc", "nats:\n  max_bytes: 268435456\n", src,
		fmt.Sprintf("    pattern: cdc\n    slot: %s\n    publication: %s\n", b.slot("oneway"), b.prefix+"_cdc_pub"), dst, "")
	args := []string{"up", "--config", cfg, "--data-dir", filepath.Join(b.dir, "data-cdc"), "--log-level", b.logLevel, "--admin-addr", "off"}
	if b.profileDir != "" {
		args = append(args, "--cpu-profile", filepath.Join(b.profileDir, "cdc_steady.pprof"))
	}
	up := exec.CommandContext(ctx, b.bin, args...)
	up.Stdout, up.Stderr = os.Stderr, os.Stderr
	must(up.Start())
	exited := make(chan error, 1)
	go func() { exited <- up.Wait() }()
	// On a fatal error: stop oneway up before the cleanup drops its slot.
	atFatal = append(atFatal, func() {
		_ = up.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = up.Process.Kill()
		}
	})
	defer func() { atFatal = atFatal[:len(atFatal)-1] }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = up.Process.Signal(os.Interrupt)
			if err := <-exited; err != nil {
				log.Printf("cdc_steady: oneway up: %v", err)
			}
		}
	}()
	dstConn := connectWhenReady(ctx, dst, exited)
	defer dstConn.Close(ctx)
	log.Printf("cdc_steady: oneway up: waiting for the snapshot …")
	b.waitSame(ctx, srcConn, dstConn, 5*time.Minute, exited)
	runs, cpu := b.measure(ctx, srcConn, dstConn, "oneway", "oneway",
		pgRoles(up.Process.Pid, map[string]string{b.db("src"): "source sessions", b.db("dst"): "target sessions"}))
	select {
	case err := <-exited:
		fatalf("cdc_steady: oneway up ended early: %v", err)
	default:
	}
	_ = up.Process.Signal(os.Interrupt)
	if err := <-exited; err != nil {
		fatalf("cdc_steady: oneway up: %v", err)
	}
	exited <- nil // for the deferred stop

	sec, ref := median(runs), median(refRuns)
	log.Printf("cdc_steady: oneway %s s, native subscription %s s (median of %d)", fmtRuns(runs), fmtRuns(refRuns), b.rounds)
	log.Printf("cdc_steady: per round (median), oneway: %s", cpu)
	log.Printf("cdc_steady: per round (median), native subscription: %s", refCPU)
	n := b.txns * b.perTxn
	return result{Workload: "cdc_steady", Rows: n, Seconds: round3(sec), RowsPerS: 0,
		ReferenceSeconds: round3(ref), Ratio: round(ref / sec), CPU: &cpu, ReferenceCPU: &refCPU,
		Commit: commit(), At: time.Now().UTC().Format(time.RFC3339)}
}

// measure runs b.rounds rounds against dst (markers <marker>-<n>) and
// returns their seconds and, role by role (roles names the processes), the
// median CPU of a round; who names them in the log.
func (b *cdcSteady) measure(ctx context.Context, src, dst *pgx.Conn, marker, who string, roles func(int, string) string) ([]float64, cpuUse) {
	var runs []float64
	var uses []cpuUse
	for r := 0; r < b.rounds; r++ {
		sec, use := b.round(ctx, src, dst, fmt.Sprintf("%s-%d", marker, r), roles)
		log.Printf("cdc_steady: %s round %d/%d: %.3f s from the last commit to a matching target; %s", who, r+1, b.rounds, sec, use)
		runs, uses = append(runs, sec), append(uses, use)
	}
	return runs, medianUse(uses)
}

// round commits b.txns transactions of b.perTxn row updates, then returns
// the seconds from the last commit until the target matches the source,
// and the CPU each role (roles) used from the first update to the match.
func (b *cdcSteady) round(ctx context.Context, src, dst *pgx.Conn, marker string, roles func(int, string) string) (float64, cpuUse) {
	var walStart string
	must(src.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&walStart))
	cpu0 := sampleCPU()
	t0 := time.Now()
	for i := 0; i < b.txns; i++ {
		lo := (i * b.perTxn) % b.rows
		_, err := src.Exec(ctx, `UPDATE public.invoices SET amount = amount + 1, status = $1, note = $2, updated_at = clock_timestamp()
WHERE id > $3 AND id <= $4`, marker, fmt.Sprintf("%s txn %d", marker, i), lo, lo+b.perTxn)
		must(err)
	}
	last := time.Now()
	lastLo := ((b.txns - 1) * b.perTxn) % b.rows
	lastNote := fmt.Sprintf("%s txn %d", marker, b.txns-1)
	log.Printf("cdc_steady: %s: %d updates committed in %.2f s", marker, b.txns*b.perTxn, last.Sub(t0).Seconds())
	// The source's digest, computed beside the polling.
	want := make(chan string, 1)
	go func() { want <- digest(ctx, src) }()
	srcDigest := ""
	// Cheap first: the last transaction's rows; then the whole table. The
	// target matched when the digest's snapshot was taken: its start.
	deadline := last.Add(5 * time.Minute)
	for {
		var n int
		err := dst.QueryRow(ctx, "SELECT count(*) FROM public.invoices WHERE id > $1 AND id <= $2 AND note = $3", lastLo, lastLo+b.perTxn, lastNote).Scan(&n)
		must(err)
		if n == b.perTxn {
			at := time.Now()
			got := digest(ctx, dst)
			if srcDigest == "" {
				srcDigest = <-want
			}
			if got == srcDigest {
				use := cpu0.until(sampleCPU(), roles)
				// The server's whole WAL meanwhile (every database's): what
				// the walsender decoded to find these changes.
				var walMB float64
				must(src.QueryRow(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn) / 1048576", walStart).Scan(&walMB))
				log.Printf("cdc_steady: %s: the server wrote %.0f MB of WAL from the first update to the match", marker, walMB)
				return at.Sub(last).Seconds(), use
			}
		}
		if time.Now().After(deadline) {
			fatalf("cdc_steady: %s: the target does not match 5 minutes after the last commit", marker)
		}
		time.Sleep(cdcPoll)
	}
}

// waitSame polls until dst holds the same rows as src.
// It fails when exited (nil: none) reports the pipeline's end.
func (b *cdcSteady) waitSame(ctx context.Context, src, dst *pgx.Conn, limit time.Duration, exited chan error) {
	deadline := time.Now().Add(limit)
	want := digest(ctx, src)
	for digestOrEmpty(ctx, dst) != want {
		select {
		case err := <-exited:
			exited <- err
			fatalf("cdc_steady: oneway up ended: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			fatalf("cdc_steady: the target does not match the source after %s", limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const digestQuery = `SELECT count(*) || ':' || coalesce(md5(string_agg(id || '|' || amount || '|' || status || '|' || coalesce(note, '') || '|' || customer || '|' || extract(epoch FROM updated_at), ',' ORDER BY id)), '')
FROM public.invoices`

func digest(ctx context.Context, c *pgx.Conn) string {
	var s string
	must(c.QueryRow(ctx, digestQuery).Scan(&s))
	return s
}

// digestOrEmpty is digest, "" while the table does not exist yet.
func digestOrEmpty(ctx context.Context, c *pgx.Conn) string {
	var s string
	err := c.QueryRow(ctx, digestQuery).Scan(&s)
	if isUndefinedTable(err) {
		return ""
	}
	must(err)
	return s
}

func isUndefinedTable(err error) bool {
	return err != nil && strings.Contains(err.Error(), "SQLSTATE 42P01")
}

// connectWhenReady connects to u, failing if the process ends first.
func connectWhenReady(ctx context.Context, u string, exited <-chan error) *pgx.Conn {
	for {
		conn, err := pgx.Connect(ctx, u)
		if err == nil {
			return conn
		}
		select {
		case err := <-exited:
			fatalf("oneway up ended: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// libpqConnString is a key='value' connection string for u (CREATE
// SUBSCRIPTION takes one).
func libpqConnString(u string) string {
	p, err := url.Parse(u)
	must(err)
	q := func(k, v string) string {
		return k + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
	}
	kv := []string{q("host", p.Hostname()), q("dbname", strings.TrimPrefix(p.Path, "/"))}
	if port := p.Port(); port != "" {
		kv = append(kv, q("port", port))
	}
	if p.User != nil {
		kv = append(kv, q("user", p.User.Username()))
		if pw, ok := p.User.Password(); ok {
			kv = append(kv, q("password", pw))
		}
	}
	return strings.Join(kv, " ")
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func fmtRuns(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(parts, ", ")
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }
