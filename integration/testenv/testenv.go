// Package testenv is the harness of oneway's end-to-end tests: built
// binaries, PostgreSQL databases, pipeline configs and polling helpers.
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Bin returns the path of a oneway binary (oneway, reader, writer, stager,
// differ), built once per test process from the workspace.
func Bin(t testing.TB, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "oneway-bin-")
		if buildErr != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		for _, svc := range []string{"oneway", "reader", "writer", "stager", "differ"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, svc), "./cmd/"+svc)
			cmd.Dir = filepath.Join(root, "services", svc)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", svc, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, name)
}

// Result of a finished command.
type Result struct {
	Code   int
	Stdout string
	Stderr string
}

// Run runs a binary to completion (bounded by timeout) and returns its exit
// code and output.
func Run(t testing.TB, timeout time.Duration, bin string, args ...string) Result {
	t.Helper()
	path := Bin(t, bin) // the first call builds: not part of the timeout
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %s %v: %v", bin, args, err)
		}
		code = ee.ExitCode()
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %s did not finish within %s\nstderr:\n%s", bin, strings.Join(args, " "), timeout, tail(stderr.String(), 4000))
	}
	return Result{Code: code, Stdout: stdout.String(), Stderr: stderr.String()}
}

// Proc is a running binary.
type Proc struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan struct{}
	err    error
}

// Start starts a binary in the background; it is killed when the test ends.
func Start(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	return StartIn(t, "", bin, args...)
}

// StartIn is Start in the working directory dir ("" = the test's).
func StartIn(t testing.TB, dir, bin string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(Bin(t, bin), args...)
	cmd.Dir = dir
	p := &Proc{cmd: cmd, stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Resume()
		p.Kill()
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", bin, tail(p.stderr.String(), 6000))
		}
	})
	return p
}

// Kill sends SIGKILL and waits for the process to die.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Pause stops the process (SIGSTOP) without killing it; Resume continues it.
func (p *Proc) Pause() { _ = p.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused process (SIGCONT).
func (p *Proc) Resume() { _ = p.cmd.Process.Signal(syscall.SIGCONT) }

// Stop sends SIGTERM and waits up to timeout for a clean exit.
func (p *Proc) Stop(t testing.TB, timeout time.Duration) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("process did not stop within %s after SIGTERM", timeout)
	}
}

// Interrupt sends SIGINT (Ctrl-C) and waits up to timeout for the process
// to exit; it returns the exit code.
func (p *Proc) Interrupt(t testing.TB, timeout time.Duration) int {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("process did not stop within %s after SIGINT", timeout)
		return -1
	}
}

// Exited reports whether the process has ended, and its exit code.
func (p *Proc) Exited() (bool, int) {
	select {
	case <-p.done:
		return true, p.cmd.ProcessState.ExitCode()
	default:
		return false, 0
	}
}

// Output is what the process printed so far.
func (p *Proc) Output() string { return p.stderr.String() }

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// WaitFor polls cond every 50 ms until it returns nil or timeout passes,
// then fails the test with cond's last error.
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DB is a connection to one test database.
type DB struct {
	URL  string
	Conn *pgx.Conn
}

// Connect opens a connection closed at the end of the test.
func Connect(t testing.TB, url string) *DB {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &DB{URL: url, Conn: conn}
}

// Exec runs statements, failing the test on error.
func (d *DB) Exec(t testing.TB, sql ...string) {
	t.Helper()
	for _, s := range sql {
		if _, err := d.Conn.Exec(context.Background(), s); err != nil {
			t.Fatalf("exec %.80q: %v", s, err)
		}
	}
}

// Int runs a query returning one integer.
func (d *DB) Int(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := d.Conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("query %.80q: %v", sql, err)
	}
	return n
}

// String runs a query returning one nullable string ("<null>" for NULL).
func (d *DB) String(t testing.TB, sql string, args ...any) string {
	t.Helper()
	var s *string
	if err := d.Conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("query %.80q: %v", sql, err)
	}
	if s == nil {
		return "<null>"
	}
	return *s
}

// InvoicesDDL is the example table of deploy/examples/invoices.yaml.
const InvoicesDDL = `CREATE TABLE public.invoices (id bigint PRIMARY KEY, customer text, amount numeric(12,2),
  status text, note text, updated_at timestamptz NOT NULL DEFAULT now())`

// SeedInvoices inserts invoices first..last.
func SeedInvoices(t testing.TB, d *DB, first, last int) {
	t.Helper()
	d.Exec(t, fmt.Sprintf(`INSERT INTO public.invoices (id, customer, amount, status, note)
SELECT g, 'customer ' || g, (g %% 1000) / 4.0, 'open', CASE WHEN g %% 5 = 0 THEN NULL ELSE E'note\t' || g END
FROM generate_series(%d, %d) g`, first, last))
}

// Config writes a pipeline file for the invoices table and returns its path.
// extra is appended to the target entry (indented YAML lines).
func Config(t testing.TB, natsURL, sourceURL, targetURL string, extraTarget string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pipeline.yaml")
	body := fmt.Sprintf(`pipeline: invoices
nats:
  url: %q
source:
  kind: postgres
  url: %q
  table: public.invoices
  key: [id]
  columns: [id, customer, amount, status, note, updated_at]
  capture:
    pattern: watermark
    column: updated_at
    batch_size: 500
    poll_interval: 100ms
targets:
  - name: pg
    kind: postgres
    url: %q
    table: public.invoices
    writer:
      ack_wait: 5s
%s`, natsURL, sourceURL, targetURL, extraTarget)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
