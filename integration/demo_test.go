package integration

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	_ "modernc.org/sqlite"

	"github.com/oneway-sync/oneway/integration/testenv"
)

// demoStatus is the part of /status.json the demo test reads.
type demoStatus struct {
	Targets []struct {
		Name        string `json:"name"`
		LagMessages uint64 `json:"lag_messages"`
		DeadLetters uint64 `json:"dead_letters"`
	} `json:"targets"`
	Comparison *struct {
		SourceRows int64  `json:"source_rows"`
		TargetRows int64  `json:"target_rows"`
		OutOfStep  int64  `json:"out_of_step"`
		Error      string `json:"error"`
	} `json:"comparison"`
}

func getDemoStatus(base string) (demoStatus, error) {
	var s demoStatus
	resp, err := http.Get(base + "/status.json")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return s, json.Unmarshal(b, &s)
}

// demoInStep is nil once the status page shows the SoR and the target
// equal (counts and every owned value), nothing pending and nothing
// dead-lettered.
func demoInStep(up *testenv.Proc, base string) error {
	if done, code := up.Exited(); done {
		return fmt.Errorf("oneway up exited with %d", code)
	}
	s, err := getDemoStatus(base)
	if err != nil {
		return err
	}
	c := s.Comparison
	switch {
	case c == nil:
		return errors.New("the status has no comparison")
	case c.Error != "":
		return fmt.Errorf("comparison failed: %s", c.Error)
	case len(s.Targets) != 1 || s.Targets[0].DeadLetters != 0:
		return fmt.Errorf("targets: %+v", s.Targets)
	case c.SourceRows == 0 || c.SourceRows != c.TargetRows || c.OutOfStep != 0:
		return fmt.Errorf("not in step: SoR %d rows, target %d rows, %d out of step", c.SourceRows, c.TargetRows, c.OutOfStep)
	}
	return nil
}

var statusURLRe = regexp.MustCompile(`Status page: (http://\S+)/`)

// waitBanner waits for the demo's banner and returns the status page's
// base URL from it.
func waitBanner(t *testing.T, up *testenv.Proc, want string) string {
	t.Helper()
	var base string
	testenv.WaitFor(t, time.Minute, func() error {
		if done, code := up.Exited(); done {
			t.Fatalf("oneway up exited with %d", code)
		}
		out := up.Output()
		m := statusURLRe.FindStringSubmatch(out)
		if m == nil {
			return errors.New("no banner yet")
		}
		if !strings.Contains(out, want) {
			t.Fatalf("the banner does not say %q:\n%s", want, out)
		}
		base = m[1]
		return nil
	})
	return base
}

func openDemoDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func sqliteExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// TestDemoNoConfig runs the README's command, `oneway up` with no config,
// in an empty directory: the demo seeds its SoR, the status page shows the
// target in step with it while the simulator keeps changing it, a row
// deleted and a row edited in the target by hand are repaired (the
// target's own column kept), Ctrl-C exits cleanly, and a second start
// resumes without seeding again.
func TestDemoNoConfig(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("ONEWAY_CONFIG", "")
	testenv.Bin(t, "oneway") // built once: not part of what is timed
	began := time.Now()
	phase := func(what string) { t.Logf("%5.1fs %s", time.Since(began).Seconds(), what) }
	up := testenv.StartIn(t, dir, "oneway", "up")
	base := waitBanner(t, up, "seeded with 2000 invoices")
	phase("started")
	for _, f := range []string{"data/demo/sor.db", "data/demo/target.db", "data/demo/oneway.yaml", "data/nats"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("the demo has no %s: %v", f, err)
		}
	}
	// The acceptance: in step within a minute (with room for a loaded CI
	// machine).
	testenv.WaitFor(t, 2*time.Minute, func() error { return demoInStep(up, base) })
	phase("in step")
	demoPageInStep(t, base)
	phase("the status page shows it")

	// The simulator changes the SoR.
	sor := openDemoDB(t, filepath.Join(dir, "data/demo/sor.db"))
	testenv.WaitFor(t, time.Minute, func() error {
		var n int
		if err := sor.QueryRow("SELECT count(*) FROM invoices WHERE id > 2000 OR updated_at > ?",
			time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return errors.New("the simulator changed nothing yet")
		}
		return nil
	})

	phase("the simulator changed the SoR")
	// Hand edits of the target: a row deleted, a row changed (with a
	// value in the target's own column), a row added.
	tgt := openDemoDB(t, filepath.Join(dir, "data/demo/target.db"))
	var deleted, edited int64
	if err := tgt.QueryRow("SELECT min(id), max(id) FROM invoices WHERE id <= 1000").Scan(&deleted, &edited); err != nil {
		t.Fatal(err)
	}
	sqliteExec(t, tgt, "DELETE FROM invoices WHERE id = ?", deleted)
	sqliteExec(t, tgt, "UPDATE invoices SET customer = 'edited by hand', notes = 'mine' WHERE id = ?", edited)
	sqliteExec(t, tgt, "INSERT INTO invoices (id, customer, amount, status, updated_at) VALUES (99999999, 'orphan', 1, 'draft', '2020-01-01')")
	r := testenv.Run(t, time.Minute, "oneway", "status", "--url", base)
	if r.Code != 0 || !strings.Contains(r.Stdout, "out of step") {
		t.Fatalf("oneway status: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	testenv.WaitFor(t, 2*time.Minute, func() error {
		if err := demoInStep(up, base); err != nil {
			return err
		}
		var notes sql.NullString
		var orphans int
		if err := tgt.QueryRow("SELECT notes FROM invoices WHERE id = ?", edited).Scan(&notes); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if err := tgt.QueryRow("SELECT count(*) FROM invoices WHERE id = 99999999").Scan(&orphans); err != nil {
			return err
		}
		if orphans != 0 {
			return errors.New("the orphan is still there")
		}
		// In step means the edit was repaired; the simulator may have
		// deleted the row meanwhile, else its notes survive.
		if notes.Valid && notes.String != "mine" {
			return fmt.Errorf("the target's own column was overwritten: %q", notes.String)
		}
		return nil
	})

	phase("hand edits repaired")
	if code := up.Interrupt(t, time.Minute); code != 0 {
		t.Fatalf("oneway up exited with %d after Ctrl-C, want 0\n%s", code, up.Output())
	}
	phase("stopped by Ctrl-C")

	// A restart resumes: the simulator's changes are still in the SoR (a
	// seed would have none: its times are days old).
	simulated := func() int {
		var n int
		if err := sor.QueryRow("SELECT count(*) FROM invoices WHERE updated_at > ?",
			time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := simulated()
	if before == 0 {
		t.Fatal("no simulated changes in the SoR before the restart")
	}
	up = testenv.StartIn(t, dir, "oneway", "up")
	base = waitBanner(t, up, "Resuming the demo")
	if after := simulated(); after < before {
		t.Fatalf("the SoR has %d simulated changes after a restart, %d before: it was seeded again", after, before)
	}
	// The restarted pipeline carries the simulator's next changes.
	testenv.WaitFor(t, time.Minute, func() error {
		if n := simulated(); n <= before {
			return fmt.Errorf("no new simulated changes after the restart (%d)", n)
		}
		return nil
	})
	testenv.WaitFor(t, 2*time.Minute, func() error { return demoInStep(up, base) })
	phase("in step after the restart")
	if code := up.Interrupt(t, time.Minute); code != 0 {
		t.Fatalf("oneway up exited with %d after the second Ctrl-C, want 0\n%s", code, up.Output())
	}
}

// demoPageInStep loads the status page in headless Chromium and waits until
// it shows the SoR and the target in step (row counts equal, 0 rows out of
// step), then saves a screenshot as a test artifact
// (ONEWAY_TEST_ARTIFACTS, default integration/artifacts).
func demoPageInStep(t *testing.T, base string) {
	t.Helper()
	chromium := chromiumPath(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Headless,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1200, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("browser: %v", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 2*time.Minute)
	defer scancel()
	const inStep = `(() => {
  const v = id => document.querySelector('[data-testid="' + id + '"]').textContent;
  return v("out-of-step").includes("in step") && v("source-rows") === v("target-rows") && v("source-rows") !== "…";
})()`
	if _, err := chromedp.Run(sctx, chromedp.Poll[bool](inStep, chromedp.WithPollingTimeout(2*time.Minute), chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		t.Fatalf("the status page never showed the SoR and the target in step: %v", err)
	}
	shot, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("ONEWAY_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(repoRoot(), "integration", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "demo-status-page.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
}
